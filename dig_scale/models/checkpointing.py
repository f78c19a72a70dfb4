"""Selective activation checkpointing of transformer blocks.

Policies: "none", "all", "every:K" (blocks 0, K, 2K, ...), "first:N" (blocks 0..N-1).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

POLICY_HELP = "'none', 'all', 'every:K' or 'first:N' with K, N positive integers"


def blocks_to_checkpoint(policy: str, depth: int) -> frozenset[int]:
    """Indices of the blocks that `policy` recomputes in the backward pass."""
    kind, _, arg = policy.partition(":")
    if kind in ("none", "all") and not arg:
        return frozenset(range(depth)) if kind == "all" else frozenset()
    if kind in ("every", "first") and arg.isdigit() and int(arg) > 0:
        n = int(arg)
        return frozenset(range(0, depth, n)) if kind == "every" else frozenset(range(min(n, depth)))
    raise ValueError(f"activation checkpointing policy {policy!r}: expected {POLICY_HELP}")


def call_block(block: Callable, checkpointed: bool, *args) -> torch.Tensor:
    """Run `block(*args)`, recomputing its activations in backward when `checkpointed` (and training)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)
