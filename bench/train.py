"""Training throughput of the real trainer on GPUs: img/s, MFU, peak memory, and resume.

    python bench/train.py --out DIR [--steps 100] [--gpus 1,2]

Writes a synthetic MDS latent dataset (ImageNet-256 shapes: 4x32x32 latents, 1000 classes) and
runs `torchrun -m dig_scale.train` with the paper configs for DiG-S/2 (32 images per GPU) and
DiG-XL/2 (16 per GPU), on 1 and 2 GPUs, with and without activation checkpointing. Then it
checks resume on GPU: a run relaunched from its mid-run checkpoint must continue the loss curve
of the uninterrupted run. Prints a markdown table and writes it to DIR/train_<card>.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dig_scale.data.mds_writer import write_mds_dataset  # noqa: E402
from dig_scale.data.schema import DatasetMetadata, tool_info, utc_timestamp  # noqa: E402

SHAPE = (4, 32, 32)
EXTRA: list[str] = []  # --override values


def write_synthetic_latents(path: Path, num_samples: int, num_classes: int = 1000) -> None:
    """Random posteriors (mean ~ N(0, 1), std ~ U(0.01, 0.1)) in the encode.py schema."""
    rng = np.random.default_rng(0)
    samples = ({"mean": rng.standard_normal((2, *SHAPE)).astype(np.float16),
                "std": rng.uniform(0.01, 0.1, (2, *SHAPE)).astype(np.float16), "label": i % num_classes,
                "key": f"synthetic/{i}"} for i in range(num_samples))
    meta = DatasetMetadata(
        kind="latent", sample_shape=SHAPE, resolution=256, num_samples=num_samples, num_classes=num_classes,
        class_counts=np.bincount(np.arange(num_samples) % num_classes, minlength=num_classes).tolist(),
        class_names=None, vae="synthetic", scaling_factor=0.18215, shift_factor=0.0,
        latent_mean=[0.0] * 4, latent_std=[1.0] * 4, preprocessing={}, source={"type": "synthetic"},
        tool=tool_info("bench/train.py"), created=utc_timestamp())
    write_mds_dataset(str(path), meta, samples)


def train(out: Path, name: str, config: str, gpus: int, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}",
           "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(gpus))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "dig_scale.train", str(ROOT / "configs" / config), f"run_name={name}",
               f"output_dir={out / 'runs'}", "sampling.every_steps=0", *overrides, *EXTRA]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    (out / f"{name}.log").write_text(result.stdout + result.stderr)
    return result


def metrics(out: Path, name: str) -> list[dict]:
    path = out / "runs" / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--gpus", default="1,2")
    parser.add_argument("--override", action="append", default=[],
                        help="extra key=value for every run (e.g. a tiny model.arch for a CPU smoke test)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    EXTRA.extend(args.override)
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    data = args.out / "synthetic-latents"
    shutil.rmtree(data, ignore_errors=True)
    write_synthetic_latents(data, num_samples=8192)

    # Activation checkpointing changes per-GPU memory, not scaling: compare it on one GPU only.
    all_gpus = list(map(int, args.gpus.split(",")))
    scenarios = [(gpus, policy) for gpus in all_gpus for policy in (("none", "all") if gpus == all_gpus[0]
                                                                     else ("none",))]
    rows, log_every = [], max(args.steps // 4, 1)
    for model, config, micro in (("DiG-S/2", "dig_s2_in1k256.yaml", 32), ("DiG-XL/2", "dig_xl2_in1k256.yaml", 16)):
        for gpus, policy in scenarios:
            name = f"{model.replace('/', '')}-{gpus}gpu-ckpt-{policy}"
            result = train(args.out, name, config, gpus, f"data.path={data}", f"train.max_steps={args.steps}",
                           f"train.micro_batch_size={micro}", f"train.global_batch_size={micro * gpus}",
                           f"model.activation_checkpointing={policy}", f"logging.every_steps={log_every}",
                           "checkpoint.every_steps=0", "checkpoint.final=false", "data.num_workers=4")
            logged = metrics(args.out, name)
            if result.returncode or not logged:  # a broken setup fails every run: stop spending GPU time
                print((args.out / f"{name}.log").read_text()[-5000:], file=sys.stderr)
                return 1
            last = logged[-1]  # the last window: compiled, warmed up
            mfu = f"{100 * last['mfu']:.1f}%" if last["mfu"] is not None else "-"
            memory = f"{last['peak_mem_gb']:.1f}" if last["peak_mem_gb"] is not None else "-"
            rows.append(f"| {model} | {gpus} | {micro} | {policy} | {last['images_per_s']:.1f} | {mfu} | "
                        f"{memory} | {last['loss']:.4f} |")
            print(rows[-1], flush=True)

    # Resume on GPU: 2N steps uninterrupted vs N steps, then a relaunch from the step-N checkpoint.
    gpus = max(map(int, args.gpus.split(",")))
    common = (f"data.path={data}", "train.micro_batch_size=32", f"train.global_batch_size={32 * gpus}",
              "logging.every_steps=1", f"checkpoint.every_steps={args.steps // 2}", "data.num_workers=4")
    train(args.out, "resume-reference", "dig_s2_in1k256.yaml", gpus, f"train.max_steps={args.steps}", *common)
    train(args.out, "resume", "dig_s2_in1k256.yaml", gpus, f"train.max_steps={args.steps // 2}", *common)
    train(args.out, "resume", "dig_s2_in1k256.yaml", gpus, f"train.max_steps={args.steps}", *common)
    reference = {m["step"]: m["loss"] for m in metrics(args.out, "resume-reference")}
    resumed = {m["step"]: m["loss"] for m in metrics(args.out, "resume")}
    after = [s for s in range(args.steps // 2 + 1, args.steps + 1) if s in reference and s in resumed]
    gap = max((abs(reference[s] - resumed[s]) for s in after), default=float("nan"))
    spread = float(np.std([reference[s] for s in after])) if after else float("nan")

    versions = f"torch {torch.__version__}, deepspeed {_version('deepspeed')}, triton {_version('triton')}"
    table = "\n".join([
        f"# Training throughput — {card}", "",
        f"{datetime.date.today()}, {versions}. Synthetic 4x32x32 latents (ImageNet-256 shapes), bf16, ZeRO-2, "
        f"{args.steps} steps; numbers are the last logging window ({log_every} steps). MFU counts every matmul "
        "(fwd+bwd = 3x fwd, recomputation not counted) against the dense bf16 datasheet peak.", "",
        "| model | GPUs | images/GPU | act. ckpt | img/s | MFU | peak mem (GB) | loss |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        f"Resume on GPU ({gpus} GPU(s), DiG-S/2): steps {args.steps // 2 + 1}-{args.steps} after a relaunch from "
        f"the step-{args.steps // 2} checkpoint vs the uninterrupted run: max |loss difference| {gap:.2e} over "
        f"{len(after)} steps (step-to-step loss spread {spread:.2e}).", ""])
    (args.out / f"train_{card.replace(' ', '_')}.md").write_text(table)
    print(table)
    return 0


def _version(package: str) -> str:
    try:
        return __import__(package).__version__
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
