"""SIGUSR1 / SIGTERM: finish the step, checkpoint, exit with REQUEUE_EXIT_CODE. A second signal
exits at once. Slurm (`--signal=USR1@120`, `scancel`) and Kubernetes (SIGTERM before the grace
period ends) both use this path; launchers requeue on REQUEUE_EXIT_CODE."""
from __future__ import annotations

import os
import signal
import sys

import torch
import torch.distributed as dist

from .distributed import any_rank

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "temporary failure, try again"
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionHandler:
    """Collective to construct (it may create a process group): every rank, at the same point."""

    def __init__(self) -> None:
        self.received: int | None = None
        # The per-step "anyone signalled?" vote goes over a CPU (gloo) group: on NCCL it would be a
        # device collective read back on the host, i.e. a GPU sync at the end of every step.
        self._group = None
        if dist.is_initialized() and dist.get_world_size() > 1:
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            print(f"second signal ({signal.Signals(signum).name}): exiting without a checkpoint",
                  file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.received = signum
        print(f"received {signal.Signals(signum).name}: checkpointing after this step, then exiting "
              f"with {REQUEUE_EXIT_CODE}", file=sys.stderr, flush=True)

    def any_rank_signalled(self) -> bool:
        """Collective: true on every rank once any rank got a signal (signals may reach only some)."""
        if self._group is None:
            return self.received is not None
        return any_rank(self.received is not None, torch.device("cpu"), self._group)
