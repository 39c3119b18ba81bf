"""docs/walkthrough.ipynb: saved without outputs; run headless on the tiny GPT-2, it prints what each step promises."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

from circuitlib.types import VARIANTS

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "walkthrough.ipynb"
NUMBER = r"([-+]?(?:\d+\.\d+|nan))"


def test_walkthrough_is_saved_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


def stdout_of(cell: nbformat.NotebookNode) -> str:
    return "".join(out.text for out in cell.get("outputs", []) if out.output_type == "stream" and out.name == "stdout")


def numbers(pattern: str, text: str) -> list[float]:
    """The numbers `pattern`'s groups capture on the first line of `text` it matches; fails where none does."""
    match = re.search(pattern, text, re.M)
    assert match, f"no line matches {pattern!r}"
    return [float(group) for group in match.groups()]


def test_walkthrough_runs_on_tiny_gpt2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A kernelspec named python3 that runs this interpreter, found ahead of any user or system one (JUPYTER_PATH comes
    # first), so the notebook runs in this venv whatever kernels the machine has.
    write_kernel_spec(tmp_path / "jupyter" / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("CIRCUITLIB_WALKTHROUGH_MODEL", "tiny-gpt2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the notebook saves its circuit
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)"))
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()

    assert stdout_of(nb.cells[0]).strip() == sys.prefix  # the kernel is this environment's Python
    out = "\n".join(stdout_of(cell) for cell in nb.cells[1:] if cell.cell_type == "code")
    assert "model tiny-gpt2" in out

    # step 3: one circuit at or just below its target, with its faithfulness and interval
    density, target = numbers(rf"^density {NUMBER} \(target {NUMBER}\)$", out)
    assert target == 0.5 and target - 0.01 < density <= target
    faithful, low, high = numbers(rf"^faithfulness {NUMBER} \(95% CI {NUMBER}-{NUMBER}\)", out)
    assert 0 <= low <= faithful <= high <= 1

    # step 4: composition by module type and by layer
    shares = {t: float(s) for t, s in re.findall(rf"^(attention|mlp|norm) +{NUMBER}", out, re.M)}
    assert set(shares) == {"attention", "mlp", "norm"} and math.isclose(sum(shares.values()), 1.0, abs_tol=0.003)
    assert re.search(r"^ +1 +\d\.\d{3} +\d\.\d{3} +\d\.\d{3}$", out, re.M)  # layer 1 of the tiny GPT-2's two

    # step 5: a summary of each variant's edits
    for variant in VARIANTS:
        line = re.search(rf"^{variant} +(\d+) edits: NLL\(new\) drop {NUMBER}, efficacy {NUMBER}", out, re.M)
        assert line, f"no summary of the {variant} edits"
        assert int(line[1]) == 2 and math.isfinite(float(line[2]))

    # step 6: the circuit's predictions agree with the full model's as often as its faithfulness says
    agreement, recorded = numbers(
        rf"^agreement on all \d+ held-out rows {NUMBER}; the snapshot's faithfulness {NUMBER}$", out
    )
    assert agreement == recorded == faithful
    assert "zeroed in place, same predictions: True" in out
    assert re.search(r", same bits: True$", out, re.M)
