"""How a GLA call is split over programs, and the scan that links the pieces.

Each program sweeps one *segment* (a run of chunks) of one (batch, head) sequentially,
carrying the [K, V] state in registers. With few sequences (B=1 at high resolution) one
program per sequence would leave most of the GPU idle, so long sequences are cut into
segments: a first pass sums each segment's contribution to the state, `scan_segments`
chains those sums into the state entering every segment, and the main pass runs all
segments in parallel from there. With enough sequences there is one segment and neither
extra pass runs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .scan_order import ScanOrder
from .triton_common import CHUNK

# Programs per multiprocessor the plan aims for: enough to hide memory latency.
PROGRAMS_PER_SM = 3
# The interpreter has no multiprocessors; pretend to a few so small tests exercise segments.
INTERPRETER_SMS = 2
# States are scanned in column tiles so that even one sequence spreads over several programs.
SCAN_COLUMNS = 16


@dataclass(frozen=True)
class Plan:
    n_chunks: int            # CHUNK-step chunks per sequence
    chunks_per_segment: int
    n_segments: int          # segments per sequence


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan(sequences: int, T: int, device: torch.device) -> Plan:
    """Segments for `sequences` = B*H sequences of T steps: the fewest that still give about
    PROGRAMS_PER_SM programs per multiprocessor (each extra segment costs a summary read)."""
    n_chunks = triton.cdiv(T, CHUNK)
    wanted = triton.cdiv(PROGRAMS_PER_SM * _multiprocessors(device), sequences)
    per_segment = triton.cdiv(n_chunks, max(1, min(wanted, n_chunks)))
    return Plan(n_chunks, per_segment, triton.cdiv(n_chunks, per_segment))


def order_arguments(order: ScanOrder, height: int, width: int) -> tuple[int, int, int]:
    """(reverse, col_h, col_w) for `scan_rows`: row orders use the identity col_h=1, col_w=T."""
    if order.column_major:
        return int(order.reverse), height, width
    return int(order.reverse), 1, height * width


@triton.jit
def _scan_kernel(summaries, log_decays, states, n_segs,
                 K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, REVERSE: tl.constexpr):
    """states[j] = state entering segment j (REVERSE: gradient leaving it), a linear recurrence
    over the per-segment summaries: S <- exp(log_decay[j]) * S + summary[j]."""
    bh = tl.program_id(0)
    cols = tl.program_id(1) * BV + tl.arange(0, BV)
    tile = tl.arange(0, K)[:, None] * V + cols[None, :]
    state = tl.zeros([K, BV], dtype=tl.float32)
    for i in range(n_segs - 1):
        j = n_segs - 1 - i if REVERSE else i
        index = (bh * n_segs + j).to(tl.int64)
        tl.store(states + index * (K * V) + tile, state)
        decay = tl.exp(tl.load(log_decays + index * K + tl.arange(0, K)))
        state = decay[:, None] * state + tl.load(summaries + index * (K * V) + tile)
    j = 0 if REVERSE else n_segs - 1
    tl.store(states + (bh * n_segs + j).to(tl.int64) * (K * V) + tile, state)


def scan_segments(summaries: torch.Tensor, log_decays: torch.Tensor, reverse: bool) -> torch.Tensor:
    """summaries [BH, n_segs, K, V], log_decays [BH, n_segs, K] (float32) -> states, same shape.
    Forward uses summaries 0..n-2, reverse (the backward) 1..n-1."""
    BH, n_segs, K, V = summaries.shape
    states = torch.empty_like(summaries)
    bv = min(SCAN_COLUMNS, V)
    _scan_kernel[(BH, V // bv)](summaries, log_decays, states, n_segs, K=K, V=V, BV=bv, REVERSE=reverse,
                                num_warps=1)
    return states

