"""Metrics of a sample batch (.npz with `arr_0` (N, H, W, 3) uint8, as dig_scale.sample writes).

    python -m dig_scale.evaluate samples.npz --ref VIRTUAL_imagenet256_labeled.npz \\
        --inception-weights weights-inception-2015-12-05-6726825d.pth
    python -m dig_scale.evaluate ref_images.npz --inception-weights W.pth --save-stats ref_stats.npz
    python -m dig_scale.evaluate runs/demo_digits/samples.npz --digits

Inception metrics (ADM's evaluator protocol): FID and sFID against the reference's statistics
(`mu`, `sigma`, `mu_s`, `sigma_s` when it has them, as ADM's reference batches do, else computed
from its `arr_0`), Inception Score (splits of 5,000), precision/recall (k = 3) against the
reference's images. --digits: the demo's classifier accuracy and Fréchet distance instead.
The metrics are printed and written as JSON (default: next to the samples, <name>.metrics.json).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from dig_scale.metrics.frechet import frechet_distance, gaussian_statistics
from dig_scale.sampling.npz import SampleNpz

IS_SPLIT_SIZE = 5000
PR_NEIGHBOURS = 3
STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")   # ADM's names: pool_3 and spatial statistics


def fid_statistics(features: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """ADM's statistics: mean and covariance of pool_3 (mu, sigma) and spatial (mu_s, sigma_s) features."""
    (mu, sigma), (mu_s, sigma_s) = gaussian_statistics(features["pool"]), gaussian_statistics(features["spatial"])
    return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}


def inception_metrics(samples: SampleNpz, ref: SampleNpz | None, weights: Path, device: torch.device,
                      batch_size: int, save_stats: Path | None) -> dict:
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    from dig_scale.metrics.inception import InceptionFeatures

    inception = InceptionFeatures(weights, device)
    features = inception(samples.batches(batch_size))
    stats = fid_statistics(features)
    if save_stats:
        np.savez(save_stats, **stats)
    score = isc_features_to_metric(features["logits"], splits=math.ceil(len(samples) / IS_SPLIT_SIZE), shuffle=False)
    metrics = {"inception_score": score["inception_score_mean"], "inception_score_std": score["inception_score_std"]}
    if ref is None:
        return metrics

    ref_features = inception(ref.batches(batch_size)) if ref.has_images else None
    if all(k in ref.keys for k in STAT_KEYS):
        ref_stats = {k: ref.array(k) for k in STAT_KEYS}
    elif ref_features is not None:
        ref_stats = fid_statistics(ref_features)
    else:
        raise ValueError(f"{ref.path}: neither images (arr_0) nor statistics {list(STAT_KEYS)}")
    metrics["fid"] = frechet_distance(stats["mu"], stats["sigma"], ref_stats["mu"], ref_stats["sigma"])
    metrics["sfid"] = frechet_distance(stats["mu_s"], stats["sigma_s"], ref_stats["mu_s"], ref_stats["sigma_s"])
    if ref_features is not None and min(len(samples), len(ref)) <= PR_NEIGHBOURS:
        print(f"precision/recall skipped: they need more than {PR_NEIGHBOURS} images in each set", file=sys.stderr)
    elif ref_features is not None:
        pr = prc_features_to_metric(features["pool"].to(device), ref_features["pool"].to(device),
                                    prc_neighborhood=PR_NEIGHBOURS, save_cpu_ram=True, verbose=False)
        metrics.update(precision=pr["precision"], recall=pr["recall"])
    return metrics


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dig_scale.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", type=Path, help=".npz with arr_0 (N, H, W, 3) uint8 [and labels]")
    parser.add_argument("--ref", type=Path, help="reference .npz: images (arr_0) and/or mu, sigma, mu_s, sigma_s")
    parser.add_argument("--inception-weights", type=Path, help="torch-fidelity's InceptionV3 weight file")
    parser.add_argument("--digits", action="store_true", help="the digits demo's classifier metrics")
    parser.add_argument("--save-stats", type=Path, help="also write the samples' statistics (ADM's keys) here")
    parser.add_argument("--out", type=Path, help="metrics JSON (default: <samples>.metrics.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing metrics file")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    args.out = args.out or args.samples.with_suffix(".metrics.json")
    if not args.digits and not args.inception_weights:
        parser.error("--inception-weights is required (or --digits for the demo)")
    if args.digits and (args.ref or args.inception_weights or args.save_stats):
        parser.error("--digits uses its own classifier: drop --ref, --inception-weights and --save-stats")
    for path in (args.out, args.save_stats):
        if path is not None and path.exists() and not args.overwrite:
            parser.error(f"{path} already exists; pass --overwrite to replace it")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        samples = SampleNpz(args.samples)
        metrics = {"samples": str(args.samples), "num_samples": len(samples)}
        if args.digits:
            from dig_scale.metrics.digits import DigitClassifier

            labels = samples.labels()
            if labels is None:
                raise ValueError(f"{args.samples}: no labels; the digits metrics are class-conditional")
            images = np.concatenate(list(samples.batches(args.batch_size)))
            metrics.update(DigitClassifier(samples.shape[1]).evaluate(images, labels))
        else:
            ref = SampleNpz(args.ref, images_required=False) if args.ref else None
            metrics.update(reference=str(args.ref) if args.ref else None, inception_weights=str(args.inception_weights))
            metrics.update(inception_metrics(samples, ref, args.inception_weights, torch.device(args.device),
                                             args.batch_size, args.save_stats))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
