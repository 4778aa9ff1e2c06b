"""What a person sees, checked in a real browser (headless Chromium from Debian, driven by Playwright): the
MLflow UI as a new user first opens it and through the link `train` prints, comparing two runs that differ in
train.lr, and the page `dvc plots show` writes, with the network shut. Screenshots are saved under
$UI_SCREENSHOTS (default: this test's temporary folder) so a person can look at them too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import free_port, run, start_server

pytestmark = [
    pytest.mark.pipeline,
    pytest.mark.slow,
]  # on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)

# MLflow 3.17 opens its chat panel beside every page on a first visit:
# keep it shut so screenshots show the page
KEEP_ASSISTANT_CLOSED = """\
window.localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
                           window.localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"""


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(
            "Chromium is not installed: run tests/install_browser.sh (Debian's chromium package), set "
            "CHROMIUM=/path/to/chromium, or leave these tests out with -m 'not slow'"
        )
    return found


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("UI_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def mlflow_server(repo: Path, env: dict, port: int) -> subprocess.Popen:
    return start_server(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{repo / 'mlflow.db'}",
            "--workers",
            "1",
        ],
        f"http://127.0.0.1:{port}/health",
        repo,
        env,
        repo.parent / f"mlflow-server-{port}.log",
    )


def loaded_images(locator) -> list[int]:
    """naturalWidth of each <img> under `locator` (0: it did not load)."""
    return locator.evaluate_all("images => images.map(i => i.complete ? i.naturalWidth : 0)")


def metric_values(page, name: str) -> list[str] | None:
    """The values the compare view shows for metric `name`, one per run. Names and values are two virtualised
    grids (only rows in view exist) whose cells line up by their `top`: scroll both until the row appears."""
    return page.evaluate(
        """async (name) => {
        let table = document.querySelector('a[title="Plot chart"]').closest('.ReactVirtualized__Grid');
        while (table.querySelectorAll('.ReactVirtualized__Grid').length < 2) table = table.parentElement;
        const [names, values] = table.querySelectorAll('.ReactVirtualized__Grid');
        for (let top = 0; top <= names.scrollHeight; top += 90) {
            names.scrollTop = top;
            values.scrollTop = top;
            await new Promise(resolve => setTimeout(resolve, 150));
            const link = [...names.querySelectorAll('a[title="Plot chart"]')]
                .find(a => a.textContent.trim() === name);
            const top = link ? link.parentElement.style.top : null;
            const cells = link ? values.querySelectorAll('[style*="top: ' + top + ';"]') : [];
            if (cells.length) return [...cells].map(cell => cell.textContent.trim());
        }
        return null;
    }""",
        name,
    )


def close_assistant(page) -> None:
    """Close the chat panel MLflow 3.17 opens beside every page on a first visit, as a person would."""
    button = page.locator("button[aria-label='Close']").first
    if button.count() and button.is_visible():
        button.click()


def printed_link(output: str) -> str:
    """The experiment's runs link the train stage printed."""
    return re.search(r"(http://\S+viewStateShareKey=\S+)", output).group(1)


