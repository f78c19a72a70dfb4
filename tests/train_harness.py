"""Runs `python -m dig_scale.train` with test-only fault injection and recording, so engine tests
exercise the real entry point under torchrun:

    python tests/train_harness.py [--record DIR] [--kill-after-save N] [--kill-in-save N]
                                  [--nan-at-step N] [--dump-state FILE] [--wait-for-signal POINT FILE]
                                  [--fail-in-startup] -- CONFIG [overrides]

--record DIR        per rank, per step: the sample indices of every micro-batch (DIR/rank<r>.jsonl)
--kill-after-save N SIGKILL every rank right after the checkpoint of step N is complete
--kill-in-save N    SIGKILL every rank while saving step N: after DeepSpeed wrote its files,
                    before the trainer state and `latest`
--nan-at-step N     make step N's first micro-batch NaN; DIR/nan.json reports whether the update
                    was applied and whether any weight changed
--dump-state FILE   after setup (and any resume), write EMA, fp32 master weights and Adam moments
--wait-for-signal POINT FILE
                    at POINT ("startup": inside DeepSpeed's initialize; N: before step N runs) create
                    FILE, then wait until the trainer has received a preemption signal
--fail-in-startup   raise inside DeepSpeed's initialize (after any wait there), as start-up does when a
                    signal stops a process it runs
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from dig_scale.checkpoint import checkpoint_tag
from dig_scale.train import __main__ as entry
from dig_scale.train.library_notices import silence_library_notices


def main() -> int:
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed
    silence_library_notices()
    from dig_scale.train.trainer import Trainer

    parser = argparse.ArgumentParser()
    parser.add_argument("--record", type=Path)
    parser.add_argument("--kill-after-save", type=int)
    parser.add_argument("--kill-in-save", type=int)
    parser.add_argument("--nan-at-step", type=int)
    parser.add_argument("--dump-state", type=Path)
    parser.add_argument("--wait-for-signal", nargs=2, metavar=("POINT", "FILE"))
    parser.add_argument("--fail-in-startup", action="store_true")
    args, rest = parser.parse_known_args()
    rank = int(os.environ.get("RANK", 0))
    wait_point, wait_file = args.wait_for_signal or (None, None)
    preemption = None  # the trainer's handler, known once Trainer.__init__ starts

    def wait_for_signal(point: str) -> None:
        if point != wait_point:
            return
        Path(wait_file).write_text(str(os.getpid()))
        deadline = time.monotonic() + 300
        while preemption.received is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"train_harness: no signal came at {point} within 300 s")
            time.sleep(0.05)

    original_step, original_save, original_init = Trainer.train_step, Trainer.save, Trainer.__init__

    def train_step(self, micro_batches):
        step = self.step + 1
        wait_for_signal(str(step))
        if args.record:
            args.record.mkdir(parents=True, exist_ok=True)
            with (args.record / f"rank{rank}.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "world": self.place.world_size,
                                    "indices": [b["index"].tolist() for b in micro_batches]}) + "\n")
        if step == args.nan_at_step:
            micro_batches[0]["x"] = torch.full_like(micro_batches[0]["x"], float("nan"))
            before = [p.detach().clone() for p in self.engine.module.parameters()]
            result = original_step(self, micro_batches)
            unchanged = all(torch.equal(a, p) for a, p in zip(before, self.engine.module.parameters()))
            if rank == 0:
                report = {"applied": bool(result.applied), "unchanged": unchanged}
                (args.record / "nan.json").write_text(json.dumps(report))
            return result
        return original_step(self, micro_batches)

    def save(self):
        original_save(self)
        if self.step == args.kill_after_save:
            os.kill(os.getpid(), signal.SIGKILL)

    def init(self, cfg, handler):
        nonlocal preemption
        preemption = handler
        original_init(self, cfg, handler)
        if args.dump_state:
            from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

            named = [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad]
            state = {"ema": self.ema.state_dict(), "step": self.step,
                     "fp32": {n: safe_get_full_fp32_param(p) for n, p in named},
                     "exp_avg": {n: safe_get_full_optimizer_state(p, "exp_avg") for n, p in named},
                     "exp_avg_sq": {n: safe_get_full_optimizer_state(p, "exp_avg_sq") for n, p in named}}
            if rank == 0:
                torch.save(state, args.dump_state)

    original_engine_save = None

    def engine_save(self_engine, save_dir, tag=None, **kwargs):
        original_engine_save(self_engine, save_dir, tag=tag, **kwargs)
        if tag == checkpoint_tag(args.kill_in_save or -1):
            os.kill(os.getpid(), signal.SIGKILL)

    Trainer.train_step, Trainer.save, Trainer.__init__ = train_step, save, init
    if wait_point == "startup" or args.fail_in_startup:
        import deepspeed

        original_initialize = deepspeed.initialize

        def initialize(*a, **kw):
            wait_for_signal("startup")
            if args.fail_in_startup:
                raise RuntimeError("train_harness: start-up failed (injected)")
            return original_initialize(*a, **kw)

        deepspeed.initialize = initialize
    if args.kill_in_save:
        from deepspeed.runtime.engine import DeepSpeedEngine

        original_engine_save = DeepSpeedEngine.save_checkpoint
        DeepSpeedEngine.save_checkpoint = engine_save
    return entry.main(rest[1:] if rest[:1] == ["--"] else rest)


if __name__ == "__main__":
    sys.exit(main())
