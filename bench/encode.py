"""Throughput of the encode stage on one GPU: the whole `data_prep/encode.py` pipeline (JPEG decode
in DataLoader workers, ADM crop, VAE posterior of image and flip, MDS writing) against the VAE
encoder alone on tensors already on the GPU. Target: pipeline >= 85% of the VAE-only rate.

    python bench/encode.py --out bench/results            # GPU: 256 and 512 px, SD-VAE architecture
    python bench/encode.py --out /tmp/bench --smoke       # CPU check with a tiny VAE and tiny images

Self-contained: it writes its own JPEG ImageFolder (ImageNet-like sizes and file sizes) and builds
the SD VAE (stabilityai/sd-vae-ft-ema's config) with random weights, so nothing is downloaded.
Rates are source images per second; each image is encoded twice (as is and flipped), as in the pipeline.
Writes `encode_<card>.md` into --out.
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import platform
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

NEEDED = ["diffusers", "streaming", "webdataset", "braceexpand", "zstd", "xxhash", "tqdm"]
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
              act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215)
TINY_VAE = dict(SD_VAE, block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8)
# Common ImageNet train sizes (w, h) with rough frequencies; mean file ~110 kB at quality 90.
IMAGE_SIZES = [((500, 375), 5), ((500, 333), 3), ((375, 500), 2), ((500, 500), 1), ((640, 480), 1), ((800, 600), 1)]


def check_packages() -> None:
    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
    if missing:
        sys.exit("bench/encode.py needs: " + ", ".join(missing) + "; install or carry them as wheels")


def _photo_like(args: tuple[int, int, int, int]) -> bytes:
    """A JPEG with smooth structure plus texture and sensor-like noise, so it decodes like a photo."""
    seed, width, height, quality = args
    rng = np.random.default_rng(seed)
    layers = [(rng.random((4, 4, 3)) * 255, 1.0), (rng.random((32, 32, 3)) * 255, 0.25)]
    picture = np.zeros((height, width, 3))
    for small, weight in layers:
        image = Image.fromarray(small.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
        picture += weight * np.asarray(image, np.float64)
    picture = picture / 1.25 + rng.normal(0, 6, picture.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def make_image_folder(root: Path, count: int, unique: int, classes: int, small: bool) -> dict:
    """`count` JPEGs in `classes` class folders: `unique` distinct files, the rest hard links to them
    (decoding costs the same per file; generating fewer keeps the setup short)."""
    rng = np.random.default_rng(0)
    sizes, weights = zip(*IMAGE_SIZES)
    picks = rng.choice(len(sizes), size=unique, p=np.array(weights) / sum(weights))
    jobs = [(i, *((sizes[k][0] // 8, sizes[k][1] // 8) if small else sizes[k]), 90) for i, k in enumerate(picks)]
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        blobs = pool.map(_photo_like, jobs, chunksize=16)
    (root / "unique").mkdir(parents=True)
    for i, blob in enumerate(blobs):
        (root / "unique" / f"{i:06d}.jpg").write_bytes(blob)
    folder = root / "images"
    for i in range(count):
        path = folder / f"class{i % classes:03d}" / f"img{i:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(root / "unique" / f"{i % unique:06d}.jpg", path)
    return {"folder": folder, "mean_kb": np.mean([len(b) for b in blobs]) / 1e3,
            "mean_size": tuple(int(v) for v in np.mean([job[1:3] for job in jobs], axis=0).round())}


def vae_only_rate(vae_dir: Path, resolution: int, batch_size: int, device: torch.device, seconds: float,
                  channels_last: bool = False) -> float:
    """Images/s of the pipeline's own encoder call on uint8 batches already on the GPU (with
    channels_last, its VAE converted to that memory format, which its first conv then gives the input)."""
    from data_prep.vae_encoder import PosteriorEncoder, vae_layout

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    encoder = PosteriorEncoder(vae_layout(str(vae_dir), None, resolution, None), None, device, dtype)
    if channels_last:
        encoder.vae.to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (batch_size, 3, resolution, resolution), dtype=torch.uint8, device=device)
    for _ in range(3):
        encoder.posterior(images)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or done < 3:
        encoder.posterior(images)
        done += 1
        if done % 4 == 0:
            sync()
    sync()
    return done * batch_size / (time.perf_counter() - start)


def decode_only_rate(folder: Path, resolution: int, batch_size: int, workers: int, limit: int,
                     part_size: int) -> float:
    """Images/s the DataLoader workers decode and crop with no GPU work behind them."""
    from torch.utils.data import DataLoader

    from data_prep.decode_batches import PartBatches
    from data_prep.sources import ImageFolderSource

    source = ImageFolderSource(str(folder))
    parts = source.plan_parts(part_size, limit)
    loader = DataLoader(PartBatches(source, parts, resolution, batch_size), batch_size=None, num_workers=workers,
                        prefetch_factor=4 if workers else None)
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += batch.images.shape[0]
    return count / (time.perf_counter() - start)


def pipeline_rate(folder: Path, vae_dir: Path, resolution: int, batch_size: int, workers: int | None,
                  limit: int, part_size: int, output: Path):
    from data_prep.encode import parse_args, run

    argv = ["--input", str(folder), "--output", str(output), "--resolution", str(resolution), "--vae", str(vae_dir),
            "--batch-size", str(batch_size), "--limit", str(limit), "--part-size", str(part_size), "--no-progress"]
    if workers is not None:
        argv += ["--num-workers", str(workers)]
    _, report = run(parse_args(argv))
    return report


def card_name(device: torch.device) -> tuple[str, str]:
    if device.type != "cuda":
        return "cpu", platform.processor() or "cpu"
    full = torch.cuda.get_device_name(device)
    words = [w for w in re.split(r"[^a-z0-9]+", full.lower()) if w and w != "nvidia"]
    return (words[0] if words else "gpu"), full


def versions() -> str:
    found = []
    for package in ("torch", "diffusers", "mosaicml-streaming", "webdataset", "pillow", "numpy"):
        try:
            found.append(f"{package} {package_metadata.version(package)}")
        except package_metadata.PackageNotFoundError:
            found.append(f"{package} ?")
    cuda = f", CUDA {torch.version.cuda}" if torch.cuda.is_available() else ""
    return f"Python {platform.python_version()}, " + ", ".join(found) + cuda


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for encode_<card>.md")
    p.add_argument("--resolutions", type=int, nargs="+", help="default 256 512 (smoke: 32 64)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder call (the pipeline's default)")
    p.add_argument("--num-workers", type=int, help="decoding workers (default: the pipeline's default)")
    p.add_argument("--seconds", type=float, default=50.0,
                   help="target length of each timed pipeline run (shorter runs are dominated by start-up and flush)")
    p.add_argument("--smoke", action="store_true", help="CPU-sized run with a tiny VAE, to check the script")
    args = p.parse_args()
    check_packages()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("no CUDA device: run on a GPU machine, or pass --smoke for a CPU check")
    resolutions = args.resolutions or ([32, 64] if args.smoke else [256, 512])
    from diffusers import AutoencoderKL

    from data_prep.encode import default_num_workers

    workers = args.num_workers if args.num_workers is not None else default_num_workers(1)
    if device.type == "cpu":  # the same thread budget the pipeline gives its encoder on CPU
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        tmp = Path(tmp)
        vae_dir = tmp / "vae"
        torch.manual_seed(0)
        AutoencoderKL(**(TINY_VAE if args.smoke else SD_VAE)).save_pretrained(vae_dir)
        unique = 64 if args.smoke else 2048
        max_count = 256 if args.smoke else 60000
        images = make_image_folder(tmp / "data", max_count, unique, classes=100, small=args.smoke)
        print(f"{max_count} JPEGs ({unique} distinct, mean {images['mean_size']} px, {images['mean_kb']:.0f} kB), "
              f"{workers} workers, batch {args.batch_size}, {card_name(device)[1]}", flush=True)
        for resolution in resolutions:
            vae_rate = vae_only_rate(vae_dir, resolution, args.batch_size, device, 2.0 if args.smoke else 10.0)
            other_layout = None
            if device.type == "cuda":  # which memory format suits this card's convolutions and GroupNorm
                other_layout = vae_only_rate(vae_dir, resolution, args.batch_size, device, 5.0, channels_last=True)
            count = int(min(max_count, max(4 * args.batch_size, vae_rate * args.seconds)))
            # Parts are what workers share out: a real dataset has hundreds, give this short run 4 per worker.
            part_size = max(args.batch_size, -(-count // (4 * workers)))
            decode_rate = decode_only_rate(images["folder"], resolution, args.batch_size, workers, count, part_size)
            report = pipeline_rate(images["folder"], vae_dir, resolution, args.batch_size, args.num_workers, count,
                                   part_size, tmp / f"out-{resolution}")
            rows.append((resolution, count, vae_rate, other_layout, report.images_per_second, decode_rate))
            print(f"{resolution} px: VAE only {vae_rate:.1f} img/s, pipeline {report.images_per_second:.1f} img/s "
                  f"({report.images_per_second / vae_rate:.0%}), decode only {decode_rate:.1f} img/s", flush=True)
    write_report(Path(args.out), device, rows, images, workers, args)


def write_report(out: Path, device: torch.device, rows: list, images: dict, workers: int, args) -> None:
    card, full_name = card_name(device)
    lines = [f"# Encode stage throughput — {full_name}", "",
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {versions()}; {os.cpu_count()} CPU cores.",
             f"`python bench/encode.py --out {args.out}{' --smoke' if args.smoke else ''}`: "
             f"{'tiny random VAE' if args.smoke else 'SD-VAE architecture (sd-vae-ft-ema config), random weights'}, "
             f"{'fp32' if device.type == 'cpu' else 'bf16'}, batch {args.batch_size} images (x2 with flips), "
             f"{workers} decoding workers; JPEGs of mean {images['mean_size']} px, {images['mean_kb']:.0f} kB.",
             "Rates are source images per second (each encoded as is and flipped). VAE only: the pipeline's "
             "encoder call on uint8 batches already on the GPU. Pipeline: `data_prep/encode.py` end to end "
             "(decode, crop, encode, MDS zstd writing), start-up and final flush included, model loading excluded.",
             "", "| resolution | images | VAE only (NCHW) | VAE only, channels-last instead | pipeline "
             "| pipeline / VAE only "
             "| decode only (workers) | target >= 85% |", "|---|---|---|---|---|---|---|---|"]
    for resolution, count, vae_rate, other, pipe, decode in rows:
        ratio = pipe / vae_rate
        other_text = f"{other:.1f}" if other is not None else "-"
        lines.append(f"| {resolution} px | {count} | {vae_rate:.1f} | {other_text} | {pipe:.1f} | {ratio:.1%} "
                     f"| {decode:.1f} | {'met' if ratio >= 0.85 else 'missed'} |")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"encode_{card}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(rows) - 2:]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
