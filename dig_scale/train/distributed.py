"""Where this process sits in the job, from whichever launcher started it, translated in one place.

torchrun and the `deepspeed` launcher set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT. Slurm's srun sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (the launcher sets
MASTER_ADDR / MASTER_PORT). A Kubernetes indexed job with one pod per node runs torchrun in each
pod (JOB_COMPLETION_INDEX is its node rank). A plain `python -m dig_scale.train` is a world of one.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessPlace:
    rank: int
    world_size: int
    local_rank: int
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detect_place(env: dict[str, str] | None = None) -> ProcessPlace:
    """Rank, world size and local rank from the launcher's environment variables."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return ProcessPlace(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        return ProcessPlace(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                            "slurm")
    return ProcessPlace(0, 1, 0, "single")


def init_distributed(place: ProcessPlace, timeout_minutes: float) -> torch.device:
    """Set the standard env vars, pick this process's device and join the process group
    (nccl on CUDA, gloo on CPU). Returns the device."""
    os.environ.update(RANK=str(place.rank), WORLD_SIZE=str(place.world_size), LOCAL_RANK=str(place.local_rank))
    if place.launcher == "single":
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"{place.launcher} launch without {' and '.join(missing)}: the launcher must export the "
                           "address and port of rank 0 (see launchers/)")
    if torch.cuda.is_available():
        device = torch.device("cuda", place.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes),
                                device_id=device if device.type == "cuda" else None)
    return device
