"""The `python -m circuitlib` command end to end on the tiny GPT-2, and its one-line errors for bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from circuitlib import circuits
from circuitlib.builtin_data import hierarchy_facts
from circuitlib.cli import _claim_checkpoint, build_parser, config_from_args, delegated
from circuitlib.data import SplitSpec
from circuitlib.discovery import DiscoveryConfig
from circuitlib.editing import EditConfig
from circuitlib.errors import InputError
from circuitlib.jsonio import write_json

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter, offline, on one torch thread (the tiny model needs no more)."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    return subprocess.run(
        [sys.executable, "-m", "circuitlib", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def write_csv(path: Path, n: int = 24) -> Path:
    rows = ["text,label"] + [
        f"the {w} number {i} is {'big' if i % 2 else 'small'},{i % 2}"
        for i, w in enumerate(["cat", "dog", "tree"] * (n // 3))
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


DISCOVER = (
    "--model",
    "tiny-gpt2",
    "--densities",
    "0.6,0.3",
    "--max-steps",
    "300",
    "--batch-size",
    "8",
    "--head-epochs",
    "10",
    "--lr",
    "0.2",
    "--eval-every",
    "10",
    "--split-seed",
    "1",
    "--mask-seed",
    "1",
)


def test_discover_info_edit_end_to_end_on_builtin_data(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = ok(
        cli("discover", *DISCOVER, "--dataset", "builtin:hierarchy", "--limit", "40", "--out", str(out), cwd=tmp_path)
    )
    files = sorted(out.glob("circuit_d*.safetensors"))
    assert [f.name for f in files] == ["circuit_d0.3.safetensors", "circuit_d0.6.safetensors"]
    assert "-> " in result.stdout and str(files[0]) in result.stdout
    history = json.loads((out / "history.json").read_text())
    assert history["unreached"] == [] and len(history["circuits"]) == 2 and history["history"][0]["step"] == 0
    assert history["history"][0]["loss"] is None  # NaN is written as null: standard JSON

    for path in files:
        info = json.loads(ok(cli("info", "--json", str(path), cwd=tmp_path)).stdout)
        assert info["density"] <= info["target_density"] == float(path.stem.removeprefix("circuit_d"))
        assert info["masked_weights"] == 25408 and info["model_id"] == "tiny-gpt2"
        assert info["provenance"]["dataset"] == "hierarchy" and info["provenance"]["mask_seed"] == 1
        assert info["provenance"]["split"] == {
            "dataset": "builtin:hierarchy",
            "limit": 40,
            "eval_fraction": 0.2,
            "split_seed": 1,
            "min_eval_rows": 100,
        }
        assert info["provenance"]["model_dtype"] == "float32"
    text = ok(cli("info", str(files[0]), cwd=tmp_path)).stdout
    assert "density" in text and "masked weights  25,408" in text
    recompute = next(line for line in text.splitlines() if line.startswith("recompute"))
    assert "circuitlib discover --model tiny-gpt2 --dataset builtin:hierarchy --split-seed 1 --limit 40 " in recompute

    report = tmp_path / "edits" / "complement.json"
    result = ok(
        cli(
            "edit",
            "--model",
            "tiny-gpt2",
            "--variant",
            "complement",
            "--circuit",
            str(files[0]),
            "--requests",
            "builtin:hierarchy",
            "--limit",
            "2",
            "--max-steps",
            "3",
            "--out",
            str(report),
            cwd=tmp_path,
        )
    )
    assert "complement: 2 edits" in result.stdout
    payload = json.loads(report.read_text())
    facts = hierarchy_facts()
    assert [r["case_id"] for r in payload["results"]] == [facts[0].case_id, facts[1].case_id]
    for row in payload["results"]:
        assert row["variant"] == "complement" and 0 <= row["steps"] <= 3
        assert row["nll_new_drop"] == pytest.approx(row["nll_new_pre"] - row["nll_new_post"], abs=1e-6)
    summary = payload["summary"]
    assert summary["requests"] == 2
    assert {"efficacy_score", "paraphrase_score", "neighborhood_score", "overall_score", "nll_new_drop"} <= set(summary)
    assert payload["variant"] == "complement" and payload["circuit"] == str(files[0])


def test_discover_on_csv_and_edit_json_requests(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "toy.csv")
    out = tmp_path / "run"
    ok(cli("discover", *DISCOVER, "--dataset", f"csv:{data}", "--out", str(out), cwd=tmp_path))
    circuit = out / "circuit_d0.6.safetensors"
    stored = circuits.load(circuit)
    assert stored.target_density == 0.6 and stored.density <= 0.6 and stored.provenance["dataset"] == "toy"
    requests = tmp_path / "requests.json"
    requests.write_text(
        json.dumps(
            [
                {
                    "case_id": 7,
                    "requested_rewrite": {
                        "prompt": "{} is a kind of",
                        "subject": "A cat",
                        "target_true": {"str": "animal"},
                        "target_new": {"str": "plant"},
                    },
                    "paraphrase_prompts": ["A cat is a type of"],
                    "neighborhood_prompts": ["A dog is a kind of"],
                },
            ]
        )
    )
    report = tmp_path / "circuit.json"
    ok(
        cli(
            "edit",
            "--model",
            "tiny-gpt2",
            "--variant",
            "circuit",
            "--circuit",
            str(circuit),
            "--requests",
            f"json:{requests}",
            "--max-steps",
            "2",
            "--out",
            str(report),
            cwd=tmp_path,
        )
    )
    payload = json.loads(report.read_text())
    assert [r["case_id"] for r in payload["results"]] == [7] and payload["summary"]["requests"] == 1


# --- bad inputs: exit code != 0, one line on stderr naming the input and the problem, no traceback ------


def _bad_cases(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """case -> (arguments, substrings the error line must contain)."""
    (root / "no_text.csv").write_text("sentence,label\na,1\nb,0\n")
    (root / "label2.csv").write_text("text,label\na,1\nb,2\nc,0\n")
    (root / "empty.csv").write_text("")
    (root / "good.csv").write_text("text,label\na,1\nb,0\nc,1\nd,0\n")
    (root / "no_target.json").write_text(
        json.dumps([{"requested_rewrite": {"prompt": "{} is", "subject": "A cat", "target_true": {"str": "animal"}}}])
    )
    (root / "broken.json").write_text("[{")
    (root / "not_a_circuit.safetensors").write_text("hello")
    discover = ["discover", "--model", "tiny-gpt2", "--max-steps", "1", "--out", str(root / "out")]
    edit = ["edit", "--model", "tiny-gpt2", "--variant", "full", "--out", str(root / "e.json")]
    return {
        "missing column": (
            [*discover, "--dataset", f"csv:{root / 'no_text.csv'}"],
            [str(root / "no_text.csv"), "no column 'text'"],
        ),
        "label not 0/1": (
            [*discover, "--dataset", f"csv:{root / 'label2.csv'}"],
            [str(root / "label2.csv"), "row 1 has label 2", "must be 0 or 1"],
        ),
        "empty file": ([*discover, "--dataset", f"csv:{root / 'empty.csv'}"], [str(root / "empty.csv"), "is empty"]),
        "missing file": (
            [*discover, "--dataset", f"csv:{root / 'absent.csv'}"],
            [str(root / "absent.csv"), "no such file"],
        ),
        "density above 1": (
            [*discover, "--dataset", f"csv:{root / 'good.csv'}", "--densities", "0.5,1.5"],
            ["--densities", "0.5,1.5", "(0, 1)"],
        ),
        "density 0": (
            [*discover, "--dataset", f"csv:{root / 'good.csv'}", "--densities", "0"],
            ["--densities", "'0'", "(0, 1)"],
        ),
        "negative lr": (
            [*discover, "--dataset", f"csv:{root / 'good.csv'}", "--lr", "-1"],
            ["--lr '-1'", "must be a finite number above 0"],
        ),
        "no dataset": (discover, ["--dataset: required"]),
        "edit steps not a number": (
            [*edit, "--requests", "builtin:hierarchy", "--max-steps", "many"],
            ["--max-steps 'many'", "expected an integer"],
        ),
        "unknown model path": (
            [
                "discover",
                "--model",
                "./no-such-model",
                "--dataset",
                f"csv:{root / 'good.csv'}",
                "--out",
                str(root / "out"),
            ],
            ["model ./no-such-model", "no such directory"],
        ),
        "request without target_new": (
            [*edit, "--requests", f"json:{root / 'no_target.json'}"],
            [str(root / "no_target.json"), "record 0", "missing field 'requested_rewrite.target_new.str'"],
        ),
        "request file not JSON": (
            [*edit, "--requests", f"json:{root / 'broken.json'}"],
            [str(root / "broken.json"), "not valid JSON"],
        ),
        "edit limit 0": ([*edit, "--requests", "builtin:hierarchy", "--limit", "0"], ["--limit 0", "at least 1"]),
        "not a circuit file": (
            [
                "edit",
                "--model",
                "tiny-gpt2",
                "--variant",
                "circuit",
                "--circuit",
                str(root / "not_a_circuit.safetensors"),
                "--requests",
                "builtin:hierarchy",
                "--out",
                str(root / "e.json"),
            ],
            [str(root / "not_a_circuit.safetensors"), "not a safetensors file"],
        ),
    }


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, list[str]]]:
    """Every bad-input case, run a few at a time (each is an interpreter start that fails fast)."""
    root = tmp_path_factory.mktemp("bad")
    cases = _bad_cases(root)
    assert sorted(cases) == sorted(BAD_CASES)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(cli, *args, cwd=root) for name, (args, _) in cases.items()}
        return {name: (futures[name].result(), cases[name][1]) for name in cases}


BAD_CASES = [
    "missing column",
    "label not 0/1",
    "empty file",
    "missing file",
    "density above 1",
    "density 0",
    "negative lr",
    "no dataset",
    "edit steps not a number",
    "unknown model path",
    "request without target_new",
    "request file not JSON",
    "edit limit 0",
    "not a circuit file",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_clear_line(bad_runs, case: str) -> None:
    result, expected = bad_runs[case]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("circuitlib: error: ")
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert result.stdout == ""


def test_discover_refuses_to_resume_a_checkpoint_of_another_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = (
        "discover",
        "--model",
        "tiny-gpt2",
        "--densities",
        "0.6",
        "--max-steps",
        "5",
        "--batch-size",
        "8",
        "--head-epochs",
        "2",
        "--dataset",
        "builtin:hierarchy",
        "--limit",
        "24",
        "--out",
        str(out),
    )
    ok(cli(*args, cwd=tmp_path))
    params = json.loads((out / "checkpoint" / "params.json").read_text())
    assert params["model"] == "tiny-gpt2" and params["config"]["mask_seed"] == 0 and params["split"]["split_seed"] == 0
    ok(cli(*args[:-2], "--max-steps", "6", "--out", str(out), cwd=tmp_path))  # a larger budget resumes
    result = cli(*args[:-2], "--mask-seed", "3", "--lr", "0.5", "--split-seed", "2", "--out", str(out), cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert str(out) in line and "different run" in line
    assert "config.lr" in line and "config.mask_seed" in line and "split.split_seed" in line
    assert json.loads((out / "checkpoint" / "params.json").read_text()) == json.loads(json.dumps(params)) | {
        "config": params["config"] | {"max_steps": 6}
    }


def test_a_checkpoint_resumes_after_a_budget_or_compile_change_only(tmp_path: Path) -> None:
    """max_steps and compile_model leave what a resumed run computes alone; eval_every does not (a hold keeps the
    most faithful evaluated mask, so which masks are evaluated decides the snapshot)."""
    folder = tmp_path / "checkpoint"

    def run(split: dict | None = None, **config) -> dict:
        spec = SplitSpec(dataset="builtin:hierarchy", **(split or {}))
        return {
            "model": "tiny-gpt2",
            "revision": None,
            "dtype": "float32",
            "split": asdict(spec),
            "config": asdict(DiscoveryConfig(**config)),
        }

    _claim_checkpoint(folder, run())
    _claim_checkpoint(folder, run(max_steps=7, compile_model=True))
    with pytest.raises(InputError, match=r"\(config\.eval_every differ\)"):
        _claim_checkpoint(folder, run(max_steps=7, compile_model=True, eval_every=10))

    # A checkpoint frozen before min_eval_rows existed drew its rows without a minimum.
    frozen = run(split={"min_eval_rows": 0})
    del frozen["split"]["min_eval_rows"]
    write_json(folder / "params.json", frozen)
    with pytest.raises(InputError, match=r"split\.min_eval_rows"):
        _claim_checkpoint(folder, run())
    _claim_checkpoint(folder, run(split={"min_eval_rows": 0}))


def test_config_options_come_from_the_dataclasses() -> None:
    """Every DiscoveryConfig and EditConfig field is an option with its default; bools and optionals read as text."""
    required = ["--model", "m", "--out", "o", "--dataset", "d"]
    parser = build_parser("discover")
    assert config_from_args(DiscoveryConfig, parser.parse_args(["discover", *required])) == DiscoveryConfig()
    args = parser.parse_args(
        [
            "discover",
            *required,
            "--compile-model",
            "--fused",
            "false",
            "--densities",
            "[0.4, 0.2]",
            "--mask_seed",
            "7",
            "--precision",
            "bf16",
        ]
    )
    expected = DiscoveryConfig(compile_model=True, fused=False, densities=(0.4, 0.2), mask_seed=7, precision="bf16")
    assert config_from_args(DiscoveryConfig, args) == expected
    args = parser.parse_args(["discover", *required, "--compile-model", "false", "--fused", "none"])
    assert config_from_args(DiscoveryConfig, args) == DiscoveryConfig()
    edit = build_parser("edit").parse_args(
        [
            "edit",
            "--model",
            "m",
            "--variant",
            "full",
            "--requests",
            "r",
            "--out",
            "o",
            "--max-steps",
            "4",
            "--stop-loss",
            "0",
        ]
    )
    assert config_from_args(EditConfig, edit) == EditConfig(max_steps=4, stop_loss=0.0)


def test_an_unknown_option_is_one_line(tmp_path: Path) -> None:
    result = cli(
        "discover",
        "--model",
        "tiny-gpt2",
        "--dataset",
        "builtin:hierarchy",
        "--out",
        str(tmp_path),
        "--learning-rate",
        "0.1",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unrecognized arguments: --learning-rate 0.1" in lines[0]


def test_sweep_and_report_are_circuitlib_commands(tmp_path: Path) -> None:
    sweep = ok(
        cli(
            "sweep",
            "--preset",
            "tiny",
            "--dry-run",
            "--discovery.lr",
            "0.05",
            "--edit.max_steps",
            "7",
            "--work-dir",
            str(tmp_path),
            cwd=tmp_path,
        )
    )
    resolved = json.loads(sweep.stdout[: sweep.stdout.rindex("}") + 1])
    assert resolved["discovery"]["lr"] == 0.05 and resolved["edit"]["max_steps"] == 7
    assert "2 discovery trials" in sweep.stdout
    bad = cli("sweep", "--preset", "tiny", "--discovery.lr", "0", "--work-dir", str(tmp_path), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "circuitlib sweep: error: discovery.lr '0': must be a finite number above 0"
    )
    report = cli(
        "report",
        "--experiment",
        "nothing-here",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--no-log",
        cwd=tmp_path,
    )
    assert report.returncode == 2 and report.stderr.startswith("analysis: error: ")  # the analysis' own command line


def test_the_library_and_its_command_line_load_no_ray_and_no_mlflow() -> None:
    code = (
        "import sys, circuitlib, circuitlib.cli, circuitlib.discovery\n"
        "circuitlib.cli.build_parser()\n"
        "print(sorted(m for m in ('ray', 'mlflow', 'sweeps', 'analysis') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    assert set(delegated()) == {"sweep", "report"}  # registered by pyproject.toml, listed without being imported


@pytest.mark.parametrize(("asked", "loaded"), [(None, "circuit-rev"), ("v2", "v2")])
def test_edit_loads_the_circuits_revision_unless_one_is_asked_for(
    tmp_path: Path, tiny_lm, monkeypatch, asked: str | None, loaded: str
) -> None:
    """An edit trial passes the sweep's --revision; by hand, the circuit's own is the default."""
    import circuitlib.models

    circuit = circuits.Circuit.from_masks(
        tiny_lm.params,
        {p.name: torch.ones(p.shape, dtype=torch.bool) for p in tiny_lm.params},
        "tiny-gpt2",
        "circuit-rev",
    )
    path = circuits.save(circuit, tmp_path / "c.safetensors")
    seen: list[str | None] = []

    def load_model(spec: str, device: str | None = None, revision: str | None = None):
        seen.append(revision)
        raise InputError("stop here")

    monkeypatch.setattr(circuitlib.models, "load_model", load_model)
    args = ["edit", "--model", "tiny-gpt2", "--variant", "circuit", "--circuit", str(path)]
    args += ["--requests", "builtin:hierarchy", "--out", str(tmp_path / "e.json")]
    parsed = build_parser("edit").parse_args(args + (["--revision", asked] if asked else []))
    with pytest.raises(InputError, match="stop here"):
        parsed.func(parsed)
    assert seen == [loaded]
