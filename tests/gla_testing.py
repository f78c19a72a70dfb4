"""Helpers shared by the GLA tests: random inputs, the error measure, outputs with gradients."""
from __future__ import annotations

import torch


def random_gla_inputs(B, T, H, K, V, dtype=torch.float64, gate_floor=None, seed=0):
    """Random q, k, v and log-sigmoid gates (never zeros). `gate_floor` spreads gates down to that value."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)
    k = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) * 2)
    if gate_floor is not None:
        g = -torch.rand(B, T, H, K, generator=gen, dtype=torch.float64) * -gate_floor
    return tuple(x.to(dtype) for x in (q, k, v, g))


def rel_err(a, b):
    """||a - b|| / ||b||; the floor keeps exactly-zero references (dg at T=1) meaningful."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-3)).item()


def outputs_and_grads(fn, inputs, seed=0):
    """fn(*inputs) and the gradients of a fixed random projection of it w.r.t. every input."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*inputs)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return out, torch.autograd.grad((out.double() * weight.to(out.device)).sum(), inputs)
