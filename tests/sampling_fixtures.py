"""Small models and exported folders for the sampling, export and evaluation tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dig_scale.models import create_model
from dig_scale.models.pretrained import inference_arguments, write_pretrained
from dig_scale.models.registry import resolved_arguments

TINY_ARGUMENTS = dict(input_size=8, in_channels=3, num_classes=10, depth=2, hidden_size=32, num_heads=2,
                      gla_backend="torch")


def tiny_model(seed: int = 0, scale: float = 0.02, **overrides) -> torch.nn.Module:
    """A small DiG whose weights are all perturbed (DiT's init zeroes the output layer)."""
    torch.manual_seed(seed)
    model = create_model("DiG-S/2", **{**TINY_ARGUMENTS, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def pixel_data_section(model: torch.nn.Module, num_classes: int = 10) -> dict:
    return {"kind": "pixel", "sample_shape": [model.in_channels, *model.input_size],
            "resolution": model.input_size[0], "num_classes": num_classes,
            "class_names": [str(i) for i in range(num_classes)], "vae": None, "vae_subfolder": None,
            "scaling_factor": 1.0, "shift_factor": 0.0, "latent_mean": [0.0] * model.in_channels,
            "latent_std": [1.0] * model.in_channels}


def write_tiny_export(folder: Path, model: torch.nn.Module | None = None, **overrides) -> Path:
    """An exported folder of a tiny pixel-space model, as dig_scale.export would write it."""
    model = model if model is not None else tiny_model(**overrides)
    arguments = resolved_arguments("DiG-S/2", **{**TINY_ARGUMENTS, **overrides})
    config = {"model": {"name": "DiG-S/2", "arguments": inference_arguments(arguments)},
              "diffusion": {"num_timesteps": 1000, "beta_schedule": "linear"},
              "data": pixel_data_section(model), "training": {"step": 0, "config": {}}, "source": {"test": True}}
    return write_pretrained(folder, config, {"ema": model.state_dict()})


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run ~10x faster on one thread than on several competing for busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
