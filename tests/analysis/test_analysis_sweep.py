"""The report on a real sweep, and what the sweep leaves in MLflow for a reader of its UI: the `tiny` preset run
through Ray Tune into a temporary MLflow store, then analysed (the shared `tiny_sweep` fixture)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from analysis.report import SECTIONS
from circuitlib.discovery import DiscoveryConfig
from record import names

pytestmark = pytest.mark.integration


def test_report_on_the_tiny_sweep(tiny_sweep):
    out, uri = tiny_sweep.report, tiny_sweep.uri
    printed = tiny_sweep.output.splitlines()
    assert f"report: {out / 'report.md'} and report.html" in printed  # the sweep ended by running its analysis
    assert "Downloading artifacts" not in tiny_sweep.errors  # no progress bar per circuit the report reads
    verdicts = [line for line in printed if line.startswith("  claim ")]
    assert [line.split(",")[0] for line in verdicts] == [f"  claim {i}" for i in (1, 2, 3, 4)]
    text = (out / "report.md").read_text()
    for section in SECTIONS:
        assert f"## {section}" in text
    for plot in ("size_window", "overlap", "composition_by_layer", "discovery"):
        path = out / "plots" / f"{plot}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/{plot}.png" in text
    assert "determiner_noun" in text and "hierarchy" in text
    assert "no edits of the full model" not in text

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], f"tags.`{names.TAG_KIND}` = 'analysis'")
    parent = client.search_runs([exp.experiment_id], f"tags.`{names.TAG_KIND}` = 'sweep'")[0]
    assert len(runs) == 1 and runs[0].data.tags[names.PARENT_TAG] == parent.info.run_id
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"report.md", "report.html", "plots", "tables"} <= artifacts


def test_runs_carry_what_the_ui_plots_and_links(tiny_sweep, tmp_path):
    client = MlflowClient(tiny_sweep.uri)
    exp = client.get_experiment_by_name("tiny")
    assert exp is not None and exp.tags[names.NOTE_TAG] and exp.tags[names.EXPERIMENT_KIND_TAG]
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get(names.TAG_KIND) == "sweep")
    assert "Headline findings" in parent.data.tags[names.NOTE_TAG] and "window_found" in parent.data.metrics
    commit = parent.data.tags.get(names.GIT_COMMIT_TAG)  # the sweep ran from this checkout
    trials = [r for r in runs if r.data.tags.get(names.TAG_KIND) in ("discover", "edit")]
    assert commit and len(trials) == 28 and all(r.data.tags.get(names.GIT_COMMIT_TAG) == commit for r in trials)

    discovery = next(r for r in runs if r.info.run_name == names.discover_run_name("hierarchy", 0))
    assert {f"discovery.{k}" for k in DiscoveryConfig.__dataclass_fields__} <= set(discovery.data.params)
    assert discovery.data.params["discovery.lr"] == "0.1"  # the preset's, not the default
    assert discovery.inputs is not None
    assert {d.dataset.name for d in discovery.inputs.dataset_inputs} == {"hierarchy/train", "hierarchy/eval"}
    history = client.download_artifacts(discovery.info.run_id, "history.json", str(tmp_path))
    json.loads(open(history).read(), parse_constant=lambda c: pytest.fail(f"history.json holds {c}"))

    edit = next(r for r in runs if r.info.run_name == names.edit_run_name("hierarchy", 0.5, "complement", 0))
    assert {k: edit.data.params[k] for k in ("dataset", "target_density", "variant", "seed")} == {
        "dataset": "hierarchy",
        "target_density": "0.5",
        "variant": "complement",
        "seed": "0",
    }
    circuit = discovery.data.metrics[names.circuit_metric(0.5, "density")]
    assert edit.data.metrics[names.EDIT_DENSITY] == pytest.approx(circuit)
    link = f"/runs/{discovery.info.run_id}?{names.MODEL_TRAINING_VIEW})"
    assert link in edit.data.tags[names.NOTE_TAG]  # links its circuit's discovery
    assert edit.inputs is not None and [d.dataset.name for d in edit.inputs.dataset_inputs] == ["hierarchy/shard0"]
    table = json.loads(
        open(client.download_artifacts(edit.info.run_id, names.EDITS_ARTIFACT, str(tmp_path))).read(),
        parse_constant=lambda c: pytest.fail(f"{names.EDITS_ARTIFACT} holds {c}"),
    )
    assert table["columns"][:5] == ["case_id", "prompt", "subject", "target_true", "target_new"]
    assert "nll_new_drop" in table["columns"] and len(table["data"]) == 2  # the shard's two requests
    assert json.loads(edit.data.tags["mlflow.loggedArtifacts"]) == [{"path": names.EDITS_ARTIFACT, "type": "table"}]

    full = next(r for r in runs if r.info.run_name == names.edit_run_name(None, None, names.FULL, 0))
    assert full.data.params["variant"] == names.FULL and full.data.metrics[names.EDIT_DENSITY] == 1.0
