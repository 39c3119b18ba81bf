"""Sweep configuration: presets in sweeps/presets/*.yaml, command-line overrides, and validation.

A sweep holds the library's own configs, `discovery` (DiscoveryConfig) and `edit` (EditConfig), so each
hyperparameter is declared once, in circuitlib; presets set them in `discovery:` and `edit:` sections and the command
line as `--discovery.lr 0.05` (circuitlib.options).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from circuitlib import data, models, options, settings
from circuitlib.discovery import DiscoveryConfig
from circuitlib.editing import EditConfig
from circuitlib.errors import InputError
from circuitlib.seeds import sweep_seeds
from circuitlib.settings import setting
from circuitlib.types import MASKED_VARIANTS, Variant

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
# Settings an older circuitlib had, with what replaced them: a preset or a frozen params.json that still sets one is
# refused with this line rather than as an unknown setting.
RETIRED = {
    **{
        old: f"moved: split.{new} in a preset, {options.flag('split.' + new)} on the command line"
        for old, new in (
            ("data_limit", "limit"),
            ("eval_fraction", "eval_fraction"),
            ("min_eval_rows", "min_eval_rows"),
        )
    },
    "dtype": "retired: the model's weights load in float32, and discovery.precision is the one precision switch "
    "(fp32, or bf16: bfloat16 autocast over float32 weights, the path tests/circuitlib/test_gpu.py and "
    "benchmarks/gpu_check.sh measure); edits always run on float32 weights",
}


def refuse_retired(given: Mapping[str, object], where: Callable[[str], str], then: str) -> None:
    """Refuse the first retired setting in `given`: `where` it was set, what replaced it, and `then` what to do."""
    retired = sorted(RETIRED.keys() & given.keys())
    if retired:
        raise InputError(f"{where(retired[0])}: {RETIRED[retired[0]]}; {then}")


STORAGE_SCHEMES = ("s3", "gs", "gcs", "file")  # what Ray Tune's storage (pyarrow) reads
# Where and how a sweep runs, not what it computes: they may change when a sweep is resumed, and stay out of its hash.
OPERATIONAL = (
    "name",
    "work_dir",
    "storage_path",
    "tracking_uri",
    "experiment",
    "require_gpu",
    "gpus_per_trial",
    "gpus_per_edit_trial",
    "cpus_per_trial",
    "max_concurrent_trials",
    "max_failures",
)


@dataclass
class SweepConfig:
    """Everything a sweep computes and where it runs; a preset fills it, the command line overrides it."""

    name: str = setting(
        "paper",
        "the sweep's name: its folder under work_dir, its Tune experiments and, by default, "
        "its MLflow experiment; letters, digits, _ . -",
        check=settings.identifier,
    )
    model: str = setting("gpt2-xl", "tiny-gpt2, smollm2-135m, a hub id or a local directory", check=settings.text)
    model_revision: str | None = setting(None, "hub revision (commit, tag or branch) of the model")
    datasets: list[str] = setting(
        doc="classification datasets (specs or aliases), one discovery each per seed",
        factory=lambda: ["blimp_dna1", "persona_ra", "hierarchy"],
        check=settings.non_empty(settings.text),
    )
    seeds: list[int] = setting(
        doc="sweep seeds; each gives every dataset its split, mask and random-mask seeds (circuitlib.seeds)",
        factory=lambda: [0],
        check=settings.non_empty(settings.at_least(0)),
    )
    split: data.Split = setting(
        doc="how each dataset's rows are drawn and held out (its split seed comes from seeds)", factory=data.Split
    )
    discovery: DiscoveryConfig = setting(
        doc="circuit discovery; its mask_seed comes from seeds", factory=DiscoveryConfig
    )
    requests: str = setting(
        "hierarchy", "edit requests: json:PATH, builtin:hierarchy or hierarchy", check=settings.text
    )
    edit_limit: int | None = setting(
        None, "edit only the first K requests (none: all)", check=settings.optional(settings.at_least(1))
    )
    variants: list[Variant] = setting(
        doc="masked variants edited per circuit (the full model: include_full)",
        factory=lambda: list(MASKED_VARIANTS),
        check=settings.non_empty(settings.one_of(MASKED_VARIANTS)),
    )
    include_full: bool = setting(True, "also edit the full model, once per shard")
    shard_size: int = setting(50, "requests per edit trial", check=settings.at_least(1))
    edit: EditConfig = setting(doc="knowledge edits", factory=EditConfig)
    require_gpu: bool = setting(False, "refuse a cluster without GPUs (the preset's model needs them)")
    gpus_per_trial: float | None = setting(
        None,
        "GPUs per trial; none: 1 where the cluster has GPUs, else 0",
        check=settings.optional(settings.non_negative),
    )
    gpus_per_edit_trial: float | None = setting(
        None,
        "share of a GPU an edit trial asks for where trials get GPUs, so several edit trials share one (the "
        "paper preset's value is computed from the edit's memory: cluster/sizing.py); none: as many as gpus_per_trial",
        check=settings.optional(settings.share),
    )
    cpus_per_trial: int = setting(1, "CPUs per trial", check=settings.at_least(1))
    max_concurrent_trials: int = setting(
        0, "trials at a time; 0: as many as resources allow", check=settings.at_least(0)
    )
    max_failures: int = setting(2, "retries of a failed trial", check=settings.at_least(0))
    work_dir: str = setting("runs", "local folder of params.json and the default MLflow store", check=settings.text)
    storage_path: str | None = setting(
        None,
        "Ray Tune results and checkpoints; none: {work_dir}/ray; s3:// and gs:// work",
        check=settings.optional(settings.location(STORAGE_SCHEMES)),
    )
    tracking_uri: str | None = setting(
        None, "MLflow tracking URI; none: $MLFLOW_TRACKING_URI, else SQLite under work_dir"
    )
    experiment: str | None = setting(None, "MLflow experiment; none: the sweep's name")

    def __post_init__(self) -> None:
        settings.validate(self)

    def resolved(self) -> SweepConfig:
        """Fill the derived defaults (absolute paths, tracking URI, experiment) from the environment."""
        work = Path(self.work_dir).expanduser().resolve()
        storage = self.storage_path or str(work / "ray")
        if "://" not in storage:
            storage = str(Path(storage).expanduser().resolve())
        tracking = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work / 'mlflow.db'}"
        experiment = self.experiment or self.name
        return dataclasses.replace(
            self, work_dir=str(work), storage_path=storage, tracking_uri=tracking, experiment=experiment
        )

    def split_spec(self, dataset: str, seed: int) -> data.SplitSpec:
        """The rows a discovery of `dataset` (a spec) under sweep seed `seed` trains and evaluates on."""
        split_seed = sweep_seeds(data.dataset_name(dataset), seed).split_seed
        return data.SplitSpec.of(dataset, self.split, split_seed)

    def trial_inputs(self, dataset: str, seed: int) -> tuple[data.SplitSpec, DiscoveryConfig]:
        """The rows and the config a discovery trial of `dataset` (a spec) under sweep seed `seed` runs on: the
        sweep's discovery settings with this dataset's mask seed (circuitlib.seeds)."""
        mask_seed = sweep_seeds(data.dataset_name(dataset), seed).mask_seed
        return self.split_spec(dataset, seed), dataclasses.replace(self.discovery, mask_seed=mask_seed)

    def validate(self) -> None:
        """Reject inputs that cannot be found or combined, before any trial starts (each value is checked on
        construction, by its own field's setting). Every dataset that is not on the hub is loaded and split as each
        seed's discovery trial will split it (no model loaded); hub data is only parsed, and loaded by its trials."""
        models.check_local_model(self.model)
        twice = sorted({seed for seed in self.seeds if self.seeds.count(seed) > 1})
        if twice:
            raise InputError(f"seeds {self.seeds}: seed {twice[0]} is given twice")
        for spec in self.datasets:
            data.check_classification_spec(spec)
        names = [data.dataset_name(s) for s in self.datasets]
        if len(set(names)) != len(names):
            raise InputError(f"datasets {self.datasets}: two datasets share a name ({names})")
        for spec in self.datasets:
            if data.from_hub(spec):
                continue
            for seed in self.seeds:
                try:
                    self.split_spec(spec, seed).load()
                except InputError as exc:
                    raise InputError(f"{exc} (the train/eval split of {spec} under sweep seed {seed})") from None
        if self.discovery.mask_seed != DiscoveryConfig().mask_seed:
            raise InputError(
                f"discovery.mask_seed {self.discovery.mask_seed}: a sweep derives it for each dataset "
                "and seed (circuitlib.seeds); set seeds instead"
            )
        if self.require_gpu and self.gpus_per_trial == 0:
            raise InputError(f"preset {self.name} needs a GPU per trial (model {self.model}), but gpus_per_trial is 0")
        data.load_requests(self.requests, self.edit_limit)

    def shaping(self) -> dict[str, Any]:
        """The settings that shape a sweep's results (all but the OPERATIONAL ones)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in OPERATIONAL}

    def settings_hash(self) -> str:
        """A digest of `shaping()`: a sweep's identity in MLflow (§7.5), the same on every machine."""
        text = json.dumps(self.shaping(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def shards(self) -> int:
        """How many edit trials the requests are split into, per circuit and variant."""
        n = len(data.load_requests(self.requests, self.edit_limit))
        return math.ceil(n / self.shard_size)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


PRESET_HELP = (
    "a preset's name (sweeps/presets/NAME.yaml: {names}) or the path of a YAML file of settings "
    "(its name, unless it sets one, is the file's stem)"
)


def preset_path(preset: str) -> tuple[str, Path]:
    """(the sweep's default name, the YAML file) of `--preset`: a preset's name, or a path ending in .yaml or .yml
    or holding a `/` (a preset's name wins over a file of that name in the current folder)."""
    if preset in preset_names():
        return preset, PRESETS_DIR / f"{preset}.yaml"
    path = Path(preset).expanduser()
    if not preset.endswith((".yaml", ".yml")) and "/" not in preset and os.sep not in preset:
        raise InputError(
            f"preset {preset!r}: no such preset (available: {', '.join(preset_names())}; or give the "
            "path of a YAML file)"
        )
    if not path.is_file():
        raise InputError(f"preset {preset}: no such file {path}")
    return path.stem, path


def read_yaml(path: Path, what: str) -> object:
    """A YAML file's content; one that cannot be read or parsed is one line naming `what` (the file), with the line
    and column of a syntax error."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:

        def at(mark: Any) -> str:
            return f"line {mark.line + 1}, column {mark.column + 1}"

        problem_mark, context_mark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        mark = problem_mark or context_mark
        detail = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        context = getattr(exc, "context", None)
        if context:
            detail += f"; {context}" + (f" at {at(context_mark)}" if context_mark and problem_mark else "")
        raise InputError(f"{what}: not valid YAML" + (f" at {at(mark)}" if mark else "") + f" ({detail})") from None


def load_preset(preset: str) -> SweepConfig:
    """The config a preset describes (a preset's name or a YAML file's path, `preset_path`); unknown presets,
    unreadable YAML, unknown keys and bad values are rejected with one line."""
    name, path = preset_path(preset)
    label = name if path.parent == PRESETS_DIR else str(path)  # how errors name it
    values = read_yaml(path, f"preset {path}") or {}
    if not isinstance(values, dict):
        raise InputError(f"preset {path}: expected a mapping of settings")
    refuse_retired(values, lambda key: f"preset {label}: {key}", f"remove it from {path}")
    return options.build(SweepConfig, {"name": name, **values}, lambda key: f"preset {label}: {key}")


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per setting: `--name`, `--datasets`, ..., and `--discovery.lr`, `--edit.max-steps`, ..."""
    options.add_options(parser, SweepConfig)


def add_discovery_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per discovery setting only (`--discovery.lr`, ...): what the benchmarks that run discovery take."""
    options.add_options(parser, DiscoveryConfig, "discovery.")


def apply_discovery_overrides(config: SweepConfig, args: argparse.Namespace) -> SweepConfig:
    """The config with every `--discovery.*` setting given on the command line replaced (and checked)."""
    changes = options.given(args, DiscoveryConfig, "discovery.")
    values = options.merged(dataclasses.asdict(config.discovery), changes)
    return dataclasses.replace(
        config, discovery=options.build(DiscoveryConfig, values, lambda key: f"--discovery.{key}")
    )


def apply_overrides(config: SweepConfig, args: argparse.Namespace) -> SweepConfig:
    """The config with every setting given on the command line replaced (and checked)."""
    changes: dict[str, Any] = options.given(args, SweepConfig)
    return options.build(SweepConfig, options.merged(dataclasses.asdict(config), changes)) if changes else config
