"""The discovery loop: step the mask, let the schedule steer the density, evaluate, and snapshot each target."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from circuitlib.circuits import Circuit
from circuitlib.discovery import backoff
from circuitlib.discovery.config import DiscoveryConfig
from circuitlib.discovery.evaluation import evaluate
from circuitlib.discovery.inits import INITS
from circuitlib.discovery.schedules import SCHEDULES, penalty_weight
from circuitlib.discovery.state import DiscoveryState, Hold
from circuitlib.discovery.step import FUSE_ABOVE, StepBuffers, mask_step, masked_hidden
from circuitlib.discovery.task import prepare_task
from circuitlib.masks import count_kept, density_sample, hard_masks
from circuitlib.models import LoadedModel, require_float32, without_norms
from circuitlib.types import ClassificationData


@dataclass
class DiscoveryResult:
    """The circuits found (one per reached target density, highest first) and the metrics history."""

    circuits: list[Circuit]
    history: list[dict[str, float]]
    full_accuracy: float
    unreached: list[float] = field(default_factory=list)


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
    config = config.resolved()
    if not config.mask_norms:
        lm = without_norms(lm)
    schedule = SCHEDULES[config.schedule]
    task = prepare_task(lm, train, eval_data, config)
    state = DiscoveryState(lm, config, len(train))
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and (ckpt / "state.pt").is_file():
        state.load(ckpt)
    else:
        INITS[config.method.init](lm, task, state, config)
        schedule.start(state.logits)
    provenance = {"dataset": train.name, "mask_seed": config.mask_seed, "config": asdict(config)}

    def back_off(reached: Sequence[float]) -> None:
        """Go back to the last evaluation kept and slow the ramp from there; a target the fall reached is open again."""
        assert state.kept is not None
        for hold in [h for h in state.holds if h.target in reached]:  # opened at this step: no candidate yet
            state.holds.remove(hold)
        remaining.extend(reached)
        remaining.sort(reverse=True)
        backoff.restore(state.logits, state.optimizer, state.kept)
        state.backoffs += 1
        state.slowdown *= 2
        state.ramp_start = (state.step, count_kept(state.logits)[0] / state.layout.total)

    def record(loss: float = float("nan"), reached: Sequence[float] = ()) -> dict[str, float] | None:
        """Evaluate the mask and log the row. With `backoff`, keep this mask to go back to, or, where it fell, go back
        to the one kept (None: a fallen mask is no snapshot's candidate)."""
        kept, total = count_kept(state.logits)
        row = {
            "step": state.step,
            "epoch": state.epoch,
            "lambda": penalty_weight(config, state.epoch),
            "loss": loss,
            "density": kept / total,
            **evaluate(lm, task, hard_masks(state.logits, state.layout), config.feature_batch_size),
        }
        planned = schedule.planned(state, config, remaining)
        if planned is not None:
            row["planned_density"] = planned
        fell = bool(config.backoff) and backoff.collapsed(state.kept, row, config.backoff)
        if config.backoff:  # the row that shows a collapse counts it
            row["backoffs"] = state.backoffs + fell
        state.history.append(row)
        if on_eval is not None:
            on_eval(row)
        if fell:
            back_off(reached)
            return None
        if config.backoff:
            state.kept = backoff.keep(state.logits, state.optimizer, backoff.score(row))
        return row

    done = {c.target_density for c in state.circuits} | {h.target for h in state.holds}
    remaining = [t for t in config.densities if t not in done]
    if state.step == 0 and not state.history:
        record()
    buffers = StepBuffers.for_run(lm, state.layout, config)
    fused = config.fused if config.fused is not None else state.layout.total >= FUSE_ABOVE
    forward = masked_hidden(lm, state.layout, config.precision, config.compile_model, buffers.grad)
    width = task.train.max_width if config.compile_model else None  # one batch width, so compiled graphs are reused
    sample = density_sample(state.layout.total, lm.device)

    def snapshot(hold: Hold) -> None:
        circuit = state.candidates.pop(hold.target)
        circuit = replace(circuit, provenance={**circuit.provenance, "selected_among": hold.looks})
        state.holds.remove(hold)
        state.circuits.append(circuit)
        state.ramp_start = (state.step, count_kept(state.logits)[0] / state.layout.total)
        if on_snapshot is not None:
            on_snapshot(circuit)

    bar = tqdm(total=config.max_steps, initial=state.step, desc=f"discover {train.name}", disable=not progress)
    while (remaining or state.holds) and state.step < config.max_steps:
        loss = mask_step(lm, task, state, config, buffers, fused, forward, width)
        schedule.steer(state, config, remaining, sample)
        bar.update(1)

        kept, total = count_kept(state.logits)
        density = kept / total
        reached = [t for t in remaining if density <= t]
        for target in reached:
            remaining.remove(target)
            state.holds.append(Hold(target, state.step + config.method.hold_steps))
        row = None
        if reached or state.step % config.eval_every == 0:
            row = record(loss.item(), reached)
            bar.set_postfix(density=f"{density:.3f}", faithful=f"{state.history[-1]['faithfulness']:.2f}")
        for hold in list(state.holds):
            if row is not None and row["density"] <= hold.target:
                hold.looks += 1
                score = row.get("selection_faithfulness", row["faithfulness"])
                if score > hold.best:
                    hold.best, hold.stale = score, 0
                    state.candidates[hold.target] = Circuit.from_masks(
                        lm.params,
                        hard_masks(state.logits, state.layout),
                        lm.model_id,
                        lm.revision,
                        target_density=hold.target,
                        provenance={**provenance, **row},
                    )
                else:
                    hold.stale += 1
            if state.step >= hold.until or (config.patience and hold.stale >= config.patience):
                snapshot(hold)
        if ckpt is not None and (reached or state.step % config.checkpoint_every == 0):
            _checkpoint(state, ckpt, on_checkpoint)
    bar.close()
    if ckpt is not None:
        _checkpoint(state, ckpt, on_checkpoint)
    for hold in list(state.holds):  # the budget ended a hold: its best mask so far (a resumed run holds on)
        snapshot(hold)
    return DiscoveryResult(state.circuits, state.history, state.history[0]["full_accuracy"], remaining)


def _checkpoint(state: DiscoveryState, directory: Path, on_checkpoint: Callable[[Path], None] | None) -> None:
    state.save(directory)
    if on_checkpoint is not None:
        on_checkpoint(directory)
