"""The only sequential part of the Triton GLA: a scan over per-chunk [K, V] states.

Forward, with Delta_n the state chunk n builds from zero and a_n its log-decay (sum of its gates):
    S_0 = 0,   S_{n+1} = e^{a_n} S_n + Delta_n          (S_n: the state entering chunk n)
Backward, the same recurrence run from the last chunk, over D_n = the gradient chunk n sends to
the state entering it: dS_{N-1} = 0, dS_{n-1} = e^{a_n} dS_n + D_n (dS_n: gradient w.r.t. the
state leaving chunk n). Both are exclusive scans, and each element (k, v) of the state is
its own linear recurrence: a program takes one key row k (all V columns) of one sequence and
walks the chunks in blocks of P. Within a block the recurrence is a product with the P x P
lower-triangular matrix of decays between its chunks (all exponents <= 0), between blocks a
carried state: every chunk of a block is loaded at once, and the chain of dependent steps is
N / P long, not N.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

SCAN_BLOCK = 32  # chunks per block
SCAN_WARPS = 4


@triton.jit(do_not_specialize=["n_chunks"])
def _scan_kernel(contributions, log_decays, states, n_chunks,
                 K: tl.constexpr, V: tl.constexpr, P: tl.constexpr, REVERSE: tl.constexpr):
    bh = tl.program_id(0)
    key = tl.program_id(1)
    block = tl.arange(0, P)
    cols = tl.arange(0, V)[None, :]
    base = bh.to(tl.int64) * n_chunks
    carry = tl.zeros([V], dtype=tl.float32)
    first = n_chunks - 1 if REVERSE else 0
    tl.store(states + ((base + first) * K + key) * V + tl.arange(0, V), carry)
    for start in range(0, n_chunks, P):
        step = start + block
        valid = step < n_chunks
        chunk = n_chunks - 1 - step if REVERSE else step
        x = tl.load(contributions + ((base + chunk) * K + key)[:, None] * V + cols, mask=valid[:, None], other=0.0)
        decay = tl.cumsum(tl.load(log_decays + (base + chunk) * K + key, mask=valid, other=0.0), axis=0)
        earlier = block[:, None] >= block[None, :]
        between = tl.exp(tl.where(earlier, decay[:, None] - decay[None, :], float("-inf")))
        after = tl.dot(between, x, input_precision="ieee") + tl.exp(decay)[:, None] * carry[None, :]
        following = chunk - 1 if REVERSE else chunk + 1  # `after` is the state entering that chunk
        tl.store(states + ((base + following) * K + key)[:, None] * V + cols, after,
                 mask=(valid & (step + 1 < n_chunks))[:, None])
        carry = tl.sum(tl.where(block[:, None] == P - 1, after, 0.0), axis=0)  # padding rows carry it on


def scan_states(contributions: torch.Tensor, log_decays: torch.Tensor, reverse: bool) -> torch.Tensor:
    """contributions [BH, N, K, V], log_decays [BH, N, K] (float32) -> [BH, N, K, V]: the state
    entering each chunk (forward) or the gradient w.r.t. the state leaving it (reverse)."""
    BH, N, K, V = contributions.shape
    states = torch.empty_like(contributions)
    _scan_kernel[(BH, K)](contributions, log_decays, states, N, K=K, V=V, P=SCAN_BLOCK, REVERSE=reverse,
                          num_warps=SCAN_WARPS)
    return states
