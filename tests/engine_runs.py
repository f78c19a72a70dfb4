"""Launching real training runs for the engine tests: config files, torchrun, and reading back
what a run wrote (metrics.jsonl, checkpoints, harness records)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from dig_scale.checkpoint import read_ema_state_dict

ROOT = Path(__file__).parent.parent
HARNESS = Path(__file__).parent / "train_harness.py"

TINY = {
    "run_name": "run", "seed": 3,
    "model": {"name": "DiG-S/2", "input_size": 8, "in_channels": 3, "num_classes": 10, "gla_backend": "torch",
              "arch": {"depth": 2, "hidden_size": 32, "num_heads": 2}},
    "data": {"path": "demo:digits", "num_workers": 0, "random_flip": True},
    "optim": {"lr": 2e-3},
    "train": {"global_batch_size": 8, "micro_batch_size": 2, "max_steps": 6, "precision": "bf16"},
    "checkpoint": {"every_steps": 3, "keep_last": 5, "keep_every": 0},
    "logging": {"every_steps": 1},
    "sampling": {"every_steps": 0},
}


def write_config(directory: Path, **sections) -> Path:
    """TINY with `sections` merged in (one level deep), output under `directory`."""
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    cfg["output_dir"] = str(directory / "runs")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(config: Path, *overrides: str, nproc: int = 2, harness: tuple[str, ...] = (), timeout: float = 600,
           extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the trainer through the harness: under torchrun for nproc > 1, plain python otherwise."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled",
           **(extra_env or {})}
    program = [str(HARNESS), *harness, "--", str(config), *overrides]
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *program]
    else:
        command = [sys.executable, *program]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_dir(config: Path) -> Path:
    cfg = yaml.safe_load(config.read_text())
    return Path(cfg["output_dir"]) / cfg["run_name"]


def losses(config: Path) -> dict[int, float]:
    """step -> loss as logged (a relaunch's lines replace earlier ones for the same step)."""
    lines = (run_dir(config) / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m["loss"] for m in map(json.loads, lines)}


def final_weights(config: Path, step: int) -> tuple[dict, dict]:
    """(model weights, EMA weights) saved in the checkpoint of `step`."""
    path = run_dir(config) / "checkpoints" / f"step-{step:07d}"
    model = torch.load(path / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
    return model, read_ema_state_dict(path)


def recorded_indices(record: Path) -> dict[int, list[int]]:
    """step -> all sample indices consumed in that step, over all ranks."""
    steps: dict[int, list[int]] = {}
    for file in record.glob("rank*.jsonl"):
        for entry in map(json.loads, file.read_text().splitlines()):
            steps.setdefault(entry["step"], []).extend(i for batch in entry["indices"] for i in batch)
    return steps


def assert_ok(result: subprocess.CompletedProcess, code: int = 0) -> None:
    assert result.returncode == code, \
        f"exit {result.returncode}, expected {code}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def assert_refused(result: subprocess.CompletedProcess, *messages: str) -> None:
    """The run stopped with a clear error saying each of `messages` (exit 2 on every rank;
    torchrun itself then exits 1 with a report of its own) and no traceback through our code."""
    assert result.returncode != 0, result.stderr[-3000:]
    assert "error: " in result.stderr, result.stderr[-3000:]
    ours = [line for line in result.stderr.splitlines() if line.lstrip().startswith('File "') and "/dig_scale/" in line]
    assert not ours, result.stderr[-6000:]
    for message in messages:
        assert message in result.stderr, result.stderr[-3000:]
