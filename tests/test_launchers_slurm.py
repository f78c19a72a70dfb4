"""The Slurm launchers on a real (throwaway, localhost) Slurm cluster: two simulated nodes with two
"GPU" slots each, the real launchers/slurm_*.sh submitted with sbatch, a tiny DiG on CPU (gloo).

Needs Debian's slurmctld, slurmd, slurm-client and munge, and root (.ci/run installs them);
without them the tests skip and say why. Measured on a shared 2-core machine under load: 5 min
warm, 9 min when the first job also JIT-builds DeepSpeed's shm op (no earlier test did)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
from engine_runs import write_config
from slurm_cluster import SlurmCluster, unavailable_reason

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))

STEPS = 24
JOB_TIMEOUT = 600
# 2 nodes x 2 tasks; the allocation the tests ask for instead of the scripts' 8-GPU nodes.
TWO_NODES = ["--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=2", "--cpus-per-task=1"]
ONE_NODE = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2", "--cpus-per-task=1"]


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="dig-slurm-", dir="/tmp"))  # short path for the munge socket,
    root.chmod(0o755)                                                 # which munged wants world-searchable
    with SlurmCluster.start(root / "cluster") as c:
        yield c
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def work(cluster) -> Path:
    """Configs, runs, logs and the demo data of all jobs, next to the cluster's state."""
    from dig_scale.data import default_demo_path, ensure_demo_dataset

    work = cluster.root.parent / "work"
    (work / "logs").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as env:  # written once here, not by two "nodes" at once
        env.setenv("DIG_SCALE_DATA", str(work / "data"))
        ensure_demo_dataset(default_demo_path(8), resolution=8)
    return work


def job_env(work: Path) -> dict[str, str]:
    """What a user's shell would pass to sbatch: the virtualenv's python on PATH, wandb never online."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "DIG_SCALE_DATA": str(work / "data"), "WANDB_MODE": "offline"}


def tiny_config(work: Path, run_name: str, train: dict | None = None, **sections) -> Path:
    """engine_runs.TINY with micro-batch 8 (slurm_dig_xl.sh sets it) x 4 ranks, checkpoints only
    when preempted and at the end, and a DataLoader worker per rank (Slurm signals it too). The
    dataset directory is shared by both nodes, so each node reads it through a node-local cache (its
    own /dev/shm here), as data.cache_dir asks for: in place, both would decompress the same shards
    at once."""
    train = {"global_batch_size": 32, "micro_batch_size": 8, "max_steps": STEPS, **(train or {})}
    return write_config(work / run_name, run_name=run_name, train=train, checkpoint={"every_steps": 0},
                        data={"cache_dir": "/dev/shm/dig-scale-cache", "num_workers": 1}, **sections)


def submit(cluster: SlurmCluster, work: Path, script: str, allocation: list[str], *args: str, **env: str) -> str:
    return cluster.sbatch([*allocation, f"--output={work}/logs/%x-%j.log", f"launchers/{script}", *args],
                          cwd=ROOT, env={**job_env(work), **env})


def logged_steps(run: Path) -> list[tuple[int, float]]:
    """(step, loss) of every metrics.jsonl line, in the order written."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [(m["step"], m["loss"]) for m in map(json.loads, path.read_text().splitlines())]


