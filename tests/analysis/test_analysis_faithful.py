"""Findings judged only from faithful circuits, overlap against chance and stability, and honest snapshots, on
synthetic sweeps built as plain data (circuit files on disk, edit rows in memory; reading from MLflow is covered by
tests/analysis/test_analysis_report.py).

Circuits keep the top weights of a score `shared + dataset_weight * dataset's own + seed noise`: every pair overlaps
above chance, and with dataset_weight > 0 the same dataset's circuits from other seeds overlap more still.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from zlib import crc32

import numpy as np
import pytest

from analysis.bootstrap import Estimate
from analysis.findings import CONSISTENT, NOT_ASSESSABLE, NOT_CONSISTENT, PARTLY, Finding, findings, headline, metrics
from analysis.overlap import WHOLE_MODEL
from analysis.pipeline import Analysis, Options, analyse
from analysis.plots import size_window_figure
from analysis.report import write_report
from analysis.snapshots import UNKNOWN
from analysis.window import POOLED, WindowRow, estimate_window
from circuitlib import circuits
from circuitlib.circuits import Circuit
from circuitlib.types import MASKED_VARIANTS, VARIANTS, MaskedParam, ModuleType
from record.reader import Discovery, EditRun, Source, Sweep

LAYER: tuple[tuple[str, tuple[int, ...], ModuleType], ...] = (
    ("ln.weight", (8,), "norm"),
    ("attn.w", (8, 16), "attention"),
    ("mlp.w", (16, 24), "mlp"),
)
PARAMS = [
    MaskedParam(f"h.{layer}.{name}", shape, module_type, layer)
    for layer in range(2)
    for name, shape, module_type in LAYER
]
TOTAL = sum(p.numel for p in PARAMS)
DENSITIES = (0.5, 0.35, 0.15)
REQUESTS = 30
Key = tuple[str, int, float]  # (dataset, seed, target)
T = TypeVar("T")


def known(value: T | None) -> T:
    """A value the test expects the analysis to have computed."""
    assert value is not None
    return value


def score(dataset: str, seed: int, dataset_weight: float) -> np.ndarray:
    shared = np.random.default_rng(0).random(TOTAL)
    own = np.random.default_rng(crc32(dataset.encode())).random(TOTAL)
    noise = np.random.default_rng([crc32(dataset.encode()), seed + 1]).random(TOTAL)
    return shared + dataset_weight * own + noise


def masks(dataset: str, seed: int, density: float, dataset_weight: float) -> dict[str, np.ndarray]:
    keep = np.zeros(TOTAL, dtype=bool)
    keep[np.argsort(-score(dataset, seed, dataset_weight))[: round(density * TOTAL)]] = True
    out, start = {}, 0
    for p in PARAMS:
        out[p.name] = keep[start : start + p.numel].reshape(p.shape)
        start += p.numel
    return out


def edit_runs(source: Source, density: float) -> list[EditRun]:
    """Circuit and complement edits with a planted gap: the complement learns 1.0 more than the circuit."""
    rng = np.random.default_rng([crc32(source.dataset.encode()), source.seed, round(density * 100)])
    base = rng.normal(1.0, 0.2, REQUESTS)
    drops = {"circuit": base, "complement": base + 1.0 + rng.normal(0, 0.2, REQUESTS)}
    return [
        EditRun(
            f"{source}-{density}-{v}",
            v,
            "FINISHED",
            v,
            source,
            density,
            [
                {"case_id": i, "nll_new_drop": float(x), "efficacy_score": float(x > 1.5), "nll_true_pre": 2.0}
                for i, x in enumerate(drops[v])
            ],
        )
        for v in drops
    ]


def build(
    folder: Path,
    datasets: tuple[str, ...] = ("alpha", "beta"),
    seeds: tuple[int, ...] = (0,),
    faithfulness: Callable[[str, int, float], float | None] = lambda ds, seed, d: 0.95,
    dataset_weight: float = 2.0,
    actual: dict[Key, float] | None = None,
    steps: dict[Key, int] | None = None,
    recorded: dict[Key, dict[str, object]] | None = None,
    histories: dict[str, dict[str, list[tuple[int, float]]]] | None = None,
) -> Sweep:
    """A finished sweep: one discovery per dataset and seed with a circuit per density, each edited (circuit and
    complement), and the full model's edits. `actual` and `steps` override a circuit's actual density and step,
    `recorded` adds to its provenance; `histories` gives a dataset's discovery its logged curves."""
    actual, steps, recorded, histories = actual or {}, steps or {}, recorded or {}, histories or {}
    discoveries, edits = [], []
    for ds in datasets:
        for seed in seeds:
            files = {}
            for i, d in enumerate(DENSITIES):
                key = (ds, seed, d)
                provenance: dict[str, object] = {"dataset": ds, "seed": seed, "step": steps.get(key, 10 * (i + 1))}
                f = faithfulness(ds, seed, d)
                if f is not None:
                    provenance |= {"faithfulness": f, "faithfulness_low": f - 0.03, "faithfulness_high": f + 0.03}
                provenance |= recorded.get(key, {})
                c = Circuit.from_masks(
                    PARAMS,
                    masks(ds, seed, actual.get(key, d), dataset_weight),
                    "toy",
                    target_density=d,
                    provenance=provenance,
                )
                files[d] = circuits.save(c, folder / f"{ds}_{seed}_d{d:g}.safetensors")
                edits += edit_runs(Source(ds, seed), d)
            discoveries.append(
                Discovery(
                    f"run-{ds}-{seed}",
                    f"discover-{ds}-{seed}",
                    "FINISHED",
                    Source(ds, seed),
                    files,
                    [],
                    histories.get(ds, {}),
                )
            )
    full = [{"case_id": i, "nll_new_drop": 2.0, "efficacy_score": 1.0} for i in range(REQUESTS)]
    edits.append(EditRun("full", "full", "FINISHED", "full", None, None, full))
    return Sweep("sqlite:///unused.db", "synthetic", "0", "sweep-run", "synth", "toy", discoveries, edits)


