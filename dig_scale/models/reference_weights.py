"""Load weights saved by the reference DiG code (hustvl/DiG models_dig.py) into our DiG.

Reference checkpoints ({"model", "ema", "opt", "args"}) hold reference-named state dicts; pass
one of them, e.g. `load_reference_state_dict(model, torch.load(path)["ema"])`.
"""
from __future__ import annotations

import torch

from kernels.gla import ScanOrder

from .dig import DiG

_RENAMED = {"attn.g_norm_swish_gate.weight": "attn.out_norm.weight"}


def orient_conv_kernel(kernel: torch.Tensor, order: ScanOrder) -> torch.Tensor:
    """A (D, 1, k, k) kernel applied in the token frame of `order` (as the reference applies it
    to its permuted sequence) as the equivalent kernel over the raster-order grid."""
    if order.column_major:
        kernel = kernel.transpose(-2, -1)
    return kernel.flip(-2, -1) if order.reverse else kernel


def convert_reference_state_dict(model: DiG, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename reference keys to ours and re-orient each block's depthwise conv kernel."""
    converted = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "blocks" and len(parts) > 2:
            block = model.blocks[int(parts[1])] if int(parts[1]) < len(model.blocks) else None
            local = ".".join(parts[2:])
            if block is not None and local == "dw_conv.weight":
                value = orient_conv_kernel(value, block.order)
            key = ".".join(parts[:2] + [_RENAMED.get(local, local)])
        converted[key] = value
    return converted


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {item}" for item in items[:limit]) + more


def load_reference_state_dict(model: DiG, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a reference-layout state dict so that `model` computes the reference's function.

    Raises ValueError listing every missing key, unexpected key and shape mismatch at once.
    """
    converted = convert_reference_state_dict(model, state_dict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {tuple(converted[key].shape)}, model {tuple(expected[key].shape)}"
        for key in set(expected) & set(converted) if converted[key].shape != expected[key].shape
    )
    if missing or unexpected or mismatched:
        sections = [_listing(title, items) for title, items in
                    (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if items]
        raise ValueError("reference state dict does not fit this model:\n" + "\n".join(sections))
    model.load_state_dict(converted)
