"""The four scan orders over an H x W token grid that DiG's GLA layers use.

Tokens are stored in raster (row-major) order. A scan order says in which sequence the
recurrence visits them; backends apply it by index arithmetic (Triton) or by a gather
(the PyTorch reference), never by moving the model's activations.
"""
from __future__ import annotations

import enum

import torch


class ScanOrder(enum.IntEnum):
    ROW_FORWARD = 0   # raster order
    ROW_REVERSE = 1   # raster order, last token first
    COL_FORWARD = 2   # column-major: down each column, columns left to right
    COL_REVERSE = 3   # column-major, last token first

    @property
    def column_major(self) -> bool:
        return self in (ScanOrder.COL_FORWARD, ScanOrder.COL_REVERSE)

    @property
    def reverse(self) -> bool:
        return self in (ScanOrder.ROW_REVERSE, ScanOrder.COL_REVERSE)


def to_scan_order(x: torch.Tensor, order: ScanOrder, height: int, width: int) -> torch.Tensor:
    """Reorder dim 1 of `x` ([B, T, ...], T = height*width, raster) into scan order."""
    if order.column_major:
        x = x.unflatten(1, (height, width)).transpose(1, 2).flatten(1, 2)
    return x.flip(1) if order.reverse else x


def from_scan_order(x: torch.Tensor, order: ScanOrder, height: int, width: int) -> torch.Tensor:
    """Inverse of `to_scan_order`: dim 1 in scan order back to raster order."""
    if order.reverse:
        x = x.flip(1)
    if order.column_major:
        x = x.unflatten(1, (width, height)).transpose(1, 2).flatten(1, 2)
    return x


def scan_positions(order: ScanOrder, height: int, width: int, device=None) -> torch.Tensor:
    """Raster index of the token visited at each scan step: shape [height*width], int64."""
    raster = torch.arange(height * width, device=device).view(1, -1)
    return to_scan_order(raster, order, height, width).view(-1)
