"""Circuit discovery: learn a binary weight mask that keeps the model's task behaviour while shrinking.

The method of Ge, Rudzicz and Zhu (2024), docs/design.md §3: a frozen LM plus a linear head, one logit per
masked weight, Gumbel-sigmoid straight-through masks, loss = CE(masked logits, full-model predictions)
+ lambda * mean(sigmoid(logits)), with lambda growing per epoch (`schedule: paper`). Beside it, a schedule that
controls the density exactly and holds each target while faithfulness improves (`schedule: controlled`, §3.2).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from circuitlib import circuits, settings
from circuitlib.circuits import Circuit
from circuitlib.classifier import Tokenized, cached_features, last_token_features, tokenize, train_head
from circuitlib.errors import CorruptCheckpoint, InputError
from circuitlib.importance import importance_offsets
from circuitlib.masks import (
    FlatLayout,
    apply_masks,
    complement_masks,
    count_kept,
    density_margin,
    density_sample,
    flat_weights,
    hard_masks,
    init_logits,
    mean_keep_probability,
    sample_masked_weights,
    shift_to_density,
)
from circuitlib.models import LoadedModel, require_float32
from circuitlib.settings import setting
from circuitlib.types import PAPER_DENSITIES, ClassificationData

FUSE_ABOVE = 10_000_000  # below this, compiling the fused mask kernels costs more than it saves
# mask_seed + this seeds the draw of the selection rows, clear of the noise (+1), batch order (+2) and cross-fit
# heads' (+1 + fold) streams
SELECT_STREAM = 104_729
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("paper", "controlled")
INITS = ("uniform", "importance")
LOSSES = ("ce", "kl", "mse", "features")


def _folds(value: object) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value == 0 or value >= 2)
    return None if ok else "must be 0 (off) or a number of folds of at least 2"


@dataclass
class DiscoveryConfig:
    """Every hyperparameter of discovery; the defaults are the paper's (docs/design.md §3)."""

    densities: tuple[float, ...] = setting(PAPER_DENSITIES, "target densities (kept / masked weights), in turn",
                                           check=settings.densities)
    max_steps: int = setting(5000, "step budget of the whole run", check=settings.at_least(1))
    batch_size: int = setting(128, "rows per mask step (and per head-training batch)", check=settings.at_least(1))
    lr: float = setting(0.01, "AdamW learning rate of the mask logits", check=settings.positive)
    weight_decay: float = setting(0.01, "AdamW weight decay of the mask logits", check=settings.non_negative)
    init_mean: float = setting(2.7, "mean of the initial mask logits", check=settings.finite)
    init_std: float = setting(0.01, "standard deviation of the initial mask logits", check=settings.non_negative)
    temperature: float = setting(0.01, "Gumbel-sigmoid temperature of the straight-through gradient",
                                 check=settings.positive)
    lambda_init: float = setting(10.0, "sparsity weight lambda at the first epoch", check=settings.non_negative)
    lambda_step: float = setting(1.0, "added to lambda each epoch", check=settings.non_negative)
    lambda_max: float = setting(1000.0, "cap on lambda", check=settings.non_negative)
    head_epochs: int = setting(400, "epochs of the classification head on cached features", check=settings.at_least(1))
    head_lr: float = setting(1e-3, "AdamW learning rate of the classification head", check=settings.positive)
    eval_every: int = setting(50, "steps between held-out evaluations", check=settings.at_least(1))
    checkpoint_every: int = setting(50, "steps between checkpoints", check=settings.at_least(1))
    feature_batch_size: int = setting(64, "rows per batch of the no-grad feature and evaluation passes",
                                      check=settings.at_least(1))
    max_length: int = setting(64, "tokens kept per text", check=settings.at_least(1))
    mask_seed: int = setting(0, "seed of the mask logits' init, the Gumbel noise, the batch order and the head "
                             "(a sweep derives it per dataset: circuitlib.seeds)",
                             check=settings.at_least(0))
    fused: bool | None = setting(None, "torch.compile the mask kernels; unset: only above FUSE_ABOVE masked weights")
    precision: str = setting("fp32", "fp32: float32 throughout (the paper's); bf16: masked forward and backward under "
                             "bfloat16 autocast over the float32 weights (logits and AdamW stay float32; the paper "
                             "preset's GPU path)", choices=PRECISIONS)
    compile_model: bool = setting(False, "torch.compile the masked forward and backward (minutes to compile; "
                                  "pays only over long GPU runs)")
    schedule: str = setting("paper", "paper: lambda grows each epoch and density falls where it falls (the paper's); "
                            "controlled: density ramps to each target and is held there (no lambda)", choices=SCHEDULES)
    init: str = setting("uniform", "uniform: logits from N(init_mean, init_std) (the paper's); importance: "
                        "init_mean +- init_spread by each weight's task importance", choices=INITS)
    init_spread: float = setting(5.0, "importance init: half the range of the initial logits", check=settings.positive)
    cross_fit: int = setting(0, "training targets from this many folds of out-of-fold heads, so they carry the "
                             "full model's own errors (0: the head's in-sample predictions, the paper's)",
                             check=_folds)
    loss: str = setting("ce", "ce: cross-entropy against the full model's predicted labels (the paper's); kl: "
                        "KL(full || masked) over the classes; mse: squared error to the full model's head logits "
                        "(scaled by their variance), which keeps its margins and its errors; features: squared error "
                        "to the full model's last-token features (each dimension scaled by its spread), so the circuit "
                        "keeps the representation the head reads, not only its verdicts on the training rows",
                        choices=LOSSES)
    noise: bool = setting(True, "train on Gumbel-sampled masks (the paper's); false: on the deterministic mask itself")
    ramp_steps: int = setting(100, "controlled: steps over which density moves from one target to the next",
                              check=settings.at_least(1))
    hold_steps: int = setting(0, "steps after a target is reached in which a more faithful mask at or below it "
                              "replaces its snapshot (0: the first mask below it, the paper's)",
                              check=settings.at_least(0))
    patience: int = setting(0, "evaluations without a more faithful mask that end a hold early (0: never)",
                            check=settings.at_least(0))
    select_rows: int = setting(0, "held-out rows that choose each hold's snapshot; its reported figures come from the "
                               "other held-out rows, so they are not the best of several looks at the rows that report "
                               "them (0: every held-out row chooses and reports)", check=settings.at_least(0))

    def __post_init__(self) -> None:
        settings.validate(self)
        self.densities = tuple(sorted((float(d) for d in self.densities), reverse=True))

    @property
    def weights_dtype(self) -> torch.dtype | None:
        """The dtype of the masked weights in a mask step: bfloat16 for "bf16", else None (the model's float32)."""
        return torch.bfloat16 if self.precision == "bf16" else None


