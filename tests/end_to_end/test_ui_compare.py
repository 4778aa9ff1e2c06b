"""Two runs that differ in train.lr, compared in the MLflow UI in a real browser: their curves, their
pictures side by side, their test figures and the model version each registered."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest
from mlflow import MlflowClient

from tests.end_to_end.mlflow_ui import KEEP_ASSISTANT_CLOSED, mlflow_server
from tests.helpers import free_port, loaded_images, run

# on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)
pytestmark = [pytest.mark.pipeline, pytest.mark.slow]


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
            const row = link ? link.parentElement.style.top : null;
            const cells = link ? values.querySelectorAll('[style*="top: ' + row + ';"]') : [];
            if (cells.length) return [...cells].map(cell => cell.textContent.trim());
        }
        return null;
    }""",
        name,
    )


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
        # to the last rows: test_* and temperature
        page.mouse.wheel(0, 45 * (len(runs[first].data.metrics) - 6))
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
        # plotly draws each run's line (and markers)
        assert curve.locator(".scatterlayer .trace").count() >= 2
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
