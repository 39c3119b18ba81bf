"""The shared vocabulary of circuitlib: what a masked weight, a dataset and an edit request are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ModuleType = Literal["attention", "mlp", "norm", "other"]
Variant = Literal["circuit", "complement", "random", "full"]

MODULE_TYPES: tuple[ModuleType, ...] = ("attention", "mlp", "norm", "other")
VARIANTS: tuple[Variant, ...] = ("circuit", "complement", "random", "full")  # every variant is declared here only
FULL: Variant = "full"  # the unmasked model
MASKED_VARIANTS: tuple[Variant, ...] = tuple(v for v in VARIANTS if v != FULL)  # the variants edited under a mask
PAPER_DENSITIES: tuple[float, ...] = (0.5, 0.35, 0.25, 0.15, 0.05)


def density_key(density: float) -> str:
    """A target density's one spelling wherever it is a key (file and artifact names, tags, trial keys): `0.05`."""
    return f"{float(density):g}"


def density_of(key: float | str) -> float:
    """The target density a key spells (`density_key`'s inverse), or a float as its key rounds it: a target read
    from a tag, an artifact name or a circuit's metadata compares equal to the same target from a config."""
    return float(density_key(float(key)))


@dataclass(frozen=True)
class MaskedParam:
    """One maskable parameter of a model: its name, shape, module type and layer index."""

    name: str
    shape: tuple[int, ...]
    module_type: ModuleType
    layer: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class ClassificationData:
    """A binary text-classification dataset: parallel lists of texts and 0/1 labels."""

    name: str
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class EditRequest:
    """One CounterFact-style edit: teach `target_new` for `prompt.format(subject)`."""

    case_id: int
    prompt: str
    subject: str
    target_true: str
    target_new: str
    paraphrase_prompts: list[str] = field(default_factory=list)
    neighborhood_prompts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)
