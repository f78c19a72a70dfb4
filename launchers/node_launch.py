#!/usr/bin/env python3
"""Start this node's trainer processes and report their outcome as one exit code.

    python launchers/node_launch.py [--nproc-per-node G] [--nnodes N --node-rank R
                                     --master-addr HOST --master-port PORT]
                                    [--restart-on-preemption] -- CONFIG [key.path=value ...]

Every process runs `python -m dig_scale.train CONFIG [overrides]` with torchrun's variables
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). local.sh runs it for one
node, each Kubernetes pod for its node; Slurm starts the ranks with srun instead.

Why not torchrun: it reports any worker failure as exit 1, which loses the trainer's 75 ("preempted,
requeue me") that every restart decision depends on, and it SIGKILLs the workers 30 s after passing on
a signal, which can cut a checkpoint short.

Signals: SIGUSR1 and SIGTERM are passed to the trainers, which checkpoint at the next step boundary and
exit 75; SIGINT (Ctrl-C) is passed on as SIGTERM, a second one stops them at once. The trainers run in
their own sessions, so a terminal's Ctrl-C reaches them only this way, and they get SIGTERM if this
process dies.

Exit code: the first failing rank's code (anything but 0 and 75; the other ranks are killed then, as
they could only wait for it); else 75 if any rank was preempted; else 0. With --restart-on-preemption
a 75 starts the ranks again (they resume from the latest checkpoint) unless SIGTERM or SIGINT asked
this process to stop.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping

REQUEUE_EXIT_CODE = 75  # dig_scale.train.preemption.REQUEUE_EXIT_CODE; this script imports nothing of ours
TRAINER = ("-m", "dig_scale.train")
_PR_SET_PDEATHSIG = 1


def rank_environment(node_rank: int, local_rank: int, nnodes: int, nproc_per_node: int, master_addr: str,
                     master_port: int) -> dict[str, str]:
    """The variables one trainer process gets, as torchrun would set them."""
    return {"RANK": str(node_rank * nproc_per_node + local_rank), "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(nnodes * nproc_per_node), "LOCAL_WORLD_SIZE": str(nproc_per_node),
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)}


def combined_exit_code(codes: list[int]) -> int:
    """One code for the node: a real failure wins over a preemption, which wins over success."""
    failures = [c for c in codes if c not in (0, REQUEUE_EXIT_CODE)]
    if failures:
        return failures[0]
    return REQUEUE_EXIT_CODE if REQUEUE_EXIT_CODE in codes else 0


def _exit_code(status: int) -> int:
    """waitpid status -> shell-style exit code (128 + N for a process killed by signal N)."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM (checkpoint and exit) if the launcher dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeRanks:
    """The trainer processes of one node for one attempt, and the signals this launcher passes on."""

    def __init__(self) -> None:
        self.running: dict[int, tuple[subprocess.Popen, int]] = {}  # pid -> (process, local rank)
        self.stop_requested = False
        signal.signal(signal.SIGUSR1, self._forward)
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)

    def _forward(self, signum: int, frame) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop_requested = True
        if signum == signal.SIGINT:
            signum = signal.SIGTERM
        name = signal.Signals(signum).name
        print(f"node_launch: passing {name} to {len(self.running)} trainer process(es)", file=sys.stderr, flush=True)
        for pid in self.running:
            _signal(pid, signum)

    def run(self, program: list[str], environments: list[Mapping[str, str]]) -> int:
        """Start one process per environment and wait for all of them; returns the combined code."""
        for local_rank, env in enumerate(environments):
            child = subprocess.Popen(program, env=env, start_new_session=True,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            self.running[child.pid] = (child, local_rank)
        codes: list[int] = []
        while self.running:
            pid, status = os.waitpid(-1, 0)  # also reaps orphans re-parented to us (PID 1 in a container)
            if pid not in self.running:
                continue
            (child, local_rank), code = self.running.pop(pid), _exit_code(status)
            child.returncode = code  # reaped here, not by Popen.wait()
            codes.append(code)
            if code not in (0, REQUEUE_EXIT_CODE) and self.running:
                print(f"node_launch: local rank {local_rank} exited with code {code}; killing the other "
                      f"{len(self.running)} rank(s) of this node", file=sys.stderr, flush=True)
                for other in self.running:
                    _signal(other, signal.SIGKILL, group=True)
        return combined_exit_code(codes)


def _signal(pid: int, signum: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, signum)
    except ProcessLookupError:
        pass  # exited between waitpid and now


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] -- CONFIG [key.path=value ...]")
    parser.add_argument("--nproc-per-node", type=int, help="trainer processes on this node "
                        "(default: the visible GPUs, or 2 CPU processes without one)")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--master-addr", help="address of the node with rank 0 (needed for --nnodes > 1)")
    parser.add_argument("--master-port", type=int, help="its rendezvous port (default: a free port, one node)")
    parser.add_argument("--restart-on-preemption", action="store_true",
                        help="start the trainers again when they exit 75, unless told to stop")
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER, help="CONFIG [key.path=value ...]")
    args = parser.parse_args(argv)
    if args.trainer_args[:1] == ["--"]:
        args.trainer_args = args.trainer_args[1:]
    if not args.trainer_args:
        parser.error("missing the trainer's CONFIG (after --)")
    if args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        parser.error(f"--node-rank {args.node_rank} must be in [0, --nnodes {args.nnodes})")
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        parser.error(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    if args.nnodes > 1 and (args.master_addr is None or args.master_port is None):
        parser.error("--nnodes > 1 needs --master-addr and --master-port (the node with rank 0)")
    return args


def default_nproc() -> int:
    import torch

    return torch.cuda.device_count() or 2


def run_node(args: argparse.Namespace, program: list[str]) -> int:
    """Run `program` as this node's ranks until done (restarting after a preemption when asked)."""
    nproc = args.nproc_per_node or default_nproc()
    base = dict(os.environ)
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    ranks = NodeRanks()
    while True:
        addr = args.master_addr or "127.0.0.1"
        port = args.master_port or _free_port()
        first = args.node_rank * nproc
        print(f"node_launch: node {args.node_rank}/{args.nnodes}, ranks {first}-{first + nproc - 1} of "
              f"{args.nnodes * nproc}, rendezvous {addr}:{port}: {' '.join(program)}", file=sys.stderr, flush=True)
        envs = [{**base, **rank_environment(args.node_rank, i, args.nnodes, nproc, addr, port)} for i in range(nproc)]
        code = ranks.run(program, envs)
        if code != REQUEUE_EXIT_CODE or not args.restart_on_preemption or ranks.stop_requested:
            print(f"node_launch: exiting with {code}", file=sys.stderr, flush=True)
            return code
        print("node_launch: trainers exited 75 (preempted): starting them again from the latest checkpoint",
              file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_node(args, [sys.executable, *TRAINER, *args.trainer_args])


if __name__ == "__main__":
    sys.exit(main())
