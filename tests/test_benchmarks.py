"""The benchmark scripts run and print their figures: the GPU run is one command on a borrowed machine, so a
script that fails at its first line costs that machine's whole budget. Tiny sizes here; the figures are
checked for shape and sense, not speed."""

from __future__ import annotations

import json
import sys

from tests.helpers import ROOT, attempt, clean_env


def script(name: str, *args: str, cwd=ROOT) -> str:
    env = clean_env() | {"PYTHONPATH": str(ROOT)}
    result = attempt([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=cwd, env=env, timeout=600)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_train_throughput_prints_every_figure(tmp_path):
    figures_file = tmp_path / "figures.json"
    out = script(
        "train_throughput.py",
        "--arch",
        "resnet18",
        "--size",
        "32",
        "--batch",
        "8",
        "--images",
        "48",
        "--workers",
        "1",
        "--threads",
        "1",
        "--json",
        str(figures_file),
    )
    for line in (
        "loader, one process on one thread",
        "loader, 1 workers",
        "seed's loop",
        "pipeline (prepared JPEG",
        "model-bound ceiling",
        "pipeline / ceiling",
        "pipeline / seed",
        "frozen backbone",
        "FLOPs per",
    ):
        assert line in out, f"missing {line!r} in:\n{out}"
    figures = json.loads(figures_file.read_text())
    rates = [*figures["loader_per_core"].values(), figures["pipeline"], figures["ceiling"], figures["seed"]]
    assert all(rate > 0 for rate in rates), figures
    assert (
        figures["quality"] == 95
        and figures["kb_per_image"]["prepared_png"] > figures["kb_per_image"]["prepared"]
    )
    assert figures["frozen"]["full_over_cached"] > 1
    assert 0.2 < figures["gflop_per_train_image"] < 0.24  # ResNet-18: 10.65 GFLOP at 224 px, 0.217 at 32 px


def test_prepare_throughput_prints_files_per_second():
    out = script("prepare_throughput.py", "--images", "40", "--workers", "1")
    assert "workers=1 (fixed): 40 files in" in out and "files/s" in out, out
    assert "incremental, workers=1: +1 images to 40, 41 files in" in out, out


def test_serve_memory_prints_every_worst_request_and_the_steady_load():
    out = script("serve_memory.py", "--crop", "28", "--requests", "12", "--clients", "2", "--photo-mp", "1")
    for line in (
        "camera photos of 1 MP",
        "5 RGBA PNGs of 40 MP",
        "256 small PNGs",
        "over the budget: refused",
        "steady load: 12 requests from 2 clients",
        "0 errors",
    ):
        assert line in out, f"missing {line!r} in:\n{out}"
    assert out.count("HTTP 200") == 3 and "HTTP 400" in out, out
    assert "traceback" not in out, out


def test_feature_pass_prints_one_process_and_two_ranks():
    out = script("feature_pass.py", "--images", "10", "--size", "32", "--batch", "4")
    assert "resnet18, 10 images at 32 px: 1 process (2 threads)" in out, out
    assert "each over every image (before)" in out and "each over its share and gathered (now)" in out, out


def test_checkpoint_stall_prints_blocking_and_behind():
    out = script("checkpoint_stall.py", "--arch", "resnet18", "--steps", "1", "--size", "32", "--batch", "2")
    assert "resnet18 whole-network state" in out and "a blocking save stops the loop" in out, out
    assert "StateWriter.save holds it" in out and "writing behind cost the loop" in out, out


def test_pinned_cost_prints_each_runtime_and_where_the_time_goes():
    out = script("pinned_cost.py", "--rounds", "1", "--sizes", "32", "--steps", "1", "--profile", "32")
    assert "kernels: unpinned " in out and "pinned AVX2, before DEFAULT" in out
    for line in ("train 32 px", "features 32 px", "loader, per core", "aten::convolution_backward", "all  "):
        assert line in out, f"missing {line!r} in:\n{out}"
