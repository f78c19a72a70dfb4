"""Where this process sits in a job, read from the launcher's environment variables, in one place
for every entry point (the trainer and data_prep/encode.py).

- torchrun (and the `deepspeed` launcher): RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE.
  launchers/node_launch.py (local.sh, and every pod of a Kubernetes indexed job with
  `--node-rank $JOB_COMPLETION_INDEX`) sets the same variables, so its processes read exactly
  like any torchrun job.
- Slurm srun, one task per GPU: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, and the tasks per node
  from SLURM_STEP_TASKS_PER_NODE (or SLURM_TASKS_PER_NODE) at SLURM_NODEID.
- Anything else (a plain `python ...`, or a batch shell with one Slurm task) is a world of one.

torchrun's variables win over Slurm's: torchrun started inside an sbatch script sees both.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass


class LaunchEnvError(ValueError):
    """A launcher variable that is set but unusable; the message names it."""


@dataclass(frozen=True)
class ProcessPlace:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int  # processes on this node
    launcher: str          # "torchrun", "slurm" or "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def hosts(self) -> int:
        return self.world_size // self.local_world_size  # checked to divide (detect_place)


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = env.get(name)
    if text is None:
        if default is None:
            raise LaunchEnvError(f"${name} is not set")
        return default
    try:
        return int(text)
    except ValueError:
        raise LaunchEnvError(f"${name}={text!r}: expected an integer") from None


def slurm_tasks_on_node(tasks_per_node: str, node: int) -> int:
    """Tasks on node `node` from Slurm's compressed list, e.g. "4(x2),3" -> [4, 4, 3]."""
    counts: list[int] = []
    for item in tasks_per_node.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if match is None:
            raise LaunchEnvError(f"tasks per node {tasks_per_node!r}: expected Slurm's form, e.g. '4(x2),3'")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if not 0 <= node < len(counts):
        raise LaunchEnvError(f"$SLURM_NODEID={node} but tasks per node {tasks_per_node!r} lists {len(counts)} nodes")
    return counts[node]


def detect_place(env: Mapping[str, str] | None = None) -> ProcessPlace:
    """Rank, world size, local rank and local world size from the launcher's environment."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE")
        place = ProcessPlace(_int(env, "RANK"), world, _int(env, "LOCAL_RANK", 0),
                             _int(env, "LOCAL_WORLD_SIZE", world), "torchrun")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and _int(env, "SLURM_NTASKS") > 1:
        world = _int(env, "SLURM_NTASKS")
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        local_world = slurm_tasks_on_node(per_node, _int(env, "SLURM_NODEID", 0)) if per_node else world
        place = ProcessPlace(_int(env, "SLURM_PROCID"), world, _int(env, "SLURM_LOCALID", 0), local_world, "slurm")
    else:
        return ProcessPlace(0, 1, 0, 1, "single")
    if not (0 <= place.rank < place.world_size and 0 <= place.local_rank < place.local_world_size
            and place.world_size % place.local_world_size == 0):
        raise LaunchEnvError(f"{place.launcher} environment gives rank {place.rank} of {place.world_size}, local rank "
                             f"{place.local_rank} of {place.local_world_size}: expected 0 <= rank < world size and "
                             "the same number of processes on every node")
    return place
