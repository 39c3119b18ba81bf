"""The tiny sweep as a researcher browses it: `mlflow ui` on the sweep's store, driven in a real Chromium.

Chromium is Debian's (`apt-get install chromium`, which .ci/run does), driven by Python Playwright through
`executable_path`; nothing is downloaded. Without Chromium the test is skipped with the reason in pytest's summary;
without Playwright (a dev dependency) it fails. Screenshots go to the test's folder, and also to
$CIRCUITLIB_SCREENSHOTS where set (how docs/screenshots/ was made).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from mlflow.tracking import MlflowClient
from servers import mlflow_process

from record import names

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium tries to reach Google's services, and on a closed network its
# connections are refused; a fresh profile keeps the UI's remembered state out.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_START_S = 240  # mlflow ui takes half a minute to answer on a busy two-core machine
STEP_MS = 90_000  # each page wait
ML = "workflowType=machine_learning"  # the UI's model-training view (its default is GenAI traces)


@pytest.fixture(scope="module")
def mlflow_ui(tiny_sweep, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow ui` on the tiny sweep's store, on a free port; its base URL."""
    log = tmp_path_factory.mktemp("mlflow_ui") / "mlflow_ui.log"
    with mlflow_process("ui", ["--backend-store-uri", tiny_sweep.uri], tiny_sweep.env, log, UI_START_S) as base:
        yield base


@pytest.fixture
def page(tmp_path: Path):
    """A page of a fresh headless Debian Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Python Playwright is missing: it is a dev dependency (pip install -e '.[dev]')")
    if not CHROMIUM.is_file():
        pytest.skip(
            f"NO BROWSER: {CHROMIUM} is absent, so the MLflow UI is not checked (apt-get install chromium; "
            ".ci/run installs it)"
        )
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1600, "height": 1500},  # the whole run tree of the tiny sweep, unscrolled
        )
        context.set_default_timeout(STEP_MS)
        try:
            yield context.new_page()
        finally:
            context.close()


def _shoot(page, tmp_path: Path, name: str) -> None:
    """A screenshot into the test's folder, and into $CIRCUITLIB_SCREENSHOTS where set."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("CIRCUITLIB_SCREENSHOTS"):
        folder = Path(os.environ["CIRCUITLIB_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)


def _runs_page(page, base: str, experiment_id: str, query: str = "") -> None:
    """The experiment's runs, loaded, with the assistant panel closed where it opens."""
    page.goto(f"{base}/#/experiments/{experiment_id}/runs?{ML}{query}")
    page.wait_for_selector("text=matching runs")
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def _expand(page, parent_id: str) -> None:
    """Open the sweep's run in the runs table, showing its children (the UI remembers an open one between pages)."""
    toggle = page.locator(f".ag-row[row-id='{parent_id}'] button[data-component-id$='runnamecellrenderer.tsx_46']")
    toggle.wait_for()
    time.sleep(2)  # the table draws remembered open runs after the runs themselves
    child = page.locator(".ag-row", has_text=names.edit_run_name(None, None, names.FULL, 0)).first
    if not child.count():
        toggle.click()
    child.wait_for(state="attached")


def _choose(page, dialog, index: int, value: str) -> None:
    """Pick `value` in the dialog's `index`-th searchable select (X axis 0, Y axis 1)."""
    from playwright.sync_api import expect

    select = dialog.locator("[class*=select-selection-item]").nth(index)
    select.click()
    page.keyboard.type(value)
    time.sleep(1)
    page.keyboard.press("Enter")
    expect(select).to_have_attribute("title", value, timeout=STEP_MS)


def test_the_sweep_reads_in_the_mlflow_ui(tiny_sweep, mlflow_ui, page, tmp_path):
    client = MlflowClient(tiny_sweep.uri)
    exp = client.get_experiment_by_name("tiny")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get(names.TAG_KIND) == "sweep").info.run_id
    analysis = next(r for r in runs if r.data.tags.get(names.TAG_KIND) == "analysis").info.run_id

    # The address the sweep prints opens, in a fresh browser, on the runs table (not MLflow 3.17's GenAI view).
    browse = next(line for line in tiny_sweep.output.splitlines() if line.startswith("browse:"))
    printed = browse.split("then open ")[1].strip()
    assert printed == names.experiment_url("http://127.0.0.1:5000", exp.experiment_id)
    page.goto(printed.replace("http://127.0.0.1:5000", mlflow_ui))
    page.wait_for_selector("text=matching runs")
    sweep_name = next(r.info.run_name for r in runs if r.info.run_id == parent)
    page.locator(".ag-row a", has_text=sweep_name).first.wait_for(state="attached")

    # The run tree: the sweep's run opens onto its discovery, edit and analysis runs.
    _runs_page(page, mlflow_ui, exp.experiment_id)
    _expand(page, parent)
    page.locator(".ag-row a", has_text=names.discover_run_name("hierarchy", 0)).first.wait_for(state="attached")
    shown = page.locator(".ag-row a").all_inner_texts()  # every run of the tree is in the table, scrolled or not
    assert {r.info.run_name for r in runs} <= set(shown), sorted(shown)
    _shoot(page, tmp_path, "run_tree")

    # An edit metric charted against the circuit's actual density, over every edit run.
    _runs_page(
        page,
        mlflow_ui,
        exp.experiment_id,
        f"&compareRunsMode=CHART&searchFilter={quote(f'tags.`{names.TAG_KIND}` = ' + repr('edit'))}",
    )
    page.get_by_test_id("experiment-view-runs-visibility-column-header").click()
    page.get_by_role("menuitemradio", name="Show all runs").click()
    _expand(page, parent)
    page.get_by_role("button", name="Add chart").first.click()
    page.get_by_role("menuitem", name="Scatter chart").click()
    dialog = page.get_by_role("dialog")
    _choose(page, dialog, 0, names.EDIT_DENSITY)
    _choose(page, dialog, 1, "nll_new_drop")
    points = dialog.locator(".scatterlayer .point")
    points.first.wait_for()
    assert points.count() >= 8  # the 16 masked-variant shards and 2 full ones, several at one density
    assert dialog.locator(".xtitle").text_content() == names.EDIT_DENSITY
    _shoot(page, tmp_path, "scatter_nll_new_drop_vs_density")
    dialog.get_by_role("button", name="Add chart").click()

    # The report inside MLflow's artifact viewer, its images loaded from the page itself.
    page.goto(f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs/{analysis}/artifacts/report.html?{ML}")
    frame = page.frame_locator("iframe").first
    images = frame.locator("img")
    images.first.wait_for()
    deadline = time.monotonic() + STEP_MS / 1000
    while True:  # decoding four PNGs from data URIs takes a moment on a busy machine
        sizes = [images.nth(i).evaluate("img => img.complete ? img.naturalWidth : 0") for i in range(images.count())]
        if (len(sizes) == 4 and all(sizes)) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(sizes) == 4 and all(sizes), f"report images in the artifact viewer, naturalWidth: {sizes}"
    _shoot(page, tmp_path, "report_in_artifact_viewer")

    # The sweep's run: the findings as its description.
    page.goto(f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs/{parent}?{ML}")
    page.get_by_text("Headline findings of sweep tiny").first.wait_for()
    _shoot(page, tmp_path, "sweep_run_description")
