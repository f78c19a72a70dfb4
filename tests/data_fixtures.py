"""Inputs for the data-stage tests, and references computed without the code under test.

The ImageFolder has 3 classes of small images in odd sizes and in every colour mode the encoder
must convert (RGB, L, RGBA, CMYK, P), plus inputs it must reject: a truncated JPEG, a text file
named .jpg, a zero-byte file. The same inputs are packed into WebDataset tars.
"""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

RESOLUTION = 16  # tiny VAE below halves it: latents are (4, 8, 8)
CLASSES = ["ant", "bee", "cow"]


@dataclass(frozen=True)
class GoodImage:
    label: int
    relpath: str  # relative to the ImageFolder root


@dataclass(frozen=True)
class BadInput:
    relpath: str
    why: str


def _smooth_picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random RGB picture (distinct per seed, compresses like a photo)."""
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


# (class, file name, (height, width), PIL mode, format); sizes include odd ones, tall, wide and
# large enough to take the BOX-halving path at RESOLUTION (short side >= 32).
_GOOD = [
    (0, "a0.jpg", (37, 53), "RGB", "JPEG"),
    (0, "a1.png", (70, 70), "L", "PNG"),
    (0, "sub/a2.png", (29, 101), "RGBA", "PNG"),
    (1, "b0.jpg", (120, 45), "CMYK", "JPEG"),
    (1, "b1.png", (17, 16), "P", "PNG"),
    (1, "b2.jpeg", (64, 200), "RGB", "JPEG"),
    (2, "c0.bmp", (33, 34), "RGB", "BMP"),
    (2, "c1.webp", (48, 31), "RGB", "WEBP"),
]


def make_image_folder(root: Path) -> tuple[list[GoodImage], list[BadInput]]:
    rng = np.random.default_rng(1234)
    good = []
    for label, name, (h, w), mode, fmt in _GOOD:
        relpath = os.path.join(CLASSES[label], name)
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(_smooth_picture(rng, h, w))
        if mode == "RGBA":
            image = image.convert("RGBA")
            image.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
        elif mode == "P":
            image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        else:
            image = image.convert(mode)
        image.save(path, format=fmt)
        good.append(GoodImage(label, relpath))
    bad = []
    truncated = io.BytesIO()
    Image.fromarray(_smooth_picture(rng, 64, 64)).save(truncated, format="JPEG", quality=95)
    (root / "bee" / "truncated.jpg").write_bytes(truncated.getvalue()[: len(truncated.getvalue()) // 2])
    bad.append(BadInput("bee/truncated.jpg", "cannot decode"))
    (root / "cow" / "notes.jpg").write_text("not an image at all\n")
    bad.append(BadInput("cow/notes.jpg", "not an image"))
    (root / "ant" / "empty.png").write_bytes(b"")
    bad.append(BadInput("ant/empty.png", "not an image"))
    (root / "ant" / ".hidden.jpg").write_text("hidden files are not inputs")
    return good, bad


def make_tars(folder: Path, good: list[GoodImage], bad: list[BadInput], out: Path, shards: int = 2,
              image_ext: str | None = None, label_ext: str = "cls") -> list[Path]:
    """Pack the folder's inputs (good and bad) into `shards` tars, keeping each file's extension
    as its tar entry (or `image_ext` for all), with an integer-text label entry."""
    entries = [(g.relpath, g.label) for g in good] + [(b.relpath, CLASSES.index(b.relpath.split("/")[0])) for b in bad]
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"data-{s:04d}.tar" for s in range(shards)]
    for s, path in enumerate(paths):
        with tarfile.open(path, "w") as tar:
            for i, (relpath, label) in enumerate(entries):
                if i % shards != s:
                    continue
                key = tar_key(relpath)
                ext = image_ext or relpath.rsplit(".", 1)[1]
                for name, data in ((f"{key}.{ext}", (folder / relpath).read_bytes()), (f"{key}.{label_ext}",
                                                                                      str(label).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return paths


def tar_key(relpath: str) -> str:
    return relpath.rsplit(".", 1)[0].replace("/", "_")


def make_tiny_vae(directory: Path) -> Path:
    """A small random diffusers AutoencoderKL (downsampling 2), saved like a hub checkpoint."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        layers_per_block=1, sample_size=RESOLUTION)
    vae.save_pretrained(directory)
    return directory


def reference_preprocess(path: Path, size: int = RESOLUTION) -> Image.Image:
    """ADM center crop written with PIL operations only (guided-diffusion's center_crop_arr)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def reference_posteriors(vae_dir: Path, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct VAE calls, one image at a time: (mean, std) each (N, 2, C, h, w), index 1 = mirrored image."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir, low_cpu_mem_usage=False).eval()
    means, stds = [], []
    with torch.no_grad():
        for image in images:
            pair = []
            for view in (image, ImageOps.mirror(image)):
                x = torch.from_numpy(np.asarray(view, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
                pair.append(vae.encode(x).latent_dist)
            means.append(torch.stack([d.mean[0] for d in pair]))
            stds.append(torch.stack([d.std[0] for d in pair]))
    return torch.stack(means), torch.stack(stds)


def read_raw_samples(path: Path) -> list[dict]:
    """Every stored sample as written, via a plain streaming dataset (not our reader)."""
    from streaming import StreamingDataset

    dataset = StreamingDataset(local=str(path), shuffle=False, batch_size=1)
    return [dataset[i] for i in range(dataset.num_samples)]


def make_many_images(root: Path, count: int, classes: int = 3, size: tuple[int, int] = (40, 56)) -> list[GoodImage]:
    """`count` distinct JPEGs spread over `classes` classes (for runs long enough to interrupt)."""
    rng = np.random.default_rng(99)
    images = []
    for i in range(count):
        relpath = os.path.join(f"class{i % classes}", f"img{i:05d}.jpg")
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_smooth_picture(rng, *size)).save(root / relpath, quality=90)
        images.append(GoodImage(i % classes, relpath))
    return images


# float16 storage of O(1) values, plus batched-vs-single convolution differences
POSTERIOR_ATOL = 3e-3


def encode_inputs(root: Path) -> dict:
    """An ImageFolder with good and bad inputs, a tiny VAE, and the reference posteriors of the
    good images (a direct VAE call on the PIL-preprocessed image)."""
    good, bad = make_image_folder(root / "images")
    vae = make_tiny_vae(root / "vae")
    mean, std = reference_posteriors(vae, [reference_preprocess(root / "images" / g.relpath) for g in good])
    return {"root": root, "folder": root / "images", "vae": vae, "good": good, "bad": bad, "mean": mean, "std": std}
