"""An audit's two halves: the card checked before any work (its files, params hash, commit, MLflow run and
registered version), and the re-derived card held against it, field by field, with one verdict."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from imgcls.config.params import flatten
from imgcls.files import sha256_file
from imgcls.provenance import lineage
from imgcls.provenance.reference import decide_mode
from imgcls.provenance.store import open_store, tracking_uri

# Fields of the card that differ on a faithful re-derivation, and why. Everything else must be identical.
MAY_DIFFER = {
    "mlflow.run_id": "the re-derivation is a new MLflow run, in the audit's own store",
    "mlflow.tracking_uri": "the re-derivation logs to the audit's own store, never the team's",
    "mlflow.version": "the re-derivation registers in the audit's own store",
    "mlflow.reused": "the re-derivation registers in the audit's own store",
    "git.train_commit": "train ran at this commit, or at an earlier one with the same train code (lineage)",
    # ONNX Runtime picks its kernels per processor (AVX2, AVX-512...) and has no setting to pin them: its
    # logits, and so this figure, move with the CPU; the gate (within export.atol, every top-1 the same) holds
    "parity.onnx.max_abs_diff": "ONNX Runtime's kernels follow the CPU that checked the export (none pinned)",
}
MACHINE = "environment."  # the machine each stage ran on: decides what may be promised, gated by decide_mode


@dataclass(frozen=True)
class Row:
    key: str
    old: object
    new: object
    status: str  # "identical", "may differ: <why>", "differs"


def card_folder(model: str, scratch: Path) -> tuple[Path, bool]:
    """(the folder holding the card and the files it vouches for, whether it came from the registry)."""
    if not model.startswith("models:/"):
        folder = Path(model)
        return (folder if folder.is_dir() else folder.parent), False
    import mlflow

    open_store(tracking_uri())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file, on stderr
    downloaded = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(scratch / "registered"))
    )
    cards = sorted(downloaded.rglob("model_card.json"))
    if not cards:
        raise FileNotFoundError(f"{model} holds no model_card.json: not a model this pipeline registered")
    return cards[0].parent, True


def precheck(export_dir: Path, root: Path, registered: bool) -> list[tuple[str, bool, str]]:
    """The links `python -m imgcls lineage` checks that need no re-run: the files against the card, its
    params hash, its commit in this repository, the MLflow run's tags and the registered version. A card
    edited after registration fails here, before any work. For a registered version (`registered`), the files
    are its artifacts, and files the card names in the repository (models/model.pt) are left to the re-run."""
    card = json.loads((export_dir / "model_card.json").read_text(encoding="utf-8"))
    files = dict(card["model"]["files"])
    if registered:
        card["model"]["files"] = {name: sha for name, sha in files.items() if "/" not in name}
    links = [
        lineage.check_files(export_dir, root, card),
        lineage.check_params(card),
        lineage.check_commit(root, card),
    ]
    links += lineage.check_mlflow(card, sha256_file(export_dir / "model_card.json"), root)
    return [link for link in links if link[0] != "DVC -> MLflow run"]  # models/run.json: this workspace's


def compare(card: dict, derived: dict) -> list[Row]:
    """Every field of the card against the re-derived card's."""
    old, new = flatten(card), flatten(derived)
    rows = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key, "(absent)"), new.get(key, "(absent)")
        if before == after:
            status = "identical"
        elif key in MAY_DIFFER:
            status = f"may differ: {MAY_DIFFER[key]}"
        elif key.startswith(MACHINE):
            status = "may differ: the machine (what it allows is in the verdict)"
        else:
            status = "differs"
        rows.append(Row(key, before, after, status))
    return rows


def shown(rows: list[Row]) -> list[Row]:
    """The rows an auditor reads one by one: every hash the card names, every headline metric, and every
    field that is not identical; the rest are counted."""
    named = ("dvc.", "model.files.", "metrics.", "params_sha256")
    return [row for row in rows if row.key.startswith(named) or row.status != "identical"]


def line(row: Row) -> str:
    def value(v) -> str:
        text = str(v)
        return text[:16] + "…" if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text

    if row.status == "identical":
        return f"  {row.key:<34} identical  {value(row.old)}"
    return f"  {row.key:<34} {row.status.split(':')[0]:<10} {value(row.old)} -> {value(row.new)}" + (
        f" ({row.status.split(': ', 1)[1]})" if ": " in row.status else ""
    )


def verdict(card: dict, derived: dict, rows: list[Row]) -> tuple[int, str]:
    """(exit code, one line): 0 re-derived bit for bit (promised by the pinned runtime, or not promised but
    found); 1 not; 3 the card's runtime promises no bits (a GPU, unpinned kernels) and the re-derivation
    agrees within the test set's 95% intervals."""
    exact, reasons = decide_mode(card.get("environment", {}), derived.get("environment", {}))
    differ = [row for row in rows if row.status == "differs"]
    why = "; ".join(reasons)
    if not differ:  # said as seen, promised or not: every hash and metric came out the same
        identical = sum(row.status == "identical" for row in rows)
        return 0, (
            f"VERDICT re-derived bit for bit: {counts(rows)} and every other field of the card identical "
            f"({identical} of {len(rows)} fields; {len(rows) - identical} may differ, each named above)"
            + ("" if exact else f", though this runtime did not promise it ({why})")
        )
    if exact:
        return 1, (
            f"VERDICT not re-derived: the same pinned runtime, yet {len(differ)} field(s) differ: "
            + ", ".join(row.key for row in differ[:8])
            + (" ..." if len(differ) > 8 else "")
        )
    integrity = [
        r for r in differ if r.key.startswith(("dvc.data", "dvc.test_data", "dvc.prepared", "dvc.manifest"))
    ]
    outside = [key for key in ("test_accuracy", "test_f1_macro") if not within(card, derived, key)]
    if integrity or outside:
        return 1, (
            f"VERDICT not re-derived: {', '.join([r.key for r in integrity] + outside)} "
            f"{'differ' if integrity else 'fall outside the card’s 95% intervals'} "
            f"(no bit-for-bit promise: {why})"
        )
    return 3, (
        "VERDICT equivalent, not bit for bit: the data and prepared images are identical and test accuracy "
        f"and macro F1 lie inside the card's 95% intervals, but this runtime promises no bits ({why}); "
        "only the pinned CPU mode (runtime.reproducible: true on CPU) is re-derived bit for bit"
    )


def counts(rows: list[Row]) -> str:
    return (
        f"{sum(r.key.startswith('dvc.') for r in rows)} DVC hashes, "
        f"{sum(r.key.startswith('model.files.') for r in rows)} model files, "
        f"{sum(r.key.startswith('metrics.') for r in rows)} metrics"
    )


def within(card: dict, derived: dict, key: str) -> bool:
    band = card["metrics"].get(f"{key}_ci95") or {}
    value = derived["metrics"].get(key)
    return value is not None and band.get("low", 1) <= value <= band.get("high", 0)
