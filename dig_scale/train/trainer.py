"""The training loop: config -> model -> DeepSpeed engine -> data -> steps, checkpoints, logs.

One `Trainer` per process; every rank runs the same code and DeepSpeed owns the distributed
state (ZeRO-2 partitions of gradients and optimizer state).
"""
from __future__ import annotations

import faulthandler
import hashlib
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dig_scale.config import ExperimentConfig, config_to_dict
from dig_scale.diffusion import create_diffusion
from dig_scale.launch_env import ProcessPlace, detect_place
from dig_scale.models import model_from_config

from .activation_checkpointing import apply_activation_checkpointing
from .checkpoint_manager import CheckpointManager
from .compile import compile_blocks, mark_step, use_compile_cache
from .data_loading import build_loader, forever, open_dataset
from .deepspeed_config import build_deepspeed_config
from .distributed import init_distributed, on_main_rank
from .ema import EMA
from .metrics import MetricsLogger, peak_flops
from .preemption import REQUEUE_EXIT_CODE, PreemptionHandler
from .run_dir import RunDirectory
from .samples import SampleGridWriter
from .update_guard import UpdateGuard


def step_seed(seed: int, step: int, rank: int) -> int:
    """Counter-based seed: the randomness of a step (timesteps, noise, label dropout) depends only
    on (seed, step, rank), so a resumed run draws exactly what the uninterrupted run drew, with no
    RNG state in the checkpoint (see ARCHITECTURE.md, "Resume")."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{step}/{rank}".encode(), digest_size=8).digest(), "little") >> 1


class PhaseClock:
    """Seconds per start-up phase, for one log line: where a (re)start's minute goes."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.phases: list[tuple[str, float]] = []

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases.append((phase, now - self.last))
        self.last = now

    def summary(self) -> str:
        return (f"start-up took {self.last - self.start:.1f} s ("
                + ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in self.phases) + ")")


@dataclass
class StepResult:
    """Device tensors (0-d, fp32): reading them on the host would wait for the GPU."""
    loss: torch.Tensor       # mean over this rank's micro-batches
    grad_norm: torch.Tensor  # global, before clipping
    applied: torch.Tensor    # 1.0, or 0.0 when the update was skipped (non-finite gradients)


