"""From the model's space to images: the VAE (or nothing, for pixel data), uint8, PNG grids."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid


class Decoder:
    """Model-space samples (N, C, H, W) -> pixels in [-1, 1].

    Latent datasets store `scaling_factor * (z - shift_factor)`, so z = x / scaling_factor +
    shift_factor goes through the VAE's decoder; pixel datasets are already pixels. The VAE
    (`vae`: hub id or directory, inside it `vae_subfolder`) is loaded on first use.
    """

    def __init__(self, kind: str, device: torch.device, vae: str | None = None, vae_subfolder: str | None = None,
                 scaling_factor: float = 1.0, shift_factor: float = 0.0):
        if kind not in ("latent", "pixel"):
            raise ValueError(f"sample kind {kind!r}: expected 'latent' or 'pixel'")
        if kind == "latent" and not vae:
            raise ValueError("latent samples need a VAE to decode them, and none is recorded; pass one explicitly")
        self.kind, self.device, self.vae, self.vae_subfolder = kind, device, vae, vae_subfolder
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor
        self._autoencoder = None

    @classmethod
    def from_record(cls, record: dict, device: torch.device, vae: str | None = None,
                    vae_subfolder: str | None = None) -> Decoder:
        """From dataset metadata as a dict (DatasetMetadata or an export's `data` section);
        `vae` (with its own `vae_subfolder`) replaces the recorded VAE location, e.g. by a local copy."""
        location = (vae, vae_subfolder) if vae else (record["vae"], record["vae_subfolder"])
        return cls(record["kind"], device, *location, record["scaling_factor"], record["shift_factor"])

    def _load(self):
        from diffusers import AutoencoderKL

        try:
            autoencoder = AutoencoderKL.from_pretrained(self.vae, subfolder=self.vae_subfolder)
        except (OSError, ValueError) as e:
            where = f"{self.vae}" + (f" (subfolder {self.vae_subfolder!r})" if self.vae_subfolder else "")
            raise RuntimeError(f"cannot load the VAE {where}: {e}\nPoint to a local copy of it instead "
                               "(dig_scale.sample --vae DIR [--vae-subfolder NAME])") from None
        return autoencoder.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        if self.kind == "pixel":
            return samples.float()
        if self._autoencoder is None:
            self._autoencoder = self._load()
        latents = samples.float().to(self.device) / self.scaling_factor + self.shift_factor
        return self._autoencoder.decode(latents).sample.float()


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1], C in {1, 3} -> (N, H, W, 3) uint8, quantised as DiT and ADM do."""
    if pixels.dim() != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got shape {tuple(pixels.shape)}")
    images = (127.5 * pixels.float() + 128.0).clamp(0, 255).to(torch.uint8)
    return images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def save_grid(images: np.ndarray, path: str | Path, columns: int, min_cell: int = 64) -> Path:
    """(N, H, W, 3) uint8 -> one PNG, `columns` images wide; images smaller than `min_cell`
    pixels are enlarged by an integer factor (nearest) so they can be seen."""
    cells = torch.from_numpy(images).permute(0, 3, 1, 2)
    factor = max(1, min_cell // cells.shape[-1])
    cells = cells.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    grid = make_grid(cells, nrow=columns, padding=2, pad_value=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path
