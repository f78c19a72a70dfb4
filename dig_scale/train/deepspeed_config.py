"""The DeepSpeed config generated from an experiment config (the `deepspeed:` section wins)."""
from __future__ import annotations

import copy
from typing import Any

from dig_scale.config import ConfigError, ExperimentConfig

# Settings the trainer owns because it does that work itself (update_guard.py): a user value
# would either do it twice or turn the slow per-parameter path back on.
OWNED = {
    "gradient_clipping": "set optim.grad_clip (the trainer clips inside the fused optimizer step)",
    "optimizer": "set optim.* (the trainer builds torch's fused AdamW, which skips and clips on the device)",
    "bf16.check_grad_overflow": "non-finite steps are detected and skipped by the trainer",
    "zero_optimization.compute_grad_norm": "the trainer computes the gradient norm in one fused pass",
}


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


def _check_not_owned(section: dict) -> None:
    for dotted, instead in OWNED.items():
        node: Any = section
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            raise ConfigError(f"deepspeed.{dotted}: not settable here; {instead}")


def build_deepspeed_config(cfg: ExperimentConfig, world_size: int, hosts: int) -> dict[str, Any]:
    """ZeRO-2 with bucketed gradient reduction; bf16; linear warm-up then constant LR.

    Reduction settings by ranks and hosts, measured with DiG-XL/2 at 256 px on H200s, CUDA graphs
    (bench/results/train_step_nvidia_h200.md, calls 8, 11 and 12):
    - contiguous_gradients is off on one host with one micro-batch per step. It copies every
      gradient into a bucket as it is produced, one copy and ~15 lines of Python per parameter,
      and with CUDA graphs the step waits on that host work: 84 ms/step without it vs 91-95 at one
      rank (1.3 GB less memory); at two, 81 vs 92 with overlap_comm off, 88-89 vs 90-111 with it
      on (1 GB less). Without it, DeepSpeed all-reduces whole buckets instead of reducing each
      slice to the rank that owns it: about twice the bytes per rank, cheap over one host's
      NVLink, not measured across hosts, where it stays on. With several micro-batches it stays
      on as well: without the copy, DeepSpeed accumulates into the gradient tensors autograd
      produced, which with CUDA graphs live in graph memory that the next micro-batch's replay
      reuses.
    - overlap_comm is off on one host with CUDA graphs: there it only adds host work and device
      syncs (one rank: 93 ms/step without it vs 111; two ranks, without contiguous gradients: 81
      vs 88-89). Without graphs it pays off even at one rank (140 vs 178), and across hosts, where
      the reduction takes longer, it stays on (not measured).
    DeepSpeed's per-parameter overflow check and gradient norm are off: the trainer does both
    in one fused pass (update_guard.py), and clipping (optim.grad_clip) happens there too."""
    _check_not_owned(cfg.deepspeed)
    accumulation = gradient_accumulation_steps(cfg, world_size)
    generated: dict[str, Any] = {
        "train_batch_size": cfg.train.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": 0.0,
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": hosts > 1 or not cfg.train.cuda_graphs,
            "contiguous_gradients": hosts > 1 or accumulation > 1,
            "reduce_scatter": True,
            "reduce_bucket_size": 5e8,
            "allgather_bucket_size": 5e8,
            "compute_grad_norm": False,
        },
        "bf16": {"enabled": cfg.train.precision == "bf16", "check_grad_overflow": False},
        "steps_per_print": 2**62,  # our own logger reports progress
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer synchronizes the device at every forward and step by default:
        # two host round-trips per step (our logger measures throughput without them).
        "timers": {"throughput": {"enabled": False}},
    }
    if cfg.optim.warmup_steps > 0:
        generated["scheduler"] = {"type": "WarmupLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": cfg.optim.lr,
            "warmup_num_steps": cfg.optim.warmup_steps, "warmup_type": "linear"}}
    merged = deep_merge(generated, cfg.deepspeed)
    if cfg.train.cuda_graphs and accumulation > 1 and not merged["zero_optimization"]["contiguous_gradients"]:
        raise ConfigError(f"deepspeed.zero_optimization.contiguous_gradients=false: with train.cuda_graphs and "
                          f"{accumulation} micro-batches per step, gradients would wait in CUDA-graph memory that the "
                          "next micro-batch overwrites; remove the setting or add train.cuda_graphs=false")
    return merged
