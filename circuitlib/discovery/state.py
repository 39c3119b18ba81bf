"""The mutable state of a discovery run and its checkpoint, so a preempted run resumes exactly."""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from circuitlib import circuits
from circuitlib.circuits import Circuit
from circuitlib.discovery.backoff import Kept, keep
from circuitlib.discovery.config import DiscoveryConfig
from circuitlib.errors import CorruptCheckpoint
from circuitlib.masks import FlatLayout, init_logits
from circuitlib.models import LoadedModel
from circuitlib.types import density_key


@dataclass
class Hold:
    """A reached target whose snapshot is still open: the most faithful mask at or below it wins until `until`."""

    target: float
    until: int
    best: float = -1.0
    stale: int = 0
    looks: int = 0  # evaluations at or below the target the snapshot was chosen among


class DiscoveryState:
    """Logits, optimizer, random streams, counters, history, snapshots and open holds of one discovery run."""

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
        self.holds: list[Hold] = []
        self.candidates: dict[float, Circuit] = {}
        self.ramp_start = (0, 1.0)  # controlled schedule: (step, density) where the current ramp began
        self.slowdown = 1  # controlled schedule: the ramps' steps are ramp_steps times this (backoff.py)
        self.backoffs = 0  # collapses backed off so far
        self.kept: Kept | None = None  # with backoff: what a collapse goes back to (a checkpoint holds it)

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
        candidate_files = {}  # target -> file: named by the step that chose it, so a newer one never overwrites it
        for target, candidate in self.candidates.items():
            name = f"candidate_d{density_key(target)}_step{int(candidate.provenance['step'])}.safetensors"
            candidate_files[target] = circuits.save(candidate, directory / name).name
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
            "windows": [asdict(h) for h in self.holds],  # the key older checkpoints have
            "ramp_start": list(self.ramp_start),
            "slowdown": self.slowdown,
            "backoffs": self.backoffs,
            "kept_score": self.kept.score if self.kept is not None else None,
            "candidate_files": candidate_files,
        }
        tmp = directory / "state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(directory / "state.pt")
        # Only now are older candidates unreferenced: a crash before the replace leaves the last state's own.
        for path in directory.glob("candidate*.safetensors"):
            if path.name not in candidate_files.values():
                path.unlink()

    def load(self, directory: Path) -> None:
        """Restore from `save`; a file that cannot be read raises CorruptCheckpoint naming it."""
        path = directory / "state.pt"
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
            snapshots = []
            for i in range(state["n_circuits"]):
                path = directory / f"snapshot{i}.safetensors"
                snapshots.append(circuits.load(path))
            holds = [Hold(**h) for h in state["windows"]]
            files = state.get("candidate_files")
            if files is None:  # older checkpoints: one file per open hold, by its index
                files = {h.target: f"candidate{i}.safetensors" for i, h in enumerate(holds)}
                files = {t: name for t, name in files.items() if (directory / name).is_file()}
            candidates = {}
            for target, name in files.items():
                path = directory / name
                candidates[target] = circuits.load(path)
        except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
            raise CorruptCheckpoint(
                path, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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
        self.holds = holds
        self.candidates = candidates
        self.ramp_start = (int(state["ramp_start"][0]), float(state["ramp_start"][1]))
        self.slowdown, self.backoffs = state.get("slowdown", 1), state.get("backoffs", 0)
        # With backoff every checkpoint is taken at an evaluation the guard kept (config.py), so it is what was kept.
        score = state.get("kept_score")
        self.kept = keep(self.logits, self.optimizer, score) if score is not None else None
