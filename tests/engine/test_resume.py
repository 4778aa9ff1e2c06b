"""A train stage killed mid-epoch resumes from its checkpoint to the very model of a run never killed, in the
same MLflow run: on one process after `dvc repro`; on two torchrun processes (gloo) by itself, torchrun
restarting the ranks, and when its restarts are used up, after a stage that fails quickly and `dvc repro`;
and on two hosts with their own network (two namespaces), restarted on both without a person. The
two-process tests share one uninterrupted run (fixture two_ranks)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from imgcls.config.params import DOES_NOT_CHANGE_RESULTS
from imgcls.data.loaders import EpochSampler
from imgcls.engine.resume import find_resume, resume_blockers
from imgcls.engine.state import TrainState, capture_rng, load_state, save_state
from tests.helpers import build_pipeline_repo, digest, end_processes_in, free_port, run, set_param

EPOCHS = 3


def configure(repo: Path, processes: int, max_restarts: int = 0) -> None:
    """Whole-network fine-tuning of a small model with dropout (the RNG a resume must put back), checkpointed
    after every step, on `processes` torchrun ranks sharing a global batch of 8."""
    set_param(repo, "model", "arch", "mobilenet_v3_small")
    set_param(repo, "runtime", "threads", 1)  # one core per rank: 2 cores here
    set_param(repo, "runtime", "num_workers", 1 if processes == 1 else 0)
    for key, value in {
        "freeze": "none",
        "cache_features": False,
        "epochs": EPOCHS,
        "patience": EPOCHS,
        "batch_size": 8 // processes,
        "checkpoint_every": 1,
        "lr": 0.001,
    }.items():
        set_param(repo, "train", key, value)
    set_param(
        repo,
        "train",
        "distributed",
        {
            "nnodes": 1,
            "nproc_per_node": processes,
            "master_addr": "127.0.0.1",
            "master_port": free_port(),
            "backend": "gloo",
            "timeout": 60,
            "max_restarts": max_restarts,
        },
    )


FORCED_TRAIN = ["dvc", "repro", "--force", "--single-item", "train"]


def start_logged(command: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """`command` started in its own session (a kill of its group takes dvc and every process under it), its
    output to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for(log: Path, pattern: str, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text()):
            return
        if process.poll() is not None:
            raise AssertionError(
                f"the stage exited {process.returncode} before '{pattern}':\n{log.read_text()}"
            )
        time.sleep(0.05)
    raise AssertionError(f"no '{pattern}' within {seconds} s:\n{log.read_text()}")


def rank_pid(repo: Path, rank: int) -> int:
    """The process torchrun started as `rank` for this repository's train stage."""
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            if (
                f"RANK={rank}".encode() in environ
                and (entry / "cwd").resolve() == repo.resolve()
                and b"stages.train" in (entry / "cmdline").read_bytes()
            ):
                return int(entry.name)
        except (OSError, ValueError):
            continue
    raise AssertionError(f"no rank {rank} process of {repo}")


def same_model(path: Path, reference: Path) -> None:
    """`path` holds the model of `reference`: every weight's bits, the classes, preprocessing, provenance,
    best epoch and params, but for the params that do not change results (the restarts allowed, the port)."""
    found, expected = (torch.load(p, weights_only=True) for p in (path, reference))
    for made in (found, expected):
        for key in DOES_NOT_CHANGE_RESULTS:
            section, *inner, name = key.split(".")
            holder = made["params"][section]
            for part in inner:
                holder = holder[part]
            holder.pop(name, None)
    weights = [
        k
        for k in expected["state_dict"]
        if not torch.equal(found["state_dict"][k], expected["state_dict"][k])
    ]
    assert found["state_dict"].keys() == expected["state_dict"].keys() and weights == [], weights
    found.pop("state_dict"), expected.pop("state_dict")
    assert found == expected


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """A repo trained once, uninterrupted, on two torchrun ranks sharing a global batch of 8: the model every
    two-process test below must end with, whatever it kills (a copy, uninterrupted.pt beside the repo). Each
    test sets its own restarts and port; neither changes results. The module runs on one worker
    (conftest.SHARED_REPO_GROUPS)."""
    repo, env = build_pipeline_repo(tmp_path_factory.mktemp("two_ranks") / "repo")
    configure(repo, 2)
    first = run(["dvc", "repro", "train"], repo, env)  # prepare, pretrain and an uninterrupted train
    assert "rank 0 of 2" in first.stdout + first.stderr
    uninterrupted = load_state(repo / "models/checkpoint.pt")
    assert uninterrupted.finished and len(uninterrupted.history) == EPOCHS
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    [only] = client.search_runs([client.get_experiment_by_name("image-classifier").experiment_id])
    assert only.info.run_id == uninterrupted.meta["run_id"]  # rank 0 alone made a run
    shutil.copy(repo / "models/model.pt", repo.parent / "uninterrupted.pt")
    yield repo, env, repo.parent / "uninterrupted.pt"
    end_processes_in(repo.parent)


