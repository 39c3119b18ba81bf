"""The record's one search and run outcomes (`record.store`) against a real MLflow SQLite store."""

from __future__ import annotations

import logging

import pytest
from mlflow.tracking import MlflowClient

from record import names, store
from record.names import RunKind


@pytest.fixture
def experiment(tmp_path) -> tuple[MlflowClient, str]:
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.create_experiment("record", artifact_location=(tmp_path / "art").as_uri())


def test_a_run_kind_reads_as_its_tag_value_everywhere() -> None:
    assert RunKind("edit") is RunKind.EDIT and RunKind.EDIT == "edit"
    assert str(RunKind.SWEEP) == f"{RunKind.SWEEP}" == "sweep" and f"{RunKind.EDIT:>6}" == "  edit"


def test_search_finds_every_page_and_only_the_runs_whose_tags_match(experiment, monkeypatch) -> None:
    client, exp = experiment
    for i in range(7):
        client.create_run(exp, run_name=f"edit{i}", tags={names.TAG_KIND: RunKind.EDIT, names.TAG_TRIAL: f"t{i}"})
    client.create_run(exp, run_name="other", tags={names.TAG_KIND: RunKind.DISCOVER})
    pages: list[int] = []
    search = client.search_runs

    def small_pages(experiment_ids, filter_string, max_results, page_token, order_by):
        pages.append(min(max_results, 3))
        return search(experiment_ids, filter_string, max_results=pages[-1], page_token=page_token, order_by=order_by)

    monkeypatch.setattr(client, "search_runs", small_pages)
    found = store.search(client, exp, {names.TAG_KIND: RunKind.EDIT})
    assert sorted(r.info.run_name or "" for r in found) == [f"edit{i}" for i in range(7)]
    assert pages == [3, 3, 3]  # three pages of at most three runs
    pages.clear()
    assert len(store.search(client, exp, {names.TAG_KIND: RunKind.EDIT}, limit=4)) == 4 and pages == [3, 1]


def test_search_quotes_a_value_with_a_quote_and_newest_first_orders_by_start(experiment) -> None:
    client, exp = experiment
    first = client.create_run(exp, tags={names.TAG_TRIAL: "it's"}, start_time=1000).info.run_id
    second = client.create_run(exp, tags={names.TAG_TRIAL: "it's"}, start_time=2000).info.run_id
    client.create_run(exp, tags={names.TAG_TRIAL: "its"})
    assert [r.info.run_id for r in store.search(client, exp, {names.TAG_TRIAL: "it's"}, newest_first=True)] == [
        second,
        first,
    ]
    assert store.find_run(client, exp, {names.TAG_TRIAL: "it's"}).info.run_id == second  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("error", "status"),
    [(None, "FINISHED"), (ValueError, "FAILED"), (SystemExit, "KILLED"), (KeyboardInterrupt, "KILLED")],
)
def test_outcome_marks_the_run_by_how_its_block_ended(experiment, error, status: str) -> None:
    client, exp = experiment
    run_id = client.create_run(exp).info.run_id
    if error is None:
        with store.outcome(client, run_id):
            pass
    else:
        with pytest.raises(error), store.outcome(client, run_id):
            raise error()
    assert client.get_run(run_id).info.status == status


def test_a_sweep_runs_params_read_back_as_its_config(experiment) -> None:
    """The sweep's run holds its config as dotted params (`options.flatten`), which read back into the same config."""
    from circuitlib import options
    from sweeps.config import SweepConfig, load_preset

    client, exp = experiment
    config = load_preset("smollm2-window")
    run_id = store.open_sweep_run(client, exp, config.name, options.flatten(config), config.settings_hash(), 0.0)
    params = client.get_run(run_id).data.params
    assert params["split.min_eval_rows"] == "400" and params["discovery.densities"].startswith("[0.7, 0.5")
    assert options.unflatten(SweepConfig, params) == config
