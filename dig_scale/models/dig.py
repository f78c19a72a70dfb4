"""DiG: a DiT-style latent diffusion backbone whose token mixer is gated linear attention.

Follows the reference (hustvl/DiG models_dig.py, configs DiG-*/2-bid-layer-dwconv-qdir*) with
one change of representation: the reference flips the token sequence after every block and
transposes the token grid after every odd block. Here tokens stay in raster order and layer l
scans in `layer_scan_order(l)`; its depthwise conv kernel is stored pre-oriented for raster
order (see reference_weights.py for the conversion). Same function, no copies (see
ARCHITECTURE.md, "Raster-order tokens, per-layer scan order").
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.gla import ScanOrder, scan_positions

from .backbone import DiffusionBackbone
from .gla import GatedLinearAttention
from .layers import init_linear_xavier, modulate


def layer_scan_order(layer: int) -> ScanOrder:
    """Flip after every block + transpose after every odd block visits, per layer:
    row-forward, row-reverse, column-forward, column-reverse, and repeats."""
    return ScanOrder(layer % 4)


def swiglu_hidden_size(hidden_size: int) -> int:
    """The reference MLP width: 8D/3 rounded up to a multiple of 256."""
    return 256 * -(-(8 * hidden_size // 3) // 256)


class _SiLUGate(torch.autograd.Function):
    """silu(gate) * value of [gate | value], keeping only that input for the backward: autograd's
    own ops would keep silu(gate) as well, a third more of the MLP's saved activations. The
    derivatives are computed in at least float32 and rounded once, as PyTorch's silu backward does."""

    @staticmethod
    def forward(ctx, gate_value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate_value)
        gate, value = gate_value.chunk(2, dim=-1)
        return F.silu(gate) * value

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (gate_value,) = ctx.saved_tensors
        compute = torch.promote_types(gate_value.dtype, torch.float32)  # float64 stays float64
        gate, value = gate_value.to(compute).chunk(2, dim=-1)
        grad = grad.to(compute)
        sigmoid = torch.sigmoid(gate)
        d_gate = grad * value * sigmoid * (1 + gate * (1 - sigmoid))
        d_value = grad * gate * sigmoid
        return torch.cat([d_gate, d_value], dim=-1).to(gate_value.dtype)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, mlp_hidden_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, 2 * mlp_hidden_size, bias=False)
        self.down_proj = nn.Linear(mlp_hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(_SiLUGate.apply(self.gate_proj(x)))


def depthwise_conv_tokens(x: torch.Tensor, conv: nn.Conv2d, grid: tuple[int, int]) -> torch.Tensor:
    """Depthwise conv over the token grid of (N, T, D) raster-order tokens, via a channels-last
    view of the same memory: no transposes in or out. PyTorch's native depthwise kernels take
    0.14 ms of GPU time for fwd+bwd at DiG-XL/2, 256 px, batch 32 on an H200; cuDNN channels-last
    and a Triton stencil were no faster (bench/results/train_step_nvidia_h200.md)."""
    N, T, D = x.shape
    image = x.view(N, *grid, D).permute(0, 3, 1, 2)
    out = F.conv2d(image, conv.weight, conv.bias, padding=conv.padding, groups=D)
    return out.permute(0, 2, 3, 1).reshape(N, T, D)


class DiGBlock(nn.Module):
    """adaLN-Zero block: GLA and SwiGLU sub-layers, then a 3x3 depthwise conv over the grid."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden_size: int, layer: int,
                 long_skip: bool = False, conv_kernel_size: int = 3, gla_backend: str | None = None):
        super().__init__()
        self.order = layer_scan_order(layer)
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = GatedLinearAttention(hidden_size, num_heads, backend=gla_backend)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = SwiGLU(hidden_size, mlp_hidden_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))
        self.dw_conv = nn.Conv2d(hidden_size, hidden_size, conv_kernel_size, padding=conv_kernel_size // 2,
                                 groups=hidden_size, bias=True)
        self.skip_linear = nn.Linear(2 * hidden_size, hidden_size) if long_skip else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, grid: tuple[int, int],
                skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), self.order, grid)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return depthwise_conv_tokens(x, self.dw_conv, grid)

    def token_mixing_flops(self, grid: tuple[int, int]) -> int:
        """The GLA scan (see `GatedLinearAttention.scan_flops`) and the k x k depthwise conv, 2 k^2 D per token."""
        tokens = grid[0] * grid[1]
        kh, kw = self.dw_conv.kernel_size
        return self.attn.scan_flops(tokens) + 2 * tokens * kh * kw * self.dw_conv.out_channels


class DiG(DiffusionBackbone):
    """x (N, C, H, W) latents, t (N,) timesteps, y (N,) labels -> (N, C_out, H, W)."""

    def __init__(
        self,
        input_size: int | tuple[int, int] = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 18,
        mlp_hidden_size: int | None = None,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        skip: bool = False,
        conv_kernel_size: int = 3,
        gla_backend: str | None = None,
    ):
        super().__init__(input_size, patch_size, in_channels, hidden_size, class_dropout_prob, num_classes,
                         learn_sigma)
        if skip and depth % 2:
            raise ValueError(f"the U-shape variant (skip=True) pairs blocks and needs an even depth, got {depth}")
        self.depth = depth
        self.skip = skip
        mlp_hidden_size = mlp_hidden_size or swiglu_hidden_size(hidden_size)
        # U-shape: block i > depth/2 takes the output of block depth-1-i (as the reference).
        self.blocks = nn.ModuleList([
            DiGBlock(hidden_size, num_heads, mlp_hidden_size, layer, long_skip=skip and layer > depth // 2,
                     conv_kernel_size=conv_kernel_size, gla_backend=gla_backend)
            for layer in range(depth)
        ])
        self.initialize_weights()

    def initialize_weights(self) -> None:
        init_linear_xavier(self)
        for block in self.blocks:
            block.attn.reset_parameters()
            conv = block.dw_conv.weight
            nn.init.zeros_(conv)
            nn.init.ones_(conv[:, :, conv.shape[2] // 2, conv.shape[3] // 2])
            nn.init.zeros_(block.dw_conv.bias)
        self.init_embedders_and_head()

    def _aligned_skip(self, skip: torch.Tensor, layer: int) -> torch.Tensor:
        """The reference stores a skip in the token order of the layer after its source block
        (depth-1-layer) and concatenates it position-by-position in the order of `layer`.
        Where those orders differ, its skip pairs different grid cells; reproduce that pairing."""
        stored, used = layer_scan_order(self.depth - layer), layer_scan_order(layer)
        if stored == used:
            return skip
        positions_used = scan_positions(used, *self.grid, device=skip.device)
        step_of = torch.empty_like(positions_used)
        step_of[positions_used] = torch.arange(positions_used.numel(), device=skip.device)
        return skip[:, scan_positions(stored, *self.grid, device=skip.device)[step_of]]

    def forward_blocks(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.blocks):
            skip = self._aligned_skip(skips.pop(), i) if block.skip_linear is not None else None
            x = block(x, c, self.grid, skip)
            if self.skip and i < self.depth // 2 - 1:
                skips.append(x)
        return x