def unfaithful_beta(ds: str, seed: int, d: float) -> float | None:
    """beta's circuits are at chance; alpha's are faithful except at 0.15, where faithfulness went unrecorded."""
    if ds == "beta":
        return 0.55
    return None if d == 0.15 else 0.95


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Analysis:
    """Two datasets, one seed; beta's circuits are not faithful and alpha's at 0.15 of unknown faithfulness."""
    return analyse(build(tmp_path_factory.mktemp("mixed"), faithfulness=unfaithful_beta), Options(n_boot=300))


def test_unfaithful_circuits_are_left_out_of_every_claim(mixed: Analysis):
    a = mixed
    reasons = {(s.dataset, s.target): s.excluded for s in a.excluded}
    assert reasons == {
        ("beta", 0.5): "faithfulness 0.55 < 0.9",
        ("beta", 0.35): "faithfulness 0.55 < 0.9",
        ("beta", 0.15): "faithfulness 0.55 < 0.9",
        ("alpha", 0.15): UNKNOWN,
    }
    assert [(s.dataset, s.target) for s in a.used] == [("alpha", 0.5), ("alpha", 0.35)]
    whole = [r for r in a.overlaps if r.module == WHOLE_MODEL]
    assert len(whole) == 3 and all(math.isnan(r.jaccard) for r in whole)  # every pair has an excluded circuit
    assert not [r for r in a.overlaps if r.module != WHOLE_MODEL]
    assert {(e.source, e.density) for e in a.composition} == {("alpha", 0.5), ("alpha", 0.35)}
    pooled = {r.density: r for r in a.window_rows if r.scope == POOLED}
    assert known(pooled[0.5].gap["complement"]).n == REQUESTS and pooled[0.5].circuits == 1  # alpha's requests alone
    assert pooled[0.15].gap["complement"] is None and not pooled[0.15].in_window
    beta = {r.density: r for r in a.window_rows if r.scope == "beta"}
    assert all(r.drop["circuit"] is None and r.circuits == 0 for r in beta.values())

    h = headline(a)
    bias, window, overlap, norm = findings(h, a.options.faithfulness_threshold)
    assert [f.circuits_excluded for f in (bias, window, overlap, norm)] == [4] * 4
    assert (bias.circuits_used, window.circuits_used, norm.circuits_used) == (2, 2, 2)
    assert bias.verdict == CONSISTENT  # the planted gap, from alpha's two faithful circuits
    assert overlap.verdict == NOT_ASSESSABLE and "at least two datasets" in overlap.result
    assert overlap.circuits_used == 0
    assert metrics(h)["circuits_excluded"] == 4 and metrics(h)["circuits"] == 6


