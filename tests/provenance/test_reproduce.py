"""The CI check's verdicts on metrics it is handed: exact on the same pinned runtime, banded elsewhere."""

import yaml

from imgcls.config import layout
from imgcls.config.params import load_params
from imgcls.provenance.reference import adopt_command, decide_mode, differences
from imgcls.provenance.reproduce import compare_metrics, report
from tests.helpers import ROOT

PINNED = {
    "pinned": True,
    "device": "cpu",
    "kernel_isa": "AVX2",
    "onednn_isa": "Intel AVX2",
    "blas": "MKL COMPATIBLE",
    "threads": 2,
    "torch": "2.14.1",
    "torchvision": "0.29.1",
    "machine": "x86_64",
    "cpu": "AMD EPYC",
    "cpu_isa": "AVX2",
}
REFERENCE = {
    layout.PREPARE_METRICS: {"included": 2800, "split_sizes": {"test": 2400}},
    layout.TRAIN_METRICS: {"best_epoch": 20, "best_val_accuracy": 0.75},
    layout.EVALUATE_METRICS: {
        "test_accuracy": 0.80,
        "test_f1_macro": 0.79,
        "test_images": 2400,
        "test_accuracy_ci95": {"low": 0.785, "high": 0.815},
        "test_f1_macro_ci95": {"low": 0.774, "high": 0.806},
    },
    layout.EVALUATE_REPORT: {
        "per_class": {"coat": {"recall": 0.7, "support": 600.0}},
        "lowest_recall": {"coat": {"rank": 1, "recall": 0.7, "correct": 420, "support": 600}},
    },
}


def changed(**edits) -> dict:
    """A copy of the reference metrics with `file__key=value` edits (key path joined by '__')."""
    metrics = {
        f: {k: dict(v) if isinstance(v, dict) else v for k, v in m.items()} for f, m in REFERENCE.items()
    }
    for name, value in edits.items():
        file = {
            "prepare": layout.PREPARE_METRICS,
            "train": layout.TRAIN_METRICS,
            "evaluate": layout.EVALUATE_METRICS,
            "report": layout.EVALUATE_REPORT,
        }[name.split("__")[0]]
        node = metrics[file]
        *path, last = name.split("__")[1:]
        for part in path:
            node = node[part]
        node[last] = value
    return metrics


def verdict(new_metrics: dict, new_env: dict) -> tuple[bool, str]:
    old_env = dict.fromkeys(("pretrain", "train", "evaluate"), PINNED)
    env = dict.fromkeys(("pretrain", "train", "evaluate"), new_env)
    exact, reasons = decide_mode(old_env, env)
    return report(compare_metrics(REFERENCE, new_metrics, exact), exact, reasons, old_env, env)


def test_same_pinned_runtime_on_another_cpu_must_match_exactly():
    other_cpu = PINNED | {"cpu": "Intel Xeon", "cpu_isa": "AVX512"}  # not part of the identity
    ok, text = verdict(changed(), other_cpu)
    assert ok and "MODE exact" in text and "VERDICT reproduced: all" in text
    ok, text = verdict(changed(train__best_epoch=19), other_cpu)
    assert not ok and "REGRESSION, not rounding" in text and "metrics/train.json:best_epoch" in text


def test_other_runtime_gates_integrity_exactly_and_headline_by_interval():
    gpu = PINNED | {"pinned": False, "device": "cuda", "gpu": "NVIDIA H200"}
    weakest = {
        "shirt": {"rank": 1, "recall": 0.68, "correct": 408, "support": 600}
    }  # another class comes last
    ok, text = verdict(
        changed(
            train__best_epoch=12,
            evaluate__test_accuracy=0.79,
            report__per_class__coat__recall=0.6,
            report__lowest_recall=weakest,
        ),
        gpu,
    )
    assert ok and "MODE band" in text and "device 'cpu' -> 'cuda'" in text and "reproduced within" in text
    ok, text = verdict(changed(evaluate__test_accuracy=0.77), gpu)
    assert not ok and "metrics/evaluate.json:test_accuracy" in text and "band [0.7850, 0.8150]" in text
    ok, text = verdict(changed(prepare__included=2799), gpu)
    assert not ok and "metrics/prepare.json:included" in text


def test_band_widens_to_the_measured_seed_spread():
    spread = {"test_accuracy": {"mean": 0.80, "sd": 0.01}, "test_f1_macro": {"mean": 0.79, "sd": 0.01}}
    rows = compare_metrics(REFERENCE, changed(evaluate__test_accuracy=0.775), False, spread)
    [accuracy] = [r for r in rows if r.key == "test_accuracy"]
    assert accuracy.ok and accuracy.gate == "band [0.7700, 0.8300]"
    rows = compare_metrics(REFERENCE, changed(evaluate__test_accuracy=0.775), False)
    assert not [r for r in rows if r.key == "test_accuracy"][0].ok  # the interval alone is narrower


def test_other_thread_count_is_not_exact():
    stages = ("pretrain", "train", "evaluate")
    exact, reasons = decide_mode(
        dict.fromkeys(stages, PINNED), dict.fromkeys(stages, PINNED | {"threads": 4})
    )
    assert not exact and reasons[0] == "pretrain: threads 2 -> 4"


def lock(**md5s: str) -> str:
    """A dvc.lock's text with prepare's input hashes (folder name -> md5)."""
    return yaml.safe_dump(
        {
            "stages": {
                "prepare": {
                    "deps": [
                        {"path": f"data/{name.replace('_', '/')}", "md5": md5} for name, md5 in md5s.items()
                    ]
                }
            }
        }
    )


def test_a_reference_of_other_data_or_params_is_named_and_not_compared():
    sample = load_params(ROOT / "params.yaml")
    reference = lock(sample_target="a.dir", sample_test="b.dir")
    assert differences(sample, reference, sample, reference) == []
    other_data = differences(sample, reference, sample, lock(sample_target="c.dir", sample_test="b.dir"))
    assert other_data == ["other data: prepare.data data/sample/target (a.dir) -> data/sample/target (c.dir)"]
    mine = load_params(
        ROOT / "params.yaml",
        overrides={
            "prepare": {"data": "data/mine"},
            "train": {"lr": 0.001, "experiment": "mine"},
            "runtime": {"num_workers": 0},
        },
    )  # workers and names change no metric
    lines = differences(sample, reference, mine, lock(mine="d.dir", sample_test="b.dir"))
    assert lines == [
        "other data: prepare.data data/sample/target (a.dir) -> data/mine (d.dir)",
        "other params (2): prepare.data 'data/sample/target' -> 'data/mine'; train.lr 0.01 -> 0.001",
    ]
    assert adopt_command(mine) == (
        "git add dvc.lock metrics models/run.json params.yaml plots reports && "
        "git commit -m 'reference results for mine'"
    )
