"""torch.compile applied from outside the model, one transformer block at a time.

Every block of a backbone runs the same code, so compiling blocks (not the whole model) costs one
compilation per distinct block (DiG: one per scan order), keeps cold starts short, and leaves the
GLA and depthwise-conv custom ops as single graph nodes. Embedders and the final layer are a few
small ops and stay eager.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn


def use_compile_cache(directory: Path) -> None:
    """Keep torch.compile's and Triton's caches in `directory` (inside the run directory) unless the
    user points them elsewhere: a requeued or resumed job, on whichever node, starts warm."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(directory / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(directory / "triton"))


def compile_blocks(model: nn.Module, cuda_graphs: bool = False) -> None:
    """Compile each of `model.blocks` in place (nn.Module.compile). With `cuda_graphs`, each
    compiled block's forward and backward replay from CUDA graphs (mode "reduce-overhead"; on CUDA
    only, elsewhere it compiles as without): one launch per block instead of one per kernel, for
    steps whose host cannot launch kernels as fast as the GPU runs them. The caller marks each
    step's start (`mark_step`)."""
    for block in model.blocks:
        block.compile(dynamic=False, mode="reduce-overhead" if cuda_graphs else None)


def mark_step() -> None:
    """A new training step begins: the graphs' outputs of the previous one may be overwritten."""
    torch.compiler.cudagraph_mark_step_begin()