class Trainer:
    def __init__(self, cfg: ExperimentConfig, preemption: PreemptionHandler):
        """`preemption`: entered before this (start-up can take minutes), so that a signal during
        start-up is recorded and acted on before the first step (`run`)."""
        clock = PhaseClock()
        import deepspeed  # heavy; imported once the config is known to be valid

        self.cfg, self.preemption = cfg, preemption
        self.place: ProcessPlace = detect_place()
        self.device = init_distributed(self.place, cfg.train.distributed_timeout_minutes)
        self.data = open_dataset(cfg, self.place)
        self.metadata = self.data.metadata
        self.run_dir = RunDirectory(cfg)
        notes = [on_main_rank(self.run_dir.lock.acquire)]
        self.checkpoints = CheckpointManager(self.run_dir.checkpoints, self.place, cfg.checkpoint, config_to_dict(cfg),
                                             self.data.identity)
        resume = self.checkpoints.find_resume(cfg.checkpoint.resume)
        clock("imports, process group, data and run directory")
        # Another run's config was compared (and accepted) by find_resume; this run's record starts here.
        resumed_config = resume.state if resume and not resume.other_run else None
        notes += on_main_rank(lambda: self.run_dir.record_config(cfg, resumed_config))

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        # Built where it trains: the device draws the initial weights, not every rank's CPU (6.7-9.3 s
        # for DiG-XL/2 on an H200 host) followed by a host-to-device copy.
        with self.device:
            model = model_from_config(cfg.model)
        apply_activation_checkpointing(model.blocks, cfg.model.activation_checkpointing)
        clock("model")
        ds_config = self.checkpoints.engine_config(
            build_deepspeed_config(cfg, self.place.world_size, self.place.hosts), resume)
        trainable = [p for p in model.parameters() if p.requires_grad]
        o = cfg.optim
        optimizer = torch.optim.AdamW(trainable, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                                      fused=True)  # the update guard needs the fused kernel (on CPU too)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=trainable,
                                                    config=ds_config)
        clock("DeepSpeed")
        # Copied before compile_blocks: sampling the EMA (eval, no grad) compiles no extra graphs.
        self.ema = EMA(self.engine.module, cfg.train.ema_decay)  # starts at the initial (bf16) weights
        if cfg.train.compile:
            use_compile_cache(self.run_dir.root / "compile_cache")
            compile_blocks(self.engine.module, cfg.train.cuda_graphs)
        self.guard = UpdateGuard(self.engine, cfg.optim.grad_clip, self.place.world_size)
        self.dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
        self.accumulation = ds_config["gradient_accumulation_steps"]
        self.diffusion = create_diffusion(cfg.diffusion.num_timesteps, cfg.model.learn_sigma)

        clock("EMA and compile set-up")
        self.loader = build_loader(cfg, self.place, self.device, self.data.path)
        self.step, self.skipped = 0, 0
        # Skips are counted on the device and read at log and save steps (no per-step host sync).
        self.window_skips = torch.zeros((), device=self.device)
        self.consecutive_skips = torch.zeros((), device=self.device)
        self.checkpoints.track(self.engine, self.ema, train=self, loader=self.loader)
        if resume:
            self.checkpoints.load(resume)
        clock("loader" + (" and checkpoint" if resume else ""))

        self.logger = MetricsLogger(self.run_dir.root, self.place.is_main, cfg.train.max_steps, cfg.logging.wandb,
                                    cfg.logging.wandb_project, cfg.logging.wandb_entity, cfg.run_name,
                                    config_to_dict(cfg), start_step=self.step)
        self.logger.info(f"{cfg.model.name}: {sum(p.numel() for p in model.parameters()):,} parameters, world size "
                         f"{self.place.world_size} ({self.place.launcher}), {self.accumulation} accumulation step(s), "
                         f"device {self.device}"
                         + (f"; resumed from {resume.checkpoint} at step {self.step}" if resume else ""))
        for note in notes:
            if note:
                self.logger.info(note)
        self.flops_per_image = 3 * self.engine.module.flops_per_image()
        self.tokens_per_image = self.engine.module.grid[0] * self.engine.module.grid[1]
        self.peak = peak_flops(self.device)
        self.samples = SampleGridWriter(cfg, self.metadata, self.device) if self.place.is_main else None
        clock("logger and sample decoder")
        self.logger.info(clock.summary())

    def state_dict(self) -> dict[str, int]:
        """The trainer's counters, saved in every checkpoint (the data loader's position is its own)."""
        return {"step": self.step, "skipped_steps": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.skipped = state["step"], state["skipped_steps"]

    def _model(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.engine(x.to(self.dtype), t, y)

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> StepResult:
        """One optimizer step over this rank's micro-batches (gradient accumulation)."""
        torch.manual_seed(step_seed(self.cfg.seed, self.step, self.place.rank))
        losses = []
        for i, batch in enumerate(micro_batches):
            if self.cfg.train.cuda_graphs:
                mark_step()
            x = batch["x"].to(self.device, non_blocking=True)
            y = batch["y"].to(self.device, non_blocking=True)
            t = torch.randint(0, self.diffusion.num_timesteps, (x.shape[0],), device=self.device)
            loss = self.diffusion.training_losses(self._model, x, t, model_kwargs={"y": y})["loss"].mean()
            self.engine.backward(loss)
            losses.append(loss.detach())
            if i + 1 < len(micro_batches):
                self.engine.step()  # counts the micro-step; the update happens at the boundary below
        grad_norm, applied = self.guard.prepare()
        self.engine.step()
        self.ema.update(applied)
        skipped = 1.0 - applied
        self.window_skips += skipped
        self.consecutive_skips.add_(skipped).mul_(skipped)
        return StepResult(torch.stack(losses).mean(), grad_norm, applied)

    def save(self) -> None:
        self._count_skips()  # the checkpoint records the total
        path = self.checkpoints.save(self.step)
        self.logger.info(f"saved checkpoint {path}")

    def _count_skips(self) -> None:
        """Read the device's skip counters (a host sync): report, and abort on too many in a row."""
        window, in_a_row = int(self.window_skips.item()), int(self.consecutive_skips.item())
        if not window:
            return
        self.skipped += window
        self.window_skips.zero_()
        self.logger.info(f"step {self.step}: {window} step(s) since the last report had non-finite loss or "
                         f"gradients and were skipped ({in_a_row} in a row now, {self.skipped} in total)")
        if in_a_row >= self.cfg.train.max_consecutive_skips:
            raise RuntimeError(f"{in_a_row} consecutive steps had non-finite loss or gradients "
                               "(train.max_consecutive_skips); check the data and the learning rate")

    def _log(self, losses: list[torch.Tensor], grad_norm: torch.Tensor, wait: float, elapsed: float,
             steps: int) -> None:
        loss = torch.stack(losses).mean()
        dist.all_reduce(loss)
        self._count_skips()
        images_per_s = self.cfg.train.global_batch_size * steps / elapsed
        metrics = {
            "step": self.step, "loss": loss.item() / self.place.world_size, "grad_norm": grad_norm.item(),
            "lr": self.engine.get_lr()[0], "images_per_s": images_per_s,
            "tokens_per_s": images_per_s * self.tokens_per_image,
            "mfu": self.flops_per_image * images_per_s / (self.peak * self.place.world_size) if self.peak else None,
            "peak_mem_gb": torch.cuda.max_memory_allocated(self.device) / 1e9 if self.device.type == "cuda" else None,
            "data_wait": wait / elapsed, "skipped_steps": self.skipped,
        }
        self.logger.log(metrics)

    def run(self) -> int:
        """Train to max_steps. Returns the process exit code (REQUEUE_EXIT_CODE when preempted)."""
        cfg = self.cfg
        if self.preemption.any_rank_signalled():  # during start-up: the state on disk is still the latest
            self.logger.info(f"preempted during start-up, before the first step: exiting with {REQUEUE_EXIT_CODE} "
                             "without a checkpoint")
            return self._finish(REQUEUE_EXIT_CODE)
        self.engine.train()
        batches = forever(self.loader)
        # Throughput counts data loading and training steps, not sampling or checkpointing.
        losses, wait, busy, window_steps = [], 0.0, 0.0, 0
        first_step = True
        while self.step < cfg.train.max_steps:
            faulthandler.dump_traceback_later(cfg.train.hang_dump_minutes * 60, repeat=True)
            fetch_start = time.perf_counter()
            micro_batches = [next(batches) for _ in range(self.accumulation)]
            wait += time.perf_counter() - fetch_start
            result = self.train_step(micro_batches)
            busy += time.perf_counter() - fetch_start
            if first_step:  # once: what a cold start costs (compilation, kernel autotuning, data start-up)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.logger.info(f"first step took {time.perf_counter() - fetch_start:.1f} s"
                                 + (" (torch.compile included)" if cfg.train.compile else ""))
                first_step = False
            self.step += 1
            window_steps += 1
            losses.append(result.loss)
            if self.step % cfg.logging.every_steps == 0 or self.step == cfg.train.max_steps:
                self._log(losses, result.grad_norm, wait, busy, window_steps)
                losses, wait, busy, window_steps = [], 0.0, 0.0, 0
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
            if self.samples and cfg.sampling.every_steps and self.step % cfg.sampling.every_steps == 0:
                path = self.samples.write(self.ema.module, self.run_dir.samples / f"step-{self.step:07d}.png")
                self.logger.log_image("samples", path, self.step)
            preempted = self.preemption.any_rank_signalled()
            every = cfg.checkpoint.every_steps
            if preempted or (every and self.step % every == 0) or (
                    cfg.checkpoint.final and self.step == cfg.train.max_steps):
                self.save()
            if preempted:
                self.logger.info(f"preempted at step {self.step}: exiting with {REQUEUE_EXIT_CODE} to be requeued")
                return self._finish(REQUEUE_EXIT_CODE)
        return self._finish(0)

    def _finish(self, code: int) -> int:
        faulthandler.cancel_dump_traceback_later()
        self.logger.close()
        dist.barrier()
        self.run_dir.lock.release()
        return code
