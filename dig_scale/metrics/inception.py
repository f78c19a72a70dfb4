"""Inception features for FID, sFID, IS and precision/recall: torch-fidelity's port of the
TensorFlow Inception graph (inception-2015-12-05) that the ADM evaluator runs, with its weights
read from a local file.

    pool      (N, 2048)  pool_3, for FID and precision/recall
    logits    (N, 1008)  pool_3 @ softmax weights without bias, for IS (as ADM's evaluator)
    spatial   (N, 2023)  the first 7 channels of mixed_6/conv (torch-fidelity: Mixed_6d.branch1x1),
                         17 x 17 x 7 flattened in TF's (H, W, C) order, for sFID; the order matters
                         when comparing with statistics that ADM's evaluator wrote

The standard numbers come from torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`
(its v0.2.0 release assets), converted from the same TF graph.
"""
from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

SPATIAL_CHANNELS = 7
FEATURES = ("pool", "logits", "spatial")


def load_inception(weights: str | Path, device: torch.device):
    """torch-fidelity's FeatureExtractorInceptionV3 with the weights at `weights`.

    torch-fidelity unpickles its weight file with weights_only=False, which would run code from
    a file we did not write. The file is read here with weights_only=True (tensors only) and
    torch-fidelity gets a copy of those tensors."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"Inception weights {weights} not found; expected torch-fidelity's "
                                "weights-inception-2015-12-05-6726825d.pth (see dig_scale/metrics/inception.py)")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"{weights}: not a file of tensors torch can load safely ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{weights}: expected a state dict of tensors")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "inception.pth"
        torch.save(dict(state), copy)
        try:
            extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                    feature_extractor_weights_path=str(copy))
        except RuntimeError as e:
            raise ValueError(f"{weights}: not the InceptionV3 weights torch-fidelity expects ({e})") from None
    return extractor.to(device)


class InceptionFeatures:
    """uint8 images (N, H, W, 3) -> {"pool", "logits", "spatial"} float32 features on the CPU."""

    def __init__(self, weights: str | Path, device: torch.device):
        self.device = device
        self.extractor = load_inception(weights, device)
        self._spatial: list[torch.Tensor] = []
        self.extractor.Mixed_6d.branch1x1.register_forward_hook(
            lambda module, inputs, output: self._spatial.append(output[:, :SPATIAL_CHANNELS]))

    @torch.no_grad()
    def __call__(self, batches: Iterable[np.ndarray]) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {name: [] for name in FEATURES}
        for batch in batches:
            images = torch.from_numpy(np.array(batch)).permute(0, 3, 1, 2).to(self.device)  # a writable copy
            pool, logits = self.extractor(images)
            spatial = self._spatial.pop().permute(0, 2, 3, 1).reshape(len(images), -1)
            for name, value in zip(FEATURES, (pool, logits, spatial)):
                out[name].append(value.float().cpu())
        return {name: torch.cat(values) for name, values in out.items()}
