"""What an optimizer step may do, decided on the device: skip it when the gradients are not
finite, clip them when `optim.grad_clip` is set.

The global gradient norm comes from one fused pass over this rank's ZeRO gradient partition and
one all-reduce of a scalar; the decision reaches torch's fused AdamW through its `found_inf`
(skip: parameters, moments and step count stay as they were) and `grad_scale` (gradients divided
by it inside the update kernel) inputs. Nothing waits for the host, so the step stays queued on
the GPU behind the backward pass.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .zero_internals import gradient_partition, torch_optimizer


class UpdateGuard:
    def __init__(self, engine, max_norm: float, world_size: int):
        self.engine = engine
        self.max_norm = max_norm
        self.world_size = world_size
        optimizer = torch_optimizer(engine)
        if not (isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and optimizer.defaults.get("fused")):
            raise TypeError("the update guard needs torch's fused Adam/AdamW (it skips and clips on the device)")
        self.optimizer = optimizer

    @torch.no_grad()
    def prepare(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Call after the last backward of a step, before `engine.step()`. Returns (global gradient
        norm, applied) as 0-d fp32 device tensors; applied is 1.0, or 0.0 for a skipped step."""
        grads = gradient_partition(self.engine)
        squared = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)).square().sum()
        if self.world_size > 1:  # every rank holds a different partition
            dist.all_reduce(squared)
        norm = squared.sqrt()
        found_inf = (~torch.isfinite(norm)).float()
        self.optimizer.found_inf = found_inf
        if self.max_norm > 0:  # torch.nn.utils.clip_grad_norm_'s factor, as a divisor
            self.optimizer.grad_scale = ((norm + 1e-6) / self.max_norm).clamp(min=1.0)
        return norm, 1.0 - found_inf
