"""Preemption by SIGTERM to the trainer's whole process group, as Slurm (every process of the job
step), a terminal or `kill -- -PGID` deliver it: the DataLoader workers get the signal too. The real
trainer (`python -m dig_scale.train` through the harness) runs in a session of its own."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine_runs import HARNESS, ROOT, assert_ok, launch, run_dir, write_config

from dig_scale.train.preemption import REQUEUE_EXIT_CODE


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (from /proc: field 5 of stat, after the command name)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while listed
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def sigterm_the_group_at(config: Path, point: str, tmp_path: Path, *harness: str) -> tuple[int, str, list[int]]:
    """Start the trainer, SIGTERM its process group once it waits at `point` (see train_harness.py);
    returns its exit code, its output and the group's members when the signal was sent."""
    ready = tmp_path / f"ready-{point}"
    ready.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen([sys.executable, str(HARNESS), "--wait-for-signal", point, str(ready), *harness,
                                "--", str(config)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-6000:]
        time.sleep(0.1)
    members = group_members(process.pid)
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    while group_members(process.pid):  # the workers end with the trainer (the DataLoader's watchdog)
        assert time.monotonic() < deadline, f"left behind: {group_members(process.pid)}"
        time.sleep(0.2)
    return process.returncode, output, members


def test_sigterm_to_the_process_group_in_start_up_and_mid_run_requeues_and_resumes(tmp_path):
    config = write_config(tmp_path, data={"num_workers": 1}, train={"max_steps": 6},
                          checkpoint={"every_steps": 100}, logging={"every_steps": 1, "wandb": "offline"})
    run = run_dir(config)

    # While DeepSpeed initializes: exit 75 before the first step, nothing written to resume from.
    code, output, _ = sigterm_the_group_at(config, "startup", tmp_path)
    assert code == REQUEUE_EXIT_CODE, output[-6000:]
    assert "preempted during start-up, before the first step" in output
    assert not any((run / "checkpoints").iterdir()), list((run / "checkpoints").iterdir())
    assert not list(run.rglob("*.tmp")) and (run / "lock").read_text() == ""
    # A start-up that fails after the signal (which also stops the helper processes start-up runs) is
    # retried, not failed: 75 again, still nothing written.
    code, output, _ = sigterm_the_group_at(config, "startup", tmp_path, "--fail-in-startup")
    assert code == REQUEUE_EXIT_CODE, output[-6000:]
    assert "start-up failed (injected)" in output and "start-up failed after a preemption signal" in output
    assert not any((run / "checkpoints").iterdir())

    # Before step 4, with the DataLoader worker running: the step finishes, its checkpoint is written.
    code, output, members = sigterm_the_group_at(config, "4", tmp_path)
    assert len(members) >= 2, members  # the trainer and its worker got the signal
    assert code == REQUEUE_EXIT_CODE, output[-6000:]
    assert "Traceback" not in output, output[-6000:]
    assert (run / "checkpoints" / "latest").read_text() == "step-0000004"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

    resumed = launch(config, nproc=1)
    assert_ok(resumed)
    assert "at step 4" in resumed.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