@dataclass
class Window:
    """A reached target whose snapshot is still open: the most faithful mask at or below it wins until `until`."""

    target: float
    until: int
    best: float = -1.0
    stale: int = 0
    looks: int = 0  # evaluations at or below the target the snapshot was chosen among


@dataclass
class DiscoveryResult:
    """The circuits found (one per reached target density, highest first) and the metrics history."""

    circuits: list[Circuit]
    history: list[dict[str, float]]
    full_accuracy: float
    unreached: list[float] = field(default_factory=list)


@dataclass
class _Task:
    """Everything about the task that is fixed during discovery: tokens, head, full-model predictions."""

    train: Tokenized
    eval: Tokenized
    eval_labels: torch.Tensor
    head: torch.nn.Linear
    train_full_logits: torch.Tensor
    eval_full_logits: torch.Tensor
    train_full_features: torch.Tensor
    feature_scale: torch.Tensor
    select: torch.Tensor | None = None  # held-out rows (bool) that choose snapshots; the others report (select_rows)

    @property
    def train_targets(self) -> torch.Tensor:
        return self.train_full_logits.argmax(dim=1)

    @property
    def eval_full_preds(self) -> torch.Tensor:
        return self.eval_full_logits.argmax(dim=1)


def prepare_task(lm: LoadedModel, train: ClassificationData, eval_data: ClassificationData,
                 config: DiscoveryConfig) -> _Task:
    """Cache full-model features once, train the head on them, and fix the full model's predictions."""
    device = lm.device
    train_tok = tokenize(lm.tokenizer, train.texts, config.max_length)
    eval_tok = tokenize(lm.tokenizer, eval_data.texts, config.max_length)
    train_features = cached_features(lm, train_tok, config.feature_batch_size)
    eval_features = cached_features(lm, eval_tok, config.feature_batch_size)
    labels = torch.tensor(train.labels, device=device)
    head = train_head(train_features, labels, config.head_epochs, config.head_lr, config.batch_size, config.mask_seed)
    with torch.no_grad():
        train_full_logits = head(train_features)
        eval_full_logits = head(eval_features)
    if config.cross_fit:
        train_full_logits = out_of_fold_logits(train_features, labels, config)
    return _Task(train_tok, eval_tok, torch.tensor(eval_data.labels, device=device), head, train_full_logits,
                 eval_full_logits, train_features, train_features.std(dim=0).clamp_min(1e-6),
                 selection_rows(len(eval_data), eval_data.name, config))


