"""What a committed reference was made from: its data (as dvc.lock hashed it), the params that change results,
and the runtime (the stage fingerprints decide whether the same bits are expected). A run is compared with a
reference only when both are the same; otherwise `reproduce` says what differs in one line and how to make the
run's results the reference."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from imgcls.config import layout
from imgcls.config.params import DOES_NOT_CHANGE_RESULTS, Params, flatten, params_hash, parse_params
from imgcls.config.strict_yaml import read_yaml
from imgcls.provenance.inputs import lock_hashes


def data_hashes(params: Params, lock_text: str | None) -> dict[str, str]:
    """{param key: dvc md5} of the data the prepare (and, when it trains on one, pretrain) stage read."""
    lock = lock_hashes(lock_text)
    found = {
        "prepare.data": lock.get("prepare", {}).get(params.prepare.data, ""),
        "prepare.test_data": lock.get("prepare", {}).get(params.prepare.test_data, ""),
    }
    if params.pretrain.source == "dataset":
        found["pretrain.data"] = lock.get("pretrain", {}).get(params.pretrain.data, "")
    return found


# Names and export settings: they change where results are filed and how the export is checked, not the
# metrics.
NOT_IN_METRICS = ("train.experiment", "export.registered_model", "export.atol", "export.onnx_opset")


def result_params(params: Params) -> dict:
    """Every param, flattened, but those that cannot change a metric."""
    return {
        k: v
        for k, v in flatten(params.as_dict()).items()
        if k not in DOES_NOT_CHANGE_RESULTS and k not in NOT_IN_METRICS
    }


def differences(
    reference: Params, reference_lock: str | None, current: Params, current_lock: str | None
) -> list[str]:
    """What the reference was made from that this run was not: one line each for the data and the params."""
    lines = []
    before, after = data_hashes(reference, reference_lock), data_hashes(current, current_lock)
    paths = {
        "prepare.data": (reference.prepare.data, current.prepare.data),
        "prepare.test_data": (reference.prepare.test_data, current.prepare.test_data),
        "pretrain.data": (reference.pretrain.data, current.pretrain.data),
    }
    moved = [
        f"{key} {paths[key][0]} ({short(before.get(key))}) -> {paths[key][1]} ({short(after.get(key))})"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]
    if moved:
        lines.append("other data: " + "; ".join(moved))
    old, new = result_params(reference), result_params(current)
    changed = [
        f"{k} {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    if changed:
        lines.append(f"other params ({len(changed)}): " + "; ".join(changed))
    return lines


def short(md5: str | None) -> str:
    return (md5 or "not hashed yet")[:12]


def adopt_command(params: Params) -> str:
    """The git command that makes the workspace's results the reference: dvc.lock, params.yaml and every
    result DVC keeps in git."""
    paths = sorted(
        {
            "dvc.lock",
            "params.yaml",
            *(
                p.split("/")[0] if not p.startswith("models/") else p
                for stage in layout.STAGES
                for p in layout.COMMITTED[stage]
            ),
        }
    )
    name = Path(params.prepare.data).name
    return f"git add {' '.join(paths)} && git commit -m 'reference results for {name}'"


def lock_at(rev: str | None) -> str | None:
    """dvc.lock as committed at `rev`, or in the workspace (None)."""
    if rev is None:
        path = Path("dvc.lock")
        return path.read_text() if path.is_file() else None
    result = subprocess.run(["git", "show", f"{rev}:dvc.lock"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def at_rev(rev: str, path: str) -> str | None:
    """A file's text as committed at `rev`, or None if it is not there."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def reference_params_at(rev: str, current: Params) -> Params:
    """The committed params (they name the reference's files); the current ones if those cannot be read."""
    committed = at_rev(rev, "params.yaml")
    try:
        return parse_params(read_yaml(committed), f"{rev}:params.yaml") if committed else current
    except (ValueError, yaml.YAMLError):
        return current


def seed_spread(reference_params: Params) -> dict | None:
    """The pretrained variant's spread from benchmarks/seed_sweep.json, if measured with these params."""
    path = Path("benchmarks/seed_sweep.json")
    if not path.is_file():
        return None
    sweep = json.loads(path.read_text())
    if sweep.get("params_sha256") != params_hash(reference_params.as_dict()):
        return None
    return sweep["summary"]["pretrained"]


def decide_mode(old_env: dict[str, dict], new_env: dict[str, dict]) -> tuple[bool, list[str]]:
    """(exact comparison applies, why not): exact only if every stage ran the same pinned runtime."""
    from imgcls.engine.fingerprint import same_bits_expected

    reasons = []
    for stage in layout.FINGERPRINTED:
        before, after = old_env.get(stage), new_env.get(stage)
        if before is None or after is None:
            reasons.append(f"{stage}: no fingerprint in the {'reference' if before is None else 'run'}")
            continue
        same, differ = same_bits_expected(before, after)
        if not same:
            unpinned = [
                side for side, env in (("reference", before), ("run", after)) if not env.get("pinned")
            ]
            why = ", ".join(f"{k} {before.get(k)!r} -> {after.get(k)!r}" for k in differ)
            reasons.append(
                f"{stage}: "
                + "; ".join(
                    filter(None, [f"not pinned in the {' and '.join(unpinned)}" if unpinned else "", why])
                )
            )
    return not reasons, reasons
