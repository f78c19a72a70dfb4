"""What DiG and DiT share: patch/timestep/label embedding in, adaLN final layer out, CFG."""
from __future__ import annotations

import abc

import torch
import torch.nn as nn

from .layers import FinalLayer, LabelEmbedder, PatchEmbed, TimestepEmbedder, as_grid, sincos_pos_embed_2d, unpatchify


def linear_flops(module: nn.Module) -> int:
    """FLOPs of applying every nn.Linear in `module` once: 2 x in_features x out_features each."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


class DiffusionBackbone(nn.Module, abc.ABC):
    """Latents (N, C, H, W) -> tokens (N, T, D) in raster order -> blocks -> (N, C_out, H, W).

    Subclasses build `self.blocks` (each with an `adaLN_modulation` and a
    `token_mixing_flops(grid)`) and implement `forward_blocks(tokens, c)`.
    """

    def __init__(self, input_size: int | tuple[int, int], patch_size: int, in_channels: int, hidden_size: int,
                 class_dropout_prob: float, num_classes: int, learn_sigma: bool):
        super().__init__()
        height, width = as_grid(input_size)
        if height % patch_size or width % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.patch_size = patch_size
        self.grid = (height // patch_size, width // patch_size)
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes > 0 else None
        # Frozen, but a parameter (not a buffer) so state dicts match the reference code.
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(hidden_size, self.grid).unsqueeze(0), requires_grad=False)
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.grid[0] * self.patch_size, self.grid[1] * self.patch_size

    def flops_per_image(self) -> int:
        """Forward FLOPs of one image at the built resolution: every matmul, 2 FLOPs per
        multiply-add, nothing else (norms, activations, the label lookup are not counted).
        With T tokens, patch p, C channels in, C_out out, width D:

            once per image:  the timestep MLP and every adaLN projection (blocks and final layer)
            per token:       patch embedding 2 C p^2 D, output projection 2 D p^2 C_out, and every
                             other Linear of the blocks
            per block:       its token mixing (`token_mixing_flops`: attention, GLA scan, conv)

        A training step costs 3x this (backward = 2x forward); recomputation under activation
        checkpointing is not counted, so MFU measures useful model work.
        """
        tokens = self.grid[0] * self.grid[1]
        adaln = [block.adaLN_modulation for block in self.blocks] + [self.final_layer.adaLN_modulation]
        per_image = linear_flops(self.t_embedder) + sum(linear_flops(m) for m in adaln)
        embed = self.x_embedder.proj
        per_token = 2 * embed.in_channels * embed.out_channels * self.patch_size**2
        per_token += linear_flops(self.final_layer.linear)
        per_token += sum(linear_flops(block) - linear_flops(block.adaLN_modulation) for block in self.blocks)
        return per_image + tokens * per_token + sum(block.token_mixing_flops(self.grid) for block in self.blocks)

    def init_embedders_and_head(self) -> None:
        """DiT's init for the shared parts: patch conv as a Xavier linear, N(0, 0.02) label table
        and timestep MLP weights, and adaLN-Zero (every block the identity, the output zero)."""
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        for layer in [block.adaLN_modulation[-1] for block in self.blocks] + [
                self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @abc.abstractmethod
    def forward_blocks(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Tokens (N, T, D) in raster order and conditioning (N, D) -> tokens (N, T, D)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, C, H, W); t: (N,) timesteps (any real values); y: (N,) labels, None if unconditional."""
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"input is {tuple(x.shape[-2:])} but the model was built for {self.input_size}")
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y, self.training)
        x = self.forward_blocks(self.x_embedder(x) + self.pos_embed, c)
        return unpatchify(self.final_layer(x, c), self.patch_size, self.out_channels, self.grid)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float,
                         guided_channels: int | None = None) -> torch.Tensor:
        """Classifier-free guidance in one batched forward: the first half of the batch holds the
        conditional inputs, the second half the same inputs with the null label. Guidance
        eps_u + s (eps_c - eps_u) applies to the first `guided_channels` output channels (default:
        all noise channels; DiT's published samples used 3)."""
        half = x[: len(x) // 2]
        out = self(torch.cat([half, half]), t, y)
        channels = guided_channels or self.in_channels
        eps, rest = out[:, :channels], out[:, channels:]
        cond, uncond = eps.chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)
