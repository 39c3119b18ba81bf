"""`python -m circuitlib` runs the CLI."""

import sys

from circuitlib.cli import main

sys.exit(main())
