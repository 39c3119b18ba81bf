"""Every hyperparameter of discovery, declared once: its default (the paper's), its doc and its check."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import TypeVar

import torch

from circuitlib import settings
from circuitlib.discovery.inits import INITS
from circuitlib.discovery.losses import LOSSES
from circuitlib.discovery.schedules import SCHEDULES, Controlled, Method
from circuitlib.settings import SettingError, setting
from circuitlib.types import PAPER_DENSITIES

PRECISIONS = ("fp32", "bf16")
T = TypeVar("T")


def _either(value: T | None, default: T) -> T:
    return default if value is None else value


def _folds(value: object) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value == 0 or value >= 2)
    return None if ok else "must be 0 (off) or a number of folds of at least 2"


@dataclass
class DiscoveryConfig:
    """Every hyperparameter of discovery; the defaults are the paper's (docs/design.md §3). The settings of the
    method (init, noise, temperature, loss, hold_steps) default to unset: `resolved()` takes them from the schedule,
    so the paper's schedule brings the paper's procedure and the controlled one the window's."""

    densities: tuple[float, ...] = setting(
        PAPER_DENSITIES,
        "target densities (kept / masked weights), in turn, each below the one before",
        check=settings.decreasing_densities,
    )
    max_steps: int = setting(5000, "step budget of the whole run", check=settings.at_least(1))
    batch_size: int = setting(128, "rows per mask step (and per head-training batch)", check=settings.at_least(1))
    lr: float = setting(0.01, "AdamW learning rate of the mask logits", check=settings.positive)
    weight_decay: float = setting(0.01, "AdamW weight decay of the mask logits", check=settings.non_negative)
    init_mean: float = setting(2.7, "mean of the initial mask logits", check=settings.finite)
    init_std: float = setting(0.01, "standard deviation of the initial mask logits", check=settings.non_negative)
    temperature: float | None = setting(
        None,
        "Gumbel-sigmoid temperature of the straight-through gradient; unset: the schedule's (paper 0.01, controlled 1)",
        check=settings.optional(settings.positive),
    )
    lambda_init: float = setting(10.0, "sparsity weight lambda at the first epoch", check=settings.non_negative)
    lambda_step: float = setting(1.0, "added to lambda each epoch", check=settings.non_negative)
    lambda_max: float = setting(1000.0, "cap on lambda", check=settings.non_negative)
    head_epochs: int = setting(400, "epochs of the classification head on cached features", check=settings.at_least(1))
    head_lr: float = setting(1e-3, "AdamW learning rate of the classification head", check=settings.positive)
    head_l2: float = setting(
        0.0,
        "L2 penalty on the head's weights over standardised features, added to its mean cross-entropy "
        "(0: none, as before); a larger one spreads the head's weight over more features",
        check=settings.non_negative,
    )
    eval_every: int = setting(50, "steps between held-out evaluations", check=settings.at_least(1))
    checkpoint_every: int = setting(50, "steps between checkpoints", check=settings.at_least(1))
    feature_batch_size: int = setting(
        64, "rows per batch of the no-grad feature and evaluation passes", check=settings.at_least(1)
    )
    max_length: int = setting(64, "tokens kept per text", check=settings.at_least(1))
    mask_seed: int = setting(
        0,
        "seed of the mask logits' init, the Gumbel noise, the batch order and the head "
        "(a sweep derives it per dataset: circuitlib.seeds)",
        check=settings.at_least(0),
    )
    fused: bool | None = setting(None, "torch.compile the mask kernels; unset: only above FUSE_ABOVE masked weights")
    precision: str = setting(
        "fp32",
        "fp32: float32 throughout (the paper's); bf16: masked forward and backward under "
        "bfloat16 autocast over the float32 weights (logits and AdamW stay float32; the paper "
        "preset's GPU path)",
        choices=PRECISIONS,
    )
    compile_model: bool = setting(
        False, "torch.compile the masked forward and backward (minutes to compile; pays only over long GPU runs)"
    )
    schedule: str = setting(
        "paper",
        "paper: lambda grows each epoch and density falls where it falls (the paper's); "
        "controlled: density ramps to each target and is held there (no lambda); geometric: as controlled, ramping "
        "at one pace in log-density",
        choices=tuple(SCHEDULES),
    )
    init: str | None = setting(
        None,
        "uniform: logits from N(init_mean, init_std) (the paper's); importance: "
        "init_mean +- init_spread by each weight's task importance; unset: the schedule's (paper: uniform, "
        "controlled: importance)",
        choices=tuple(INITS),
    )
    init_spread: float = setting(5.0, "importance init: half the range of the initial logits", check=settings.positive)
    cross_fit: int = setting(
        0,
        "training targets from this many folds of out-of-fold heads, so they carry the "
        "full model's own errors (0: the head's in-sample predictions, the paper's)",
        check=_folds,
    )
    loss: str | None = setting(
        None,
        "ce: cross-entropy against the full model's predicted labels (the paper's); kl: "
        "KL(full || masked) over the classes; mse: squared error to the full model's head logits "
        "(scaled by their variance), which keeps its margins and its errors; features: squared error "
        "to the full model's last-token features (each dimension scaled by its spread), so the circuit "
        "keeps the representation the head reads, not only its verdicts on the training rows; "
        "features+mse, features+ce: features plus that decision loss; tokens: features at every token of "
        "a row, not only the last (more targets per row, for sets of few rows); features+tokens: both; "
        "unset: the schedule's (paper: ce, "
        "controlled: features)",
        choices=tuple(LOSSES),
    )
    noise: bool | None = setting(
        None,
        "train on Gumbel-sampled masks (the paper's); false: on the deterministic mask itself; unset: the "
        "schedule's (paper: true, controlled: false)",
    )
    samples: int = setting(
        1,
        "Gumbel mask samples per step, each through the same batch; the step follows their mean loss (a less noisy "
        "gradient at that many forward and backward passes; only with noise: the deterministic mask is one sample)",
        check=settings.at_least(1),
    )
    completeness: float = setting(
        0.0,
        "weight of a completeness term (DiscoGP's): each step also runs the batch through the complement of the mask "
        "and pushes the head's verdict on it toward 50/50, so the task leaves the complement (one more forward and "
        "backward pass a step; 0: off, the paper's)",
        check=settings.non_negative,
    )
    ramp_steps: int = setting(
        100,
        "controlled: steps over which density moves from one target to the next; geometric: steps per halving of the "
        "density",
        check=settings.at_least(1),
    )
    hold_steps: int | None = setting(
        None,
        "steps after a target is reached in which a more faithful mask at or below it "
        "replaces its snapshot (0: the first mask below it, the paper's); unset: the schedule's (paper 0, "
        "controlled 120)",
        check=settings.optional(settings.at_least(0)),
    )
    patience: int = setting(
        0, "evaluations without a more faithful mask that end a hold early (0: never)", check=settings.at_least(0)
    )
    backoff: float = setting(
        0.0,
        "controlled and geometric: a fall in faithfulness of more than this between two evaluations (on the "
        "select_rows where set) counts as a collapse; the logits and optimizer go back to the evaluation before it "
        "and each fall doubles the steps of the ramps after it (0: off)",
        check=settings.probability,
    )
    mask_norms: bool = setting(
        True,
        "mask the norms' weights too (the paper's); false: only the attention and MLP weights, as DiscoGP and Edge "
        "Pruning mask, so every norm stays whole in the circuit, its complement and its random twin",
    )
    select_rows: int = setting(
        0,
        "held-out rows that choose each hold's snapshot; its reported figures come from the "
        "other held-out rows, so they are not the best of several looks at the rows that report "
        "them (0: every held-out row chooses and reports)",
        check=settings.at_least(0),
    )

    def __post_init__(self) -> None:
        self.densities = (
            tuple(float(d) for d in self.densities) if isinstance(self.densities, (list, tuple)) else self.densities
        )
        settings.validate(self)
        schedule = SCHEDULES[self.schedule]
        first = schedule.length(1.0, self.densities[0], self.ramp_steps) if isinstance(schedule, Controlled) else 0
        if first > self.max_steps:
            raise SettingError(
                "ramp_steps",
                self.ramp_steps,
                f"makes the first ramp {first:.0f} steps, longer than the whole budget (max_steps {self.max_steps}): "
                "the first target could never be reached",
            )
        if self.backoff and not isinstance(schedule, Controlled):
            raise SettingError(
                "backoff",
                self.backoff,
                f"needs a schedule that plans the density (controlled or geometric), not {self.schedule}",
            )
        if self.backoff and self.checkpoint_every % self.eval_every:
            raise SettingError(
                "checkpoint_every",
                self.checkpoint_every,
                f"must be a multiple of eval_every ({self.eval_every}) with backoff, so that every checkpoint holds a "
                "mask the guard has checked and a resumed run goes back to the same one",
            )
        if self.samples > 1 and not self.method.noise:
            raise SettingError(
                "samples",
                self.samples,
                "needs noise: without it every sample is the same deterministic mask (set noise true, or samples 1)",
            )

    @property
    def method(self) -> Method:
        """The method's settings: each as set here, or where unset (None) its schedule's (`Schedule.method`)."""
        default = SCHEDULES[self.schedule].method
        return Method(
            **{f.name: _either(getattr(self, f.name), getattr(default, f.name)) for f in dataclasses.fields(Method)}
        )

    def resolved(self) -> DiscoveryConfig:
        """This config with the method's settings filled in (`method`): what a circuit's provenance records."""
        return replace(self, **dataclasses.asdict(self.method))

    @property
    def weights_dtype(self) -> torch.dtype | None:
        """The dtype of the masked weights in a mask step: bfloat16 for "bf16", else None (the model's float32)."""
        return torch.bfloat16 if self.precision == "bf16" else None