def test_unknown_faithfulness_is_excluded_at_any_threshold(tmp_path: Path):
    a = analyse(build(tmp_path, faithfulness=unfaithful_beta), Options(faithfulness_threshold=0.0, n_boot=200))
    assert [(s.dataset, s.target, s.excluded) for s in a.excluded] == [("alpha", 0.15, UNKNOWN)]
    overlap = findings(headline(a), 0.0)[2]
    assert "two datasets" not in overlap.result and overlap.circuits_used == 4  # both datasets at 0.5 and 0.35
    assert "above chance" in overlap.result  # judged, up to the missing stability baseline of a single seed


def test_claims_without_a_faithful_circuit_are_not_assessable(tmp_path: Path):
    sweep = build(tmp_path, faithfulness=lambda ds, seed, d: 0.5)  # every circuit at chance, as in issue 9's demo
    strict = findings(headline(analyse(sweep, Options(n_boot=200))), 0.9)
    assert [f.verdict for f in strict] == [NOT_ASSESSABLE] * 4
    assert [f.circuits_used for f in strict] == [0] * 4 and [f.circuits_excluded for f in strict] == [6] * 4
    lax = findings(headline(analyse(sweep, Options(faithfulness_threshold=0.4, n_boot=200))), 0.4)
    assert lax[0].verdict == CONSISTENT and lax[0].circuits_used == 6  # the same data, once its circuits count
    assert all(f.verdict != NOT_ASSESSABLE for f in (lax[0], lax[1], lax[3]))


def test_size_window_is_not_assessable_without_circuits_in_the_claimed_range(tmp_path: Path):
    """Every circuit above 50% (as in the smollm2-cpu demo): the planted gap is there, but the claim is about 5-50%."""
    above = {(ds, 0, d): d + 0.4 for ds in ("alpha", "beta") for d in DENSITIES}
    h = headline(analyse(build(tmp_path, actual=above), Options(n_boot=200)))
    window = findings(h, 0.9)[1]
    assert window.verdict == NOT_ASSESSABLE and window.circuits_used == 6
    assert "does not test the claimed range" in window.result and "0.55" in window.result
    inside = findings(headline(analyse(build(tmp_path / "inside"), Options(n_boot=200))), 0.9)[1]
    assert inside.verdict == PARTLY  # the same planted gap at 15-50%, but at every density tested: no edge seen
    assert "upper edge not observed" in inside.result and "lower edge not observed" in inside.result


def window_gap(resists: bool | None) -> Estimate | None:
    """A complement - circuit gap whose interval lies above 0 (True) or around it (False); None: no gap."""
    if resists is None:
        return None
    return Estimate(1.0, 0.5, 1.5, REQUESTS) if resists else Estimate(0.1, -0.4, 0.6, REQUESTS)


def window_analysis(resists: dict[float, bool | None], actual: dict[float, float] | None = None) -> Analysis:
    """An analysis of nothing but pooled window rows: per target density, whether its faithful circuits resist
    significantly, do not, or are absent (None: no faithful, edited circuit, so no gap). Actual densities are the
    targets unless `actual` says otherwise."""
    actual = actual or {}
    rows = [
        WindowRow(
            POOLED,
            d,
            0.95 if r is not None else math.nan,
            drop=dict.fromkeys(VARIANTS),
            gap={"complement": window_gap(r), "random": None},
            success=dict.fromkeys(VARIANTS, math.nan),
            knowledge=dict.fromkeys(MASKED_VARIANTS, math.nan),
            in_window=bool(r),
            circuits=int(r is not None),
            actual_density=actual.get(d, d) if r is not None else math.nan,
        )
        for d, r in resists.items()
    ]
    sweep = Sweep("sqlite:///unused.db", "synthetic", "0", "sweep-run", "synth", "toy", [], [])
    return Analysis(sweep, Options(), {}, [], [], [], rows, [estimate_window(rows)], [])


def size_window(
    resists: dict[float, bool | None], actual: dict[float, float] | None = None
) -> tuple[Finding, dict[str, float]]:
    """Claim 2's finding and the headline metrics of `window_analysis`."""
    h = headline(window_analysis(resists, actual))
    return findings(h, 0.9)[1], metrics(h)


