"""Circuits at one bit per weight: packing, storage, and overlap/composition checked against brute force on bools."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import safetensors.numpy
import torch

import circuitlib.circuits as circuits
from circuitlib.circuits import (
    Circuit,
    Overlap,
    complement,
    composition,
    composition_by_module,
    info,
    load,
    overlap,
    overlap_by_module,
    random_like,
    save,
)
from circuitlib.errors import InputError
from circuitlib.types import MODULE_TYPES, MaskedParam

# Odd sizes so that most parameters end with pad bits.
PARAMS = [
    MaskedParam("h.0.attn.w", (7, 5), "attention", 0),
    MaskedParam("h.0.attn.b", (5,), "attention", 0),
    MaskedParam("h.0.mlp.w", (5, 13), "mlp", 0),
    MaskedParam("h.0.ln.w", (5,), "norm", 0),
    MaskedParam("h.1.attn.w", (7, 5), "attention", 1),
    MaskedParam("h.1.mlp.w", (5, 13), "mlp", 1),
    MaskedParam("h.1.ln.w", (5,), "norm", 1),
    MaskedParam("h.1.ln.b", (3,), "norm", 1),
    MaskedParam("h.1.scale", (), "other", 1),
    MaskedParam("h.1.block", (4, 4), "other", 1),
]


def random_masks(seed: int, density: float, params: list[MaskedParam] = PARAMS) -> dict[str, np.ndarray]:
    """Independent Bernoulli(density) bool masks for each parameter."""
    rng = np.random.default_rng(seed)
    return {p.name: np.asarray(rng.random(p.shape) < density) for p in params}


def make(seed: int, density: float = 0.4, **kw) -> tuple[Circuit, dict[str, np.ndarray]]:
    """A circuit over PARAMS and the bool masks it was built from."""
    masks = random_masks(seed, density)
    return Circuit.from_masks(PARAMS, masks, "tiny", **kw), masks


def flat(masks: dict[str, np.ndarray], params: list[MaskedParam] = PARAMS) -> np.ndarray:
    """All masks concatenated into one bool vector."""
    return np.concatenate([np.asarray(masks[p.name]).reshape(-1) for p in params])


def test_from_masks_to_masks_round_trip():
    c, masks = make(0, provenance={"dataset": "sst2"})
    back = c.to_masks()
    assert list(back) == [p.name for p in PARAMS]
    for p in PARAMS:
        assert back[p.name].dtype == torch.bool and tuple(back[p.name].shape) == p.shape
        assert np.array_equal(back[p.name].numpy(), masks[p.name])
    assert c.kept == int(flat(masks).sum())
    assert c.total == sum(p.numel for p in PARAMS)
    assert c.density == pytest.approx(c.kept / c.total)
    assert c.offsets.tolist() == np.concatenate(([0], np.cumsum([(p.numel + 7) // 8 for p in PARAMS]))).tolist()


def test_from_masks_accepts_torch_and_binary_numbers():
    masks = random_masks(1, 0.5)
    as_float = {name: torch.from_numpy(m.astype(np.float32)) for name, m in masks.items()}
    assert Circuit.from_masks(PARAMS, as_float, "tiny").digest == Circuit.from_masks(PARAMS, masks, "tiny").digest


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("h.0.attn.b"), "missing"),
        (lambda m: m.update({"h.9.x": np.zeros(3, bool)}), "extra"),
        (lambda m: m.update({"h.0.attn.w": np.zeros((5, 7), bool)}), "shape"),
        (lambda m: m.update({"h.0.attn.b": np.full(5, 0.5)}), "not binary"),
    ],
)
def test_from_masks_rejects_bad_masks(change, message):
    masks = random_masks(0, 0.5)
    change(masks)
    with pytest.raises(InputError, match=message):
        Circuit.from_masks(PARAMS, masks, "tiny")


def test_mask_of_unknown_parameter_is_an_input_error():
    c, _ = make(0)
    with pytest.raises(InputError, match="nope"):
        c.mask("nope")


def test_save_load_round_trip(tmp_path):
    c, _ = make(2, model_revision="abc123", target_density=0.35, provenance={"dataset": "sst2", "seed": 3, "step": 40})
    path = save(c, tmp_path / "c.safetensors")
    d = load(path)
    assert np.array_equal(d.bits, c.bits) and np.array_equal(d.offsets, c.offsets)
    assert d.params == c.params
    assert (d.model_id, d.model_revision, d.target_density, d.provenance) == (
        c.model_id,
        c.model_revision,
        c.target_density,
        c.provenance,
    )
    assert d.digest == c.digest


def test_file_is_about_one_bit_per_weight(tmp_path):
    params = [MaskedParam(f"h.{i}.w", (301, 257), "mlp", i) for i in range(4)]
    rng = np.random.default_rng(0)
    c = Circuit.from_masks(params, {p.name: rng.random(p.shape) < 0.5 for p in params}, "tiny")
    size = save(c, tmp_path / "c.safetensors").stat().st_size
    assert c.total / 8 <= size < c.total / 8 + 2048


def test_digest_is_stable_and_content_dependent():
    a, masks = make(3)
    assert a.digest == Circuit.from_masks(PARAMS, masks, "other-name", provenance={"x": 1}).digest
    assert len(a.digest) == 64
    masks["h.0.mlp.w"][0, 0] = not masks["h.0.mlp.w"][0, 0]
    assert Circuit.from_masks(PARAMS, masks, "tiny").digest != a.digest
    renamed = [MaskedParam(p.name + "x", p.shape, p.module_type, p.layer) for p in PARAMS]
    assert Circuit(renamed, a.bits.copy(), a.offsets, "tiny").digest != a.digest


def test_complement_flips_every_weight_and_keeps_pad_bits_zero():
    c, masks = make(6, target_density=0.25)
    k = complement(c)
    for p in PARAMS:
        assert np.array_equal(k.mask(p.name).numpy(), ~masks[p.name])
    assert c.kept + k.kept == c.total
    assert np.bitwise_count(k.bits).sum() == c.total - c.kept  # a set pad bit would add to this
    assert k.target_density == pytest.approx(0.75)
    assert k.provenance == {"complement_of": c.digest}
    assert complement(k).digest == c.digest


def test_random_like_matches_density_and_is_seeded():
    params = [MaskedParam(f"h.{i}.w", (211, 97), "mlp", i) for i in range(5)]
    rng = np.random.default_rng(0)
    c = Circuit.from_masks(params, {p.name: rng.random(p.shape) < 0.15 for p in params}, "tiny", target_density=0.15)
    r = random_like(c, seed=7)
    sd = math.sqrt(c.density * (1 - c.density) / c.total)
    assert abs(r.density - c.density) < 5 * sd
    assert r.digest == random_like(c, seed=7).digest
    assert r.digest != random_like(c, seed=8).digest
    assert r.provenance == {"random_of": c.digest, "seed": 7}
    assert overlap(c, r).jaccard == pytest.approx(overlap(c, r).expected_jaccard, abs=0.01)  # independent of c


def test_random_like_keeps_pad_bits_zero():
    c, _ = make(9, density=0.9)
    r = random_like(c, seed=0)  # the constructor rejects set pad bits
    assert np.bitwise_count(r.bits).sum() == r.kept


@pytest.mark.parametrize("seed", range(6))
def test_overlap_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    da, db = rng.uniform(0.05, 0.95, size=2)
    ma, mb = random_masks(2 * seed, da), random_masks(2 * seed + 1, db)
    a, b = Circuit.from_masks(PARAMS, ma, "tiny"), Circuit.from_masks(PARAMS, mb, "tiny")
    fa, fb = flat(ma), flat(mb)
    o = overlap(a, b)
    assert o == Overlap(int((fa & fb).sum()), int((fa | fb).sum()), int(fa.sum()), int(fb.sum()), fa.size)
    assert o.jaccard == pytest.approx((fa & fb).sum() / (fa | fb).sum())
    assert o.overlap_coefficient == pytest.approx((fa & fb).sum() / min(fa.sum(), fb.sum()))

    by_module = overlap_by_module(a, b)
    assert list(by_module) == list(MODULE_TYPES)
    for t, ot in by_module.items():
        group = [p for p in PARAMS if p.module_type == t]
        ga, gb = flat(ma, group), flat(mb, group)
        assert ot == Overlap(int((ga & gb).sum()), int((ga | gb).sum()), int(ga.sum()), int(gb.sum()), ga.size)


def test_overlap_by_module_lists_only_present_types():
    params = [MaskedParam("a", (9,), "mlp", 0), MaskedParam("b", (3,), "norm", 0)]
    masks = {"a": np.ones(9, bool), "b": np.zeros(3, bool)}
    c = Circuit.from_masks(params, masks, "tiny")
    assert list(overlap_by_module(c, c)) == ["mlp", "norm"]


def test_overlap_of_different_models_is_an_input_error():
    a, _ = make(0)
    other = PARAMS[:-1] + [MaskedParam("h.1.block", (2, 8), "other", 1)]
    b = Circuit.from_masks(other, random_masks(0, 0.5, other), "other-model")
    with pytest.raises(InputError, match="different parameters"):
        overlap(a, b)
    with pytest.raises(InputError, match="different parameters"):
        overlap_by_module(a, Circuit.from_masks(PARAMS[:3], random_masks(0, 0.5, PARAMS[:3]), "x"))


def test_expected_scores_match_simulated_independent_masks():
    total, pa, pb = 2000, 0.3, 0.1
    rng = np.random.default_rng(0)
    jaccards, coefs = [], []
    for _ in range(400):
        a, b = rng.random(total) < pa, rng.random(total) < pb
        jaccards.append((a & b).sum() / (a | b).sum())
        coefs.append((a & b).sum() / min(a.sum(), b.sum()))
    o = Overlap(0, 0, int(pa * total), int(pb * total), total)
    assert o.expected_jaccard == pytest.approx(np.mean(jaccards), rel=0.03)
    assert o.expected_overlap_coefficient == pytest.approx(np.mean(coefs), rel=0.03)
    assert o.expected_jaccard == pytest.approx(pa * pb / (pa + pb - pa * pb))


def test_overlap_scores_are_nan_where_undefined():
    empty = Overlap(0, 0, 0, 0, 10)
    assert math.isnan(empty.jaccard) and math.isnan(empty.overlap_coefficient)
    assert math.isnan(empty.expected_jaccard) and math.isnan(empty.expected_overlap_coefficient)
    one_empty = Overlap(0, 4, 4, 0, 10)
    assert one_empty.jaccard == 0 and math.isnan(one_empty.overlap_coefficient)
    assert one_empty.expected_jaccard == 0 and math.isnan(one_empty.expected_overlap_coefficient)
    assert math.isnan(Overlap(0, 0, 0, 0, 0).expected_jaccard)


def test_composition_matches_brute_force():
    c, masks = make(11, density=0.3)
    rows = composition(c)
    assert [(r.layer, r.module_type) for r in rows] == [
        (0, "attention"),
        (0, "mlp"),
        (0, "norm"),
        (1, "attention"),
        (1, "mlp"),
        (1, "norm"),
        (1, "other"),
    ]
    assert sum(r.share_of_circuit for r in rows) == pytest.approx(1.0)
    for r in rows:
        group = [p for p in PARAMS if p.module_type == r.module_type and p.layer == r.layer]
        g = flat(masks, group)
        assert (r.kept, r.total) == (int(g.sum()), g.size)
        assert r.fraction_kept == pytest.approx(g.mean())
        assert r.share_of_circuit == pytest.approx(g.sum() / c.kept)


def test_composition_by_module_matches_brute_force():
    c, masks = make(12, density=0.6)
    rows = composition_by_module(c)
    assert [(r.module_type, r.layer) for r in rows] == [(t, -1) for t in MODULE_TYPES]
    assert sum(r.share_of_circuit for r in rows) == pytest.approx(1.0)
    for r in rows:
        g = flat(masks, [p for p in PARAMS if p.module_type == r.module_type])
        assert (r.kept, r.total) == (int(g.sum()), g.size)
        assert r.fraction_kept == pytest.approx(g.mean())


def test_info_is_json_with_the_summary():
    c, _ = make(13, model_revision="r1", target_density=0.5, provenance={"dataset": "sst2"})
    summary = json.loads(json.dumps(info(c), allow_nan=False))
    assert summary["kept"] == c.kept and summary["masked_weights"] == c.total
    assert summary["density"] == pytest.approx(c.density) and summary["digest"] == c.digest
    assert (summary["model_id"], summary["model_revision"], summary["target_density"]) == ("tiny", "r1", 0.5)
    assert summary["provenance"] == {"dataset": "sst2"}
    assert [r["module_type"] for r in summary["composition_by_module"]] == list(MODULE_TYPES)
    empty = Circuit.from_masks(PARAMS, {p.name: np.zeros(p.shape, bool) for p in PARAMS}, "tiny")
    json.dumps(info(empty), allow_nan=False)


def test_load_missing_file(tmp_path):
    path = tmp_path / "missing.safetensors"
    with pytest.raises(InputError, match="missing.safetensors.*no such"):
        load(path)


def test_load_garbage_file(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"this is not a safetensors file at all" * 10)
    with pytest.raises(InputError, match="garbage.safetensors.*not a safetensors"):
        load(path)


def test_load_safetensors_without_our_metadata(tmp_path):
    path = tmp_path / "weights.safetensors"
    safetensors.numpy.save_file({"w": np.zeros(4, np.float32)}, path, metadata={"other": "x"})
    with pytest.raises(InputError, match="weights.safetensors.*without circuitlib metadata"):
        load(path)


def _rewrite(path, c: Circuit, bits=None, **meta_changes):
    """Rewrite the saved file of `c` with changed bits or metadata fields (None removes a field)."""
    meta = json.loads(safetensors.safe_open(path, framework="numpy").metadata()["circuitlib"])
    for k, v in meta_changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    tensors = {"bits": c.bits if bits is None else bits, "offsets": c.offsets}
    safetensors.numpy.save_file(tensors, path, metadata={"circuitlib": json.dumps(meta)})


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(format_version=None), "no format_version"),
        (dict(format_version=2), "format_version 2 is not supported"),
        (dict(params=[["h.0.attn.w", [7, 5], "attention", 0]]), "size mismatch|offsets"),
        (dict(params="nonsense"), "malformed"),
    ],
)
def test_load_bad_metadata(tmp_path, change, message):
    c, _ = make(0)
    path = save(c, tmp_path / "c.safetensors")
    _rewrite(path, c, **change)
    with pytest.raises(InputError, match=f"c.safetensors: .*({message})"):
        load(path)


def test_load_size_mismatch_and_corrupt_bits(tmp_path):
    c, _ = make(0)
    path = save(c, tmp_path / "c.safetensors")
    _rewrite(path, c, bits=c.bits[:-1])
    with pytest.raises(InputError, match="c.safetensors: .*size mismatch"):
        load(path)
    flipped = c.bits.copy()
    flipped[0] ^= 1
    _rewrite(path, c, bits=flipped)
    with pytest.raises(InputError, match="c.safetensors: digest mismatch"):
        load(path)


def test_chunked_loops_match_brute_force(monkeypatch):
    """Tiny chunks make every parameter span several chunks, as a big model's would."""
    monkeypatch.setattr(circuits, "_CHUNK_BYTES", 3)
    monkeypatch.setattr(circuits, "_RANDOM_CHUNK_WEIGHTS", 16)
    (a, ma), (b, mb) = make(20, density=0.3), make(21, density=0.7)
    fa, fb = flat(ma), flat(mb)
    assert overlap(a, b) == Overlap(int((fa & fb).sum()), int((fa | fb).sum()), int(fa.sum()), int(fb.sum()), fa.size)
    assert np.array_equal(flat({n: m.numpy() for n, m in complement(a).to_masks().items()}), ~fa)
    r = random_like(a, seed=3)
    assert r.kept == int(flat({n: m.numpy() for n, m in r.to_masks().items()}).sum())
    assert abs(r.density - a.density) < 0.1
