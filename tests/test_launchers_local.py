"""launchers/node_launch.py and launchers/local.sh: the ranks' variables, signals passed to the
trainers, exit codes, the restart after a preemption, and a real local run that is preempted with
SIGUSR1 and resumes (tiny DiG, 2 CPU processes, ~1 min on 2 cores)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_runs import write_config

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "launchers"))
import node_launch  # noqa: E402

# node_launch's restart loop around tests/launcher_standin.py instead of the trainer.
STANDIN_NODE = ("import sys; sys.path.insert(0, 'launchers'); import node_launch; "
                "args = node_launch.parse_args(sys.argv[1:]); "
                "standin = [sys.executable, 'tests/launcher_standin.py', *args.trainer_args]; "
                "sys.exit(node_launch.run_node(args, standin))")


def start_standin_node(out: Path, *launcher_args: str, **env: str) -> subprocess.Popen:
    out.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", STANDIN_NODE, *launcher_args, "--", "cfg.yaml", "a.b=1"], cwd=ROOT,
                            env={**os.environ, "STANDIN_DIR": str(out), **env}, stderr=subprocess.PIPE, text=True)


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


def started(out: Path, ranks: int, attempt: int = 1) -> None:
    wait_for(lambda: len(list(out.glob(f"rank*.attempt{attempt}.json"))) == ranks, f"{ranks} ranks to start")


def finish(node: subprocess.Popen) -> tuple[int, str]:
    _, stderr = node.communicate(timeout=60)
    return node.returncode, stderr


def test_ranks_get_torchrun_variables_and_the_trainer_arguments(tmp_path):
    node = start_standin_node(tmp_path, "--nnodes", "2", "--node-rank", "1", "--nproc-per-node", "2",
                              "--master-addr", "rank0.example", "--master-port", "1234")
    started(tmp_path, 2)
    node.send_signal(signal.SIGTERM)
    assert finish(node)[0] == 75
    seen = {json.loads(p.read_text())["env"]["RANK"]: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert sorted(seen) == ["2", "3"]
    for rank, record in seen.items():
        assert record["argv"] == ["cfg.yaml", "a.b=1"]
        assert record["env"] == {"RANK": rank, "LOCAL_RANK": str(int(rank) - 2), "WORLD_SIZE": "4",
                                 "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "rank0.example", "MASTER_PORT": "1234",
                                 "OMP_NUM_THREADS": record["env"]["OMP_NUM_THREADS"]}


@pytest.mark.parametrize("sent, received", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGTERM")])
def test_sigterm_or_ctrl_c_checkpoints_and_stops(tmp_path, sent, received):
    node = start_standin_node(tmp_path, "--nproc-per-node", "2", "--restart-on-preemption")
    started(tmp_path, 2)
    node.send_signal(sent)
    code, stderr = finish(node)
    assert code == 75, stderr
    assert [p.read_text() for p in sorted(tmp_path.glob("*.signal"))] == [received, received]
    assert not list(tmp_path.glob("*.attempt2.json"))  # told to stop: not restarted


def test_sigusr1_restarts_the_preempted_ranks(tmp_path):
    node = start_standin_node(tmp_path, "--nproc-per-node", "2", "--restart-on-preemption")
    started(tmp_path, 2)
    node.send_signal(signal.SIGUSR1)
    code, stderr = finish(node)
    assert code == 0, stderr
    assert len(list(tmp_path.glob("*.attempt1.signal"))) == 2 and len(list(tmp_path.glob("*.attempt2.json"))) == 2
    assert "starting them again from the latest checkpoint" in stderr


def test_a_failing_rank_stops_the_others(tmp_path):
    node = start_standin_node(tmp_path, "--nproc-per-node", "2", "--restart-on-preemption", STANDIN_RANK0_EXIT="3")
    code, stderr = finish(node)
    assert code == 3, stderr
    assert "local rank 0 exited with code 3; killing the other 1 rank(s)" in stderr
    assert not list(tmp_path.glob("*.attempt2.json"))


def test_trainers_get_sigterm_when_the_launcher_dies(tmp_path):
    node = start_standin_node(tmp_path, "--nproc-per-node", "2")
    started(tmp_path, 2)
    node.kill()
    node.wait()
    wait_for(lambda: len(list(tmp_path.glob("*.signal"))) == 2, "the orphaned ranks to get SIGTERM")
    assert {p.read_text() for p in tmp_path.glob("*.signal")} == {"SIGTERM"}


@pytest.mark.parametrize("codes, combined", [([0, 0], 0), ([75, 0], 75), ([75, 75], 75), ([0, 75, 1], 1),
                                             ([75, 137, 1], 137)])
def test_combined_exit_code(codes, combined):
    assert node_launch.combined_exit_code(codes) == combined


@pytest.mark.parametrize("argv, message", [
    ([], "missing the trainer's CONFIG"),
    (["--nnodes", "2", "--", "c.yaml"], "--nnodes > 1 needs --master-addr and --master-port"),
    (["--nnodes", "2", "--node-rank", "2", "--master-addr", "h", "--master-port", "1", "--", "c.yaml"],
     "--node-rank 2 must be in [0, --nnodes 2)"),
    (["--nproc-per-node", "0", "--", "c.yaml"], "--nproc-per-node must be at least 1"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        node_launch.parse_args(argv)
    assert message in capsys.readouterr().err


def test_local_sh_resumes_after_sigusr1(tmp_path):
    steps = 16
    config = write_config(tmp_path, train={"max_steps": steps}, checkpoint={"every_steps": 0})
    metrics = tmp_path / "runs" / "run" / "metrics.jsonl"
    env = {**os.environ, "DIG_NPROC": "2", "DIG_SCALE_DATA": str(tmp_path / "data"), "WANDB_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    node = subprocess.Popen(["launchers/local.sh", str(config)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2 or node.poll() is not None,
                 "training to reach step 2", timeout=600)
        assert node.poll() is None, node.communicate()
        node.send_signal(signal.SIGUSR1)
        stdout, stderr = node.communicate(timeout=600)
    finally:
        node.kill()
    assert node.returncode == 0, stderr[-3000:]
    assert "starting them again from the latest checkpoint" in stderr
    resumed = [line for line in (stdout + stderr).splitlines() if "resumed from" in line]
    assert len(resumed) == 1 and 2 <= int(resumed[0].rsplit(" ", 1)[1]) < steps, stderr[-3000:]
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # every step once: nothing repeated after the restart
