"""The GPU check's CPU side (its one-line refusal without CUDA, a tiny smoke of bench_gpu) and the paper-pattern
benchmark's baseline on the tiny GPT-2."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from circuitlib import circuits
from sweeps.config import load_preset

pytestmark = pytest.mark.benchmark

REPO = Path(__file__).resolve().parents[2]


def _load_module(name: str):
    """A script of benchmarks/ as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None, name
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench_gpu = _load_module("bench_gpu")
bench_paper_pattern = _load_module("bench_paper_pattern")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no CUDA device is visible")
def test_gpu_check_stops_at_once_with_one_line_without_cuda(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device is visible" in lines[0]
    assert not (tmp_path / "gpu_check.json").exists()


def test_bench_gpu_writes_every_key_on_the_paper_presets_settings(tmp_path: Path) -> None:
    """A CPU smoke of the GPU benchmark on the tiny model: the JSON gpu_check.sh commits, measured on the paper
    preset's discovery and edit settings (the sweep's path)."""
    out = tmp_path / "gpu_check.json"
    assert (
        bench_gpu.main(
            [
                "--device",
                "cpu",
                "--model",
                "tiny-gpt2",
                "--rows",
                "64",
                "--repeats",
                "2",
                "--requests",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(bench_gpu.KEYS) <= set(result)
    paper = load_preset("paper")
    assert result["settings"]["discovery"] == json.loads(json.dumps(dataclasses.asdict(paper.discovery)))
    assert result["settings"]["discovery"]["precision"] == "bf16"
    assert result["settings"]["edit"]["max_steps"] == 25 and result["edits"]["edit_steps"] == 25
    assert result["mask_step_s"] > 0 and result["edit_request_s"] > 0
    assert len(result["edits"]["edit_request_times_s"]) == 2  # the warm-up request is not timed
    assert result["gpu"] is None and result["discovery_peak_gpu_gib"] is None and result["edit_peak_gpu_gib"] is None


def test_bench_gpu_refuses_cuda_where_there_is_none(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is visible")
    assert bench_gpu.main(["--device", "cuda"]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err


def test_the_paper_pattern_baseline_edits_as_the_project_does(tmp_path: Path) -> None:
    """The baseline is a re-implementation, not another algorithm: its post-edit NLLs are the project's."""
    assert (
        bench_paper_pattern.main(
            [
                "--model",
                "tiny-gpt2",
                "--rows",
                "32",
                "--mask-steps",
                "3",
                "--requests",
                "2",
                "--edit-steps",
                "3",
                "--repeats",
                "1",
                "--out-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    (report,) = tmp_path.glob("paper_pattern_tiny-gpt2_*.json")
    result = json.loads(report.read_text())
    assert result["edits"]["max_abs_diff_nll_new_post"] < 1e-4
    for part in ("discovery", "edits"):
        assert result[part]["project"]["median_s"] > 0 and result[part]["baseline"]["median_s"] > 0
        assert result[part]["ratio_baseline_over_project"] > 0
    assert "python benchmarks/bench_paper_pattern.py --model tiny-gpt2" in report.with_suffix(".md").read_text()


def test_the_generalization_gap_measures_each_snapshot_as_discovery_evaluated_it(tmp_path: Path) -> None:
    """On held-out rows it agrees with discovery's own faithfulness (the tiny preset reports on every held-out row,
    through the same head); on training rows it measures the fit."""
    out = tmp_path / "gap.json"
    script = REPO / "benchmarks" / "generalization_gap.py"
    args = ["--preset", "tiny", "--dataset", "builtin:hierarchy", "--train-rows", "50", "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [s["target"] for s in report["snapshots"]] == list(load_preset("tiny").discovery.densities)
    for s in report["snapshots"]:
        assert s["held_out_agreement"] == pytest.approx(s["reported_faithfulness"])
        assert 0 <= s["train_agreement"] <= 1 and s["train_feature_mse"] > 0 and s["held_out_feature_mse"] > 0
        assert s["held_out_head_error"] > 0 and 0 < s["held_out_noise_agreement"] <= 1


def test_curves_read_a_discover_folder_and_choose_the_snapshots_discover_kept(tmp_path: Path) -> None:
    """A `circuitlib discover` folder is a curves input, finished (history.json) or not (its checkpoint's history),
    and the table's chosen rows are the circuits the run saved."""
    curves = _load_module("curves")
    out = tmp_path / "run"
    args = ["--model", "tiny-gpt2", "--dataset", "builtin:hierarchy", "--limit", "40", "--out", str(out)]
    args += ["--densities", "0.6,0.3", "--schedule", "controlled", "--ramp-steps", "40", "--hold-steps", "20"]
    args += ["--max-steps", "200", "--batch-size", "8", "--head-epochs", "10", "--lr", "0.2", "--eval-every", "5"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "circuitlib", "discover", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]

    finished = curves.load_report(out)
    (out / "history.json").unlink()  # as a run still going or cut short leaves it
    checkpointed = curves.load_report(out)

    def without_loss(report: dict) -> list[dict]:  # the first row's loss is NaN, which history.json writes as null
        return [{k: v for k, v in row.items() if k != "loss"} for row in report["history"]["hierarchy"]]

    assert list(finished["history"]) == ["hierarchy"] and without_loss(checkpointed) == without_loss(finished)
    assert finished["discovery"]["hold_steps"] == 20 and finished["discovery"]["loss"] == "features"  # resolved

    chosen = curves.snapshots(finished, finished["history"]["hierarchy"])
    saved = {c.target_density: c for c in map(circuits.load, out.glob("circuit_d*.safetensors"))}
    assert [t for t, _ in chosen] == [0.6, 0.3] and set(saved) == {0.6, 0.3}
    for target, row in chosen:
        assert row["step"] == saved[target].provenance["step"] and row["density"] == saved[target].density

    (out / "checkpoint" / "state.pt").unlink()  # as a run that has not written its first checkpoint yet
    with pytest.raises(SystemExit, match="run: no history.json and no checkpoint yet"):
        curves.load_report(out)


def test_head_margins_predict_what_feature_noise_does_to_the_heads_decisions() -> None:
    """The curve mean(Φ(margin / s)) is what independent noise of s spreads per dimension does to a head's decisions
    (checked by drawing the noise), it falls as s grows, and the noise found for 0.9 keeps exactly 0.9."""
    head_margins = _load_module("head_margins")
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 24, generator=generator) * torch.linspace(0.5, 3.0, 24)
    head = torch.nn.Linear(24, 2)
    torch.nn.init.normal_(head.weight, generator=generator)
    with torch.no_grad():
        logits = head(features)
    scale = features.std(dim=0)
    task = SimpleNamespace(head=head, feature_scale=scale, eval_full_logits=logits)
    margin = head_margins.margins(task)
    for noise in (0.1, 0.5, 2.0):
        noisy = features + noise * scale * torch.randn(200, *features.shape, generator=generator)
        with torch.no_grad():
            kept = (head(noisy).argmax(dim=-1) == logits.argmax(dim=-1)).float().mean().item()
        assert head_margins.faithfulness_under_noise(margin, noise) == pytest.approx(kept, abs=0.005)
    curve = [head_margins.faithfulness_under_noise(margin, s) for s in (0.1, 0.5, 2.0)]
    assert curve == sorted(curve, reverse=True) and curve[0] < 1
    assert head_margins.faithfulness_under_noise(margin, head_margins.noise_for(margin)) == pytest.approx(0.9, abs=1e-6)


def test_head_error_is_the_error_along_the_heads_direction_in_the_margins_spreads() -> None:
    """Independent noise of s spreads per dimension reads s; the same noise with its part along the head removed reads
    zero, though its feature MSE is unchanged."""
    head_margins = _load_module("head_margins")
    generator = torch.Generator().manual_seed(0)
    full = torch.randn(4000, 24, generator=generator) * torch.linspace(0.5, 3.0, 24)
    head = torch.nn.Linear(24, 2)
    torch.nn.init.normal_(head.weight, generator=generator)
    task = SimpleNamespace(head=head, feature_scale=full.std(dim=0))
    noise = 0.3 * torch.randn(full.shape, generator=generator)  # in spreads
    assert head_margins.head_error(task, full + noise * task.feature_scale, full) == pytest.approx(0.3, rel=0.05)
    unit = head_margins.decision_direction(task)
    unit = unit / unit.norm()
    across = noise - (noise @ unit)[:, None] * unit
    assert head_margins.head_error(task, full + across * task.feature_scale, full) == pytest.approx(0.0, abs=1e-5)
    assert across.square().mean() == pytest.approx(0.09, rel=0.05)


def test_head_margins_measure_every_dataset_of_a_preset_with_the_rows_a_sweep_uses(tmp_path: Path) -> None:
    out = tmp_path / "margins.json"
    script = REPO / "benchmarks" / "head_margins.py"
    args = ["--preset", "tiny", "--datasets", "builtin:hierarchy,builtin:determiner_noun", "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["dataset"] for r in report["rows"]] == ["hierarchy", "determiner_noun"]
    preset = load_preset("tiny")
    for row in report["rows"]:
        _, held_out = preset.split_spec(f"builtin:{row['dataset']}", 0).load()
        assert row["eval_rows"] == len(held_out.labels)
        quantiles = list(row["margin_quantiles"].values())
        assert quantiles == sorted(quantiles) and quantiles[0] >= 0
        assert row["feature_mse_for_0.9"] == pytest.approx(row["noise_for_0.9"] ** 2)
    assert "| hierarchy |" in done.stdout
