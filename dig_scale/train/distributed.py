"""Joining the job's process group, and the two collective patterns the trainer needs: a decision
taken on rank 0 that every rank follows, and a failure on any rank that stops every rank.

Either way no rank is left waiting in a collective for a rank that has given up.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from dig_scale.checkpoint import CheckpointError
from dig_scale.config import ConfigError
from dig_scale.launch_env import LaunchEnvError, ProcessPlace

from .run_lock import RunDirectoryInUse

T = TypeVar("T")
# Raised on rank 0, re-raised as themselves on every rank; anything else arrives as a RuntimeError.
USER_ERRORS = (ConfigError, CheckpointError, RunDirectoryInUse)


def init_distributed(place: ProcessPlace, timeout_minutes: float) -> torch.device:
    """Set torchrun's variables, pick this process's device and join the process group (nccl on
    CUDA, gloo on CPU). Returns the device."""
    # torchrun's variables, for srun tasks and a world of one too: mosaicml-streaming and DeepSpeed
    # read them (DeepSpeed refuses to start without LOCAL_RANK).
    os.environ.update(RANK=str(place.rank), WORLD_SIZE=str(place.world_size), LOCAL_RANK=str(place.local_rank))
    if place.world_size > 1:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise LaunchEnvError(f"{place.launcher} launch without {' and '.join(missing)}: the launcher must export "
                                 "the address and port of rank 0")
    if torch.cuda.is_available():
        device = torch.device("cuda", place.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        # A world of one needs no rendezvous: an in-process store binds no port, so neither a
        # MASTER_PORT left in the environment nor a second run on this machine can collide with it.
        rendezvous = dict(store=dist.HashStore(), rank=0, world_size=1) if place.world_size == 1 else {}
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes),
                                device_id=device if device.type == "cuda" else None, **rendezvous)
    return device


def on_main_rank(fn: Callable[[], T]) -> T:
    """`fn()` run on rank 0 only; every rank returns its result, or raises its error."""
    outcome: list = [None, None]
    if dist.get_rank() == 0:
        try:
            outcome[0] = fn()
        except USER_ERRORS as e:
            outcome[1] = e
        except Exception as e:
            dist.broadcast_object_list([None, RuntimeError(f"rank 0 failed: {e!r}")], src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def any_rank(flag: bool, device: torch.device, group: dist.ProcessGroup | None = None) -> bool:
    """True on every rank when `flag` is true on any (a collective over `group`, default: all ranks)."""
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())