def wait_for_step(cluster: SlurmCluster, job: str, run: Path, step: int) -> None:
    """Poll metrics.jsonl (no fixed sleep) until the job has logged `step` steps."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while len(logged_steps(run)) < step:
        assert time.monotonic() < deadline and cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), \
            f"job {job} never got to step {step}: {cluster.job(job)}"
        time.sleep(0.2)


def finished(cluster: SlurmCluster, job: str) -> tuple[dict[str, str], str]:
    info = cluster.wait_until_done(job, JOB_TIMEOUT)
    return info, Path(info["StdOut"]).read_text()


@pytest.fixture(scope="module")
def uninterrupted(cluster, work):
    """launchers/slurm_dig_xl.sh on 2 nodes x 2 ranks, trained to the end."""
    config = tiny_config(work, "straight")
    job = submit(cluster, work, "slurm_dig_xl.sh", TWO_NODES, str(config))
    info, log = finished(cluster, job)
    return config.parent / "runs" / "straight", info, log


def test_two_nodes_train_to_the_end(uninterrupted):
    run, info, log = uninterrupted
    assert (info["JobState"], info["ExitCode"], info["Restarts"], info["NodeList"]) == \
        ("COMPLETED", "0:0", "0", "n[1-2]"), log
    assert "world size 4 (slurm)" in log and "slurm_common: training finished" in log, log
    assert [step for step, _ in logged_steps(run)] == list(range(1, STEPS + 1))
    assert (run / "checkpoints" / "latest").read_text() == f"step-{STEPS:07d}"
    assert (run / f"slurm-{info['JobId']}.log").resolve() == Path(info["StdOut"])


def test_preempted_job_checkpoints_requeues_and_resumes(cluster, work, uninterrupted):
    config = tiny_config(work, "preempted", logging={"wandb": "offline"})
    run = config.parent / "runs" / "preempted"
    job = submit(cluster, work, "slurm_dig_xl.sh", TWO_NODES, str(config))
    wait_for_step(cluster, job, run, 3)  # training under way, well before the end
    # SIGTERM to every process of the step, the DataLoader workers included (test_restarts_are_capped
    # sends SIGUSR1, the --signal warning of the sbatch scripts).
    cluster.signal_tasks(job, signal.SIGTERM)
    info, log = finished(cluster, job)

    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), log
    assert "received SIGTERM" in log and "requeueing job" in log, log
    saved = int((run / "checkpoints" / "latest").read_text().removeprefix("step-"))
    assert saved == STEPS
    resumed_at = [line for line in log.splitlines() if "resumed from" in line]
    assert len(resumed_at) == 1 and 3 <= int(resumed_at[0].rsplit(" ", 1)[1]) < STEPS, log
    # Every step once: nothing repeated after the restart, and the loss curve is the uninterrupted one.
    steps = logged_steps(run)
    assert [step for step, _ in steps] == list(range(1, STEPS + 1))
    assert steps == logged_steps(uninterrupted[0])
    # One log for both starts, one wandb run.
    assert "(start 1)" in log and "(start 2)" in log
    assert len(list((work / "logs").glob(f"*-{job}.log"))) == 1
    wandb_id = (run / "wandb_id").read_text().strip()
    starts = sorted((run / "wandb").glob("offline-run-*"))
    assert len(starts) == 2 and all(d.name.endswith(f"-{wandb_id}") for d in starts), starts


def test_failed_trainer_is_not_requeued(cluster, work):
    # Only the trainer, knowing the world size, can find this one: 24 is not 8 x 2 ranks x an integer.
    config = tiny_config(work, "bad_batch", train={"global_batch_size": 24, "max_steps": 2})
    info, log = finished(cluster, submit(cluster, work, "slurm_dig_s.sh", ONE_NODE, str(config)))
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "2:0", "0"), log
    assert "config error: train.global_batch_size=24 is not a multiple of train.micro_batch_size=8 x world size 2" \
        in log, log
    assert "the trainer failed with exit code 2: not requeueing" in log, log

    # A config that does not even load fails before any task starts.
    info, log = finished(cluster, submit(cluster, work, "slurm_dig_s.sh", ONE_NODE, str(config), "optim.lrr=1"))
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "2:0", "0"), log
    assert "optim.lrr: unknown key (did you mean 'optim.lr'?)" in log, log


def test_restarts_are_capped(cluster, work):
    config = tiny_config(work, "capped", train={"global_batch_size": 16, "max_steps": 10_000})
    run = config.parent / "runs" / "capped"
    job = submit(cluster, work, "slurm_dig_s.sh", ONE_NODE, str(config), DIG_MAX_RESTARTS="0")
    wait_for_step(cluster, job, run, 1)
    cluster.signal_tasks(job, signal.SIGUSR1)
    info, log = finished(cluster, job)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "75:0", "0"), log
    assert "(DIG_MAX_RESTARTS=0): not requeueing" in log, log
    assert (run / "checkpoints" / "latest").is_file()  # resubmitting continues from there