def test_size_window_with_both_edges_observed_is_consistent():
    window, logged = size_window({0.7: None, 0.5: False, 0.35: True, 0.15: True, 0.02: False})
    assert window.verdict == CONSISTENT and "window [0.15, 0.35]" in window.result
    assert "upper edge observed (no significant resistance at 0.5)" in window.result
    assert "lower edge observed (no significant resistance at 0.02)" in window.result
    assert "not observed" not in window.result
    assert logged["window_upper_edge_observed"] == 1.0 and logged["window_lower_edge_observed"] == 1.0


@pytest.mark.parametrize(
    ("resists", "upper", "lower", "suggested"),
    [
        # 0.7 was tried, but without a faithful, edited circuit: it does not bound the window
        ({0.7: None, 0.5: True, 0.35: True, 0.15: False}, False, True, ("above it (e.g. 0.7)",)),
        ({0.5: False, 0.15: True, 0.05: True}, True, False, ("below it (e.g. 0.02)",)),
        ({0.5: True, 0.35: True, 0.15: True}, False, False, ("above it (e.g. 0.7)", "below it (e.g. 0.02)")),
    ],
    ids=["upper", "lower", "both"],
)
def test_size_window_reaching_the_tested_range_is_partly_and_names_the_edge(
    resists: dict[float, bool | None], upper: bool, lower: bool, suggested: tuple[str, ...]
):
    window, logged = size_window(resists)
    assert window.verdict == PARTLY
    high, low = max(d for d, r in resists.items() if r), min(d for d, r in resists.items() if r)
    assert (f"upper edge not observed: {high:g} is the highest density tested" in window.result) == (not upper)
    assert (f"lower edge not observed: {low:g} is the lowest density tested" in window.result) == (not lower)
    assert ("upper edge observed" in window.result) == upper and ("lower edge observed" in window.result) == lower
    assert all(f"test a density {s}" in window.result for s in suggested)
    assert logged["window_upper_edge_observed"] == float(upper)
    assert logged["window_lower_edge_observed"] == float(lower)


def test_size_window_with_edges_but_outside_the_claimed_range_is_partly():
    window, logged = size_window({0.7: False, 0.5: True, 0.35: True, 0.15: False}, actual={0.5: 0.62})
    assert window.verdict == PARTLY and "actual densities reach outside 5%–50%" in window.result
    assert "upper edge observed" in window.result and "lower edge observed" in window.result
    assert "not observed" not in window.result
    assert logged["window_upper_edge_observed"] == 1.0 and logged["window_lower_edge_observed"] == 1.0


def test_size_window_without_a_window_is_not_consistent():
    window, logged = size_window({0.5: False, 0.35: False, 0.15: None})
    assert window.verdict == NOT_CONSISTENT and "window none" in window.result and "edge" not in window.result
    assert logged["window_found"] == 0.0
    assert "window_upper_edge_observed" not in logged and "window_lower_edge_observed" not in logged  # NaN


def test_size_window_without_faithful_circuits_in_the_claimed_range_is_not_assessable():
    window, logged = size_window({0.9: False, 0.7: True, 0.6: False, 0.15: None})
    assert window.verdict == NOT_ASSESSABLE and "does not test the claimed range" in window.result
    assert "edge" not in window.result  # the edges of a window outside the claim are not what it is judged on
    assert logged["window_upper_edge_observed"] == 1.0 and logged["window_lower_edge_observed"] == 1.0
    nothing, logged = size_window({0.5: None, 0.15: None})
    assert nothing.verdict == NOT_ASSESSABLE and "edge" not in nothing.result
    assert "window_upper_edge_observed" not in logged


def _overlap_analysis(folder: Path, seeds: tuple[int, ...], dataset_weight: float) -> Analysis:
    return analyse(build(folder, seeds=seeds, dataset_weight=dataset_weight), Options(n_boot=1000))


def test_stability_baseline_decides_moderate(tmp_path: Path):
    a = _overlap_analysis(tmp_path / "moderate", (0, 1), dataset_weight=2.0)
    rows = {b.scope: b for b in a.baselines}
    assert list(rows) == ["0.5", "0.35", "0.15", POOLED]
    for d in ("0.5", "0.35", "0.15"):
        assert known(rows[d].cross_dataset).n == 4 and known(rows[d].stability).n == 2  # 2 datasets x 2 seeds
    pooled = rows[POOLED]
    assert known(pooled.stability).mean > known(pooled.cross_dataset).mean > known(pooled.chance).mean
    assert known(pooled.above_chance).above_zero and known(pooled.below_stability).above_zero
    overlap = findings(headline(a), 0.9)[2]
    assert overlap.verdict == CONSISTENT and "below stability" in overlap.result and overlap.circuits_used == 12

    same = _overlap_analysis(tmp_path / "same", (0, 1), dataset_weight=0.0)  # other seeds differ like other datasets
    pooled = next(b for b in same.baselines if b.scope == POOLED)
    assert known(pooled.above_chance).above_zero and not known(pooled.below_stability).above_zero
    overlap = findings(headline(same), 0.9)[2]
    assert overlap.verdict == PARTLY and "not significantly below stability" in overlap.result


