"""Training speed side by side on one GPU: the bare model step and the real trainer, DiG vs DiT vs
a reference DiG, in one process per card and one run.

    python bench/train_step.py --out DIR [--sections ceilings,conv,bare,trainer,memory]
                               [--res 256,512,1024,2048] [--models XL,S] [--smoke]

--smoke runs every section on the CPU with tiny models (a check of the script, not a measurement).

Sections:
  ceilings  the card's measured copy bandwidth and bf16 matmul rate (the MFU denominator)
  conv      the 3x3 depthwise conv of a DiG block, fwd+bwd: PyTorch native vs cuDNN channels-last
  bare      one training step without the trainer: fp32 weights + bf16 autocast + fused AdamW +
            the diffusion loss (what a plain PyTorch user writes), for our DiG (eager, blocks
            compiled, blocks compiled and replayed from CUDA graphs: "-graphed"), DiT with SDPA (the
            same three) and the reference-style DiG on flash-linear-attention (bench/reference_dig.py,
            eager)
  trainer   the real `python -m dig_scale.train` (DeepSpeed ZeRO-2, bf16) on synthetic MDS latents;
            throughput from its own metrics.jsonl, plus a profiled run: kernels per step, GPU-busy
            fraction and a phase breakdown (device syncs between phases)
  memory    peak memory at two micro-batches per model (linear fit -> largest micro-batch that fits)

FLOPs count every matmul of the forward (models/flops: linear layers, attention or GLA scores,
state updates, depthwise conv), x3 for forward+backward; MFU divides by the measured matmul rate.
Every result is appended to DIR/results.jsonl as it is measured.

    python bench/train_step.py --report RESULTS.jsonl [...] --out bench/results

writes the markdown tables (train_step_<card>.md) and the throughput plot (train_step_<card>.png)
from one or more results files.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dig_scale.diffusion import create_diffusion  # noqa: E402
from dig_scale.models import create_model  # noqa: E402
from dig_scale.train.activation_checkpointing import apply_activation_checkpointing  # noqa: E402
from dig_scale.train.compile import compile_blocks, mark_step  # noqa: E402
from kernels.gla.triton_backend import KERNEL_NAMES  # noqa: E402

SIZES = {"XL": {256: 32, 512: 16, 1024: 4, 2048: 1}, "S": {256: 64, 512: 32, 1024: 8, 1792: 2, 2048: 1}}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMOKE: dict = {}  # --smoke: constructor overrides that make every model tiny
RESULTS: Path | None = None
BREAKDOWN = False  # --breakdown: top kernels and host ops of every bare step
MAX_RES_CHECKED = 4096  # a DiT step at 4096 px already takes seconds (attention is quadratic)
MAX_BATCH_CHECKED = 1024  # 32x the default micro-batch; an eager XL step at 1024 images takes seconds


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def record(entry: dict) -> dict:
    entry = {"time": time.time(), **entry}
    print(json.dumps(entry), flush=True)
    if RESULTS is not None:
        with RESULTS.open("a") as f:
            f.write(json.dumps(entry) + "\n")
    return entry


def measure_ceilings() -> dict:
    n = 2**30 if DEVICE == "cuda" else 2**24
    src = torch.empty(n, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    copy = 2 * n / (time_cuda(lambda: dst.copy_(src), min_seconds=0.3) / 1e3)
    m = 8192 if DEVICE == "cuda" else 512
    a = torch.randn(m, m, dtype=torch.bfloat16, device=DEVICE)
    b = torch.randn(m, m, dtype=torch.bfloat16, device=DEVICE)
    matmul = 2 * m**3 / (time_cuda(lambda: a @ b, min_seconds=0.5) / 1e3)
    return record({"section": "ceilings", "copy_TBps": copy / 1e12, "bf16_matmul_TFLOPs": matmul / 1e12})


def time_cuda(fn, min_seconds: float = 1.0, warmup: int = 3) -> float:
    """Mean wall time per call (ms) over a window of back-to-back calls after warm-up: host
    overhead and launch gaps count, as they do in training."""
    for _ in range(warmup):
        fn()
    sync()
    start, calls = time.perf_counter(), 0
    while True:
        fn()
        calls += 1
        if calls >= 5 and time.perf_counter() - start > min_seconds:
            break
    sync()
    return 1e3 * (time.perf_counter() - start) / calls


def bench_conv() -> None:
    import torch.nn.functional as F

    N, H, W, C = (32, 16, 16, 1152) if DEVICE == "cuda" else (2, 8, 8, 64)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    x = torch.randn(N, H * W, C, device=DEVICE, dtype=dtype, requires_grad=True)
    weight = torch.randn(C, 1, 3, 3, device=DEVICE, dtype=dtype, requires_grad=True)
    bias = torch.randn(C, device=DEVICE, dtype=dtype, requires_grad=True)
    dy = torch.randn_like(x)

    def native():
        image = x.view(N, H, W, C).permute(0, 3, 1, 2)
        return F.conv2d(image, weight, bias, padding=1, groups=C).permute(0, 2, 3, 1).reshape(N, H * W, C)

    def cudnn_channels_last():
        image = x.view(N, H, W, C).permute(0, 3, 1, 2)
        w = weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(image, w, bias, padding=1, groups=C).permute(0, 2, 3, 1).reshape(N, H * W, C)

    def gpu_ms(fn) -> float | None:
        """Sum of the kernels' device time per call (no launch gaps or host time)."""
        if DEVICE != "cuda":
            return None
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                torch.autograd.backward(fn(), dy)
            torch.cuda.synchronize()
        return sum(e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) / 1e4

    reference = native().float()
    for name, fn in (("native", native), ("cudnn_channels_last", cudnn_channels_last)):
        err = ((fn().float() - reference).norm() / reference.norm()).item()
        ms = time_cuda(lambda fn=fn: torch.autograd.backward(fn(), dy), min_seconds=0.5)
        record({"section": "conv", "variant": name, "shape": [N, H * W, C], "fwd_bwd_ms": ms,
                "fwd_bwd_gpu_ms": gpu_ms(fn), "rel_err": err,
                "floor_ms": 1e3 * 4 * x.numel() * 2 / 4.2e12})