def selection_rows(n_eval: int, name: str, config: DiscoveryConfig) -> torch.Tensor | None:
    """Which held-out rows choose snapshots (`select_rows` of them, drawn with `mask_seed`); None when all do."""
    if not config.select_rows:
        return None
    if config.select_rows >= n_eval:
        raise InputError(f"select_rows {config.select_rows}: must be fewer than the {n_eval} held-out rows of "
                         f"{name}, so some rows are left to report the snapshot's figures")
    order = torch.randperm(n_eval, generator=torch.Generator().manual_seed(config.mask_seed + SELECT_STREAM))
    select = torch.zeros(n_eval, dtype=torch.bool)
    select[order[: config.select_rows]] = True
    return select


def out_of_fold_logits(features: torch.Tensor, labels: torch.Tensor, config: DiscoveryConfig) -> torch.Tensor:
    """The full model's head logits on each training row from a head that never saw that row's label.

    A head fitted on fewer rows than hidden dimensions separates its training rows perfectly, so its in-sample
    predictions are the true labels, and a mask trained on them learns the task rather than the model: it then
    disagrees with the full model exactly where the model errs. Out-of-fold predictions carry those errors.
    """
    fold = torch.arange(len(features), device=features.device) % config.cross_fit
    fold = fold[torch.randperm(len(features), generator=torch.Generator().manual_seed(config.mask_seed))]
    logits = torch.empty(len(features), 2, device=features.device)
    for k in range(config.cross_fit):
        held = fold == k
        head = train_head(features[~held], labels[~held], config.head_epochs, config.head_lr, config.batch_size,
                          config.mask_seed + k + 1)
        with torch.no_grad():
            logits[held] = head(features[held])
    return logits


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: sound at small n and at 0 or 1, unlike the normal one."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.no_grad()
def evaluate(lm: LoadedModel, task: _Task, masks: dict[str, torch.Tensor], batch_size: int) -> dict[str, float]:
    """Faithfulness (with its 95% interval), KL(full || circuit), and accuracies of the circuit and its complement.

    All on the held-out rows, with the deterministic mask; with `task.select`, on the rows that do not choose
    snapshots, and `selection_faithfulness` on those that do.
    """
    circuit = apply_masks(lm.model, masks)
    circuit_logits = task.head(cached_features(lm, task.eval, batch_size, circuit))
    del circuit
    complement = apply_masks(lm.model, complement_masks(masks))
    complement_preds = task.head(cached_features(lm, task.eval, batch_size, complement)).argmax(dim=1)
    full_logits, labels = task.eval_full_logits, task.eval_labels
    selection = {}
    if task.select is not None:
        select = task.select.to(circuit_logits.device)
        chosen = circuit_logits[select].argmax(dim=1) == full_logits[select].argmax(dim=1)
        selection = {"selection_faithfulness": chosen.float().mean().item(), "selection_rows": int(select.sum())}
        report = ~select
        circuit_logits, complement_preds = circuit_logits[report], complement_preds[report]
        full_logits, labels = full_logits[report], labels[report]
    circuit_preds, full_preds = circuit_logits.argmax(dim=1), full_logits.argmax(dim=1)
    agree = int((circuit_preds == full_preds).sum())
    low, high = wilson_interval(agree, len(circuit_preds))
    kl = F.kl_div(circuit_logits.log_softmax(dim=1), full_logits.log_softmax(dim=1), log_target=True,
                  reduction="batchmean")
    return {
        "faithfulness": agree / len(circuit_preds),
        "faithfulness_low": low,
        "faithfulness_high": high,
        "kl": kl.item(),
        "circuit_accuracy": (circuit_preds == labels).float().mean().item(),
        "complement_accuracy": (complement_preds == labels).float().mean().item(),
        "full_accuracy": (full_preds == labels).float().mean().item(),
        "eval_rows": len(circuit_preds),
        **selection,
    }


