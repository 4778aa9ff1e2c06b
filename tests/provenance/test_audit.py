"""`python -m stages.audit`'s parts: the comparison's verdicts, including what a GPU-trained card can be
promised, the worktree's guards and the re-run's bound. The audit end to end (bit for bit, an edited card
caught before any work, an input missing from every cache named) runs once, against the team's server on
PostgreSQL: tests/end_to_end/test_postgres.py."""

from __future__ import annotations

import pytest

from imgcls.provenance.audit import compare, verdict

PINNED = {
    "reproducible": True,
    "pinned": True,
    "device": "cpu",
    "cpu": "AMD EPYC",
    "cpu_isa": "AVX512",
    "kernel_isa": "AVX2",
    "onednn_isa": "Intel AVX2",
    "blas": "MKL COMPATIBLE",
    "threads": 2,
    "torch": "2.14.1",
}


def card(**changes) -> dict:
    made = {
        "dvc": {"data": "a.dir", "prepared": "b.dir", "model": "c"},
        "model": {"files": {"model.onnx": "d" * 64}},
        "parity": {"onnx": {"max_abs_diff": 2.1e-6, "top1_agreement": 1.0}},
        "metrics": {
            "test_accuracy": 0.70,
            "test_accuracy_ci95": {"low": 0.68, "high": 0.72},
            "test_f1_macro": 0.69,
            "test_f1_macro_ci95": {"low": 0.67, "high": 0.71},
        },
        "mlflow": {"run_id": "r1", "name": "m"},
        "environment": {stage: dict(PINNED) for stage in ("pretrain", "train", "evaluate")},
    }
    for key, value in changes.items():
        section, name = key.split("__")
        made[section][name] = value
    return made


def test_a_new_run_id_and_another_x86_cpu_are_allowed_and_anything_else_is_named():
    derived = card(mlflow__run_id="r2")
    derived["parity"]["onnx"]["max_abs_diff"] = 1.9e-6  # ONNX Runtime's kernels follow the CPU
    for stage in derived["environment"]:
        derived["environment"][stage].update(cpu="Intel Xeon", cpu_isa="AVX2")
    code, line = verdict(card(), derived, rows := compare(card(), derived))
    assert code == 0 and line.startswith(
        "VERDICT re-derived bit for bit: 3 DVC hashes, 1 model files, 6 metrics"
    )
    assert {r.key: r.status.split(":")[0] for r in rows if r.status != "identical"} == {
        "mlflow.run_id": "may differ",
        "parity.onnx.max_abs_diff": "may differ",
        **{
            f"environment.{s}.{k}": "may differ"
            for s in ("pretrain", "train", "evaluate")
            for k in ("cpu", "cpu_isa")
        },
    }
    code, line = verdict(card(), changed := card(dvc__model="other"), compare(card(), changed))
    assert code == 1 and "1 field(s) differ: dvc.model" in line
    top1 = card()
    top1["parity"]["onnx"]["top1_agreement"] = 0.999
    code, line = verdict(card(), top1, compare(card(), top1))
    assert code == 1 and "parity.onnx.top1_agreement" in line


def test_a_gpu_trained_card_is_promised_its_intervals_not_its_bits():
    gpu = card()
    gpu["environment"]["train"].update(device="cuda", pinned=False, gpu="NVIDIA H200")
    close = card(dvc__model="other", metrics__test_accuracy=0.71)
    code, line = verdict(gpu, close, compare(gpu, close))
    assert (
        code == 3 and "equivalent, not bit for bit" in line and "train: not pinned in the reference" in line
    )
    far = card(dvc__model="other", metrics__test_accuracy=0.60)
    code, line = verdict(gpu, far, compare(gpu, far))
    assert code == 1 and "test_accuracy fall outside the card’s 95% intervals" in line
    swapped = card(dvc__data="other.dir")
    code, line = verdict(gpu, swapped, compare(gpu, swapped))
    assert code == 1 and "dvc.data differ" in line


def test_an_unpromised_card_that_comes_out_identical_is_reported_as_seen():
    unpinned = card()
    for stage in unpinned["environment"].values():
        stage.update(pinned=False, reproducible=False, kernel_isa="AVX512")
    code, line = verdict(unpinned, unpinned, compare(unpinned, unpinned))
    assert code == 0 and line.startswith("VERDICT re-derived bit for bit: 3 DVC hashes, 1 model files")
    assert "though this runtime did not promise it (" in line and "not pinned in the reference" in line


def test_a_commit_that_is_not_a_commit_id_is_never_handed_to_git(tmp_path):
    from imgcls.provenance.rederive import MissingInput, make_worktree

    for hostile in ("--orphan=x", "HEAD", "a" * 39, "../main"):
        with pytest.raises(MissingInput, match="is not a commit id"):
            make_worktree(tmp_path, hostile, tmp_path / "tree")
    assert not (tmp_path / "tree").exists()


def test_an_input_outside_the_repository_is_read_where_it_is_and_said_so(tmp_path):
    from imgcls.provenance.rederive import fetch_inputs

    tree, outside = tmp_path / "tree", tmp_path / "images"
    (tree / "data" / "none").mkdir(parents=True)
    outside.mkdir()
    card = {
        "params": {
            "prepare": {"data": str(outside), "test_data": "data/none"},
            "pretrain": {"source": "none", "data": "data/none"},
        }
    }
    lines = fetch_inputs(tree, card, tmp_path / "cache", tmp_path / "log")
    assert lines == [
        f"prepare.data = {outside}: outside the repository, read where it is (its hash is compared)",
        "prepare.test_data = data/none: in git at the card's commit",
    ]


def test_a_re_run_past_its_time_is_killed_with_everything_under_it(tmp_path):
    import time

    from imgcls.provenance.rederive import run

    marker = tmp_path / "still_running"
    start = time.monotonic()
    code = run(["bash", "-c", f"(sleep 3; touch {marker}) & sleep 30"], tmp_path, timeout=1)
    assert code == 124 and time.monotonic() - start < 10
    time.sleep(4)
    assert not marker.exists()  # the grandchild went with it