def assert_one_run_resumed_at(repo: Path, epoch: int, run_id: str | None = None) -> None:
    """The training ended in one MLflow run (`run_id`, where the test knows it) that resumed at `epoch`: its
    checkpoint finished, the run FINISHED, every epoch logged once."""
    final = load_state(repo / "models/checkpoint.pt")
    assert final.finished and final.meta["run_id"] == (run_id or final.meta["run_id"])
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    continued = client.get_run(final.meta["run_id"])
    assert continued.info.status == "FINISHED"
    assert f"resumed at epoch {epoch}," in continued.data.tags["status_note"]
    for metric in ("train_loss", "val_accuracy"):  # every epoch once, none twice
        assert [m.step for m in client.get_metric_history(continued.info.run_id, metric)] == list(
            range(1, EPOCHS + 1)
        )


def assert_resumed_in_the_same_run(repo: Path, env: dict, state: TrainState, resumed: str) -> None:
    """`dvc repro train` resumed `state`'s run from its checkpoint, and DVC holds the result."""
    assert f"resuming from models/checkpoint.pt: epoch {state.epoch}, step {state.step}" in resumed, resumed
    assert_one_run_resumed_at(repo, state.epoch, state.meta["run_id"])
    assert run(["dvc", "status", "train"], repo, env).stdout.strip().endswith("up to date.")


def killed_state(repo: Path, before: str) -> TrainState:
    """The checkpoint a killed forced run left: unfinished, past epoch 2 step 1, in a run of its own that did
    not finish (KILLED, FAILED when its peer died, or RUNNING)."""
    state = load_state(repo / "models/checkpoint.pt")
    assert not state.finished and (state.epoch, state.step) >= (2, 1)
    assert state.meta["run_id"] != before  # the forced run started a run of its own
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert client.get_run(state.meta["run_id"]).info.status != "FINISHED"
    return state


@pytest.mark.pipeline
def test_killed_train_resumes_to_the_same_bytes_in_the_same_run(pipeline_repo, tmp_path):
    repo, env = pipeline_repo
    configure(repo, 1)
    first = run(["dvc", "repro", "train"], repo, env)  # prepare, pretrain and an uninterrupted train
    assert "rank 0 of" not in first.stdout + first.stderr
    reference = digest(repo / "models/model.pt")
    uninterrupted = load_state(repo / "models/checkpoint.pt")
    assert uninterrupted.finished and len(uninterrupted.history) == EPOCHS

    log = tmp_path / "killed.log"
    killed = start_logged(FORCED_TRAIN, repo, env, log)
    wait_for(log, r"checkpoint: epoch 2 step 1", killed)
    os.killpg(killed.pid, signal.SIGKILL)  # mid-epoch: no handler runs, nothing is flushed
    killed.wait(timeout=30)
    state = killed_state(repo, uninterrupted.meta["run_id"])
    resumed = run(["dvc", "repro", "train"], repo, env)
    assert digest(repo / "models/model.pt") == reference  # as if it had never stopped, to the byte
    assert_resumed_in_the_same_run(repo, env, state, resumed.stdout + resumed.stderr)


@pytest.mark.pipeline
def test_a_killed_rank_fails_the_stage_quickly_and_dvc_repro_resumes_the_same_run(two_ranks, tmp_path):
    """With no restarts allowed, a rank killed mid-epoch fails the stage within seconds, naming the rank; `dvc
    repro` then resumes both ranks to the uninterrupted run's model."""
    repo, env, reference = two_ranks
    configure(repo, 2, max_restarts=0)
    before = load_state(repo / "models/checkpoint.pt").meta["run_id"]
    log = tmp_path / "killed.log"
    killed = start_logged(FORCED_TRAIN, repo, env, log)
    wait_for(log, r"checkpoint: epoch 2 step 1", killed)
    os.kill(rank_pid(repo, 1), signal.SIGKILL)  # one rank dies; the stage must fail, not hang
    start = time.monotonic()
    assert killed.wait(timeout=90) != 0
    failed_after = time.monotonic() - start
    output = log.read_text()
    assert "distributed training failed: torchrun exited with code" in output, output
    assert re.search(r"rank\s+: 1 \(local_rank: 1\)\s+exitcode\s+: -9", output), output  # names the rank
    assert failed_after < 60, f"the stage took {failed_after:.0f} s to fail after a rank was killed"
    state = killed_state(repo, before)
    resumed = run(["dvc", "repro", "train"], repo, env)
    same_model(repo / "models/model.pt", reference)  # as if it had never stopped
    assert_resumed_in_the_same_run(repo, env, state, resumed.stdout + resumed.stderr)