def test_a_new_user_reaches_the_runs_table_with_its_headline_figures(trained_repo, browser, shots):
    """From the UI's home page in a fresh browser, the experiment's own link opens MLflow 3.17's GenAI
    overview (its switch defaults to GenAI per browser: mlflow/mlflow#24498); the link `train` prints opens
    the runs table with the test figures and the logged model as columns, and so does the home page's link
    once the user has chosen "Model training" in that browser."""
    repo, env = trained_repo
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    run_id = json.loads((repo / "models/run.json").read_text())["run_id"]
    metrics = client.get_run(run_id).data.metrics
    port = free_port()
    server = mlflow_server(repo, env, port)
    try:
        context = browser.new_context(
            viewport={"width": 1600, "height": 1000}
        )  # a fresh profile: nothing stored
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_role("link", name="image-classifier").first.click()
        page.wait_for_url("**/experiments/**")
        page.wait_for_timeout(2000)
        page.screenshot(path=shots / "0_experiment_as_first_opened.png")
        first_seen = urllib.parse.unquote(page.url)
        assert "workflowType=genai" in first_seen and "/overview" in first_seen  # MLflow's default, not ours

        link = printed_link((repo.parent / "first_repro.txt").read_text()).replace(
            "127.0.0.1:5000", f"127.0.0.1:{port}"
        )
        page.set_viewport_size(
            {"width": 2400, "height": 1000}
        )  # every column in view (the table virtualises)
        page.goto(link)
        close_assistant(page)
        table = page.locator(".ag-root")
        table.locator(".ag-row").first.wait_for()
        page.wait_for_timeout(1000)
        page.screenshot(path=shots / "1_runs_through_the_printed_link.png")
        headers = [t.strip() for t in page.get_by_role("columnheader").all_inner_texts()]
        assert {"Models", "test_accuracy", "test_f1_macro", "test_ece_calibrated", "train.lr"} <= set(
            headers
        ), headers
        shown = (
            table.inner_text()
        )  # a row's cells sit in two containers (pinned and scrolled): read the table
        assert f"{metrics['test_accuracy']:.4f}"[:5] in shown  # the figure, in its column
        version = json.loads((repo / "models/export/registry.json").read_text())["version"]
        assert re.search(rf"image-classifier\s+v{version}\b", shown), shown  # the model, in the Models column
        page.screenshot(path=shots / "1_runs_through_the_printed_link.png")

        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_text("Model training").first.click()  # the switch, once: the browser keeps it
        page.get_by_role("link", name="image-classifier").first.click()
        page.wait_for_url("**/runs**")
        assert "workflowType=machine_learning" in page.url
        context.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_mlflow_ui_compares_two_runs_with_their_curves_images_and_registered_version(
    trained_repo, browser, shots
):
    repo, env = trained_repo
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    first = json.loads((repo / "models/run.json").read_text())["run_id"]  # exported and registered
    other = "0.003" if client.get_run(first).data.params["train.lr"] != "0.003" else "0.004"
    run(["dvc", "exp", "run", "--temp", "-S", f"train.lr={other}", "-n", "ui-lr", "evaluate"], repo, env)
    second = client.search_runs(
        [client.get_run(first).info.experiment_id],
        "tags.`dvc.experiment` = 'ui-lr'",
        order_by=["attributes.start_time DESC"],
    )[0].info.run_id
    runs = {run_id: client.get_run(run_id) for run_id in (first, second)}
    names = {run_id: r.info.run_name for run_id, r in runs.items()}
    lrs = {run_id: r.data.params["train.lr"] for run_id, r in runs.items()}
    assert lrs[second] == other != lrs[first]
    experiment = runs[first].info.experiment_id
    [version] = [
        v for v in client.search_model_versions(f"run_id='{first}'") if "model_card_sha256" in v.tags
    ]

    port = free_port()
    server = mlflow_server(repo, env, port)
    try:
        base = f"http://127.0.0.1:{port}/#/experiments/{experiment}"
        context = browser.new_context(viewport={"width": 1600, "height": 1100})
        context.add_init_script(KEEP_ASSISTANT_CLOSED)
        page = context.new_page()

        # the runs table: tick both runs, press Compare
        page.goto(f"{base}/runs?workflowType=machine_learning")
        page.locator(".ag-row").first.wait_for()
        for run_id in runs:
            row = page.locator(".ag-row").filter(has_text=names[run_id]).first
            row.locator("input[type=checkbox]").first.check()
        page.screenshot(path=shots / "1_runs_selected.png")
        page.get_by_role("button", name="Compare").click()
        page.get_by_text("Comparing 2 Runs").wait_for()
        assert all(run_id in urllib.parse.unquote(page.url) for run_id in runs)

        # the compare view: the params that differ, and the test metrics of both runs
        page.get_by_role("switch").first.click()  # "Show diff only" for parameters
        lr_row = page.get_by_role("row").filter(has=page.get_by_text("train.lr", exact=True))
        lr_row.scroll_into_view_if_needed()
        assert all(value in lr_row.inner_text() for value in lrs.values())
        page.screenshot(path=shots / "2_compare_params.png")
        for metric in ("test_accuracy", "test_ece", "test_ece_calibrated", "temperature"):
            values = metric_values(page, metric)
            expected = sorted(runs[run_id].data.metrics[metric] for run_id in runs)
            assert sorted(map(float, values)) == pytest.approx(expected, abs=6e-4), (metric, values, expected)
        # the grids were scrolled apart above; show them as a person scrolls them, with the wheel
        page.reload()
        page.get_by_text("Comparing 2 Runs").wait_for()
        first_metric = page.locator('a[title="Plot chart"]').first
        first_metric.scroll_into_view_if_needed()
        box = first_metric.bounding_box()
        page.mouse.move(box["x"] + box["width"] + 300, box["y"] + box["height"] / 2)  # over the values grid
        page.mouse.wheel(
            0, 45 * (len(runs[first].data.metrics) - 6)
        )  # to the last rows: test_* and temperature
        page.wait_for_timeout(500)
        page.screenshot(path=shots / "3_compare_metrics.png")

        # the compare view's artifacts: the pictures both runs hold (their root files, named alike),
        # side by side
        page.get_by_text("Artifacts", exact=True).first.scroll_into_view_if_needed()
        page.screenshot(path=shots / "3a_compare_artifacts.png")
        before = len([w for w in loaded_images(page.locator("img")) if w])
        page.get_by_text("confusion_matrix.png", exact=True).last.click()
        page.wait_for_function(
            "n => Array.from(document.images).filter(i => i.complete && i.naturalWidth).length >= n + 2",
            arg=before,
        )
        page.get_by_text("confusion_matrix.png", exact=True).last.scroll_into_view_if_needed()
        page.screenshot(path=shots / "3b_compare_pictures.png")

        # the chart view of the same two runs: per-epoch curves, then the pictures evaluate logged
        search = urllib.parse.quote(f"attributes.run_id IN ('{first}', '{second}')")
        page.goto(f"{base}/runs?workflowType=machine_learning&compareRunsMode=CHART&searchFilter={search}")
        charts = page.get_by_placeholder("Search metric charts")
        charts.fill("val_accuracy")
        curve = (
            page.locator("[data-testid=experiment-view-compare-runs-card]")
            .filter(has=page.get_by_text("val_accuracy", exact=True))
            .first
        )
        curve.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for()
        page.screenshot(path=shots / "4_chart_val_accuracy.png")
        assert (
            curve.locator(".scatterlayer .trace").count() >= 2
        )  # plotly draws each run's line (and markers)
        assert all(f"{names[run_id]} (val_accuracy)" in curve.inner_text() for run_id in runs)  # the legend
        for key in ("confusion_matrix", "reliability", "saliency_01"):
            charts.fill(key)
            card = (
                page.locator("[data-testid=experiment-view-compare-runs-card]")
                .filter(has=page.get_by_text(key, exact=True))
                .first
            )
            card.locator("img").first.wait_for()
            page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
            widths = loaded_images(card.locator("img"))
            assert len(widths) == 2 and all(widths), f"{key}: images of both runs should load, got {widths}"
            card.locator("img").first.scroll_into_view_if_needed()
            card.screenshot(path=shots / f"5_chart_{key}.png")

        # the run page names the registered model version made from it
        page.goto(f"{base}/runs/{first}?workflowType=machine_learning")
        page.get_by_role("heading", name="Registered models").wait_for()
        page.get_by_role("heading", name="Registered models").scroll_into_view_if_needed()
        page.screenshot(path=shots / "6_run_registered_version.png")
        links = page.get_by_role("link").filter(has_text=version.name).all_inner_texts()
        assert any(f"v{version.version}" in text for text in links), links
        context.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dvc_plots_page_draws_every_plot_with_the_network_shut(trained_repo, browser, shots, tmp_path):
    """`dvc plots show` writes one HTML page from the repository's template (.dvc/plots_offline.html), which
    carries Vega, Vega-Lite and Vega-Embed itself: with every network request refused, every chart is drawn by
    the page's own code and every picture loads from beside it."""
    repo, env = trained_repo
    out = tmp_path / "dvc_plots"
    run(["dvc", "plots", "show", "-o", str(out)], repo, env)
    html = (out / "index.html").read_text()
    assert "cdn.jsdelivr.net" not in html
    requested = []

    def refuse(route):
        requested.append(route.request.url)
        route.abort()

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.route(lambda url: not url.startswith("file://"), refuse)  # no network at all
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((out / "index.html").as_uri())
    charts = ["loss", "accuracy", "reliability", "plots_confusion_csv"]
    for chart in charts:
        assert f'id = "{chart}"' in html, chart
        page.locator(f"#{chart} canvas, #{chart} svg").first.wait_for()
        box = page.locator(f"#{chart} canvas, #{chart} svg").first.bounding_box()
        assert box["width"] > 100 and box["height"] > 100, (chart, box)
    images = page.locator("img")
    sources = images.evaluate_all("images => images.map(i => i.getAttribute('src'))")
    grids = sorted(p.name for p in (repo / "plots/saliency").glob("*.png"))
    assert any(s.endswith("reliability.png") for s in sources)
    assert len([s for s in sources if "saliency" in s]) == len(grids) >= 1
    assert all(loaded_images(images)), f"an image of the plots page did not load: {sources}"
    assert requested == [] and not errors, (requested, errors)
    page.screenshot(path=shots / "7_dvc_plots_offline.png", full_page=True)
    page.close()
