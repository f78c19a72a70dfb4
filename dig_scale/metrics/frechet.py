"""The Fréchet distance between Gaussians, d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2),
and the Gaussian statistics of feature sets, all in float64 (torch's LAPACK).

tr((S1 S2)^1/2) is computed as the sum of the square roots of the eigenvalues of S1^1/2 S2 S1^1/2:
that matrix is similar to S1 S2 (same eigenvalues) but symmetric positive semi-definite, so two
symmetric eigendecompositions give it without the general matrix square root of a non-symmetric
product (scipy.linalg.sqrtm). Covariances estimated from fewer samples than dimensions are
singular; there the usual route produces complex parts and needs an eps * I offset, which biases
the result, while this one stays real and exact up to rounding (eigenvalues within rounding
error of zero are taken as zero).
"""
from __future__ import annotations

import numpy as np
import torch


def _rounding_zeroed(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Eigenvalues within rounding error of zero (|l| <= d eps max|l|) set to zero: their square
    roots would turn rounding noise of ~1e-16 into errors of ~1e-8 each."""
    tolerance = len(eigenvalues) * torch.finfo(torch.float64).eps * eigenvalues.abs().max()
    return torch.where(eigenvalues > tolerance, eigenvalues, 0.0)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shapes do not match: means {tuple(mu1.shape)} {tuple(mu2.shape)}, covariances "
                         f"{tuple(sigma1.shape)} {tuple(sigma2.shape)}")
    if not all(torch.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("statistics contain NaN or infinity")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    eigenvalues, vectors = torch.linalg.eigh(sigma1)
    root1 = (vectors * _rounding_zeroed(eigenvalues).sqrt()) @ vectors.T
    product = root1 @ sigma2 @ root1
    trace_sqrt = _rounding_zeroed(torch.linalg.eigvalsh((product + product.T) / 2)).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(distance.item(), 0.0)


def gaussian_statistics(features: torch.Tensor | np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of (N, D) features, accumulated in float64 in chunks
    (centred on the first chunk's mean, so large offsets do not cancel catastrophically)."""
    features = torch.as_tensor(features)
    n, d = features.shape
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {n}")
    shift = features[:chunk].double().mean(0)
    total, outer = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    for block in features.split(chunk):
        centred = block.double() - shift
        total += centred.sum(0)
        outer += centred.T @ centred
    mean = total / n
    covariance = (outer - n * torch.outer(mean, mean)) / (n - 1)
    return (mean + shift).numpy(), covariance.numpy()
