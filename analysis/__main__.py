"""`python -m analysis` runs the analysis CLI."""

import sys

from analysis.cli import main

sys.exit(main())
