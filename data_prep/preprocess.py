"""Image decoding and the ADM/DiT preprocessing, so FID stays comparable with published numbers.

The preprocessing follows guided-diffusion's `center_crop_arr` (used by DiT and DiG): halve the
image with a BOX filter while its short side is at least twice the target, resize the short side
to the target with BICUBIC, then cut the central square.

Images become 8-bit RGB first (`to_rgb`). 8-bit modes convert as torchvision's ImageFolder loader
does (`convert("RGB")`: grey replicated, palette looked up, CMYK and YCbCr by PIL's formulas,
alpha and palette transparency dropped). Deeper modes, which `convert("RGB")` clips at 255 (a
16-bit grey of 20000 would become white), are scaled instead:

- 16-bit grey (I;16, I;16B, I;16L, I;16N) keeps its high byte (v >> 8), as Pillow itself does
  when it opens 16-bit RGB PNGs and TIFFs as 8-bit RGB, so a grey and an RGB 16-bit file agree.
- I (32-bit integers) is how Pillow opens 16-bit PGMs (scaled to 0..65535): taken as 16-bit,
  clipped to [0, 65535], then >> 8.
- F (32-bit float) is taken in [0, 1], torchvision's convention for float images: round(v * 255)
  clipped to [0, 255]; NaN or infinite values reject the image.

Images more elongated than MAX_ASPECT are rejected before they are decoded: ADM resizes the short
side up to the target before cropping, so an 8000x1 image at 256 px would be resampled to
2,048,000x256 (gigabytes) for a 256x256 crop of a single row of pixels.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_ASPECT = 50  # long side / short side; bounds the resized image at MAX_ASPECT x size^2 pixels
_SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N")


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


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB (the rules are in the module docstring)."""
    if image.mode in _SIXTEEN_BIT_GREY:
        grey = (np.asarray(image) >> 8).astype(np.uint8)
    elif image.mode == "I":
        grey = (np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8)
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise RejectedImage("float image (mode F) with NaN or infinite values")
        grey = np.clip(np.round(values * 255), 0, 255).astype(np.uint8)
    else:
        return image.convert("RGB")
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))


def _check_shape(size: tuple[int, int]) -> None:
    short, long = sorted(size)
    if short == 0:
        raise RejectedImage(f"empty image of size {size}")
    if long > MAX_ASPECT * short:
        raise RejectedImage(f"aspect ratio {long / short:.0f}:1 of a {size[0]}x{size[1]} image is above "
                            f"{MAX_ASPECT}:1 (its centre crop would be a thin strip upscaled)")


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes -> preprocessed (3, size, size) uint8 array.

    Raises RejectedImage for anything PIL cannot fully decode (not an image, truncated, corrupt,
    a decompression bomb, zero-sized) and for images more elongated than MAX_ASPECT.
    """
    try:
        with warnings.catch_warnings():
            # PIL warns about e.g. odd EXIF or palette transparency; such images decode fine.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                _check_shape(image.size)  # from the header: a rejected image is never decoded
                image.load()  # decodes everything now, so truncation is caught here
                rgb = to_rgb(image)
    except Image.DecompressionBombError as e:
        raise RejectedImage(f"too large: {e}") from None
    except UnidentifiedImageError:
        raise RejectedImage("not an image (PIL cannot identify the format)") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for unreadable data
        raise RejectedImage(f"cannot decode: {e}") from None
    return np.ascontiguousarray(center_crop_resize(rgb, size).transpose(2, 0, 1))