def test_one_seed_cannot_call_overlap_moderate(tmp_path: Path):
    a = _overlap_analysis(tmp_path, (0,), dataset_weight=2.0)
    h = headline(a)
    overlap_row = known(h.overlap)
    assert h.mean_jaccard_ratio > 1 and known(overlap_row.above_chance).above_zero  # enough for the old rule
    assert overlap_row.stability is None and overlap_row.below_stability is None
    overlap = findings(h, 0.9)[2]
    assert overlap.verdict == NOT_ASSESSABLE and "stability baseline" in overlap.result


def _first_section(text: str) -> tuple[str, str]:
    """The heading and body of a report's first `## ` section."""
    head, body = text.split("\n## ", 2)[1].split("\n", 1)
    return head, body


def test_report_first_section_names_exclusions(mixed: Analysis, tmp_path: Path):
    report = write_report(mixed, tmp_path / "report")
    heading, body = _first_section(report.markdown.read_text())
    assert heading == "Circuits judged"
    assert "**4 of 6 circuits excluded** from every finding, 2 used" in body
    beta = f"| beta | beta | 0 | 0.5 | {round(0.5 * TOTAL) / TOTAL:.4g} | 0.55 [0.52, 0.58] | faithfulness 0.55 < 0.9 |"
    assert beta in body
    assert f"| alpha | alpha | 0 | 0.15 | {round(0.15 * TOTAL) / TOTAL:.4g} | — | {UNKNOWN} |" in body
    with (report.folder / "tables" / "findings.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["circuits_used"], r["circuits_excluded"]) for r in rows] == [
        ("2", "4"),
        ("2", "4"),
        ("0", "4"),
        ("2", "4"),
    ]
    assert rows[2]["verdict"] == NOT_ASSESSABLE


@pytest.fixture(scope="module")
def flagged(tmp_path_factory: pytest.TempPathFactory) -> Analysis:
    """alpha's targets 0.5 and 0.35 got one circuit (same masks, other steps), its 0.15 snapshot is at 0.08;
    beta's 0.35 and 0.15 were snapshotted at one step."""
    sweep = build(
        tmp_path_factory.mktemp("flagged"),
        actual={("alpha", 0, 0.5): 0.34, ("alpha", 0, 0.35): 0.34, ("alpha", 0, 0.15): 0.08},
        steps={("beta", 0, 0.35): 20, ("beta", 0, 0.15): 20},
    )
    return analyse(sweep, Options(n_boot=200))


def test_shared_and_too_low_snapshots_are_flagged(flagged: Analysis, tmp_path: Path):
    shots = {(s.dataset, s.target): s for s in flagged.snapshots}
    assert shots["alpha", 0.5].shares_with == (0.35,) and shots["alpha", 0.35].shares_with == (0.5,)
    assert shots["beta", 0.35].shares_with == (0.15,) and shots["beta", 0.15].shares_with == (0.35,)
    assert shots["beta", 0.5].shares_with == () and shots["alpha", 0.15].shares_with == ()
    assert [k for k, s in shots.items() if s.below_target] == [("alpha", 0.5), ("alpha", 0.15)]  # 0.34 < 0.4 too

    report = write_report(flagged, tmp_path / "report")
    _, body = _first_section(report.markdown.read_text())
    assert "alpha targets 0.5, 0.35 share one snapshot" in body and "beta targets 0.35, 0.15 share one snapshot" in body
    assert f"alpha target 0.15: actual density {round(0.08 * TOTAL) / TOTAL:.3g} is below 0.8 × target" in body
    with (report.folder / "tables" / "snapshots.csv").open() as f:
        rows = {(r["dataset"], r["target"]): r for r in csv.DictReader(f)}
    assert rows["alpha", "0.5"]["shares_with"] == "0.35" and rows["alpha", "0.15"]["below_target"] == "True"


