"""The run directory shared by the trainer, launchers and export:

    runs/<run-name>/config.yaml     the resolved config, written once and checked on every relaunch
                    checkpoints/    see checkpoint.py
                    metrics.jsonl   one line per logged step
                    samples/        EMA sample grids, step-XXXXXXX.png
                    wandb/          when wandb is on
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dig_scale.config import ConfigError, ExperimentConfig, config_to_dict, dump_config

# Keys that may change between launches of one run: how it runs, not what it computes.
CHANGEABLE = ("train.max_steps", "train.compile", "model.activation_checkpointing", "model.gla_backend",
              "data.num_workers", "data.cache_dir", "checkpoint.", "logging.", "sampling.", "output_dir")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: saved -> current' for every leaf that differs."""
    a, b = flatten(saved), flatten(current)
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]


class RunDirectory:
    def __init__(self, cfg: ExperimentConfig):
        self.root = Path(cfg.output_dir) / cfg.run_name
        self.checkpoints = self.root / "checkpoints"
        self.samples = self.root / "samples"
        self.config_file = self.root / "config.yaml"

    def prepare(self, cfg: ExperimentConfig, is_main: bool) -> list[str]:
        """Create the layout and write config.yaml on first launch; on a relaunch refuse a config
        that changes what the run computes. Returns the allowed differences (to report)."""
        if self.config_file.is_file():
            saved = yaml.safe_load(self.config_file.read_text())
            differences = config_differences(saved, config_to_dict(cfg))
            refused = [d for d in differences if not d.startswith(CHANGEABLE)]
            if refused:
                raise ConfigError(f"run {self.root} was started with a different config; differences:\n  "
                                  + "\n  ".join(refused)
                                  + "\nuse a new run_name, or restore these values to resume this run")
            return differences
        if is_main:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            self.samples.mkdir(parents=True, exist_ok=True)
            tmp = self.config_file.with_suffix(".tmp")
            tmp.write_text(dump_config(cfg))
            tmp.replace(self.config_file)
        return []
