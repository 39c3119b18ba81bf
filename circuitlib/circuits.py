"""Circuits stored at one bit per weight: packing, safetensors storage, and overlap/composition on the packed bits.

A circuit is a binary mask over the masked parameters of one model. Each parameter's flattened mask is packed
little-endian (np.packbits(bitorder="little")) starting at a byte boundary, with pad bits always 0, so set-bit
counts of the packed bytes are exact weight counts and nothing needs unpacking for overlap or composition.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import torch
from safetensors import SafetensorError, safe_open

from circuitlib.errors import InputError
from circuitlib.types import MODULE_TYPES, MaskedParam

FORMAT_VERSION = 1
METADATA_KEY = "circuitlib"
_CHUNK_BYTES = 1 << 24  # bytes per step of the packed-bit loops: temporaries stay at a few tens of MiB
_RANDOM_CHUNK_WEIGHTS = 1 << 24  # weights drawn per step in random_like (a multiple of 8, ~80 MiB of temporaries)


def _byte_sizes(params: list[MaskedParam]) -> np.ndarray:
    """Bytes each parameter's packed mask takes: ceil(numel / 8)."""
    return np.array([(p.numel + 7) // 8 for p in params], dtype=np.int64)


def _pad_masks(params: list[MaskedParam]) -> tuple[np.ndarray, np.ndarray]:
    """For parameters whose numel is not a multiple of 8: the byte index of their last byte and its valid-bit mask."""
    ends = np.cumsum(_byte_sizes(params)) - 1
    rem = np.array([p.numel % 8 for p in params], dtype=np.int64)
    ragged = rem > 0
    return ends[ragged], ((1 << rem[ragged]) - 1).astype(np.uint8)


def _popcount(a: np.ndarray, b: np.ndarray | None = None) -> int:
    """Set bits in the bytes `a` (or in `a & b`), counted chunk by chunk so temporaries stay under _CHUNK_BYTES."""
    n = 0
    for s in range(0, a.size, _CHUNK_BYTES):
        x = a[s : s + _CHUNK_BYTES] if b is None else np.bitwise_and(a[s : s + _CHUNK_BYTES], b[s : s + _CHUNK_BYTES])
        if x.size % 8 == 0:
            x = x.view(np.uint64)  # same count, 8x fewer elements
        n += int(np.bitwise_count(x).sum(dtype=np.int64))
    return n


@dataclass(eq=False)
class Circuit:
    """A binary mask over a model's masked parameters, packed at one bit per weight (see the module docstring)."""

    params: list[MaskedParam]
    bits: np.ndarray
    offsets: np.ndarray
    model_id: str
    model_revision: str | None = None
    target_density: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Check the packed layout (sizes, offsets, zero pad bits) so every count on the bits is exact."""
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self._index = {p.name: i for i, p in enumerate(self.params)}
        if len(self._index) != len(self.params):
            raise InputError(f"circuit of {self.model_id}: duplicate parameter names")
        if self.total == 0:
            raise InputError(f"circuit of {self.model_id}: no masked weights")
        if not isinstance(self.bits, np.ndarray) or self.bits.dtype != np.uint8 or self.bits.ndim != 1:
            raise InputError(f"circuit of {self.model_id}: bits must be a 1-D uint8 array")
        expected = np.concatenate(([0], np.cumsum(_byte_sizes(self.params))))
        if self.offsets.shape != expected.shape or not np.array_equal(self.offsets, expected):
            raise InputError(f"circuit of {self.model_id}: offsets do not match the parameter shapes")
        if self.bits.size != expected[-1]:
            raise InputError(
                f"circuit of {self.model_id}: size mismatch, {self.bits.size} bytes of bits "
                f"but the parameters need {expected[-1]}"
            )
        self.bits = np.ascontiguousarray(self.bits)
        last, valid = _pad_masks(self.params)
        if np.any(self.bits[last] & ~valid):
            raise InputError(f"circuit of {self.model_id}: pad bits are set")

    @property
    def kept(self) -> int:
        """Number of weights the circuit keeps."""
        return _popcount(self.bits)

    @property
    def total(self) -> int:
        """Number of masked weights."""
        return sum(p.numel for p in self.params)

    @property
    def density(self) -> float:
        """Kept weights / masked weights."""
        return self.kept / self.total

    @property
    def digest(self) -> str:
        """sha256 (hex) of the parameter names and shapes and the packed bits: the circuit's content address."""
        h = hashlib.sha256(json.dumps([[p.name, list(p.shape)] for p in self.params]).encode())
        h.update(self.bits.data)
        return h.hexdigest()

    @classmethod
    def from_masks(
        cls,
        params: list[MaskedParam],
        masks: Mapping[str, torch.Tensor | np.ndarray],
        model_id: str,
        model_revision: str | None = None,
        target_density: float | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Circuit:
        """Pack one binary mask (bool, or numbers all 0 or 1) per parameter, checked against names and shapes."""
        names, given = {p.name for p in params}, set(masks)
        missing, extra = sorted(names - given), sorted(given - names)
        if missing or extra:
            raise InputError(
                f"masks for {model_id} do not match its parameters: missing {missing[:5]}, extra {extra[:5]}"
            )
        offsets = np.concatenate(([0], np.cumsum(_byte_sizes(params))))
        bits = np.empty(int(offsets[-1]), dtype=np.uint8)
        for p, start, stop in zip(params, offsets[:-1], offsets[1:], strict=True):
            m = masks[p.name]
            m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
            if m.shape != p.shape:
                raise InputError(f"mask {p.name} of {model_id} has shape {list(m.shape)}, expected {list(p.shape)}")
            if m.dtype != np.bool_:
                if not np.all((m == 0) | (m == 1)):
                    raise InputError(f"mask {p.name} of {model_id} is not binary (values other than 0 and 1)")
                m = m != 0
            bits[start:stop] = np.packbits(m.reshape(-1), bitorder="little")
        return cls(params, bits, offsets, model_id, model_revision, target_density, dict(provenance or {}))

    def mask(self, name: str) -> torch.Tensor:
        """The bool mask of one parameter, in its shape (unpacks only that parameter)."""
        if name not in self._index:
            raise InputError(f"circuit of {self.model_id} has no parameter {name!r}")
        i = self._index[name]
        p = self.params[i]
        flat = np.unpackbits(self.bits[self.offsets[i] : self.offsets[i + 1]], count=p.numel, bitorder="little")
        return torch.from_numpy(flat.view(np.bool_).reshape(p.shape))

    def to_masks(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """All bool masks by parameter name, on `device` if given."""
        masks = {p.name: self.mask(p.name) for p in self.params}
        return masks if device is None else {name: m.to(device) for name, m in masks.items()}


def complement(c: Circuit) -> Circuit:
    """The weights `c` drops: every weight bit flipped, pad bits kept 0."""
    bits = np.empty_like(c.bits)
    for s in range(0, bits.size, _CHUNK_BYTES):
        np.invert(c.bits[s : s + _CHUNK_BYTES], out=bits[s : s + _CHUNK_BYTES])
    last, valid = _pad_masks(c.params)
    bits[last] &= valid
    target = None if c.target_density is None else 1.0 - c.target_density
    return Circuit(c.params, bits, c.offsets.copy(), c.model_id, c.model_revision, target, {"complement_of": c.digest})


def random_like(c: Circuit, seed: int) -> Circuit:
    """A control mask: each masked weight kept independently with probability density(c), from a seeded generator.

    Drawn parameter by parameter in chunks of _RANDOM_CHUNK_WEIGHTS, so extra memory stays ~100 MiB at any model size.
    """
    p = c.density
    rng = np.random.default_rng(seed)
    bits = np.empty_like(c.bits)
    for param, start in zip(c.params, c.offsets[:-1].tolist(), strict=True):
        for w in range(0, param.numel, _RANDOM_CHUNK_WEIGHTS):
            keep = rng.random(min(_RANDOM_CHUNK_WEIGHTS, param.numel - w), dtype=np.float32) < p
            packed = np.packbits(keep, bitorder="little")
            bits[start + w // 8 : start + w // 8 + packed.size] = packed
    return Circuit(
        c.params,
        bits,
        c.offsets.copy(),
        c.model_id,
        c.model_revision,
        c.target_density,
        {"random_of": c.digest, "seed": seed},
    )


def _metadata(c: Circuit) -> dict[str, Any]:
    """The JSON stored under METADATA_KEY in a circuit file."""
    kept = c.kept
    return {
        "format_version": FORMAT_VERSION,
        "model_id": c.model_id,
        "model_revision": c.model_revision,
        "params": [[p.name, list(p.shape), p.module_type, p.layer] for p in c.params],
        "kept": kept,
        "total": c.total,
        "density": kept / c.total,
        "target_density": c.target_density,
        "provenance": c.provenance,
        "digest": c.digest,
    }


def save(c: Circuit, path: str | os.PathLike) -> Path:
    """Write `c` as a safetensors file (tensors "bits" and "offsets", JSON metadata), atomically via a temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    metadata = {METADATA_KEY: json.dumps(_metadata(c))}
    safetensors.numpy.save_file({"bits": c.bits, "offsets": c.offsets}, tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


def load(path: str | os.PathLike) -> Circuit:
    """Read a circuit written by `save`, checking format, layout and digest; problems raise InputError with the path."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such circuit file")
    try:
        with safe_open(path, framework="numpy") as f:
            header = (f.metadata() or {}).get(METADATA_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path}: not a safetensors file ({e})") from e
    if header is None:
        raise InputError(f"{path}: safetensors file without circuitlib metadata (not a circuit)")
    try:
        meta = json.loads(header)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: circuit metadata is not JSON ({e})") from e
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version is None:
        raise InputError(f"{path}: circuit metadata has no format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{path}: circuit format_version {version!r} is not supported (this circuitlib reads 1)")
    try:
        params = [
            MaskedParam(str(name), tuple(int(s) for s in shape), module_type, int(layer))
            for name, shape, module_type, layer in meta["params"]
        ]
        model_id, revision, target = meta["model_id"], meta["model_revision"], meta["target_density"]
        provenance, digest = meta["provenance"], meta["digest"]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: malformed circuit metadata ({type(e).__name__}: {e})") from e
    bad_types = {p.module_type for p in params} - set(MODULE_TYPES)
    if bad_types:
        raise InputError(f"{path}: unknown module types {sorted(bad_types)}")
    if set(tensors) != {"bits", "offsets"}:
        raise InputError(f"{path}: expected tensors 'bits' and 'offsets', found {sorted(tensors)}")
    try:
        c = Circuit(params, tensors["bits"], tensors["offsets"], model_id, revision, target, provenance)
    except InputError as e:
        raise InputError(f"{path}: {e}") from e
    if c.digest != digest:
        raise InputError(f"{path}: digest mismatch, the stored bits are corrupt")
    return c


def _ratio(num: float, den: float) -> float:
    """num / den, nan where den is 0."""
    return num / den if den else math.nan


@dataclass(frozen=True)
class Overlap:
    """Set sizes of two masks A and B over the same `total` weights, with similarity scores and their chance values."""

    intersection: int
    union: int
    kept_a: int
    kept_b: int
    total: int

    @property
    def jaccard(self) -> float:
        """|A ∩ B| / |A ∪ B| (nan when both are empty)."""
        return _ratio(self.intersection, self.union)

    @property
    def overlap_coefficient(self) -> float:
        """|A ∩ B| / min(|A|, |B|) (nan when either is empty)."""
        return _ratio(self.intersection, min(self.kept_a, self.kept_b))

    @property
    def expected_jaccard(self) -> float:
        """Chance Jaccard of independent random masks of densities pa = kept_a/total, pb = kept_b/total.

        E|A ∩ B| = total*pa*pb and E|A ∪ B| = total*(pa + pb - pa*pb), so the value is pa*pb / (pa + pb - pa*pb)
        (ratio of expectations; exact for large total). nan when total or both densities are 0.
        """
        pa, pb = _ratio(self.kept_a, self.total), _ratio(self.kept_b, self.total)
        return _ratio(pa * pb, pa + pb - pa * pb)

    @property
    def expected_overlap_coefficient(self) -> float:
        """Chance overlap coefficient: E|A ∩ B| / min(|A|, |B|) = total*pa*pb / (total*min(pa, pb)) = max(pa, pb).

        nan when total or either density is 0.
        """
        if not (self.total and min(self.kept_a, self.kept_b)):
            return math.nan
        return max(self.kept_a, self.kept_b) / self.total


def _check_same_params(a: Circuit, b: Circuit) -> None:
    """Raise InputError unless `a` and `b` mask the same parameters in the same order."""
    if a.params == b.params:
        return
    for i, (pa, pb) in enumerate(zip(a.params, b.params, strict=False)):  # a shorter list: reported below
        if pa != pb:
            raise InputError(
                f"circuits of {a.model_id} and {b.model_id} cover different parameters: at position {i}, {pa} vs {pb}"
            )
    raise InputError(
        f"circuits of {a.model_id} and {b.model_id} cover different parameters: {len(a.params)} vs {len(b.params)}"
    )


def check_compatible(c: Circuit, params: list[MaskedParam], source: str = "circuit") -> None:
    """Raise InputError unless circuit `c` masks exactly `params` (the masked weights of a loaded model), or those of
    them outside the norms (a circuit found with `mask_norms` false)."""
    shapes = [(p.name, tuple(p.shape)) for p in c.params]
    if shapes in (
        [(p.name, tuple(p.shape)) for p in params],
        [(p.name, tuple(p.shape)) for p in params if p.module_type != "norm"],
    ):
        return
    ours = {p.name: tuple(p.shape) for p in c.params}
    theirs = {p.name: tuple(p.shape) for p in params}
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    reshaped = sorted(n for n in set(ours) & set(theirs) if ours[n] != theirs[n])
    detail = (
        "; ".join(
            f"{label} {names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
            for label, names in (("model has no", extra), ("circuit lacks", missing), ("shape differs for", reshaped))
            if names
        )
        or "parameter order differs"
    )
    raise InputError(f"{source}: circuit of {c.model_id} does not fit this model ({detail})")


def _param_counts(a: Circuit, b: Circuit) -> np.ndarray:
    """Per parameter [kept_a, kept_b, |A ∩ B|], shape (n_params, 3), counted on the packed bytes."""
    counts = np.zeros((len(a.params), 3), dtype=np.int64)
    bounds = a.offsets.tolist()
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        counts[i] = _popcount(a.bits[s:e]), _popcount(b.bits[s:e]), _popcount(a.bits[s:e], b.bits[s:e])
    return counts


def _overlap_from(counts: np.ndarray, total: int) -> Overlap:
    """An Overlap from summed [kept_a, kept_b, intersection] counts."""
    kept_a, kept_b, inter = (int(x) for x in counts)
    return Overlap(inter, kept_a + kept_b - inter, kept_a, kept_b, total)


def overlap(a: Circuit, b: Circuit) -> Overlap:
    """Overlap of two circuits of the same model, over all masked weights."""
    _check_same_params(a, b)
    return _overlap_from(_param_counts(a, b).sum(axis=0), a.total)


def overlap_by_module(a: Circuit, b: Circuit) -> dict[str, Overlap]:
    """Overlap of two circuits of the same model within each module type present, in MODULE_TYPES order."""
    _check_same_params(a, b)
    counts = _param_counts(a, b)
    types = np.array([p.module_type for p in a.params])
    numel = np.array([p.numel for p in a.params], dtype=np.int64)
    return {
        t: _overlap_from(counts[types == t].sum(axis=0), int(numel[types == t].sum()))
        for t in MODULE_TYPES
        if np.any(types == t)
    }


@dataclass(frozen=True)
class CompositionRow:
    """One group of weights (a module type in one layer, or in all when layer == -1) and the circuit's part of it."""

    module_type: str
    layer: int
    kept: int
    total: int
    share_of_circuit: float  # kept / circuit's kept (nan for an empty circuit)
    fraction_kept: float  # kept / total (nan for a group without weights)


def _composition(c: Circuit, by_layer: bool) -> list[CompositionRow]:
    """Kept and total weights grouped by (module type, layer), or by module type with layer -1."""
    groups: dict[tuple[int, int], list[int]] = {}
    bounds = c.offsets.tolist()
    for p, s, e in zip(c.params, bounds[:-1], bounds[1:], strict=True):
        key = (p.layer if by_layer else -1, MODULE_TYPES.index(p.module_type))
        kept_total = groups.setdefault(key, [0, 0])
        kept_total[0] += _popcount(c.bits[s:e])
        kept_total[1] += p.numel
    circuit_kept = sum(kept for kept, _ in groups.values())
    return [
        CompositionRow(MODULE_TYPES[t], layer, kept, total, _ratio(kept, circuit_kept), _ratio(kept, total))
        for (layer, t), (kept, total) in sorted(groups.items())
    ]


def composition(c: Circuit) -> list[CompositionRow]:
    """One row per (module type, layer), ordered by layer then module type."""
    return _composition(c, by_layer=True)


def composition_by_module(c: Circuit) -> list[CompositionRow]:
    """One row per module type present (layer -1); shares sum to 1 for a non-empty circuit."""
    return _composition(c, by_layer=False)


def _finite_or_none(x: float) -> float | None:
    """x, with nan mapped to None so the value is strict JSON."""
    return None if math.isnan(x) else x


def info(c: Circuit) -> dict[str, Any]:
    """A JSON-able summary of a circuit for the CLI: identity, size, provenance and composition by module type."""
    ratios = ("share_of_circuit", "fraction_kept")
    rows = [asdict(r) | {k: _finite_or_none(getattr(r, k)) for k in ratios} for r in composition_by_module(c)]
    kept = c.kept
    return {
        "model_id": c.model_id,
        "model_revision": c.model_revision,
        "density": kept / c.total,
        "target_density": c.target_density,
        "kept": kept,
        "masked_weights": c.total,
        "digest": c.digest,
        "provenance": c.provenance,
        "composition_by_module": rows,
    }