def test_a_checkpoint_resumes_only_unfinished_and_from_the_same_inputs(tmp_path, caplog):
    key = {"params": {"train.lr": 0.01}, "data": "a", "weights": "w", "code": "c"}
    state = TrainState(
        model={"w": torch.ones(2)},
        optimizer={},
        scheduler={},
        stopper={},
        history=[],
        epoch=3,
        step=2,
        rng=capture_rng(),
        meta={"key": key, "run_id": "r"},
    )
    path = tmp_path / "checkpoint.pt"
    save_state(path, state)
    caplog.set_level(logging.INFO)
    assert find_resume(str(tmp_path / "none.pt"), key) is None
    found = find_resume(str(path), key)
    assert (found.epoch, found.step, found.meta["run_id"]) == (3, 2, "r")
    assert torch.equal(found.model["w"], torch.ones(2))
    assert find_resume(str(path), key | {"params": {"train.lr": 0.02}}) is None
    assert "not resuming from" in caplog.text and "train.lr 0.01 -> 0.02; starting fresh" in caplog.text
    state.finished = True
    save_state(path, state)
    assert find_resume(str(path), key) is None and "holds a finished run; starting fresh" in caplog.text
    path.write_bytes(b"not a checkpoint")
    assert find_resume(str(path), key) is None and "cannot be read" in caplog.text


def test_changed_inputs_block_a_resume_and_say_which():
    old = {"params": {"train.lr": 0.01, "train.epochs": 30}, "data": "a", "weights": "w", "code": "c"}
    assert resume_blockers(old, old) == []
    new = {"params": {"train.lr": 0.02, "train.epochs": 30}, "data": "b", "weights": "w", "code": "d"}
    assert resume_blockers(old, new) == [
        "params changed: train.lr 0.01 -> 0.02",
        "the prepared data changed (manifest.csv)",
        "the code changed (stages/, imgcls/)",
    ]


@pytest.mark.parametrize("size", [37, 40])
def test_two_ranks_of_batch_b_see_what_one_process_of_batch_2b_sees(size):
    """DistributedSampler's split: step t of two ranks covers the images of one process's step t."""
    one = EpochSampler(size, True, seed=3)
    ranks = [EpochSampler(size, True, seed=3, rank=r, world=2) for r in (0, 1)]
    for sampler in [one, *ranks]:
        sampler.set_epoch(5)
    single = [i for i, _ in one]
    shards = [[i for i, _ in sampler] for sampler in ranks]
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == (size + 1) // 2
    batch = 4
    for step in range(size // (2 * batch)):
        together = sorted(
            shards[0][step * batch : (step + 1) * batch] + shards[1][step * batch : (step + 1) * batch]
        )
        assert together == sorted(single[step * 2 * batch : (step + 1) * 2 * batch])
    evaluation = [EpochSampler(size, False, seed=0, rank=r, world=2) for r in (0, 1)]
    assert sorted(i for sampler in evaluation for i, _ in sampler) == list(range(size))  # no image twice
    resumed = EpochSampler(size, True, seed=3, rank=1, world=2)
    resumed.set_epoch(5, skip=batch)
    assert [i for i, _ in resumed] == shards[1][batch:] and len(resumed) == len(shards[1]) - batch


@pytest.mark.pipeline
def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_resumes_to_the_same_bytes(two_ranks, tmp_path):
    repo, env, reference = two_ranks
    configure(repo, 2, max_restarts=1)
    log = tmp_path / "restarted.log"
    stage = start_logged(FORCED_TRAIN, repo, env, log)
    try:
        wait_for(log, r"checkpoint: epoch 2 step 1", stage)
        os.kill(rank_pid(repo, 1), signal.SIGKILL)  # mid-epoch; nobody runs anything after this
        killed = time.monotonic()
        wait_for(log, r"resuming from models/checkpoint.pt: epoch 2", stage)
        recovered = time.monotonic() - killed
        assert stage.wait(timeout=600) == 0, log.read_text()
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
    output = log.read_text()
    assert output.count("resuming from models/checkpoint.pt") == 1, output  # rank 0 finds it, hands it on
    same_model(repo / "models/model.pt", reference)  # as if it had never stopped
    assert_one_run_resumed_at(repo, 2)
    print(f"killed rank 1 mid-epoch 2: every rank resumed {recovered:.1f} s later, without a person")


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair, addresses only inside them: two hosts with their own
    network. Yields [(namespace, interface, address)] for node 0 and node 1; removed afterwards."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to make network namespaces (CI runs as root)")
    tag, subnet = f"{os.getpid() % 100000}", 200 + os.getpid() % 50
    nodes = [(f"imgcls-n{i}-{tag}", f"ic{i}-{tag}", f"10.213.{subnet}.{i + 1}") for i in (0, 1)]
    commands = [["ip", "netns", "add", ns] for ns, _, _ in nodes]
    commands.append(["ip", "link", "add", nodes[0][1], "type", "veth", "peer", "name", nodes[1][1]])
    for ns, interface, address in nodes:
        commands += [
            ["ip", "link", "set", interface, "netns", ns],
            ["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", interface],
            ["ip", "-n", ns, "link", "set", interface, "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
        ]
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True, timeout=30)
        yield nodes
    finally:
        for ns, _, _ in nodes:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.mark.pipeline
