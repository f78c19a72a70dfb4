"""The DeepSpeed config generated from an experiment config (the `deepspeed:` section wins)."""
from __future__ import annotations

import copy
from typing import Any

from dig_scale.config import ConfigError, ExperimentConfig


def gradient_accumulation_steps(cfg: ExperimentConfig, world_size: int) -> int:
    """global batch = micro batch x accumulation x world size; anything else is a config error."""
    per_step = cfg.train.micro_batch_size * world_size
    if cfg.train.global_batch_size % per_step:
        raise ConfigError(f"train.global_batch_size={cfg.train.global_batch_size} is not a multiple of "
                          f"train.micro_batch_size={cfg.train.micro_batch_size} x world size {world_size}")
    return cfg.train.global_batch_size // per_step


def deep_merge(base: dict, override: dict) -> dict:
    """`override` merged into a copy of `base`, recursing into nested dicts."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def build_deepspeed_config(cfg: ExperimentConfig, world_size: int) -> dict[str, Any]:
    """ZeRO-2 with overlapped, contiguous, bucketed gradient reduction; bf16 (non-finite gradient
    steps are skipped on every rank); gradient clipping; linear warm-up then constant LR.
    The optimizer itself is built by the trainer (torch AdamW, fused on GPU) unless the
    `deepspeed:` section names one."""
    generated: dict[str, Any] = {
        "train_batch_size": cfg.train.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(cfg, world_size),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "reduce_bucket_size": 5e8,
            "allgather_bucket_size": 5e8,
        },
        "bf16": {"enabled": cfg.train.precision == "bf16", "check_grad_overflow": True},
        "steps_per_print": 2**62,  # our own logger reports progress
        "wall_clock_breakdown": False,
    }
    if cfg.optim.warmup_steps > 0:
        generated["scheduler"] = {"type": "WarmupLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": cfg.optim.lr,
            "warmup_num_steps": cfg.optim.warmup_steps, "warmup_type": "linear"}}
    return deep_merge(generated, cfg.deepspeed)
