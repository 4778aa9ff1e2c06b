"""What the MLflow UI tests share: a tracking server over the test repository's store, the chat panel kept
shut, and the link `train` prints."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.helpers import mlflow_server_command, start_server

# MLflow 3.17 opens its chat panel beside every page on a first visit:
# keep it shut so screenshots show the page
KEEP_ASSISTANT_CLOSED = """\
window.localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
                           window.localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"""


def mlflow_server(repo: Path, env: dict, port: int) -> subprocess.Popen:
    return start_server(
        mlflow_server_command(port, f"sqlite:///{repo / 'mlflow.db'}"),
        f"http://127.0.0.1:{port}/health",
        repo,
        env,
        repo.parent / f"mlflow-server-{port}.log",
    )


def close_assistant(page) -> None:
    """Close the chat panel MLflow 3.17 opens beside every page on a first visit, as a person would."""
    button = page.locator("button[aria-label='Close']").first
    if button.count() and button.is_visible():
        button.click()


def printed_link(output: str) -> str:
    """The experiment's runs link the train stage printed."""
    return re.search(r"(http://\S+viewStateShareKey=\S+)", output).group(1)
