"""When a killed train may go on from its checkpoint: only from the same params, prepared data, starting
weights and code; otherwise it starts fresh and says why."""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

from imgcls.config import layout
from imgcls.config.params import DOES_NOT_CHANGE_RESULTS, Params, flatten
from imgcls.engine.state import TrainState, load_state
from imgcls.files import sha256_file

log = logging.getLogger("train")


def resume_key(params: Params) -> dict:
    """What a checkpoint must have been made from to be resumed: the params `train` reads, the prepared data
    (manifest.csv hashes every image), the starting weights and the code."""
    sections = {name: params.as_dict()[name] for name in ("model", "runtime", "train")}
    code, root = hashlib.sha256(), Path(__file__).resolve().parents[2]  # the checkout: stages/ and imgcls/
    for path in sorted([*root.glob("stages/*.py"), *root.glob("imgcls/**/*.py")]):
        code.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "params": {k: v for k, v in flatten(sections).items() if k not in DOES_NOT_CHANGE_RESULTS},
        "data": sha256_file(layout.MANIFEST),
        "weights": sha256_file(layout.PRETRAINED),
        "code": code.hexdigest(),
    }


def find_resume(path: str, key: dict) -> TrainState | None:
    """The checkpoint at `path` when this run may go on from it; otherwise None, saying why."""
    if not Path(path).is_file():
        return None
    try:
        state = load_state(path)
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError) as error:
        log.warning(
            "not resuming: %s cannot be read (%s); starting fresh", path, str(error).splitlines()[0][:200]
        )
        return None
    if state.finished:
        log.info("%s holds a finished run; starting fresh", path)
        return None
    changed = resume_blockers(state.meta.get("key", {}), key)
    if changed:
        log.warning(
            "not resuming from %s (epoch %d, step %d): %s; starting fresh",
            path,
            state.epoch,
            state.step,
            "; ".join(changed),
        )
        return None
    log.info(
        "resuming from %s: epoch %d, step %d, MLflow run %s",
        path,
        state.epoch,
        state.step,
        state.meta["run_id"],
    )
    return state


def resume_blockers(old: dict, new: dict) -> list[str]:
    """What differs between the checkpoint's inputs and this run's, in words."""
    reasons = []
    old_params, new_params = old.get("params", {}), new["params"]
    changed = sorted(k for k in set(old_params) | set(new_params) if old_params.get(k) != new_params.get(k))
    if changed:
        reasons.append(
            "params changed: "
            + ", ".join(f"{k} {old_params.get(k)!r} -> {new_params.get(k)!r}" for k in changed[:5])
            + (" ..." if len(changed) > 5 else "")
        )
    for part, what in (
        ("data", "the prepared data changed (manifest.csv)"),
        ("weights", "the starting weights changed (pretrain.out)"),
        ("code", "the code changed (stages/, imgcls/)"),
    ):
        if old.get(part) != new[part]:
            reasons.append(what)
    return reasons
