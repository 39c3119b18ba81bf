"""The statistics of the analysis on small synthetic data: overlap against brute force, chance values against
simulated random masks, bootstrap coverage of a known effect, composition shares, the window rule and table gaps."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

from analysis.bootstrap import Estimate, bootstrap_gap, bootstrap_mean, stratified_gap
from analysis.composition import ALL_LAYERS, circuit_composition, over_represented
from analysis.overlap import WHOLE_MODEL, density_overlaps, pair_overlap
from analysis.tables import GAP, estimate, number, write_csv
from analysis.window import WindowRow, estimate_window, window_rows
from circuitlib.circuits import Circuit
from circuitlib.types import MASKED_VARIANTS, VARIANTS, MaskedParam, density_key, density_of
from record.reader import EditRun, Source

# Odd sizes, so most parameters end in pad bits.
PARAMS = [
    MaskedParam("h.0.attn.w", (7, 5), "attention", 0),
    MaskedParam("h.0.mlp.w", (5, 13), "mlp", 0),
    MaskedParam("h.0.ln.w", (5,), "norm", 0),
    MaskedParam("h.1.attn.w", (7, 5), "attention", 1),
    MaskedParam("h.1.mlp.w", (5, 13), "mlp", 1),
    MaskedParam("h.1.ln.b", (3,), "norm", 1),
    MaskedParam("h.1.scale", (), "other", 1),
]


def masks(seed: int, density: float, params=PARAMS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {p.name: rng.random(p.shape) < density for p in params}


def circuit(m: dict[str, np.ndarray], params=PARAMS) -> Circuit:
    return Circuit.from_masks(params, m, "toy")


def flat(m: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(m[n]).reshape(-1) for n in names])


@pytest.mark.parametrize("seed, da, db", [(0, 0.4, 0.4), (1, 0.1, 0.7), (2, 0.9, 0.05), (3, 0.0, 0.3)])
def test_pair_overlap_matches_brute_force(seed, da, db):
    ma, mb = masks(seed, da), masks(seed + 100, db)
    rows = {r.module: r for r in pair_overlap(0.25, "a", circuit(ma), "b", circuit(mb))}
    groups = {WHOLE_MODEL: [p.name for p in PARAMS]} | {
        t: [p.name for p in PARAMS if p.module_type == t] for t in ("attention", "mlp", "norm", "other")
    }
    assert set(rows) == set(groups)
    for module, names in groups.items():
        a, b = flat(ma, names), flat(mb, names)
        inter, union, ka, kb = (a & b).sum(), (a | b).sum(), a.sum(), b.sum()
        r = rows[module]
        assert (r.density, r.a, r.b) == (0.25, "a", "b")
        if union:
            assert r.jaccard == pytest.approx(inter / union)
        else:
            assert math.isnan(r.jaccard)
        if min(ka, kb):
            assert r.overlap_coefficient == pytest.approx(inter / min(ka, kb))
            assert r.expected_overlap_coefficient == pytest.approx(max(ka, kb) / a.size)
            assert r.overlap_ratio == pytest.approx(r.overlap_coefficient / r.expected_overlap_coefficient)
        else:
            assert math.isnan(r.overlap_coefficient) and math.isnan(r.overlap_ratio)
        pa, pb = ka / a.size, kb / b.size
        if pa * pb:
            assert r.expected_jaccard == pytest.approx(pa * pb / (pa + pb - pa * pb))
        else:  # a chance of 0 gives no ratio: NaN, never a 0 or an infinity
            assert math.isnan(r.jaccard_ratio)


def test_missing_circuit_gives_a_nan_row_per_pair():
    c = circuit(masks(0, 0.3))
    rows = density_overlaps(0.15, {"b": c, "a": c, "c": None})
    whole = {(r.a, r.b): r for r in rows if r.module == WHOLE_MODEL}
    assert list(whole) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert whole["a", "b"].jaccard == 1.0
    for pair in (("a", "c"), ("b", "c")):
        r = whole[pair]
        assert all(math.isnan(getattr(r, f.name)) for f in fields(r) if f.name not in ("density", "a", "b", "module"))
    assert not [r for r in rows if "c" in (r.a, r.b) and r.module != WHOLE_MODEL]


def test_chance_expectation_matches_simulated_random_masks():
    params = [
        MaskedParam("attn", (40, 50), "attention", 0),
        MaskedParam("mlp", (60, 50), "mlp", 0),
        MaskedParam("ln", (400,), "norm", 0),
    ]
    draws = [
        pair_overlap(
            0.3, "a", circuit(masks(2 * i, 0.3, params), params), "b", circuit(masks(2 * i + 1, 0.1, params), params)
        )
        for i in range(200)
    ]
    for k, module in enumerate((WHOLE_MODEL, "attention", "mlp", "norm")):
        rows = [d[k] for d in draws]
        assert {r.module for r in rows} == {module}
        for value, chance in (("jaccard", "expected_jaccard"), ("overlap_coefficient", "expected_overlap_coefficient")):
            observed = np.mean([getattr(r, value) for r in rows])
            expected = np.mean([getattr(r, chance) for r in rows])
            assert observed == pytest.approx(expected, rel=0.05)
        assert np.mean([r.jaccard_ratio for r in rows]) == pytest.approx(1.0, abs=0.05)
    assert draws[0][0].expected_jaccard == pytest.approx(0.03 / 0.37, rel=0.1)


def test_bootstrap_interval_covers_a_known_paired_gap():
    rng = np.random.default_rng(1)
    true_gap, covered, reps = 0.5, 0, 300
    for _ in range(reps):
        base = rng.normal(1.0, 1.0, 30)  # per-request difficulty, shared by both variants
        complement = {i: v for i, v in enumerate(base + true_gap + rng.normal(0, 0.5, 30))}
        circuit_ = {i: v for i, v in enumerate(base)}
        e = bootstrap_gap(complement, circuit_, rng, n_boot=1000)
        assert e is not None and e.paired and e.n == 30
        covered += e.low <= true_gap <= e.high
    assert 0.90 <= covered / reps <= 0.99


def test_bootstrap_interval_covers_a_known_unpaired_gap():
    rng = np.random.default_rng(2)
    covered, reps = 0, 300
    for _ in range(reps):
        a = {("a", i): v for i, v in enumerate(rng.normal(1.3, 1.0, 40))}
        b = {("b", i): v for i, v in enumerate(rng.normal(1.0, 1.0, 50))}
        e = bootstrap_gap(a, b, rng, n_boot=1000)
        assert e is not None and not e.paired
        covered += e.low <= 0.3 <= e.high
    assert 0.90 <= covered / reps <= 0.99


def test_bootstrap_pairs_shared_requests_and_skips_missing_values():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 5, 50)  # large per-request spread: pairing removes it
    a = {i: base[i] + 1.0 + rng.normal(0, 0.1) for i in range(50)}
    b = {i: base[i] for i in range(10, 50)} | {100: 7.0}
    paired = bootstrap_gap(a, b, rng)
    assert paired is not None and paired.paired and paired.n == 40
    assert paired.mean == pytest.approx(np.mean([a[i] - b[i] for i in range(10, 50)]))
    unpaired = bootstrap_gap(dict(enumerate(a.values())), {-1 - k: v for k, v in b.items()}, rng)
    assert unpaired is not None
    assert not unpaired.paired and (unpaired.high - unpaired.low) > 5 * (paired.high - paired.low)
    mean = bootstrap_mean([1.0, math.nan, 3.0], rng)
    assert mean is not None and mean.mean == 2.0 and mean.n == 2
    assert bootstrap_mean([], rng) is None and bootstrap_mean([math.nan], rng) is None
    assert bootstrap_gap({}, b, rng) is None and bootstrap_gap(a, {}, rng) is None


def test_composition_shares_sum_to_one_and_match_brute_force():
    m = masks(5, 0.3)
    m["h.0.ln.w"][:] = True  # norms kept whole: over-represented
    entries = circuit_composition("toy", 0.3, circuit(m))
    by_module = [e for e in entries if e.layer == ALL_LAYERS]
    by_layer = [e for e in entries if e.layer != ALL_LAYERS]
    assert sum(e.share_of_circuit for e in by_module) == pytest.approx(1.0)
    assert sum(e.share_of_circuit for e in by_layer) == pytest.approx(1.0)
    assert sum(e.share_of_model for e in by_layer) == pytest.approx(1.0)
    all_kept = sum(int(v.sum()) for v in m.values())
    total = sum(p.numel for p in PARAMS)
    for e in by_layer:
        group = [p for p in PARAMS if (p.module_type, p.layer) == (e.module_type, e.layer)]
        kept = sum(int(m[p.name].sum()) for p in group)
        assert (e.kept, e.total) == (kept, sum(p.numel for p in group))
        assert e.fraction_kept == pytest.approx(kept / e.total)
        assert e.representation == pytest.approx((kept / all_kept) / (e.total / total))
    assert over_represented(entries)[0] == "norm"


def test_overlap_and_composition_never_unpack(monkeypatch):
    a, b = circuit(masks(0, 0.3)), circuit(masks(1, 0.6))

    def refuse(*args, **kwargs):
        raise AssertionError("the analysis must work on the packed bits")

    monkeypatch.setattr(np, "unpackbits", refuse)
    monkeypatch.setattr(Circuit, "mask", refuse)
    monkeypatch.setattr(Circuit, "to_masks", refuse)
    assert density_overlaps(0.3, {"a": a, "b": b})
    assert circuit_composition("a", 0.3, a)


def _row(density: float, in_window: bool, scope: str = "all") -> WindowRow:
    """A row with nothing but its density and window flag."""
    return WindowRow(
        scope,
        density,
        math.nan,
        drop=dict.fromkeys(VARIANTS),
        gap=dict.fromkeys(("complement", "random")),
        success=dict.fromkeys(VARIANTS, math.nan),
        knowledge=dict.fromkeys(MASKED_VARIANTS, math.nan),
        in_window=in_window,
    )


def test_window_estimate_reports_range_and_contiguity():
    rows = [_row(0.5, False), _row(0.35, True), _row(0.25, True), _row(0.15, False), _row(0.25, False, "x")]
    w = estimate_window(rows)
    assert (w.low, w.high, w.contiguous, w.describe()) == (0.25, 0.35, True, "[0.25, 0.35]")
    broken = estimate_window([_row(0.5, True), _row(0.25, False), _row(0.15, True)])
    assert not broken.contiguous and broken.describe() == "[0.15, 0.5] (only at 0.15, 0.5)"
    assert estimate_window(rows, "x").describe() == "none" and estimate_window(rows, "x").low is None


def _edits(source: Source, density: float, gap: float, n: int = 30) -> list[EditRun]:
    rng = np.random.default_rng(0)
    base = rng.normal(1.0, 0.2, n)
    drops = {"circuit": base, "complement": base + gap + rng.normal(0, 0.2, n)}
    return [
        EditRun(
            f"{v}",
            v,
            "FINISHED",
            v,
            source,
            density,
            [
                {"case_id": i, "nll_new_drop": float(d), "efficacy_score": 1.0, "nll_true_pre": 2.0}
                for i, d in enumerate(drops[v])
            ],
        )
        for v in drops
    ]


def test_window_needs_a_significant_gap_and_faithfulness():
    s, t = Source("d", 0), Source("e", 0)
    edits = _edits(s, 0.25, 1.0) + _edits(s, 0.5, 0.0) + _edits(t, 0.25, 1.0)
    labels = {s: "d", t: "e"}
    faith = {(s, 0.25): 0.95, (s, 0.5): 0.99}  # e's faithfulness at 0.25 is unknown
    rows = {(r.scope, r.density): r for r in window_rows(edits, faith, labels, [0.5, 0.25], threshold=0.9, n_boot=300)}
    assert rows["d", 0.25].in_window and not rows["d", 0.5].in_window
    assert not rows["e", 0.25].in_window and math.isnan(rows["e", 0.25].faithfulness)
    assert rows["e", 0.25].gap["complement"] is None and rows["e", 0.25].circuits == 0  # unknown: left out
    gap = rows["all", 0.25].gap["complement"]
    assert rows["all", 0.25].faithfulness == 0.95 and gap is not None and gap.n == 30  # d's requests only
    assert rows["all", 0.25].circuits == 1
    assert rows["all", 0.25].drop["random"] is None and rows["all", 0.25].drop["full"] is None
    assert math.isnan(rows["all", 0.25].success["random"])
    with_e = window_rows(
        edits,
        faith | {(t, 0.25): 0.91},
        labels,
        [0.25],
        threshold=0.9,
        n_boot=300,
        actual={(s, 0.25): 0.2, (t, 0.25): 0.3},
    )
    gap = with_e[0].gap["complement"]
    assert gap is not None and gap.n == 60 and with_e[0].circuits == 2
    assert with_e[0].actual_density == pytest.approx(0.25) and with_e[0].faithfulness == pytest.approx(0.93)
    strict = window_rows(edits, faith, labels, [0.25], threshold=0.96, n_boot=300)
    assert not any(r.in_window for r in strict) and all(r.gap["complement"] is None for r in strict)


def test_stratified_gap_compares_within_strata():
    rng = np.random.default_rng(4)
    # Two strata of very different scale; within each, a exceeds b by 0.1. Pooled unstratified means would be
    # dominated by the mix of strata (a has more high-scale values), the stratified gap is not.
    strata = [
        (rng.normal(10.1, 0.05, 20), rng.normal(10.0, 0.05, 5)),
        (rng.normal(1.1, 0.05, 5), rng.normal(1.0, 0.05, 20)),
    ]
    e = stratified_gap(strata, rng, n_boot=1000)
    assert e is not None
    assert e.mean == pytest.approx(0.1, abs=0.05) and e.low > 0 and e.high < 0.3 and e.n == 25
    pooled = bootstrap_gap(
        dict(enumerate(np.concatenate([a for a, _ in strata]))),
        {-1 - i: v for i, v in enumerate(np.concatenate([b for _, b in strata]))},
        rng,
    )
    assert pooled is not None and pooled.mean > 3  # what the stratification protects against
    assert stratified_gap([([1.0], [])], rng) is None and stratified_gap([], rng) is None
    one_sided = stratified_gap([([1.0, 2.0], [])] + strata, rng, n_boot=200)
    assert one_sided is not None and one_sided.mean == pytest.approx(e.mean)  # a stratum lacking b is skipped


def test_tables_show_gaps_not_zeros(tmp_path):
    assert number(math.nan) == GAP and number(None) == GAP and number(0.0) == "0"
    assert estimate(None) == GAP and estimate(Estimate(1.0, 0.5, 1.5, 10)) == "1 [0.5, 1.5]"
    path = write_csv(tmp_path / "t.csv", [_row(0.5, False), _row(0.25, True)])
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    assert "gap_complement_low" in header and "drop_full_mean" in header
    assert all(len(line.split(",")) == len(header) for line in lines)
    assert lines[1].split(",")[header.index("gap_complement_mean")] == ""
    assert lines[1].split(",")[header.index("faithfulness")] == ""


def test_densities_are_keyed_as_density_key_spells_them():
    assert density_of("0.05") == density_of(0.05) == 0.05
    assert density_of(0.1 + 0.2) == density_of("0.3") == 0.3
    assert density_of("1e-07") != density_of("2e-07")  # small targets keep apart
    for d in (0.5, 0.35, 0.25, 0.15, 0.05, 1 / 3):
        assert density_key(density_of(density_key(d))) == density_key(d)
