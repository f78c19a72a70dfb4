"""SIGUSR1 / SIGTERM: finish the step, checkpoint, exit with REQUEUE_EXIT_CODE. A second signal
exits at once, unless it comes within DUPLICATE_WINDOW_S of the first: a launcher that forwards a
signal it got itself (torchrun under srun) to a process the same signal reached directly (`scancel`
signals every process of a job step) delivers one request twice, milliseconds apart.
Slurm (`--signal=USR1@120`, `scancel`) and Kubernetes (SIGTERM before the grace period ends) both use
this path; launchers requeue on REQUEUE_EXIT_CODE.

`python -m dig_scale.train` enters the handler before it loads the config and builds the trainer: a
signal during start-up is only recorded, and the trainer exits with REQUEUE_EXIT_CODE before its
first step, without a checkpoint (see ARCHITECTURE.md, "Preemption").

Slurm signals every process of a job step and a terminal or `kill -- -PGID` every process of a
group, DataLoader workers included: torch's workers die on SIGTERM and the trainer would then fail
on a lost worker. The main process owns these signals; workers ignore them (`ignore_job_signals`)
and still end with the main process, which the DataLoader handles (a worker exits when its parent
is gone, or when its parent terminates it).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

from .distributed import any_rank

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "temporary failure, try again"
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
DUPLICATE_WINDOW_S = 1.0  # a person's "stop now" comes after reading the first signal's message


def ignore_job_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: the signals meant for the job are the main process's to handle.

    SIGTERM from the worker's parent is the DataLoader's own way to stop it (multiprocessing
    terminates daemonic children at exit) and must still end it, as torch's handler does; from anyone
    else it is ignored. A Python handler cannot see the sender, so the signal is blocked (threads
    started later inherit that) and one thread takes each SIGTERM with its sender. SIGINT (Ctrl-C)
    stays the main process's "stop now" (no checkpoint and not 75: a launcher must not restart a run
    its user interrupted); workers ignore it so that the main process alone reacts."""
    for sig in (signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_sigterm_from, args=(os.getppid(),), name="sigterm-from-parent",
                     daemon=True).start()


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


class PreemptionHandler:
    """A context manager: records SIGUSR1/SIGTERM while entered, restores the previous handlers on
    exit. `any_rank_signalled` is collective: every rank calls it at the same points."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._received_at = 0.0
        self._previous: dict[int, object] = {}
        self._group: dist.ProcessGroup | None = None

    def __enter__(self) -> PreemptionHandler:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if time.monotonic() - self._received_at < DUPLICATE_WINDOW_S:
                print(f"{name} again within {DUPLICATE_WINDOW_S:.0f} s: the same request (forwarded by a launcher), "
                      "still checkpointing", file=sys.stderr, flush=True)
                return
            print(f"second signal ({name}): exiting without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.received, self._received_at = signum, time.monotonic()
        print(f"received {name}: checkpointing after this step (or, before the first "
              f"step, stopping without a checkpoint), then exiting with {REQUEUE_EXIT_CODE}", file=sys.stderr,
              flush=True)

    def any_rank_signalled(self) -> bool:
        """Collective: true on every rank once any rank got a signal (signals may reach only some)."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return self.received is not None
        if self._group is None:
            # The vote goes over a CPU (gloo) group: on NCCL it would be a device collective read back
            # on the host, i.e. a GPU sync at the end of every step. Created at the first vote, which
            # every rank reaches at the same point.
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return any_rank(self.received is not None, torch.device("cpu"), self._group)
