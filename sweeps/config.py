"""Sweep configuration: presets in sweeps/presets/*.yaml, command-line overrides, and validation."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from circuitlib import data
from circuitlib.errors import InputError
from circuitlib.types import PAPER_DENSITIES, VARIANTS

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


@dataclass
class SweepConfig:
    """Everything a sweep computes and where it runs; a preset fills it, the command line overrides it."""

    name: str = "paper"
    model: str = "gpt2-xl"
    model_revision: str | None = None
    datasets: list[str] = field(default_factory=lambda: ["blimp_dna1", "persona_ra", "hierarchy"])
    seeds: list[int] = field(default_factory=lambda: [0])
    densities: list[float] = field(default_factory=lambda: list(PAPER_DENSITIES))
    # discovery (DESIGN.md 1.1)
    data_limit: int | None = None
    eval_fraction: float = 0.2
    max_steps: int = 5000
    batch_size: int = 128
    lr: float = 0.01
    lambda_init: float = 10.0
    lambda_step: float = 1.0  # added to lambda each epoch
    lambda_max: float = 1000.0
    head_epochs: int = 400
    eval_every: int = 50
    checkpoint_every: int = 50
    max_length: int = 64
    dtype: str = "auto"  # discovery compute dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16
    # edits (DESIGN.md 1.2)
    requests: str = "hierarchy"
    edit_limit: int | None = None
    variants: list[str] = field(default_factory=lambda: ["circuit", "complement", "random"])
    include_full: bool = True
    shard_size: int = 50
    edit_steps: int = 25
    edit_lr: float = 5e-4
    edit_max_change: float = 5e-4
    # where and how it runs
    require_gpu: bool = False
    gpus_per_trial: float | None = None  # None: 1 where the cluster has GPUs, else 0
    cpus_per_trial: int = 1
    max_concurrent_trials: int = 0  # 0: as many as resources allow
    max_failures: int = 2
    work_dir: str = "runs"
    storage_path: str | None = None  # Ray Tune results and checkpoints; default {work_dir}/ray; s3:// and gs:// work
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else SQLite under work_dir
    experiment: str | None = None  # MLflow experiment; default: the sweep name

    def resolved(self) -> "SweepConfig":
        """Fill the derived defaults (absolute paths, tracking URI, experiment) from the environment."""
        work = Path(self.work_dir).expanduser().resolve()
        storage = self.storage_path or str(work / "ray")
        if "://" not in storage:
            storage = str(Path(storage).expanduser().resolve())
        tracking = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work / 'mlflow.db'}"
        return dataclasses.replace(
            self, work_dir=str(work), storage_path=storage, tracking_uri=tracking, experiment=self.experiment or self.name
        )

    def validate(self) -> None:
        """Reject a config that cannot work, before any trial starts."""
        if not self.datasets:
            raise InputError("datasets: at least one dataset is needed")
        for spec in self.datasets:
            data.check_classification_spec(spec)
        names = [data.dataset_name(s) for s in self.datasets]
        if len(set(names)) != len(names):
            raise InputError(f"datasets {self.datasets}: two datasets share a name ({names})")
        if not self.densities or any(not 0.0 < d < 1.0 for d in self.densities):
            raise InputError(f"densities {self.densities}: each target density must lie in (0, 1)")
        unknown = [v for v in self.variants if v not in VARIANTS or v == "full"]
        if unknown:
            raise InputError(f"variants {unknown}: choose from circuit, complement, random (full: include_full)")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise InputError(f"dtype {self.dtype!r}: use auto, float32, bfloat16 or float16")
        for name in ("max_steps", "batch_size", "head_epochs", "shard_size", "edit_steps", "cpus_per_trial"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} {getattr(self, name)}: must be at least 1")
        if not 0.0 < self.eval_fraction < 1.0:
            raise InputError(f"eval_fraction {self.eval_fraction}: must lie in (0, 1)")
        if self.require_gpu and self.gpus_per_trial == 0:
            raise InputError(f"preset {self.name} needs a GPU per trial (model {self.model}), but gpus_per_trial is 0")
        data.load_requests(self.requests, self.edit_limit)

    def shards(self) -> int:
        """How many edit trials the requests are split into, per circuit and variant."""
        n = len(data.load_requests(self.requests, self.edit_limit))
        return math.ceil(n / self.shard_size)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> SweepConfig:
    """The config a preset file describes; unknown presets and unknown keys are rejected."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"preset {name!r}: no such preset (available: {', '.join(preset_names())})")
    values = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in fields(SweepConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"preset {path}: unknown keys {unknown}")
    return SweepConfig(**{"name": name, **values})


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """One --field option per config field; values are parsed as YAML (so lists read as 0.5,0.25 or [a, b])."""
    for f in fields(SweepConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar="VALUE",
                            help=f"override {f.name}")


def _parse(f: dataclasses.Field, text: str) -> Any:
    value = yaml.safe_load(text) if text.strip() else None
    is_list = str(f.type).startswith("list")
    if is_list and not isinstance(value, list):
        value = [yaml.safe_load(x) for x in text.split(",") if x.strip()]
    if str(f.type).startswith("str") and value is not None:
        value = text
    return value


def apply_overrides(config: SweepConfig, args: argparse.Namespace) -> SweepConfig:
    """The config with every field given on the command line replaced."""
    changes = {}
    for f in fields(SweepConfig):
        text = getattr(args, f.name, None)
        if text is not None:
            changes[f.name] = _parse(f, text)
    return dataclasses.replace(config, **changes)
