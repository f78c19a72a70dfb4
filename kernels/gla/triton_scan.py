"""The only sequential part of the Triton GLA: a scan over per-chunk [K, V] states.

Forward, with Delta_n the state chunk n builds from zero and a_n its log-decay (sum of its gates):
    S_0 = 0,   S_{n+1} = e^{a_n} S_n + Delta_n          (S_n: the state entering chunk n)
Backward, the same recurrence run from the last chunk, over D_n = the gradient chunk n sends to
the state entering it: dS_{N-1} = 0, dS_{n-1} = e^{a_n} dS_n + D_n (dS_n: gradient w.r.t. the
state leaving chunk n). Both are exclusive scans, done in place: chunk n's contribution is
replaced by the state entering it (the gradient leaving it). Each element (k, v) of the state is
its own linear recurrence: a program takes one key row k (all V columns) of one sequence and walks
the chunks in blocks of P. Within a block the recurrence is a product with the P x P matrix of
decays between its chunks (all exponents <= 0), between blocks a carried state: every chunk of a
block is loaded at once, and the chain of dependent steps is N / P long, not N.

Few chunks (DiG's 256 px step: T = 256, N = 4) and many sequences are the opposite case: there a
block would be mostly padding and B*H*K programs each do almost nothing (a third of the GLA's GPU
time at DiG-XL/2, 256 px, bench/results). Up to SHORT_SCAN chunks, a program takes SHORT_SCAN_ROWS
key rows (all V columns) of one sequence and walks its chunks one by one with those rows of the
state in registers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

SCAN_BLOCK = 32  # chunks per block
# Triton's default stages for a loop, at which every GPU measurement ran (bench/gla_resources.py, sm_90:
# 127-128 registers, 24 KB shared memory, 4 programs per multiprocessor).
SCAN_LAUNCH = {"num_warps": 4, "num_stages": 3}
SHORT_SCAN = 16  # at most this many chunks: the step-by-step kernel
# Step by step, each sequence's state is split by key rows (each row its own recurrence): a program
# takes 8 rows x all V columns at 2 warps (8 x 64 fp32: 8 values per thread; 32 registers, 32
# programs per multiprocessor by bench/gla_resources.py, sm_90). At DiG-XL/2's 256 px step
# (B*H = 576, K = 32): 2,304 programs, 4x those of one program per sequence, and 2x the warps, in
# one wave (17 programs, 35 of 64 warps per multiprocessor on 132). 4 rows at 1 warp would need 35
# programs per multiprocessor, past the 32 resident blocks. Accepted key dims (powers of two >= 16)
# divide by 8.
SHORT_SCAN_ROWS = 8
SHORT_SCAN_LAUNCH = {"num_warps": 2, "num_stages": 1}


@triton.jit(do_not_specialize=["n_chunks"])
def _scan_kernel(states, log_decays, n_chunks, K: tl.constexpr, V: tl.constexpr, P: tl.constexpr,
                 REVERSE: tl.constexpr):
    bh = tl.program_id(0)
    key = tl.program_id(1)
    block = tl.arange(0, P)
    base = bh.to(tl.int64) * n_chunks
    carry = tl.zeros([V], dtype=tl.float32)
    for start in range(0, n_chunks, P):
        step = start + block
        valid = step < n_chunks
        chunk = n_chunks - 1 - step if REVERSE else step
        ptrs = states + ((base + chunk) * K + key)[:, None] * V + tl.arange(0, V)[None, :]
        x = tl.load(ptrs, mask=valid[:, None], other=0.0)
        # Log-decays from the block's start to the end (after) and the start (before) of each chunk,
        # in float64: their differences are the decays between chunks, and in float32 a strongly
        # decayed block's sums would leave the nearest chunk's e^0 off by 1e-5.
        a = tl.load(log_decays + (base + chunk) * K + key, mask=valid, other=0.0).to(tl.float64)
        after = tl.cumsum(a, axis=0)
        before = after - a
        earlier = block[:, None] > block[None, :]
        between = tl.exp(tl.where(earlier, (before[:, None] - after[None, :]).to(tl.float32), float("-inf")))
        tl.store(ptrs, tl.dot(between, x, input_precision="ieee")
                 + tl.exp(before.to(tl.float32))[:, None] * carry[None, :], mask=valid[:, None])
        total = tl.sum(a, axis=0)
        carry = tl.exp(total.to(tl.float32)) * carry + tl.sum(tl.exp((total - after).to(tl.float32))[:, None] * x, 0)


@triton.jit(do_not_specialize=["n_chunks"])
def _short_scan_kernel(states, log_decays, n_chunks, K: tl.constexpr, V: tl.constexpr, ROWS: tl.constexpr,
                       REVERSE: tl.constexpr):
    bh = tl.program_id(0)
    keys = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    base = bh.to(tl.int64) * n_chunks
    carry = tl.zeros([ROWS, V], dtype=tl.float32)
    for step in range(0, n_chunks):
        chunk = n_chunks - 1 - step if REVERSE else step
        ptrs = states + ((base + chunk) * K + keys)[:, None] * V + tl.arange(0, V)[None, :]
        x = tl.load(ptrs)
        decay = tl.exp(tl.load(log_decays + (base + chunk) * K + keys))
        tl.store(ptrs, carry)
        carry = decay[:, None] * carry + x


def scan_states(contributions: torch.Tensor, log_decays: torch.Tensor, reverse: bool) -> torch.Tensor:
    """contributions [BH, N, K, V], log_decays [BH, N, K] (float32), in place -> the state entering
    each chunk (forward) or the gradient w.r.t. the state leaving it (reverse); returns it."""
    BH, N, K, V = contributions.shape
    if N <= SHORT_SCAN:
        _short_scan_kernel[(BH, K // SHORT_SCAN_ROWS)](contributions, log_decays, N, K=K, V=V, ROWS=SHORT_SCAN_ROWS,
                                                       REVERSE=reverse, **SHORT_SCAN_LAUNCH)
        return contributions
    _scan_kernel[(BH, K)](contributions, log_decays, N, K=K, V=V, P=SCAN_BLOCK, REVERSE=reverse, **SCAN_LAUNCH)
    return contributions