class DiscoveryState:
    """The mutable state of a discovery run, checkpointable so a preempted run resumes exactly."""

    def __init__(self, lm: LoadedModel, config: DiscoveryConfig, n_train: int):
        device = lm.device
        self.layout = FlatLayout(tuple(lm.params))
        self.logits = init_logits(self.layout, device, config.init_mean, config.init_std, config.mask_seed)
        # The fused AdamW kernel updates the one flat logit vector in a single pass (the default takes ~8 passes,
        # ~0.35 s a step on smollm2-135m's 1.1e8 logits on CPU); available on CPU and CUDA.
        fused = device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW([self.logits], lr=config.lr, weight_decay=config.weight_decay, fused=fused)
        self.noise_gen = torch.Generator(device=device).manual_seed(config.mask_seed + 1)
        self.shuffle = torch.Generator().manual_seed(config.mask_seed + 2)
        self.step = 0
        self.epoch = 0
        self.order = torch.randperm(n_train, generator=self.shuffle)
        self.position = 0
        self.history: list[dict[str, float]] = []
        self.circuits: list[Circuit] = []
        self.windows: list[Window] = []
        self.candidates: dict[float, Circuit] = {}
        self.ramp_start = (0, 1.0)  # controlled schedule: (step, density) where the current ramp began

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """Indices of the next training batch; a new epoch reshuffles."""
        if self.position >= len(self.order):
            self.epoch += 1
            self.order = torch.randperm(len(self.order), generator=self.shuffle)
            self.position = 0
        index = self.order[self.position : self.position + batch_size]
        self.position += batch_size
        return index

    def save(self, directory: Path) -> None:
        """Write logits, optimizer, generators, counters and history; circuits as circuit files."""
        directory.mkdir(parents=True, exist_ok=True)
        for i, circuit in enumerate(self.circuits):
            circuits.save(circuit, directory / f"snapshot{i}.safetensors")
        for i, window in enumerate(self.windows):
            if window.target in self.candidates:
                circuits.save(self.candidates[window.target], directory / f"candidate{i}.safetensors")
        state = {
            "logits": self.logits.detach(),
            "optimizer": self.optimizer.state_dict(),
            "noise": self.noise_gen.get_state(),
            "shuffle": self.shuffle.get_state(),
            "step": self.step,
            "epoch": self.epoch,
            "order": self.order,
            "position": self.position,
            "history": self.history,
            "n_circuits": len(self.circuits),
            "windows": [asdict(w) for w in self.windows],
            "ramp_start": list(self.ramp_start),
        }
        tmp = directory / "state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(directory / "state.pt")

    def load(self, directory: Path) -> None:
        """Restore from `save`; a file that cannot be read raises CorruptCheckpoint naming it."""
        path = directory / "state.pt"
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
            snapshots = []
            for i in range(state["n_circuits"]):
                path = directory / f"snapshot{i}.safetensors"
                snapshots.append(circuits.load(path))
            windows = [Window(**w) for w in state["windows"]]
            candidates = {}
            for i, w in enumerate(windows):
                path = directory / f"candidate{i}.safetensors"
                if path.is_file():
                    candidates[w.target] = circuits.load(path)
        except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
            raise CorruptCheckpoint(path, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                                    ) from exc
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.noise_gen.set_state(state["noise"])
        self.shuffle.set_state(state["shuffle"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.order = state["order"]
        self.history = state["history"]
        self.circuits = snapshots
        self.windows = windows
        self.candidates = candidates
        self.ramp_start = (int(state["ramp_start"][0]), float(state["ramp_start"][1]))


MaskedFeatures = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def masked_features(lm: LoadedModel, layout: FlatLayout, precision: str = "fp32", compile_model: bool = False,
                    grad_buffer: torch.Tensor | None = None) -> MaskedFeatures:
    """(flat masked weights, batch) -> last-token features [batch, d_model] (float32) with those weights swapped in.

    With `compile_model`, the whole forward (and so its backward) is one torch.compile'd graph: far fewer kernel
    launches and Python calls per step, which is what bounds a mask step on a GPU. Eager, `grad_buffer` (a reused
    tensor like the flat weights) receives the flat weights' gradient (`FlatLayout.split`).
    """

    def forward(flat: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = layout.split(flat, None if compile_model else grad_buffer)
        if precision == "bf16":
            # Vectors (norm weights, biases) back to float32: autocast runs normalisation in float32, which needs it.
            weights = {name: w if w.dim() > 1 else w.float() for name, w in weights.items()}
        with torch.autocast(lm.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return last_token_features(lm, inputs, weights).float()

    return torch.compile(forward) if compile_model else forward


@dataclass
class StepBuffers:
    """The flat per-weight tensors every mask step reuses: frozen weights, noise, the masked weights and, on CPU, their
    gradient.

    Reused rather than allocated per step: on CPU, touching 1e8 fresh floats costs more in page faults than the
    kernels that fill them. A GPU's caching allocator reuses memory without that cost, so there the gradient is not
    kept between steps (it would add to the peak memory).
    """

    weights: torch.Tensor
    noise: torch.Tensor
    masked: torch.Tensor
    grad: torch.Tensor | None

    @classmethod
    def for_run(cls, lm: LoadedModel, layout: FlatLayout, config: DiscoveryConfig) -> StepBuffers:
        weights = flat_weights(lm.model, layout, config.weights_dtype)
        grad = torch.empty_like(weights) if lm.device.type == "cpu" else None
        return cls(weights, torch.empty(layout.total, device=lm.device), torch.empty_like(weights), grad)


def faithfulness_loss(task: _Task, loss: str, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """How far the masked model's features [batch, d_model] on training rows `index` are from the full model's, by
    `loss` (DiscoveryConfig.loss); the head is applied only for the losses on its logits."""
    if loss == "features":
        return ((features - task.train_full_features[index]) / task.feature_scale).square().mean()
    logits, full = task.head(features), task.train_full_logits[index]
    if loss == "kl":
        return F.kl_div(logits.log_softmax(dim=1), full.log_softmax(dim=1), log_target=True, reduction="batchmean")
    if loss == "mse":
        return F.mse_loss(logits, full) / task.train_full_logits.var()
    return F.cross_entropy(logits, full.argmax(dim=1))


def mask_step(
    lm: LoadedModel,
    task: _Task,
    state: DiscoveryState,
    config: DiscoveryConfig,
    buffers: StepBuffers,
    fused: bool,
    forward: MaskedFeatures | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """One AdamW step of the mask logits on the next training batch; returns the (detached) loss.

    `forward` is a `masked_features` (default: an eager one), `width` a fixed width to pad batches to.
    """
    index = state.next_batch(config.batch_size)
    inputs = task.train.batch(index.tolist(), lm.device, width)
    lam = _lambda(config, state.epoch)
    # The penalty lam * mean(sigmoid(logits)) enters through the mask's backward pass; here only its value (a pass
    # over every logit, skipped where there is no penalty).
    penalty = lam * mean_keep_probability(state.logits, fused) if lam else torch.zeros((), device=lm.device)
    masked = sample_masked_weights(state.logits, buffers.weights, buffers.noise, state.noise_gen, config.temperature,
                                   fused, lam, out=buffers.masked, noise=config.noise)
    forward = forward or masked_features(lm, state.layout, config.precision, grad_buffer=buffers.grad)
    task_loss = faithfulness_loss(task, config.loss, forward(masked, inputs), index.to(lm.device))
    state.optimizer.zero_grad(set_to_none=False)  # the mask backward adds into the kept gradient buffer
    task_loss.backward()
    state.optimizer.step()
    state.step += 1
    return task_loss.detach() + penalty


def discover(
    lm: LoadedModel,
    train: ClassificationData,
    eval_data: ClassificationData,
    config: DiscoveryConfig,
    checkpoint_dir: str | Path | None = None,
    on_snapshot: Callable[[Circuit], None] | None = None,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    progress: bool = True,
) -> DiscoveryResult:
    """Learn masks until the lowest target density (or `max_steps`), snapshotting a circuit at each target.

    With `checkpoint_dir`, state is saved every `checkpoint_every` steps and a rerun resumes from it;
    `on_snapshot` and `on_eval` see each new circuit and each metrics row as they happen, and
    `on_checkpoint` each saved checkpoint folder (for a scheduler to persist it).
    """
    require_float32(lm, "discovery")
    task = prepare_task(lm, train, eval_data, config)
    state = DiscoveryState(lm, config, len(train))
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and (ckpt / "state.pt").is_file():
        state.load(ckpt)
    else:
        if config.init == "importance":
            with torch.no_grad():
                state.logits.add_(importance_offsets(lm, task.train, state.layout, config.init_spread,
                                                     config.feature_batch_size))
        if config.schedule == "controlled":  # the plan starts from the whole model
            shift_to_density(state.logits, 1.0)
    provenance = {"dataset": train.name, "mask_seed": config.mask_seed, "config": asdict(config)}

    def record(loss: float = float("nan")) -> dict[str, float]:
        kept, total = count_kept(state.logits)
        row = {
            "step": state.step,
            "epoch": state.epoch,
            "lambda": _lambda(config, state.epoch),
            "loss": loss,
            "density": kept / total,
            **evaluate(lm, task, hard_masks(state.logits, state.layout), config.feature_batch_size),
        }
        if config.schedule == "controlled":
            row["planned_density"] = planned_density(state, config, remaining)
        state.history.append(row)
        if on_eval is not None:
            on_eval(row)
        return row

    done = {c.target_density for c in state.circuits} | {w.target for w in state.windows}
    remaining = [t for t in config.densities if t not in done]
    if state.step == 0 and not state.history:
        record()
    buffers = StepBuffers.for_run(lm, state.layout, config)
    fused = config.fused if config.fused is not None else state.layout.total >= FUSE_ABOVE
    forward = masked_features(lm, state.layout, config.precision, config.compile_model, buffers.grad)
    width = task.train.max_width if config.compile_model else None  # one batch width, so compiled graphs are reused
    sample = density_sample(state.layout.total, lm.device)

    def snapshot(window: Window) -> None:
        circuit = state.candidates.pop(window.target)
        circuit = replace(circuit, provenance={**circuit.provenance, "selected_among": window.looks})
        state.windows.remove(window)
        state.circuits.append(circuit)
        state.ramp_start = (state.step, count_kept(state.logits)[0] / state.layout.total)
        if on_snapshot is not None:
            on_snapshot(circuit)

    bar = tqdm(total=config.max_steps, initial=state.step, desc=f"discover {train.name}", disable=not progress)
    while (remaining or state.windows) and state.step < config.max_steps:
        loss = mask_step(lm, task, state, config, buffers, fused, forward, width)
        if config.schedule == "controlled":
            aim = planned_density(state, config, remaining)
            shift_to_density(state.logits, aim - density_margin(aim, sample), sample)
        bar.update(1)

        kept, total = count_kept(state.logits)
        density = kept / total
        reached = [t for t in remaining if density <= t]
        for target in reached:
            remaining.remove(target)
            state.windows.append(Window(target, state.step + config.hold_steps))
        row = None
        if reached or state.step % config.eval_every == 0:
            row = record(loss.item())
            bar.set_postfix(density=f"{density:.3f}", faithful=f"{row['faithfulness']:.2f}")
        for window in list(state.windows):
            if row is not None and row["density"] <= window.target:
                window.looks += 1
                score = row.get("selection_faithfulness", row["faithfulness"])
                if score > window.best:
                    window.best, window.stale = score, 0
                    state.candidates[window.target] = Circuit.from_masks(
                        lm.params, hard_masks(state.logits, state.layout), lm.model_id, lm.revision,
                        target_density=window.target, provenance={**provenance, **row},
                    )
                else:
                    window.stale += 1
            if state.step >= window.until or (config.patience and window.stale >= config.patience):
                snapshot(window)
        if ckpt is not None and (reached or state.step % config.checkpoint_every == 0):
            _checkpoint(state, ckpt, on_checkpoint)
    bar.close()
    if ckpt is not None:
        _checkpoint(state, ckpt, on_checkpoint)
    for window in list(state.windows):  # the budget ended a hold: its best mask so far (a resumed run holds on)
        snapshot(window)
    return DiscoveryResult(state.circuits, state.history, state.history[0]["full_accuracy"], remaining)


def planned_density(state: DiscoveryState, config: DiscoveryConfig, remaining: list[float]) -> float:
    """Controlled schedule: hold an open target; else move linearly from the ramp's start to the next target."""
    if state.windows:
        return min(w.target for w in state.windows)
    if not remaining:
        return state.ramp_start[1]
    start_step, start_density = state.ramp_start
    progress = min(1.0, (state.step - start_step) / config.ramp_steps)
    return start_density + (remaining[0] - start_density) * progress


def _checkpoint(state: DiscoveryState, directory: Path, on_checkpoint: Callable[[Path], None] | None) -> None:
    state.save(directory)
    if on_checkpoint is not None:
        on_checkpoint(directory)


def _lambda(config: DiscoveryConfig, epoch: int) -> float:
    """The sparsity weight at an epoch: the paper's growing lambda; none under the controlled schedule."""
    if config.schedule != "paper":
        return 0.0
    return min(config.lambda_init + config.lambda_step * epoch, config.lambda_max)
