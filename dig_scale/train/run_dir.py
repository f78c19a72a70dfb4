"""The run directory shared by the trainer, launchers and export (see ARCHITECTURE.md, "The run
directory"):

    runs/<run-name>/lock            the job that owns the directory now (see run_lock.py)
                    config.yaml     the run's config, written once when the run starts
                    checkpoints/    see dig_scale/checkpoint/layout.py
                    metrics.jsonl   one line per logged step
                    samples/        EMA sample grids, step-XXXXXXX.png
                    wandb/          when wandb is on
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dig_scale.atomic_file import write_text_atomically
from dig_scale.checkpoint.layout import CHECKPOINTS
from dig_scale.config import ConfigError, ExperimentConfig, config_to_dict

from .run_lock import RunLock

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
        self.checkpoints = self.root / CHECKPOINTS
        self.samples = self.root / "samples"
        self.config_file = self.root / "config.yaml"
        self.lock = RunLock(self.root / "lock")

    def record_config(self, cfg: ExperimentConfig, resumed: dict[str, Any] | None) -> list[str]:
        """Check `cfg` against the run's config record and, when the run resumes, the config its
        checkpoint was written with (`resumed`, the trainer state): a change in what the run
        computes is refused with the differences listed. The record is written once, when the
        run starts; a lost record is restored from the checkpoint, never from `cfg`. Returns notes
        to report (allowed differences, a restored record). Rank 0, holding the run's lock."""
        current, allowed = config_to_dict(cfg), {}
        references = []
        if self.config_file.is_file():
            try:
                references.append((yaml.safe_load(self.config_file.read_text(encoding="utf-8")), str(self.config_file)))
            except yaml.YAMLError as e:
                raise ConfigError(f"{self.config_file}: the run's config record is not valid YAML ({e})") from None
        if resumed is not None:
            references.append((resumed["config"], f"its checkpoint (written by dig-scale {resumed['code_version']})"))
        for saved, where in references:
            differences = config_differences(saved, current)
            refused = [d for d in differences if not d.startswith(CHANGEABLE)]
            if refused:
                raise ConfigError(f"run {self.root} was started with a different config (per {where}); differences:\n"
                                  "  " + "\n  ".join(refused)
                                  + "\nuse a new run_name, or restore these values to resume this run")
            allowed.update(dict.fromkeys(differences))
        notes = [f"config changed since the run started (allowed): {d}" for d in allowed]
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if not self.config_file.is_file():
            record = resumed["config"] if resumed is not None else current
            if resumed is not None:
                notes.append(f"{self.config_file} was missing: restored from the checkpoint's config")
            write_text_atomically(self.config_file, yaml.safe_dump(record, sort_keys=False), replace=False)
        return notes
