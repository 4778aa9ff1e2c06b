"""The MLflow UI as a new user first opens it, in a real browser (headless Chromium from Debian, driven by
Playwright), and through the link `train` prints: the runs table with the headline figures and the model.
Screenshots are saved under $UI_SCREENSHOTS (default: the test's temporary folder) for a person to see."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request

import pytest
from mlflow import MlflowClient

from tests.end_to_end.mlflow_ui import close_assistant, mlflow_server, printed_link
from tests.helpers import free_port

# on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)
pytestmark = [pytest.mark.pipeline, pytest.mark.slow]


def genai_overview(url: str) -> bool:
    shown = urllib.parse.unquote(url)
    return "/experiments/" in shown and "workflowType=genai" in shown and "/overview" in shown


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
        # a fresh profile: nothing stored
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_role("link", name="image-classifier").first.click()
        # MLflow's default, not ours: the experiment page redirects itself to the GenAI overview once its
        # scripts have run, seconds later on a loaded machine, so wait for that (bounded), not a fixed time
        page.wait_for_url(genai_overview, timeout=90_000)
        page.screenshot(path=shots / "0_experiment_as_first_opened.png")

        link = printed_link((repo.parent / "first_repro.txt").read_text()).replace(
            "127.0.0.1:5000", f"127.0.0.1:{port}"
        )
        # every column in view (the table virtualises)
        page.set_viewport_size({"width": 2400, "height": 1000})
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
        # a row's cells sit in two containers (pinned and scrolled): read the table
        shown = table.inner_text()
        figure = f"{metrics['test_accuracy']:.4f}"[:5].rstrip("0").rstrip(".")  # the UI shows 1.0 as "1"
        assert figure in shown  # the figure, in its column
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