def test_two_hosts_train_one_model_and_recover_from_a_killed_rank_by_themselves(
    two_ranks, tmp_path, two_hosts
):
    """Node 0 runs `dvc repro` in its namespace, node 1 the documented torchrun line in its own (a copy of the
    repository standing in for its clone); the model equals the one-host two-process run of the same global
    batch, and node 1's rank, killed mid-epoch, is restarted on both hosts without a person."""
    repo, env, reference = two_ranks  # the one-host run: 2 processes, batch 4 each
    one_host = torch.load(reference, weights_only=True)["state_dict"]
    [(ns0, if0, address0), (ns1, if1, _)] = two_hosts
    port = free_port()
    cfg = {
        "nnodes": 2,
        "nproc_per_node": 1,
        "master_addr": address0,
        "master_port": port,
        "backend": "gloo",
        "timeout": 60,
        "max_restarts": 1,
    }
    set_param(repo, "train", "distributed", cfg)
    run(["git", "commit", "-qam", "two hosts"], repo, env)
    node1 = tmp_path / "node1" / "repo"
    shutil.copytree(repo, node1, symlinks=True)  # its clone at the same commit, data pulled
    shutil.rmtree(node1 / "models")  # node 1 has the inputs only
    (node1 / "models").mkdir()
    shutil.copy(repo / "models/pretrained.pt", node1 / "models/pretrained.pt")
    (node1 / "mlflow.db").unlink()
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    other_node = [
        "torchrun",
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--node_rank",
        "1",
        "--master_addr",
        address0,
        "--master_port",
        str(port),
        "--max_restarts",
        "1",
        "-m",
        "stages.train",
    ]
    processes = []
    for (ns, interface, _), folder, command, log in zip(
        two_hosts, (repo, node1), (["dvc", "repro", "train"], other_node), logs
    ):
        node_env = env | {"GLOO_SOCKET_IFNAME": interface}
        processes.append(start_logged(["ip", "netns", "exec", ns, *command], folder, node_env, log))
    try:
        wait_for(logs[0], r"checkpoint: epoch 2 step 1", processes[0])
        os.kill(rank_pid(node1, 1), signal.SIGKILL)  # node 1's only rank, mid-epoch
        killed = time.monotonic()
        wait_for(logs[0], r"resuming from models/checkpoint.pt: epoch 2", processes[0])
        recovered = time.monotonic() - killed
        codes = [p.wait(timeout=600) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    output = logs[0].read_text() + logs[1].read_text()
    assert codes == [0, 0], output
    assert "rank 0 of 2" in logs[0].read_text() and "on cpu over gloo" in output
    two_hosts_model = torch.load(repo / "models/model.pt", weights_only=True)["state_dict"]
    worst = max((two_hosts_model[k].float() - one_host[k].float()).abs().max().item() for k in one_host)
    assert worst == 0.0, f"the two-host model differs from the one-host one by up to {worst}"
    assert (
        not (node1 / "models/model.pt").exists() and not (node1 / "mlflow.db").exists()
    )  # rank 0 alone writes
    assert_one_run_resumed_at(repo, 2)
    print(f"two hosts: node 1's rank killed mid-epoch 2, both hosts resumed {recovered:.1f} s later")
