"""Exponential moving average of the model weights, kept in fp32.

DeepSpeed ZeRO-1/2 keeps a model's trainable weights as views into one flat buffer per parameter
group. The EMA mirrors that layout: one fp32 buffer per live buffer, its parameters viewing it at
the same offsets, so an update is one fused pass per buffer instead of one or two kernels per
parameter (~430 for DiG-XL/2). Weights that do not share a buffer (an unwrapped model) work too,
one buffer each.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def _whole_storage(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor over all of `t`'s storage, in `t`'s dtype."""
    storage = t.untyped_storage()
    return t.new_empty(0).set_(storage, 0, (storage.nbytes() // t.element_size(),))


def _blend(ema: torch.Tensor, live: torch.Tensor, weight: torch.Tensor) -> None:
    ema.lerp_(live.to(ema.dtype), weight)


# On the GPU the upcast of the bf16 live weights is fused into the same pass (no fp32 temporary
# the size of the model); compiled on first use.
_blend_fused = torch.compile(_blend, dynamic=False)


class EMA:
    """An fp32 copy of `model` in eval mode; `update` moves it towards the live weights:
    ema <- decay * ema + (1 - decay) * live, for every parameter that trains.

    Under bf16 training the live weights are the bf16 copies of ZeRO's fp32 masters, so the
    average is of weights rounded to bf16 (relative error <= 2^-9 per step, averaged out; see
    ARCHITECTURE.md, "Changes since the original design"). The EMA keeps referring to `model`'s
    parameter storage: build it from the module that trains (after DeepSpeed has flattened it).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        ema_params = dict(self.module.named_parameters())
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (fp32 EMA buffer, live buffer)
        buffers: dict[int, torch.Tensor] = {}
        for name, live in model.named_parameters():
            if not live.requires_grad:
                continue
            key = live.untyped_storage().data_ptr()
            if key not in buffers:
                live_flat = _whole_storage(live.detach())
                buffers[key] = live_flat.to(torch.float32, copy=True)  # .float() of fp32 weights would alias them
                self._pairs.append((buffers[key], live_flat))
            ema_params[name].data = buffers[key].as_strided(live.shape, live.stride(), live.storage_offset())

    @torch.no_grad()
    def update(self, applied: torch.Tensor | None = None) -> None:
        """One averaging step; `applied` (a 0-d device tensor, 0 or 1) leaves the EMA unchanged when
        0, so a skipped optimizer step needs no host round-trip to be skipped here too."""
        for ema, live in self._pairs:
            weight = torch.full((), 1.0 - self.decay, device=ema.device)
            if applied is not None:
                weight = weight * applied.to(weight.dtype)
            (_blend_fused if ema.is_cuda else _blend)(ema, live, weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().clone() for name, t in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)  # copies into the views: the flat layout stays
