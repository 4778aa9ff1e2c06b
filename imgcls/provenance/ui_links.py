"""What a person opens in the MLflow UI: the project's experiment as a runs table with its headline figures as
columns, reached by the links the stages print.

MLflow 3.17's UI keeps its GenAI / Model training switch per browser (localStorage, default GenAI) and does
not read the experiment's kind to set it (mlflow/mlflow#24498), so an experiment opened from the UI's home
page in a new browser shows the GenAI overview. A link with `workflowType=machine_learning` opens the runs
table whatever the browser holds, and `viewStateShareKey` opens it with the columns saved in the experiment's
tag `mlflow.sharedViewState.<key>` (the UI's own "shared view")."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from imgcls.config import layout

VIEW_KEY = "headline"
# What a person compares runs by: the model, its test figures, and the params a variant changes most.
COLUMNS = (
    ["attributes.`Models`"]
    + [
        f"metrics.`{name}`"
        for name in (
            "test_accuracy",
            "test_accuracy_ci95_low",
            "test_accuracy_ci95_high",
            "test_f1_macro",
            "test_ece_calibrated",
            "best_val_accuracy",
        )
    ]
    + [
        f"params.`{name}`"
        for name in ("model.arch", "prepare.data", "pretrain.source", "train.freeze", "train.lr")
    ]
)
# The UI's runs-table state, as its "share" button saves it (read from MLflow 3.17's own saved state).
VIEW = {
    "searchFilter": "",
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
    "startTime": "ALL",
    "lifecycleFilter": "Active",
    "datasetsFilter": [],
    "modelVersionFilter": "All Runs",
    "selectedColumns": COLUMNS,
    "columnOrder": [],
    "columnWidths": {},
    "runsExpanded": {},
    "runsPinned": [],
    "runsHidden": [],
    "runsVisibilityMap": {},
    "runsHiddenMode": "FIRST_10_RUNS",
    "viewMaximized": False,
    "runListHidden": False,
    "isAccordionReordered": False,
    "useGroupedValuesInCharts": True,
    "hideEmptyCharts": True,
    "groupBy": None,
    "groupsExpanded": {},
    "autoRefreshEnabled": True,
    "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
}
VIEW_TAG = {f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(VIEW)}
LOCAL_UI = "http://127.0.0.1:5000"  # `mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000` (README)


def picture_name(figure: str | Path) -> str:
    """A picture's name in its MLflow run, the same in every run (Compare shows the root files the runs
    share): a Grad-CAM grid by its rank, the pair it shows being in its title."""
    figure = Path(figure)
    return f"saliency_{figure.name[:2]}.png" if figure.parent == Path(layout.SALIENCY) else figure.name


def ui_base(tracking_uri: str) -> str:
    """Where the UI of this store is: the tracking server itself, or the local `mlflow ui` of the README."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI


def runs_link(tracking_uri: str, experiment_id: str) -> str:
    return (
        f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
        "&workflowType=machine_learning"
    )


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return (
        f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    )


def version_link(tracking_uri: str, name: str, version: str) -> str:
    return f"{ui_base(tracking_uri)}/#/models/{quote(name)}/versions/{version}?workflowType=machine_learning"


def opened_by(tracking_uri: str) -> str:
    """How to bring the UI up, in words (nothing to start for a tracking server)."""
    if tracking_uri.startswith(("http://", "https://")):
        return ""
    return " (start it: mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000)"
