"""Rank-0 observability: a console line with a progress bar and ETA, metrics.jsonl, wandb, and the
device peak that MFU is measured against (the model counts its own FLOPs: `flops_per_image`)."""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dig_scale.atomic_file import write_text_atomically

# Dense bf16 tensor-core peaks (datasheet, without sparsity), FLOP/s.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def peak_flops(device: torch.device) -> float | None:
    """Datasheet dense bf16 peak of the device, None when unknown (e.g. CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d{hours:02d}h" if days else f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_line(m: dict[str, Any], max_steps: int, eta_seconds: float | None) -> str:
    done = m["step"] / max_steps
    bar = "#" * int(done * 20) + "." * (20 - int(done * 20))
    parts = [f"[{bar}] {m['step']}/{max_steps}", f"loss {m['loss']:.4f}", f"grad {m['grad_norm']:.3f}",
             f"lr {m['lr']:.2e}", f"{m['images_per_s']:.1f} img/s", f"{m['tokens_per_s'] / 1e3:.1f}k tok/s"]
    if m.get("mfu") is not None:
        parts.append(f"MFU {100 * m['mfu']:.1f}%")
    if m.get("peak_mem_gb") is not None:
        parts.append(f"mem {m['peak_mem_gb']:.1f}GB")
    parts.append(f"data {100 * m['data_wait']:.0f}%")
    if m.get("skipped_steps"):
        parts.append(f"skipped {m['skipped_steps']}")
    if eta_seconds is not None:
        parts.append(f"ETA {_duration(eta_seconds)}")
    return " | ".join(parts)


def drop_rows_after(path: Path, step: int) -> list[int]:
    """Cut metrics.jsonl before its first row past `step` (the rows a resumed run replays) and drop a
    last line torn by a kill; returns the steps of the dropped rows. Rows up to `step` stay byte for
    byte: the file is truncated in place, one system call, so no crash leaves it half rewritten."""
    if not path.is_file():
        return []
    cut, dropped, offset = None, [], 0
    with path.open("rb") as f:
        for line in f:
            row_step = _row_step(line)
            if cut is None and (not line.endswith(b"\n") or row_step is not None and row_step > step):
                cut = offset
            if cut is not None and row_step is not None:
                dropped.append(row_step)
            offset += len(line)
    if cut is not None:
        os.truncate(path, cut)
    return dropped


def _row_step(line: bytes) -> int | None:
    """The step of a complete metrics row, None for anything else (a torn or foreign line)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row.get("step") if isinstance(row, dict) and isinstance(row.get("step"), int) else None


class MetricsLogger:
    """Writes on rank 0 only; other ranks get a logger whose methods do nothing.

    One run reads as one curve across relaunches: a relaunch continues from `start_step` (its
    checkpoint's step, 0 without one) and replays the steps logged after it, so their rows from the
    interrupted attempt are dropped first (see ARCHITECTURE.md, "Metrics across relaunches")."""

    def __init__(self, run_dir: Path, enabled: bool, max_steps: int, wandb_mode: str, wandb_project: str,
                 wandb_entity: str | None, run_name: str, config: dict[str, Any], start_step: int):
        self.enabled, self.max_steps = enabled, max_steps
        self._started: tuple[float, int] | None = None
        self._wandb = None
        if not enabled:
            return
        path = run_dir / "metrics.jsonl"
        replayed = drop_rows_after(path, start_step)
        if replayed:
            self.info(f"{path}: dropped {len(replayed)} row(s) of steps {replayed[0]}-{replayed[-1]}, logged after "
                      f"step {start_step} by the interrupted job; this job replays those steps")
        self._jsonl = path.open("a")
        if wandb_mode != "disabled":
            import wandb

            id_file = run_dir / "wandb_id"  # one wandb run across requeues and resumes
            if not id_file.is_file():
                write_text_atomically(id_file, f"{run_name}-{secrets.token_hex(4)}", replace=False)
            self._wandb = wandb.init(project=wandb_project, entity=wandb_entity, name=run_name, config=config,
                                     id=id_file.read_text().strip(), resume="allow", dir=str(run_dir),
                                     mode=wandb_mode)

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        now, step = time.perf_counter(), metrics["step"]
        if self._started is None:
            self._started, eta = (now, step), None
        else:
            t0, s0 = self._started
            eta = (now - t0) / max(step - s0, 1) * (self.max_steps - step)
        print(format_line(metrics, self.max_steps, eta), flush=True)
        self._jsonl.write(json.dumps({"time": time.time(), **metrics}) + "\n")
        self._jsonl.flush()
        self._to_wandb(lambda run: run.log({f"train/{k}": v for k, v in metrics.items()
                                             if k != "step" and v is not None}, step=step))

    def log_image(self, key: str, path: Path, step: int) -> None:
        def log(run) -> None:
            import wandb

            run.log({key: wandb.Image(str(path))}, step=step)

        self._to_wandb(log)

    def _to_wandb(self, call: Callable[[Any], None]) -> None:
        """wandb mirrors metrics.jsonl and must not end the job: its service is a process of its own,
        which a signal to every process of a job step (Slurm's `scancel -s TERM`) stops while the
        trainer checkpoints. After a failure the job goes on without wandb; the next job resumes it."""
        if self._wandb is None:
            return
        try:
            call(self._wandb)
        except Exception as e:
            self._wandb = None
            self.info(f"wandb failed ({e!r}): this job logs to metrics.jsonl only from here on")

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        self._to_wandb(lambda run: run.finish())