def test_size_window_plot_uses_actual_density_and_names_flags(flagged: Analysis):
    pooled = [r for r in flagged.window_rows if r.scope == POOLED]
    fig = size_window_figure(pooled, flagged.window, flagged.snapshots, 0.9)
    learn, _, faith = fig.axes[:3]
    actual = {d: np.mean([s.density for s in flagged.snapshots if s.target == d]) for d in DENSITIES}
    circuit_line = learn.lines[0]
    assert np.asarray(circuit_line.get_xdata()) == pytest.approx(sorted(actual.values()))
    assert sorted(actual.values()) != sorted(DENSITIES)  # the targets would have been another axis
    assert faith.get_xscale() == "log" and faith.get_xlabel().startswith("actual circuit density")
    footnote = "\n".join(t.get_text() for t in fig.texts)
    assert "flagged: alpha targets 0.5, 0.35 share one snapshot (same circuit; density" in footnote
    assert "flagged: beta targets 0.35, 0.15 share one snapshot (step 20;" in footnote
    assert "flagged: alpha target 0.15: actual density" in footnote
    rings = next(c for c in faith.collections if str(c.get_label()).startswith("flagged snapshot"))
    flagged_at = {(s.dataset, s.target) for s in flagged.snapshots if s.below_target or s.shares_with}
    assert len(np.asarray(rings.get_offsets())) == len(flagged_at) == 5
    assert {t.get_text() for t in learn.texts} == {"t=0.5", "t=0.35", "t=0.15"}


def test_faithfulness_chosen_on_the_rows_that_report_it_is_called_optimistic(tmp_path: Path):
    """A hold's snapshot is the best of its evaluations: on the same rows that score it (select_rows 0) the report
    says its faithfulness is optimistic; chosen on rows of its own, or from one evaluation, it is not."""
    sweep = build(
        tmp_path,
        recorded={
            ("alpha", 0, 0.5): {"selected_among": 9},
            ("alpha", 0, 0.35): {"selected_among": 1},
            ("beta", 0, 0.5): {"selected_among": 7, "selection_rows": 50},
        },
    )
    a = analyse(sweep, Options(n_boot=100))
    shots = {(s.dataset, s.target): s for s in a.snapshots}
    assert [k for k, s in shots.items() if s.optimistic] == [("alpha", 0.5)]
    _, body = _first_section(write_report(a, tmp_path / "report").markdown.read_text())
    assert "1 of 6 snapshots were chosen as the most faithful of several held-out evaluations (up to 9)" in body
    with (tmp_path / "report" / "tables" / "snapshots.csv").open() as f:
        rows = {(r["dataset"], r["target"]): r for r in csv.DictReader(f)}
    assert (rows["beta", "0.5"]["selected_among"], rows["beta", "0.5"]["chosen_apart"]) == ("7.0", "True")


def test_the_complement_floor_is_the_empty_complements_accuracy_and_the_report_shows_it(tmp_path: Path):
    """A complement's accuracy is read against its floor: the complement's at step 0, when the circuit kept every
    weight. Where step 0 kept fewer, or was not logged, the floor is unknown and the report shows none."""
    curves = {"density": [(0, 1.0), (10, 0.5)], "complement_accuracy": [(0, 0.59), (10, 0.62)]}
    sweep = build(
        tmp_path,
        recorded={("alpha", 0, 0.5): {"complement_accuracy": 0.62}, ("beta", 0, 0.5): {"complement_accuracy": 0.55}},
        histories={"alpha": curves, "beta": curves | {"density": [(0, 0.9), (10, 0.5)]}},
    )
    a = analyse(sweep, Options(n_boot=100))
    floors = {(s.dataset, s.target): s.complement_floor for s in a.snapshots}
    assert all(f == 0.59 for (ds, _), f in floors.items() if ds == "alpha")
    assert all(math.isnan(f) for (ds, _), f in floors.items() if ds == "beta")
    text = write_report(a, tmp_path / "report").markdown.read_text()
    table = text.split("### Circuit snapshots")[1]
    assert table.count("| 0.62 (0.59) |") == 1  # alpha at 0.5: its accuracy and the floor it is read against
    assert table.count("| 0.55 |") == 1  # beta at 0.5: no floor known
    with (tmp_path / "report" / "tables" / "snapshots.csv").open() as f:
        assert {r["dataset"]: r["complement_floor"] for r in csv.DictReader(f) if r["target"] == "0.5"}[
            "alpha"
        ] == "0.59"
