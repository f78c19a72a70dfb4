"""Exponential moving average of the model weights, kept in fp32."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    """An fp32 copy of `model` in eval mode; `update` moves it towards the live weights:
    ema <- decay * ema + (1 - decay) * live, for every parameter that trains.

    Under bf16 training the live weights are the bf16 copies of ZeRO's fp32 masters, so the
    average is of weights rounded to bf16 (relative error <= 2^-9 per step, averaged out; see
    ARCHITECTURE.md, "Changes since the original design").
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        self._names = [name for name, p in model.named_parameters() if p.requires_grad]
        params = dict(self.module.named_parameters())
        self._ema_params = [params[name] for name in self._names]

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        live = dict(model.named_parameters())
        sources = [live[name].detach() for name in self._names]
        decay = self.decay if decay is None else decay
        torch._foreach_mul_(self._ema_params, decay)
        torch._foreach_add_(self._ema_params, sources, alpha=1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().clone() for name, t in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
