"""Writing the small JSON and CSV files the stages produce (metrics, manifests, plots)."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def write_json(path: str | Path, data) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_csv(path: str | Path, fields: list[str], rows: list[dict]) -> None:
    """Rows as dicts; keys not in `fields` are left out."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