def build(contender: str, size: str, res: int) -> torch.nn.Module:
    latent = res // 8
    if contender.startswith("ref"):
        sys.path.insert(0, str(ROOT / "bench"))
        from reference_dig import ReferenceDiG

        depth, hidden, heads = {"S": (12, 384, 6), "XL": (28, 1152, 18)}[size]
        return ReferenceDiG(latent, hidden_size=hidden, depth=depth, num_heads=heads)
    family = "DiG" if contender.startswith("dig") else "DiT"
    return create_model(f"{family}-{size}/2", input_size=latent, **SMOKE)


def flops_per_image(size: str, res: int, contender: str) -> int:
    """Training FLOPs per image (3x the forward's matmuls); built on the benchmark's device so the
    GLA chunk length is the one that runs there."""
    family = "DiT" if contender.startswith("dit") else "DiG"  # the reference has DiG's matmuls
    with torch.device(DEVICE):
        return 3 * create_model(f"{family}-{size}/2", input_size=res // 8, **SMOKE).flops_per_image()


# Kernel names -> what they do, first match wins (names as the profiler reports them on Hopper).
KERNEL_CLASSES = (
    ("gla", KERNEL_NAMES),
    ("matmul", ("nvjet", "gemm", "xmma", "cutlass", "sm90_")),
    ("attention", ("flash", "fmha", "cudnn", "attention")),
    ("conv", ("conv", "depthwise")),
    ("optimizer", ("multi_tensor_apply", "adam")),
    ("inductor", ("triton_",)),
)


def kernel_class(name: str) -> str:
    for label, needles in KERNEL_CLASSES:
        if any(n in name for n in needles):
            return label
    return "other"


def profile_kernels(step, steps: int = 2) -> dict:
    """Kernels launched per step, the summed kernel time per step, and the fraction of the step's
    wall time the GPU is busy (under the profiler, whose host overhead lowers it)."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall_us = 1e6 * (time.perf_counter() - start)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    intervals = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    busy, end = 0.0, -1.0
    for s, e in intervals:
        if e > end:
            busy += e - max(s, end)
            end = e
    return {"kernels_per_step": len(kernels) / steps, "gpu_busy": busy / wall_us,
            "kernel_ms_per_step": busy / steps / 1e3}


def top_ops(step, count: int = 15) -> dict:
    """Where one step's time goes: GPU kernel time by class (matmul, GLA, inductor-fused, ...),
    the kernels with the most time, and the host-side ops with the most self time (a host-bound
    step shows up in the last list)."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        step()
        sync()
    by_name: dict[str, list] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            totals = by_name.setdefault(e.name, [0.0, 0])
            totals[0] += (e.time_range.end - e.time_range.start) / 1e3
            totals[1] += 1
    by_class: dict[str, float] = {}
    for name, (ms, _) in by_name.items():
        by_class[kernel_class(name)] = by_class.get(kernel_class(name), 0.0) + ms
    host = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return {"kernel_ms": round(sum(ms for ms, _ in by_name.values()), 3),
            "kernel_ms_by_class": {k: round(v, 3) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
            "top_kernels": [(name[:90], round(ms, 3), n) for name, (ms, n) in
                            sorted(by_name.items(), key=lambda kv: -kv[1][0])[:count]],
            "top_host": [(e.key[:90], round(e.self_cpu_time_total / 1e3, 3), e.count) for e in host[:count]]}


def plain_step(model: nn.Module, res: int, batch: int) -> Callable[[], None]:
    """One training step as a plain PyTorch user writes it, on fixed random latents: fp32 weights,
    bf16 autocast, the diffusion loss, fused AdamW."""
    diffusion = create_diffusion(1000, True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    x = torch.randn(batch, 4, res // 8, res // 8, device=DEVICE)
    y = torch.randint(0, 1000, (batch,), device=DEVICE)

    def step() -> None:
        t = torch.randint(0, 1000, (batch,), device=DEVICE)
        with torch.autocast(DEVICE, torch.bfloat16):
            loss = diffusion.training_losses(model, x, t, model_kwargs={"y": y})["loss"].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_bare(size: str, res: int, batch: int, contender: str, peak: float, kernels: bool) -> None:
    torch.manual_seed(0)
    entry = {"section": "bare", "model": size, "res": res, "batch": batch, "contender": contender}
    try:
        model = build(contender, size, res).to(DEVICE).train()
        graphed = contender.endswith("graphed")
        if "compiled" in contender or graphed:
            compile_blocks(model, cuda_graphs=graphed)
        train = plain_step(model, res, batch)

        def step():
            if graphed:
                mark_step()
            train()

        start = time.perf_counter()
        step()
        sync()
        entry["first_step_s"] = time.perf_counter() - start  # compile time for compiled contenders
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ms = time_cuda(step, min_seconds=2.0)
        entry.update(ms=ms, img_per_s=1e3 * batch / ms, tokens_per_s=1e3 * batch * (res // 16) ** 2 / ms,
                     mfu=flops_per_image(size, res, contender) * batch / (ms / 1e3) / peak,
                     peak_gb=torch.cuda.max_memory_allocated() / 1e9 if DEVICE == "cuda" else None)
        if kernels:
            entry.update(profile_kernels(step))
        if BREAKDOWN:
            entry["breakdown"] = top_ops(step)
    except Exception as e:  # one failed contender must not cost the rest of the run
        entry["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    record(entry)
    model = train = step = None
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def peak_memory(family: str, size: str, res: int, batch: int, policy: str) -> float | None:
    """Peak GB of a steady-state eager bare training step (autocast bf16, fused AdamW), None when it
    does not fit. The first step only warms up: AdamW creates its states there, and from then on
    they sit in memory through every forward and backward, so only later steps show the peak a
    training run has (affine in images and tokens; the first step's is not, its optimizer step is
    the peak at small batches)."""
    model = step = None
    try:
        with torch.device(DEVICE):  # on the CPU every XL build took about 7 s (call 15 ran out of time)
            model = create_model(f"{family}-{size}/2", input_size=res // 8, **SMOKE)
        apply_activation_checkpointing(model.blocks, policy)
        step = plain_step(model, res, batch)
        step()
        sync()
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step()
        sync()
        return torch.cuda.max_memory_allocated() / 1e9 if DEVICE == "cuda" else 0.0
    except torch.OutOfMemoryError:
        return None
    finally:
        model = step = None
        gc.collect()
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def bench_memory(size: str) -> None:
    """Largest micro-batch at 256 px and largest square resolution at batch 1, with and without
    activation checkpointing: peak memory is affine in images (resp. tokens), so two points fit
    it; the predicted limit is then run once to confirm it fits (stepping down 10% until it does).
    Limits are checked up to MAX_BATCH_CHECKED images and MAX_RES_CHECKED px."""
    capacity = 0.95 * torch.cuda.get_device_properties(0).total_memory / 1e9 if DEVICE == "cuda" else 1.0
    for family in ("DiG", "DiT"):
        for policy in ("none", "all"):
            a, b = peak_memory(family, size, 256, 8, policy), peak_memory(family, size, 256, 16, policy)
            per_image = (b - a) / 8
            batch = int((capacity - (a - 8 * per_image)) / per_image) if per_image > 0 else 16
            batch = min(batch, MAX_BATCH_CHECKED)
            while batch > 16 and peak_memory(family, size, 256, batch, policy) is None:
                batch = int(batch * 0.9)
            r1, r2 = 512, 1024
            m1, m2 = peak_memory(family, size, r1, 1, policy), peak_memory(family, size, r2, 1, policy)
            t1, t2 = (r1 // 16) ** 2, (r2 // 16) ** 2
            per_token = (m2 - m1) / (t2 - t1)
            side = int(((capacity - (m1 - t1 * per_token)) / per_token) ** 0.5) if per_token > 0 else 64
            res = min(16 * side // 64 * 64, MAX_RES_CHECKED)  # image side in px, a multiple of 64
            while res > r2 and peak_memory(family, size, res, 1, policy) is None:
                res -= 256
            record({"section": "memory", "model": f"{family}-{size}/2", "activation_checkpointing": policy,
                    "peak_gb_256px_batch8": a, "gb_per_image_256px": per_image, "max_batch_256px": batch,
                    "max_batch_capped": batch == MAX_BATCH_CHECKED,
                    "gb_per_1k_tokens_batch1": 1e3 * per_token, "max_res_batch1": res,
                    "max_res_capped": res == MAX_RES_CHECKED})


def write_synthetic_latents(path: Path, num_samples: int, latent: int) -> None:
    """Random posteriors in encode.py's schema (mean ~ N(0, 1), std ~ U(0.01, 0.1))."""
    from dig_scale.data.mds_writer import write_mds_dataset
    from dig_scale.data.schema import DatasetMetadata, tool_info, utc_timestamp

    shape = (4, latent, latent)
    rng = np.random.default_rng(0)
    samples = ({"mean": rng.standard_normal((2, *shape)).astype(np.float16),
                "std": rng.uniform(0.01, 0.1, (2, *shape)).astype(np.float16), "label": i % 1000,
                "key": f"synthetic/{i}"} for i in range(num_samples))
    meta = DatasetMetadata(
        kind="latent", sample_shape=shape, resolution=8 * latent, num_samples=num_samples, num_classes=1000,
        class_counts=np.bincount(np.arange(num_samples) % 1000, minlength=1000).tolist(), class_names=None,
        vae="synthetic", scaling_factor=0.18215, shift_factor=0.0, latent_mean=[0.0] * 4, latent_std=[1.0] * 4,
        preprocessing={}, source={"type": "synthetic"}, tool=tool_info("bench/train_step.py"), created=utc_timestamp())
    write_mds_dataset(str(path), meta, samples)


def trainer_overrides(scratch: Path, name: str, data: Path, batch: int, steps: int, *extra: str) -> list[str]:
    return [f"run_name={name}", f"output_dir={scratch / 'runs'}", f"data.path={data}", f"train.max_steps={steps}",
            f"train.micro_batch_size={batch}", f"train.global_batch_size={batch}", "sampling.every_steps=0",
            "checkpoint.every_steps=0", "checkpoint.final=false", f"logging.every_steps={max(steps // 2, 1)}",
            "data.num_workers=8", *extra]


def bench_loader(data: Path, batch: int, workers: int, batches: int = 200) -> None:
    """The training data stream alone: samples/s one rank's loader delivers from local MDS shards."""
    from streaming import StreamingDataLoader

    from dig_scale.data import LatentDataset

    dataset = LatentDataset(str(data), str(data.with_name(data.name + "-cache")), batch_size=batch, seed=0)
    loader = StreamingDataLoader(dataset, batch_size=batch, num_workers=workers, drop_last=True,
                                 persistent_workers=workers > 0)
    stream, seen = iter(loader), 0
    next(stream)  # worker start-up and the first shards
    start = time.perf_counter()
    while seen < batches * batch:
        try:
            seen += len(next(stream)["y"])
        except StopIteration:
            stream = iter(loader)
    record({"section": "loader", "batch": batch, "workers": workers,
            "samples_per_s": seen / (time.perf_counter() - start)})


def bench_trainer(scratch: Path, data: Path, name: str, config: str, size: str, batch: int, steps: int, peak: float,
                  *extra: str, gpus: int = 1) -> None:
    """The real entry point as a user runs it; throughput from the last logging window. A run
    directory of the same name left in a reused --scratch is removed first (it would be resumed)."""
    shutil.rmtree(scratch / "runs" / name, ignore_errors=True)
    launcher = [sys.executable] if gpus == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={gpus}"]
    command = [*launcher, "-m", "dig_scale.train", str(ROOT / "configs" / config),
               *trainer_overrides(scratch, name, data, batch, steps, *extra, f"train.global_batch_size={batch * gpus}")]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    (scratch / f"{name}.log").write_text(result.stdout + result.stderr)
    entry = {"section": "trainer", "name": name, "model": size, "res": 256, "batch": batch, "gpus": gpus,
             "steps": steps, "overrides": list(extra), "wall_s": time.perf_counter() - start}
    metrics_file = scratch / "runs" / name / "metrics.jsonl"
    if result.returncode or not metrics_file.is_file():
        entry["error"] = (result.stderr or result.stdout)[-1500:]
    else:
        windows = metrics_file.read_text().splitlines()
        last = json.loads(windows[-1])
        contender = "dit" if size.startswith("DiT") else "dig"
        img_s = last["images_per_s"] / gpus  # per GPU
        log = result.stdout + result.stderr
        first = re.search(r"first step took ([0-9.]+) s", log)
        startup = re.search(r"start-up took [^\n]*", log)
        entry.update(img_per_s=img_s, ms=1e3 * batch / img_s, peak_gb=last["peak_mem_gb"], loss=last["loss"],
                     first_step_s=float(first.group(1)) if first else None,
                     startup=startup.group(0) if startup else None,
                     first_window_img_per_s=json.loads(windows[0])["images_per_s"],
                     data_wait=last["data_wait"],
                     mfu=flops_per_image(size.split("-")[1].split("/")[0], 256, contender) * img_s / peak)
    record(entry)


def profile_trainer_child(config: str, overrides: list[str], steps: int) -> None:
    """In-process: build the real Trainer, then time its phases with device syncs between them, and
    profile two real train_step calls (kernels per step, GPU-busy fraction)."""
    from dig_scale.config import load_config
    from dig_scale.train.preemption import PreemptionHandler
    from dig_scale.train.trainer import Trainer

    trainer = Trainer(load_config(ROOT / "configs" / config, overrides), PreemptionHandler())
    batches = iter(trainer.loader)
    batch = next(batches)
    for _ in range(3):
        trainer.train_step([batch])  # compiled and captured before anything is timed
    phases = {"forward_loss": [], "backward": [], "update_guard": [], "optimizer_step": [], "ema": []}
    engine, device = trainer.engine, trainer.device
    for _ in range(steps):
        sync()
        marks = [time.perf_counter()]
        if trainer.cfg.train.cuda_graphs:
            mark_step()
        x, y = batch["x"].to(device, non_blocking=True), batch["y"].to(device, non_blocking=True)
        t = torch.randint(0, 1000, (x.shape[0],), device=device)
        loss = trainer.diffusion.training_losses(trainer._model, x, t, model_kwargs={"y": y})["loss"].mean()
        phase_calls = (lambda loss=loss: engine.backward(loss), trainer.guard.prepare, engine.step, trainer.ema.update)
        for fn in phase_calls:
            sync()
            marks.append(time.perf_counter())
            fn()
        sync()
        marks.append(time.perf_counter())
        for key, a, b in zip(phases, marks, marks[1:]):
            phases[key].append(1e3 * (b - a))
    entry = {"section": "trainer_profile", "cuda_graphs": trainer.cfg.train.cuda_graphs,
             "phases_ms": {k: float(np.median(v)) for k, v in phases.items()}}
    def step():
        trainer.train_step([batch])

    entry.update(steady_state(step, steps))
    entry.update(profile_kernels(step))
    entry["breakdown"] = top_ops(step, count=25)
    trace_step(step, RESULTS.parent / "trainer_trace.json.gz")
    record(entry)


def steady_state(step, steps: int) -> dict:
    """Back-to-back steps with no sync between them, as the training loop runs them: the step time
    (wall / steps, one sync at the end) and the host's time inside each call. A host time near the
    step time means the host is the limit (or waits on the device inside the step); far below it,
    the host runs ahead and the GPU is the limit."""
    sync()
    host = []
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        host.append(time.perf_counter() - t0)
    sync()
    return {"step_ms": 1e3 * (time.perf_counter() - start) / steps, "host_ms": 1e3 * float(np.median(host))}


def trace_step(step, path: Path) -> None:
    """A Chrome trace of one step with Python stacks (what the host does while the GPU waits),
    gzipped for the results folder."""
    import gzip

    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU], with_stack=True) as prof:
        step()
        sync()
    raw = path.with_suffix("")
    prof.export_chrome_trace(str(raw))
    with raw.open("rb") as src, gzip.open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_report(results: list[Path], out: Path) -> Path:
    """Markdown tables and a PNG plot of every entry in `results`; each row names the file (run)
    it came from, so results of different runs are never mixed silently."""
    entries = [{**json.loads(line), "run": path.stem} for path in results for line in path.read_text().splitlines()
               if line.strip()]
    setup = next(e for e in reversed(entries) if e["section"] == "setup")
    card = setup["card"]
    lines = [f"# Training step speed on one {card}", "",
             f"{setup['date']}; torch {setup['torch']}, " + ", ".join(f"{k} {v}" for k, v in setup["versions"].items())
             + ". FLOPs: every matmul of the forward (`flops_per_image()`), x3 for forward+backward; MFU divides by "
             "the bf16 matmul rate measured in the same run. Written by `bench/train_step.py --report` from "
             + ", ".join(f"`{p.name}`" for p in results) + " (the `run` column).", "",
             "| run | copy TB/s | bf16 matmul TFLOP/s |", "|---|---|---|"]
    lines += [f"| {e['run']} | {e['copy_TBps']:.2f} | {e['bf16_matmul_TFLOPs']:.0f} |"
              for e in entries if e["section"] == "ceilings"]
    lines.append("")
    bare = [e for e in entries if e["section"] == "bare"]
    if bare:
        lines += ["## Bare model step (fp32 weights, bf16 autocast, fused AdamW, diffusion loss)", "",
                  "| run | model | px | batch | contender | ms/step | img/s | tokens/s | MFU | peak GB | kernels/step "
                  "| first step s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in sorted(bare, key=lambda e: (e["model"], e["res"], e["contender"], e["run"])):
            head = f"| {e['run']} | {e['model']}/2 | {e['res']} | {e['batch']} | {e['contender']} |"
            if "error" in e:
                reason = e["error"].splitlines()[0][:70]
                lines.append(f"{head} failed: {reason} | | | | | | |")
                continue
            lines.append(f"{head} {_fmt(e['ms'])} | {_fmt(e['img_per_s'])} | {e['tokens_per_s'] / 1e3:.0f}k | "
                         f"{100 * e['mfu']:.1f}% | {_fmt(e.get('peak_gb'))} | {_fmt(e.get('kernels_per_step'), 0)} | "
                         f"{_fmt(e.get('first_step_s'))} |")
        lines.append("")
    trainer = [e for e in entries if e["section"] == "trainer"]
    if trainer:
        lines += ["## The real trainer (`python -m dig_scale.train`, ZeRO-2, bf16, 256 px, 32 images per GPU)", "",
                  "Throughput of the last logging window (after compilation). First step: the trainer's own "
                  "report, compilation included; from call 7 on, a call's runs share one compile cache, so "
                  "a model's later runs start as a restarted job does.", "",
                  "| run | name | GPUs | img/s per GPU | ms/step | MFU | peak GB | data wait | first step s "
                  "| overrides |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for e in sorted(trainer, key=lambda e: (e["name"], e["run"])):
            head = f"| {e['run']} | {e['name']} | {e['gpus']} |"
            if "error" in e:
                reason = next((ln for ln in reversed(e["error"].splitlines()) if "Error" in ln),
                              e["error"].strip().splitlines()[-1])[:80]
                lines.append(f"{head} failed: {reason} | | | | | | {' '.join(e['overrides'])} |")
                continue
            lines.append(f"{head} {_fmt(e['img_per_s'])} | {_fmt(e['ms'])} | {100 * e['mfu']:.1f}% | "
                         f"{_fmt(e['peak_gb'])} | {100 * e['data_wait']:.1f}% | {_fmt(e.get('first_step_s'))} | "
                         f"{' '.join(e['overrides'])} |")
        lines.append("")
    for e in bare:
        if "breakdown" in e and "kernel_ms_by_class" in e["breakdown"]:
            classes = ", ".join(f"{k} {v:.1f}" for k, v in e["breakdown"]["kernel_ms_by_class"].items())
            lines.append(f"- {e['run']}: {e['model']}/2 {e['res']} px {e['contender']}, GPU kernel time of one "
                         f"profiled step {e['breakdown']['kernel_ms']:.1f} ms (wall {e['ms']:.1f} ms unprofiled): "
                         f"{classes}.")
    for e in entries:
        if e["section"] == "trainer_profile":
            phases = ", ".join(f"{k} {v:.1f} ms" for k, v in e["phases_ms"].items())
            graphs = ", CUDA graphs" if e.get("cuda_graphs") else ""
            lines.append(f"- {e['run']}: trainer phases (DiG-XL/2 compiled{graphs}, device syncs between phases): "
                         f"{phases}; "
                         f"{e['kernels_per_step']:.0f} kernels per step"
                         + (f", {e['kernel_ms_per_step']:.1f} ms of GPU busy time per step"
                            if "kernel_ms_per_step" in e else "")
                         + (f"; back to back without the profiler {e['step_ms']:.1f} ms per step, of which the host "
                            f"spends {e['host_ms']:.1f} ms inside the step call" if "step_ms" in e else "")
                         + ("; kernel time of one profiled step by class " + ", ".join(
                             f"{k} {v:.1f}" for k, v in e["breakdown"]["kernel_ms_by_class"].items())
                            if "breakdown" in e else "") + ".")
        if e["section"] == "trainer" and e.get("startup"):
            lines.append(f"- {e['run']}: {e['name']}: {e['startup']}.")
        if e["section"] == "loader":
            lines.append(f"- {e['run']}: the loader alone delivers {e['samples_per_s']:.0f} samples/s per rank "
                         f"(batch {e['batch']}, {e['workers']} workers, local MDS shards).")
        if e["section"] == "conv":
            lines.append(f"- {e['run']}: depthwise conv fwd+bwd {e['shape']}, {e['variant']}: {e['fwd_bwd_ms']:.3f} ms "
                         f"wall, {_fmt(e.get('fwd_bwd_gpu_ms'), 3)} ms of kernels (floor {e['floor_ms']:.3f} ms).")
        if e["section"] == "memory":
            lines.append(f"- {e['run']}: memory {e['model']}, activation checkpointing "
                         f"{e['activation_checkpointing']}: max micro-batch at 256 px {e['max_batch_256px']}"
                         + (" (the most checked)" if e.get("max_batch_capped") else "")
                         + f", max resolution at batch 1 {e['max_res_batch1']} px"
                         + (" (the most checked)." if e["max_res_capped"] else "."))
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"train_step_{card.lower().replace(' ', '_')}"
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(bare, stem.with_suffix(".png"), card)
    return stem.with_suffix(".md")


def _plot(bare: list[dict], path: Path, card: str) -> None:
    """Images/s against resolution, one line per (run, model size, contender) measured at more than
    one resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict = {}
    for e in bare:
        if "error" not in e:
            series.setdefault((e["run"], e["model"], e["contender"]), []).append((e["res"], e["img_per_s"]))
    for (run, model, contender), points in sorted(series.items()):
        if len(points) > 1:
            points.sort()
            ax.plot(*zip(*points), marker="o", linestyle=":", label=f"{model}/2 {contender} ({run})")
    resolutions = sorted({res for points in series.values() for res, _ in points})
    ax.set(xscale="log", yscale="log", xlabel="image side (px); dotted lines only join measured points",
           ylabel="training images/s (bare step)", title=f"DiG vs DiT training throughput, one {card}")
    ax.set_xticks(resolutions, [str(r) for r in resolutions])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# Trainer runs of the benchmark: a base run, optionally ZeRO-2 reduction settings set against their
# defaults (dig_scale/train/deepspeed_config.py), optionally `_<N>gpu` (default one),
# e.g. dig_xl2_graphed_nocontig_overlap_2gpu.
TRAINER_RUNS = {
    "dig_xl2_graphed": ("DiG-XL/2", "train.compile=true", "train.cuda_graphs=true"),
    "dig_xl2_compiled": ("DiG-XL/2", "train.compile=true", "train.cuda_graphs=false"),
    "dig_xl2_eager": ("DiG-XL/2", "train.compile=false", "train.cuda_graphs=false"),
    "dit_xl2_graphed": ("DiT-XL/2", "train.compile=true", "train.cuda_graphs=true", "model.name=DiT-XL/2"),
    "dit_xl2_compiled": ("DiT-XL/2", "train.compile=true", "train.cuda_graphs=false", "model.name=DiT-XL/2"),
}
PROFILE_RUNS = ("profile", "profile_graphed")  # the trainer's phase profile, compiled / graphed
ZERO_SETTINGS = {"contig": ("contiguous_gradients", "true"), "nocontig": ("contiguous_gradients", "false"),
                 "overlap": ("overlap_comm", "true"), "nooverlap": ("overlap_comm", "false")}


def trainer_run(name: str) -> tuple[str, list[str], int]:
    """(model, trainer overrides, GPUs) of a trainer run's name; ValueError names what is unknown."""
    base = max((b for b in TRAINER_RUNS if name == b or name.startswith(b + "_")), key=len, default=None)
    if base is None:
        raise ValueError(f"unknown trainer run {name!r}: a name starts with one of {', '.join(TRAINER_RUNS)}")
    model, *overrides = TRAINER_RUNS[base]
    if SMOKE and base == "dit_xl2_compiled":
        overrides.append("model.gla_backend=auto")
    gpus = 1
    for part in filter(None, name[len(base):].split("_")):
        if part in ZERO_SETTINGS:
            key, value = ZERO_SETTINGS[part]
            overrides.append(f"deepspeed.zero_optimization.{key}={value}")
        elif re.fullmatch(r"[1-9][0-9]*gpu", part):
            gpus = int(part[:-3])
        else:
            raise ValueError(f"trainer run {name!r}: unknown part {part!r} (expected {', '.join(ZERO_SETTINGS)} "
                             "or <N>gpu)")
    return model, overrides, gpus


def main() -> int:
    global RESULTS, BREAKDOWN
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where results.jsonl goes")
    parser.add_argument("--scratch", type=Path,
                        help="synthetic data, run directories and trainer logs (default: a temp dir)")
    parser.add_argument("--sections", default="ceilings,conv,bare,trainer")
    parser.add_argument("--models", default="XL")
    parser.add_argument("--res", default="256")
    parser.add_argument("--contenders", default="dig-eager,dig-compiled,dit-eager,dit-compiled,ref-eager")
    parser.add_argument("--trainer-steps", type=int, default=60)
    parser.add_argument("--smoke", action="store_true", help="CPU check of the script with tiny models")
    parser.add_argument("--breakdown", action="store_true", help="bare section: top kernels and host ops per step")
    parser.add_argument("--trainer-runs",
                        default="loader,dig_xl2_graphed,dig_xl2_compiled,dit_xl2_graphed,profile_graphed",
                        help="trainer section: which runs, in order: 'loader', 'profile', 'profile_graphed' and "
                             "trainer_run() names such as dig_xl2_graphed_nocontig_2gpu")
    parser.add_argument("--profile-child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, nargs="+", help="results.jsonl files to turn into tables and a plot")
    args = parser.parse_args()
    for name in args.trainer_runs.split(","):
        if name != "loader" and name not in PROFILE_RUNS:
            try:
                trainer_run(name)
            except ValueError as error:
                parser.error(str(error))
    if args.report:
        print(write_report(args.report, args.out).read_text())
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    RESULTS = args.out / "results.jsonl"
    if args.smoke:
        SMOKE.update(depth=2, hidden_size=64, num_heads=2)
    BREAKDOWN = args.breakdown
    if args.profile_child:
        config, steps, *overrides = args.profile_child
        profile_trainer_child(config, overrides, int(steps))
        return 0
    sections = args.sections.split(",")
    card = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    record({"section": "setup", "card": card, "torch": torch.__version__, "date": str(datetime.date.today()),
            "versions": {p: _version(p) for p in ("triton", "deepspeed", "streaming", "fla")}})
    peak = measure_ceilings()["bf16_matmul_TFLOPs"] * 1e12
    if "conv" in sections:
        bench_conv()
    if "bare" in sections:
        for size in args.models.split(","):
            for res in map(int, args.res.split(",")):
                if res not in SIZES[size]:
                    continue
                for contender in args.contenders.split(","):
                    if contender.endswith("eager") and not contender.startswith("ref") and res > 256:
                        continue  # eager ours/DiT only at 256 px: compile is what users pick
                    bench_bare(size, res, SIZES[size][res], contender, peak, kernels=res == 256)
    if "memory" in sections:
        for size in args.models.split(","):
            bench_memory(size)
    if "trainer" in sections:
        scratch = args.scratch or Path(tempfile.mkdtemp(prefix="train_step-"))
        data = scratch / "latents"
        if not (data / "index.json").is_file():  # a --scratch reused across calls keeps its data
            write_synthetic_latents(data, 4096 if DEVICE == "cuda" else 64, 32)
        steps, batch = (args.trainer_steps, 32) if DEVICE == "cuda" else (3, 2)
        # One compile cache for every run of the call (the trainer keeps its own when these are unset):
        # a model's first run starts cold, its later runs start as a restarted job does (first_step_s).
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(scratch / "compile_cache" / "inductor"))
        os.environ.setdefault("TRITON_CACHE_DIR", str(scratch / "compile_cache" / "triton"))
        # (compiling on a CPU takes many minutes: the smoke check runs the trainer eager)
        tiny = ["model.arch={depth: 2, hidden_size: 64, num_heads: 2}", "model.gla_backend=torch",
                "train.precision=fp32", "data.num_workers=0"] if SMOKE else []
        if "loader" in args.trainer_runs:
            bench_loader(data, batch, workers=8 if DEVICE == "cuda" else 0)
        for name in args.trainer_runs.split(","):  # in the order given: what matters most runs first
            if name != "loader" and name not in PROFILE_RUNS:
                model, extra, gpus = trainer_run(name)
                bench_trainer(scratch, data, name, "dig_xl2_in1k256.yaml", model, batch, steps, peak, *tiny,
                              *extra, *(["train.compile=false", "train.cuda_graphs=false"] if SMOKE else []),
                              gpus=gpus)
            elif name in PROFILE_RUNS:
                graphs = name.endswith("graphed") and not SMOKE
                overrides = trainer_overrides(scratch, name, data, batch, 10, *tiny,
                                              f"train.compile={'false' if SMOKE else 'true'}",
                                              f"train.cuda_graphs={'true' if graphs else 'false'}")
                subprocess.run([sys.executable, __file__, "--out", str(args.out), *(["--smoke"] if SMOKE else []),
                                "--profile-child", "dig_xl2_in1k256.yaml", "10" if DEVICE == "cuda" else "2",
                                *overrides], cwd=ROOT)
    return 0


def _version(package: str) -> str:
    try:
        return __import__(package).__version__
    except Exception:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
