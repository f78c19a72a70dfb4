"""Activation checkpointing, applied to a model from outside (its modules and parameter names stay
as they are, so checkpoints, the EMA and reference weights are unaffected by the policy).

Policies: "none", "all", "every:K" (blocks 0, K, 2K, ...), "first:N" (blocks 0..N-1).
"""
from __future__ import annotations

import types

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

POLICIES = "none|all|every:K|first:N"


def blocks_to_checkpoint(policy: str, depth: int) -> frozenset[int]:
    """Indices of the blocks that `policy` recomputes in the backward pass."""
    kind, _, arg = policy.partition(":")
    if kind in ("none", "all") and not arg:
        return frozenset(range(depth)) if kind == "all" else frozenset()
    if kind in ("every", "first") and arg.isdigit() and int(arg) > 0:
        n = int(arg)
        return frozenset(range(0, depth, n)) if kind == "every" else frozenset(range(min(n, depth)))
    raise ValueError(f"activation checkpointing policy {policy!r}: expected one of {POLICIES} "
                     "with K, N positive integers")


def _recomputed_forward(self: nn.Module, *args) -> torch.Tensor:
    forward = type(self).forward
    if torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False)
    return forward(self, *args)


def apply_activation_checkpointing(blocks: nn.ModuleList, policy: str) -> frozenset[int]:
    """Make the blocks chosen by `policy` recompute their activations in backward instead of
    keeping them. Only their `forward` changes (bound to each block, so a deep copy of the model
    stays correct); returns the indices of those blocks."""
    chosen = blocks_to_checkpoint(policy, len(blocks))
    for i in chosen:
        blocks[i].forward = types.MethodType(_recomputed_forward, blocks[i])
    return chosen
