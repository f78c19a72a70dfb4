"""Image decoding and the ADM/DiT preprocessing, so FID stays comparable with published numbers.

The preprocessing follows guided-diffusion's `center_crop_arr` (used by DiT and DiG): halve the
image with a BOX filter while its short side is at least twice the target, resize the short side
to the target with BICUBIC, then cut the central square. Images become RGB first, as torchvision's
ImageFolder loader does (grayscale, CMYK, palette and alpha images included; alpha is dropped).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


class RejectedImage(Exception):
    """An input that cannot be used; the message is the reason recorded in the rejects list."""


def center_crop_resize(image: Image.Image, size: int) -> np.ndarray:
    """ADM center crop of an RGB image to a (size, size, 3) uint8 array."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.Resampling.BICUBIC)
    array = np.asarray(image)
    top = (array.shape[0] - size) // 2
    left = (array.shape[1] - size) // 2
    return array[top:top + size, left:left + size]


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes -> preprocessed (3, size, size) uint8 array.

    Raises RejectedImage for anything PIL cannot fully decode (not an image, truncated, corrupt,
    a decompression bomb, zero-sized).
    """
    try:
        with warnings.catch_warnings():
            # PIL warns about e.g. odd EXIF or palette transparency; such images decode fine.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # decodes everything now, so truncation is caught here
                rgb = image.convert("RGB")
    except Image.DecompressionBombError as e:
        raise RejectedImage(f"too large: {e}") from None
    except UnidentifiedImageError:
        raise RejectedImage("not an image (PIL cannot identify the format)") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for unreadable data
        raise RejectedImage(f"cannot decode: {e}") from None
    if min(rgb.size) == 0:
        raise RejectedImage(f"empty image of size {rgb.size}")
    return np.ascontiguousarray(center_crop_resize(rgb, size).transpose(2, 0, 1))
