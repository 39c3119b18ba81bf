"""The analysis of a synthetic sweep laid out in a temporary MLflow store exactly as record/names.py says.

The sweep has three datasets, four densities, a planted effect (the complement learns more than the circuit at
0.25, 0.15 and 0.05; the circuit is faithful only down to 0.15, so the circuits of 0.05 are left out of every
finding), one density never reached (gamma at 0.05) and one failed trial (a random-variant edit run with no
artifacts), so every table, gap and note is predictable.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import subprocess
import sys
from dataclasses import asdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from analysis import plots
from analysis.cli import main
from analysis.composition import ALL_LAYERS
from analysis.overlap import WHOLE_MODEL
from analysis.pipeline import Analysis, Options, analyse
from analysis.publish import log_analysis
from analysis.report import SECTIONS, write_report
from analysis.window import POOLED
from circuitlib import circuits
from circuitlib.circuits import Circuit
from circuitlib.editing import RequestResult
from circuitlib.types import MaskedParam, ModuleType
from record import names
from record.reader import read_sweep

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "synthetic"
DATASETS = ("alpha", "beta", "gamma")
DENSITIES = (0.5, 0.25, 0.15, 0.05)
UNREACHED = {"gamma": 0.05}
FAITHFULNESS = {0.5: 0.99, 0.25: 0.95, 0.15: 0.92, 0.05: 0.6}
GAP = {0.5: -0.5, 0.25: 1.0, 0.15: 1.0, 0.05: 1.0}  # planted complement - circuit learning gap
RANDOM_GAP = 0.4
REQUESTS = 40
FAILED = names.edit_run_name("alpha", 0.25, "random", 0)
LAYER: tuple[tuple[str, tuple[int, ...], ModuleType], ...] = (
    ("ln_1.weight", (6,), "norm"),
    ("attn.c_attn.weight", (6, 9), "attention"),
    ("attn.c_attn.bias", (9,), "attention"),
    ("mlp.c_fc.weight", (6, 13), "mlp"),
    ("mlp.c_proj.bias", (5,), "mlp"),
)
PARAMS = [
    MaskedParam(f"h.{layer}.{name}", shape, module_type, layer)
    for layer in range(3)
    for name, shape, module_type in LAYER
]
TOTAL = sum(p.numel for p in PARAMS)


def circuit_masks(dataset: str, density: float) -> dict[str, np.ndarray]:
    """The top `density` of weights by a score shared by all datasets plus dataset noise: overlap above chance."""
    shared = np.random.default_rng(0).random(TOTAL)
    noise = np.random.default_rng(DATASETS.index(dataset) + 1).random(TOTAL)
    score = shared + noise
    keep = np.zeros(TOTAL, dtype=bool)
    keep[np.argsort(-score)[: round(density * TOTAL)]] = True
    out, start = {}, 0
    for p in PARAMS:
        out[p.name] = keep[start : start + p.numel].reshape(p.shape)
        start += p.numel
    return out


def snapshot_step(density: float) -> int:
    return 10 * (DENSITIES.index(density) + 1)


def edit_rows(dataset: str, density: float, variant: str) -> list[dict]:
    """Per-request rows with the planted learning (drop in NLL of the new target) of each variant."""
    rng = np.random.default_rng([DATASETS.index(dataset), DENSITIES.index(density)])
    base = 1.0 + rng.normal(0, 0.3, REQUESTS)
    noise = {v: rng.normal(0, 0.3, REQUESTS) for v in ("complement", "random")}
    drop = {
        "circuit": base,
        "complement": base + GAP[density] + noise["complement"],
        "random": base + RANDOM_GAP + noise["random"],
    }[variant]
    nll_true = 2.0 if variant == "circuit" else 3.0
    return [asdict(result(case, variant, float(d), nll_true)) for case, d in enumerate(drop)]


def result(case: int, variant: str, drop: float, nll_true: float) -> RequestResult:
    return RequestResult(
        case_id=case,
        variant=variant,
        steps=10,
        final_loss=0.1,
        nll_new_pre=5.0,
        nll_true_pre=nll_true,
        nll_new_post=5.0 - drop,
        nll_true_post=nll_true + 0.1,
        nll_new_drop=drop,
        efficacy_score_pre=0.0,
        efficacy_score=float(drop > 1.0),
        efficacy_magnitude=0.1,
        paraphrase_score=0.5,
        paraphrase_magnitude=0.0,
        neighborhood_score_pre=1.0,
        neighborhood_score=1.0,
        neighborhood_magnitude=0.0,
    )


def child(client: MlflowClient, exp: str, parent: str, name: str, tags: dict[str, str], status: str = "FINISHED"):
    """A nested run of the sweep, tagged as record/names.py says."""
    run = client.create_run(
        exp,
        run_name=name,
        tags={
            names.PARENT_TAG: parent,
            names.TAG_SWEEP: "synth",
            names.TAG_TRIAL: name,
            names.TAG_MODEL: "toy",
            **tags,
        },
    )
    return run.info.run_id


def json_artifact(client: MlflowClient, run_id: str, rows: list[dict], folder: Path) -> None:
    path = folder / run_id / names.EDITS_ARTIFACT
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rows))
    client.log_artifact(run_id, str(path))


def build_sweep(uri: str, scratch: Path) -> str:
    """Log the synthetic sweep; returns the parent run id."""
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(scratch / "artifacts"))
    parent = client.create_run(
        exp, run_name="synth", tags={names.TAG_KIND: "sweep", names.TAG_SWEEP: "synth", names.TAG_MODEL: "toy"}
    ).info.run_id
    for dataset in DATASETS:
        tags = {names.TAG_KIND: "discover", names.TAG_DATASET: dataset, names.TAG_SEED: "0"}
        if dataset in UNREACHED:
            tags[names.TAG_UNREACHED] = f"{UNREACHED[dataset]:g}"
        run_id = child(client, exp, parent, names.discover_run_name(dataset, 0), tags)
        history = []
        for d in DENSITIES:
            step = snapshot_step(d)
            history += [
                Metric("density", d, 0, step),
                Metric("faithfulness", FAITHFULNESS[d], 0, step),
                Metric("density", d + 0.05, 0, step - 5),
                Metric("faithfulness", 1.0, 0, step - 5),
            ]
            if UNREACHED.get(dataset) == d:
                continue
            provenance = {"dataset": dataset, "seed": 0, "step": step}
            if dataset != "beta":  # beta's faithfulness comes from its metric history
                provenance["faithfulness"] = FAITHFULNESS[d]
            c = Circuit.from_masks(PARAMS, circuit_masks(dataset, d), "toy", target_density=d, provenance=provenance)
            path = circuits.save(c, scratch / run_id / names.circuit_artifact(d))
            client.log_artifact(run_id, str(path), names.CIRCUITS_DIR)
        client.log_batch(run_id, metrics=history)
        client.set_terminated(run_id)
        for d in DENSITIES:
            if UNREACHED.get(dataset) == d:
                continue
            for variant in ("circuit", "complement", "random"):
                name = names.edit_run_name(dataset, d, variant, 0)
                tags = {
                    names.TAG_KIND: "edit",
                    names.TAG_DATASET: dataset,
                    names.TAG_SEED: "0",
                    names.TAG_TARGET: f"{d:g}",
                    names.TAG_VARIANT: variant,
                    names.TAG_SHARD: "0",
                    names.TAG_CIRCUIT_RUN: run_id,
                    names.TAG_CIRCUIT_ARTIFACT: names.circuit_artifact(d),
                }
                edit_id = child(client, exp, parent, name, tags)
                if name == FAILED:
                    client.set_terminated(edit_id, "FAILED")
                    continue
                json_artifact(client, edit_id, edit_rows(dataset, d, variant), scratch)
                client.set_terminated(edit_id)
    full = child(
        client,
        exp,
        parent,
        names.edit_run_name(None, None, names.FULL, 0),
        {names.TAG_KIND: "edit", names.TAG_VARIANT: names.FULL, names.TAG_SHARD: "0"},
    )
    json_artifact(client, full, [asdict(result(i, "full", 2.0, 1.5)) for i in range(REQUESTS)], scratch)
    client.set_terminated(full)
    client.set_terminated(parent)
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """(tracking URI, sweep run id, scratch folder) of the synthetic sweep."""
    scratch = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{scratch}/mlflow.db"
    return uri, build_sweep(uri, scratch), scratch


@pytest.fixture(scope="module")
def analysed(store) -> tuple[Analysis, object, str]:
    """The analysis of the synthetic sweep, its report and its analysis run id."""
    uri, parent, scratch = store
    sweep = read_sweep(EXPERIMENT, None, scratch / "cache", uri)
    options = Options(n_boot=500)
    a = analyse(sweep, options)
    report = write_report(a, scratch / "report")
    return a, report, log_analysis(sweep, report, options)


def test_sweep_is_read_as_laid_out(analysed, store):
    a, _, _ = analysed
    s = a.sweep
    assert s.run_id == store[1] and s.name == "synth" and s.model == "toy"
    assert s.densities == list(DENSITIES)
    assert [a.labels[x] for x in s.sources] == list(DATASETS)
    assert {d.source.dataset: sorted(d.circuits) for d in s.discoveries} == {
        "alpha": sorted(DENSITIES),
        "beta": sorted(DENSITIES),
        "gamma": sorted(DENSITIES[:3]),
    }
    failed = next(e for e in s.edits if e.name == FAILED)
    assert failed.status == "FAILED" and failed.rows == []


def test_overlap_matches_brute_force(analysed):
    a, _, _ = analysed
    rows = {(r.density, r.a, r.b, r.module): r for r in a.overlaps}
    for d in DENSITIES[:3]:
        for x, y in combinations(DATASETS, 2):
            mx, my = circuit_masks(x, d), circuit_masks(y, d)
            fx = np.concatenate([mx[p.name].ravel() for p in PARAMS])
            fy = np.concatenate([my[p.name].ravel() for p in PARAMS])
            inter, union = int((fx & fy).sum()), int((fx | fy).sum())
            pa, pb = fx.mean(), fy.mean()
            r = rows[d, x, y, WHOLE_MODEL]
            assert r.jaccard == pytest.approx(inter / union)
            assert r.overlap_coefficient == pytest.approx(inter / min(fx.sum(), fy.sum()))
            assert r.expected_jaccard == pytest.approx(pa * pb / (pa + pb - pa * pb))
            assert r.expected_overlap_coefficient == pytest.approx(max(pa, pb))
            assert r.jaccard_ratio == pytest.approx(r.jaccard / r.expected_jaccard)
            assert r.jaccard_ratio > 1  # the shared score makes circuits overlap more than chance
            for module in ("attention", "mlp", "norm"):
                group = [p.name for p in PARAMS if p.module_type == module]
                gx = np.concatenate([mx[n].ravel() for n in group])
                gy = np.concatenate([my[n].ravel() for n in group])
                assert rows[d, x, y, module].jaccard == pytest.approx((gx & gy).sum() / (gx | gy).sum())


def test_missing_circuit_is_a_gap_with_a_note(analysed):
    a, _, _ = analysed
    gaps = [r for r in a.overlaps if r.density == 0.05 and "gamma" in (r.a, r.b)]
    assert len(gaps) == 2 and all(math.isnan(r.jaccard) and r.module == WHOLE_MODEL for r in gaps)
    row = next(r for r in a.window_rows if r.scope == "gamma" and r.density == 0.05)
    assert row.drop["circuit"] is None and row.gap["complement"] is None and math.isnan(row.faithfulness)
    assert math.isnan(row.success["circuit"]) and math.isnan(row.knowledge["circuit"]) and not row.in_window
    assert not [e for e in a.composition if e.source == "gamma" and e.density == 0.05]
    assert any("gamma" in n and "0.05 never reached" in n for n in a.notes)
    assert any(FAILED in n and "FAILED" in n for n in a.notes)
    assert any("alpha at density 0.25: no random edits" == n for n in a.notes)


def test_window_rows_match_hand_computation(analysed):
    a, _, _ = analysed
    rows = {(r.scope, r.density): r for r in a.window_rows}
    for d in DENSITIES[:3]:  # the faithful ones
        have = [x for x in DATASETS if UNREACHED.get(x) != d]
        gaps = np.concatenate(
            [
                np.array([r["nll_new_drop"] for r in edit_rows(x, d, "complement")])
                - np.array([r["nll_new_drop"] for r in edit_rows(x, d, "circuit")])
                for x in have
            ]
        )
        pooled = rows[POOLED, d]
        assert pooled.gap["complement"].paired and pooled.gap["complement"].n == REQUESTS * len(have)
        assert pooled.gap["complement"].mean == pytest.approx(gaps.mean())
        assert pooled.gap["complement"].low < gaps.mean() < pooled.gap["complement"].high
        assert pooled.faithfulness == pytest.approx(FAITHFULNESS[d]) and pooled.circuits == len(have)
        assert pooled.actual_density == pytest.approx(round(d * TOTAL) / TOTAL)
        assert pooled.knowledge["circuit"] == 2.0 and pooled.knowledge["complement"] == 3.0
        assert pooled.drop["full"].mean == pytest.approx(2.0) and pooled.success["full"] == 1.0
        circuit = np.concatenate([[r["efficacy_score"] for r in edit_rows(x, d, "circuit")] for x in have])
        assert pooled.success["circuit"] == pytest.approx(circuit.mean())
    assert rows["alpha", 0.25].gap["random"] is None
    assert rows[POOLED, 0.25].gap["random"].n == 2 * REQUESTS  # beta and gamma only
    unfaithful = rows[POOLED, 0.05]  # the circuit resists there, but is not faithful: its edits are left out
    assert unfaithful.gap["complement"] is None and unfaithful.drop["circuit"] is None and unfaithful.circuits == 0
    assert math.isnan(unfaithful.faithfulness) and not unfaithful.in_window
    assert rows[POOLED, 0.5].gap["complement"].below_zero


def test_window_is_the_planted_one(analysed):
    a, report, _ = analysed
    assert a.window.densities == (0.15, 0.25) and a.window.contiguous
    assert a.window.describe() == "[0.15, 0.25]"
    assert [w.describe() for w in a.windows[1:]] == ["[0.15, 0.25]"] * 3
    assert report.headline.resists == (0.25, 0.15)  # not 0.05: its circuits are not faithful


def test_composition_shares_sum_to_one(analysed):
    a, _, _ = analysed
    circuits_seen = {(e.source, e.density) for e in a.composition}
    assert len(circuits_seen) == 9  # 11 circuits, less the two unfaithful ones of 0.05
    assert not [e for e in a.composition if e.density == 0.05]
    for source, d in circuits_seen:
        by_module = [e for e in a.composition if (e.source, e.density, e.layer) == (source, d, ALL_LAYERS)]
        by_layer = [e for e in a.composition if (e.source, e.density) == (source, d) and e.layer != ALL_LAYERS]
        assert sum(e.share_of_circuit for e in by_module) == pytest.approx(1.0)
        assert sum(e.share_of_circuit for e in by_layer) == pytest.approx(1.0)
        assert sum(e.share_of_model for e in by_module) == pytest.approx(1.0)
        masks = circuit_masks(source, d)
        for e in by_module:
            kept = sum(int(masks[p.name].sum()) for p in PARAMS if p.module_type == e.module_type)
            assert e.kept == kept


def test_faithfulness_from_provenance_or_history(analysed):
    a, _, _ = analysed
    for s in a.snapshots:
        assert s.faithfulness == pytest.approx(FAITHFULNESS[s.target]) and s.step == snapshot_step(s.target)


def test_report_has_every_section_and_plot(analysed):
    _, report, _ = analysed
    text = report.markdown.read_text()
    html = report.html.read_text()
    for section in SECTIONS:
        assert f"## {section}" in text and f">{section}</h2>" in html
    assert text.index("## Circuits judged") < text.index("## Headline findings") < text.index("## Size window")
    assert "**2 of 11 circuits excluded** from every finding" in text  # alpha's and beta's at 0.05
    assert "confirmation bias" in text and "between 5% and 50%" in text and "60%" in text
    assert "[0.15, 0.25]" in text
    assert {p.name for p in report.plots} == {
        "size_window.png",
        "overlap.png",
        "composition_by_layer.png",
        "discovery.png",
    }
    for plot in report.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
        assert f"](plots/{plot.name})" in text  # report.md links its plots; report.html carries them
        assert f'src="data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()}"' in html
    assert 'src="plots/' not in html and 'href="tables/' not in html  # nothing a lone page cannot follow
    assert "| <table>" not in html and "<table>" in html
    with (report.folder / "tables" / "window.csv").open() as f:
        gamma = next(row for row in csv.DictReader(f) if row["scope"] == "gamma" and row["density"] == "0.05")
    measured = {
        k: v
        for k, v in gamma.items()  # less its keys and the full model's reference, the same everywhere
        if k not in ("scope", "density", "in_window", "circuits") and "_full" not in k
    }
    assert gamma["circuits"] == "0" and set(measured.values()) == {""}  # gaps, not zeros


def test_analysis_run_is_logged_under_the_sweep(analysed, store):
    uri, parent, _ = store
    _, _, run_id = analysed
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "analysis" and run.info.status == "FINISHED"
    assert run.data.tags[names.PARENT_TAG] == parent
    assert run.data.tags[names.TAG_KIND] == "analysis" and run.data.tags[names.TAG_SWEEP] == "synth"
    assert run.data.metrics["window_low"] == 0.15 and run.data.metrics["window_high"] == 0.25
    assert run.data.metrics["window_upper_edge_observed"] == 1.0  # 0.5 was tested and does not resist
    assert run.data.metrics["window_lower_edge_observed"] == 0.0  # 0.05's circuits are not faithful
    assert run.data.metrics["mean_jaccard_ratio"] > 1
    assert run.data.metrics["circuits"] == 11 and run.data.metrics["circuits_excluded"] == 2
    assert run.data.params["faithfulness_threshold"] == "0.9"
    top = {f.path for f in client.list_artifacts(run_id)}
    assert {"report.md", "report.html", "plots", "tables"} <= top
    assert len(client.list_artifacts(run_id, "plots")) == 4


def test_the_sweep_run_gets_the_headline_metrics_report_and_findings(analysed, store):
    uri, parent, _ = store
    _, report, run_id = analysed
    client = MlflowClient(uri)
    sweep, analysis = client.get_run(parent), client.get_run(run_id)
    assert sweep.data.metrics == analysis.data.metrics and sweep.data.metrics["window_low"] == 0.15
    assert {f.path for f in client.list_artifacts(parent)} == {"report.html"}
    local = Path(client.download_artifacts(parent, "report.html", str(report.folder.parent / "parent")))
    assert local.read_text() == report.html.read_text()
    note = sweep.data.tags[names.NOTE_TAG]
    assert "Headline findings" in note and "**[0.15, 0.25]**" in note
    assert f"/runs/{run_id}?{names.MODEL_TRAINING_VIEW})" in note  # the analysis run linked
    assert note.count("| **") == 4  # a verdict per claim


def test_cli_report(store, tmp_path):
    uri, parent, scratch = store
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis",
            "report",
            "--experiment",
            EXPERIMENT,
            "--sweep",
            parent,
            "--tracking-uri",
            uri,
            "--out",
            str(out),
            "--cache",
            str(scratch / "cache"),
            "--bootstrap",
            "200",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "size window: [0.15, 0.25]" in proc.stdout and "analysis run:" in proc.stdout
    assert "circuits: 9 faithful and used, 2 excluded" in proc.stdout
    assert (out / "report.md").is_file() and (out / "report.html").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment", "nope"], "experiment 'nope' not found"),
        (["--experiment", EXPERIMENT, "--sweep", "0123abcd"], "run '0123abcd' not found"),
        (["--experiment", EXPERIMENT, "--sweep", "DISCOVERY"], "is not a sweep"),
        (["--experiment", EXPERIMENT, "--faithfulness", "1.5"], "--faithfulness '1.5': must lie in [0, 1]"),
        (["--experiment", EXPERIMENT, "--bootstrap", "50"], "--bootstrap '50': must be an integer of at least 100"),
        (["--experiment", EXPERIMENT, "--confidence", "1"], "--confidence '1': must lie strictly between 0 and 1"),
        (["--experiment", EXPERIMENT, "--tracking-uri", "sqlite:///no/such.db"], "no/such.db does not exist"),
    ],
)
def test_bad_input_is_one_line(store, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # what main() sets, undone after the test
    uri, _, _ = store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    discovery = client.search_runs([experiment.experiment_id], f"tags.`{names.TAG_KIND}` = 'discover'")[0].info.run_id
    args = [discovery if x == "DISCOVERY" else x for x in args]
    if "--tracking-uri" not in args:
        args += ["--tracking-uri", uri]
    assert main(["report", *args, "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("analysis: error:") and message in err[0]
    assert not (tmp_path / "o").exists()


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis",
            "report",
            "--experiment",
            "x",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/none.db",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"analysis: error: tracking URI sqlite:///{tmp_path}/none.db: {tmp_path}/none.db does not exist"
    ]


def test_report_on_a_sweep_with_nothing_but_a_failed_trial(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("empty", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, run_name="empty", tags={names.TAG_KIND: "sweep"}).info.run_id
    failed = child(
        client,
        exp,
        parent,
        names.discover_run_name("alpha", 0),
        {names.TAG_KIND: "discover", names.TAG_DATASET: "alpha", names.TAG_SEED: "0"},
    )
    client.set_terminated(failed, "FAILED")
    a = analyse(read_sweep("empty", parent, tmp_path / "cache", uri), Options(n_boot=200))
    report = write_report(a, tmp_path / "report")
    text = report.markdown.read_text()
    assert all(f"## {section}" in text for section in SECTIONS)
    assert f"{names.discover_run_name('alpha', 0)}: FAILED, 0 circuit(s) kept" in text
    assert "no edits of the full model" in text
    assert text.count("**not assessable**") == 4 and a.window.describe() == "none"
    assert "no circuit to judge from" in text
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in report.plots)


def test_overlap_colour_is_spent_on_the_pairs_not_the_diagonal(analysed):
    a, _, _ = analysed
    labels = list(a.labels.values())
    fig = plots.overlap_figure(a.overlaps, labels, a.sweep.densities)
    whole = [r for r in a.overlaps if r.module == WHOLE_MODEL]
    ratios = [v for r in whole for v in (r.jaccard_ratio, r.overlap_ratio) if not math.isnan(v)]
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2 * len(DENSITIES)
    for im in images:
        cells = im.get_array()
        assert cells is not None and np.ma.getmaskarray(cells).diagonal().all()  # the diagonal takes no colour
        # one scale from the pairs' own ratios, with chance (1, white) inside it
        assert im.norm.vmin == pytest.approx(min(*ratios, 0.99)) and im.norm.vmax == pytest.approx(max(ratios))
    top = images[0].get_array()
    assert top is not None and not np.ma.getmaskarray(top)[0, 1]  # alpha-beta at 0.5: a coloured pair
    legend = fig.axes[-1].get_ylabel()
    assert "ratio to chance" in legend and "diagonal masked" in legend


def test_composition_plot_has_a_title_a_line_per_dataset_and_the_models_share(analysed):
    a, _, _ = analysed
    fig = plots.composition_figure(a.composition, a.sweep.densities)
    suptitle = fig.get_suptitle()
    assert "Composition" in suptitle and "share of the model" in suptitle
    attention = fig.axes[0]  # attention at density 0.5
    lines = {line.get_label(): line for line in attention.get_lines()}
    assert set(lines) == {*DATASETS, "share of model"}
    model = sorted(
        (e.layer, e.share_of_model)
        for e in a.composition
        if e.density == 0.5 and e.module_type == "attention" and e.layer != ALL_LAYERS and e.source == "alpha"
    )
    assert np.asarray(lines["share of model"].get_ydata()).tolist() == pytest.approx([v for _, v in model])
