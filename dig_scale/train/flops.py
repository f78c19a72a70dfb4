"""Honest FLOP counts per image for MFU: every matmul (2 FLOPs per multiply-add), forward only.
Training costs 3x the forward (backward = 2x); recomputation under activation checkpointing is
not counted (MFU measures useful model work)."""
from __future__ import annotations

import torch

from dig_scale.models import DiG, DiT

GLA_CHUNK = 64  # the chunk length the GLA kernels use: intra-chunk attention is a CxC block

# Dense bf16 tensor-core peaks (datasheet, without sparsity), FLOP/s.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def _linear_flops(module: torch.nn.Module) -> int:
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))


def forward_flops_per_image(model: torch.nn.Module) -> int:
    """Forward FLOPs for one image at the model's built resolution."""
    tokens = model.grid[0] * model.grid[1]
    embed = model.x_embedder.proj
    flops = 2 * tokens * embed.in_channels * embed.out_channels * embed.kernel_size[0] * embed.kernel_size[1]
    flops += tokens * _linear_flops(model.final_layer.linear)
    flops += _linear_flops(model.t_embedder) + _linear_flops(model.final_layer.adaLN_modulation)
    for block in model.blocks:
        per_token = _linear_flops(block) - _linear_flops(block.adaLN_modulation)
        flops += tokens * per_token + _linear_flops(block.adaLN_modulation)
        if isinstance(model, DiG):
            attn = block.attn
            dk, dv, heads = attn.head_k_dim, attn.head_v_dim, attn.num_heads
            chunk = min(GLA_CHUNK, tokens)
            # Per token and head: scores and values over its chunk (QK^T, AV), the inter-chunk
            # output q S and the state update k^T v.
            flops += tokens * heads * (2 * chunk * (dk + dv) + 4 * dk * dv)
            flops += tokens * 2 * 9 * block.dw_conv.in_channels  # depthwise 3x3
        elif isinstance(model, DiT):
            width = block.attn.qkv.in_features
            flops += 4 * tokens * tokens * width  # QK^T and AV over all tokens
    return flops


def peak_flops(device: torch.device) -> float | None:
    """Datasheet dense bf16 peak of the device, None when unknown (e.g. CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)
