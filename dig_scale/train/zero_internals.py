"""The DeepSpeed ZeRO-1/2 internals the trainer reads, gathered here (checked against the pinned
deepspeed==0.19.8, dig_scale's pyproject).

Why read them at all: DeepSpeed's own non-finite check and gradient norm run two to five small
kernels per parameter and read the result on the host every step (~2,000 launches and a device
sync for DiG-XL/2). The trainer instead computes the norm over this rank's flat gradient
partition in one fused pass and hands skip/clip to the optimizer as device tensors
(update_guard.py), with DeepSpeed's checks turned off in deepspeed_config.py.
"""
from __future__ import annotations

import torch


def gradient_partition(engine) -> list[torch.Tensor]:
    """This rank's reduced gradient partition, as the list of tensors ZeRO's step will read.
    Valid after the backward pass of the last micro-batch of a step (the accumulation boundary)."""
    groups = engine.optimizer.averaged_gradients
    return [g for i in sorted(groups) if groups[i] is not None for g in groups[i]]


def torch_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer ZeRO steps on its fp32 master partition."""
    return engine.optimizer.optimizer
