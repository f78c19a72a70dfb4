"""data_prep.preprocess: every PIL mode becomes the RGB a numpy reference conversion gives, and
elongated images are rejected before they are decoded, within a hard memory limit."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import reference_preprocess
from PIL import Image

from data_prep.preprocess import MAX_ASPECT, RejectedImage, decode_image, to_rgb

REPO = Path(__file__).resolve().parent.parent
SIDE = 16  # square images decoded at their own size: the ADM crop is the identity, only the conversion acts
rng = np.random.default_rng(7)


def _bytes(values: np.ndarray, dtype: str) -> bytes:
    return values.astype(dtype).tobytes()


def _palette() -> np.ndarray:
    return rng.integers(0, 256, (256, 3), dtype=np.uint8)


def _grey16(dtype: str) -> tuple[bytes, np.ndarray]:
    values = rng.integers(0, 65536, (SIDE, SIDE))
    values[0, :3] = 0, 20000, 65535  # 20000 was stored as 255 (white) before
    return _bytes(values, dtype), np.repeat((values // 256)[:, :, None], 3, axis=2)


def case(mode: str) -> tuple[Image.Image, np.ndarray]:
    """An image of `mode` with random content, and its RGB conversion computed in numpy."""
    size = (SIDE, SIDE)
    u8 = rng.integers(0, 256, (SIDE, SIDE, 4))
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        data, expected = _grey16({"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}[mode])
        return Image.frombytes(mode, size, data), expected
    if mode == "I":  # 16-bit samples held in 32 bits; outside [0, 65535] saturates
        values = rng.integers(-70000, 140000, (SIDE, SIDE))
        values[0, :2] = 20000, 65535
        expected = np.clip(values, 0, 65535) // 256
        return Image.frombytes("I", size, _bytes(values, "<i4")), np.repeat(expected[:, :, None], 3, axis=2)
    if mode == "F":  # [0, 1] scaled to [0, 255]; outside clips
        values = rng.uniform(-0.2, 1.2, (SIDE, SIDE)).astype(np.float32)
        expected = np.clip(np.floor(values.astype(np.float64) * 255 + 0.5), 0, 255)
        return Image.frombytes("F", size, _bytes(values, "<f4")), np.repeat(expected[:, :, None], 3, axis=2)
    if mode == "1":
        bits = u8[:, :, 0] > 127
        return Image.fromarray(bits), np.repeat(np.where(bits, 255, 0)[:, :, None], 3, axis=2)
    if mode in ("L", "LA"):
        image = Image.frombytes(mode, size, _bytes(u8[:, :, :len(mode)], "u1"))
        return image, np.repeat(u8[:, :, :1], 3, axis=2)
    if mode in ("P", "PA"):
        palette = _palette()
        image = Image.frombytes(mode, size, _bytes(u8[:, :, :len(mode)], "u1"))
        image.putpalette(palette.tobytes())
        return image, palette[u8[:, :, 0]]
    if mode in ("RGB", "RGBA"):
        return Image.frombytes(mode, size, _bytes(u8[:, :, :len(mode)], "u1")), u8[:, :, :3]
    if mode == "CMYK":  # naive CMYK: (255 - C)(255 - K) / 255 per channel
        rgb = np.round((255 - u8[:, :, :3]) * (255 - u8[:, :, 3:]) / 255)
        return Image.frombytes(mode, size, _bytes(u8, "u1")), rgb
    if mode == "YCbCr":  # JPEG's full-range BT.601
        y, cb, cr = (u8[:, :, i].astype(np.float64) for i in range(3))
        rgb = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                        y + 1.772 * (cb - 128)], axis=2)
        return Image.frombytes(mode, size, _bytes(u8[:, :, :3], "u1")), np.clip(np.round(rgb), 0, 255)
    raise AssertionError(mode)


# Each mode through a file format that keeps it (what decode_image sees), or in memory where none does.
FILE_FORMAT = {"1": "PNG", "L": "PNG", "LA": "PNG", "P": "PNG", "RGB": "PNG", "RGBA": "PNG", "I;16": "PNG",
               "I;16B": "TIFF", "I": "TIFF", "F": "TIFF", "PA": "TIFF", "CMYK": "TIFF", "YCbCr": "TIFF"}
IN_MEMORY_ONLY = ["I;16L", "I;16N"]
# PIL converts YCbCr with fixed-point tables: within one level of the exact formula.
TOLERANCE = {"YCbCr": 1}


@pytest.mark.parametrize("mode", list(FILE_FORMAT))
def test_every_file_mode_decodes_to_the_reference_rgb(mode):
    image, expected = case(mode)
    encoded = io.BytesIO()
    image.save(encoded, format=FILE_FORMAT[mode])
    with Image.open(io.BytesIO(encoded.getvalue())) as reopened:
        assert reopened.mode == mode, f"{FILE_FORMAT[mode]} did not keep mode {mode}"
    decoded = decode_image(encoded.getvalue(), SIDE).transpose(1, 2, 0)
    np.testing.assert_allclose(decoded, expected, atol=TOLERANCE.get(mode, 0), rtol=0)


@pytest.mark.parametrize("mode", IN_MEMORY_ONLY)
def test_in_memory_16_bit_modes_convert_like_the_reference(mode):
    image, expected = case(mode)
    np.testing.assert_array_equal(np.asarray(to_rgb(image)), expected)


def test_palette_transparency_is_dropped_like_alpha():
    image, expected = case("P")
    encoded = io.BytesIO()
    image.save(encoded, format="PNG", transparency=int(np.asarray(image)[0, 0]))
    np.testing.assert_array_equal(decode_image(encoded.getvalue(), SIDE).transpose(1, 2, 0), expected)


def test_float_image_with_nan_is_rejected():
    values = np.full((SIDE, SIDE), 0.5, np.float32)
    values[3, 4] = np.nan
    encoded = io.BytesIO()
    Image.frombytes("F", (SIDE, SIDE), values.tobytes()).save(encoded, format="TIFF")
    with pytest.raises(RejectedImage, match="NaN"):
        decode_image(encoded.getvalue(), SIDE)


def _png(width: int, height: int) -> bytes:
    encoded = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(encoded, format="PNG")
    return encoded.getvalue()


@pytest.mark.parametrize("size", [(8000, 1), (1, 8000), (100000, 2), (MAX_ASPECT * 3 + 1, 3)])
def test_elongated_images_are_rejected_with_the_reason(size):
    with pytest.raises(RejectedImage, match=rf"aspect ratio \d+:1 of a {size[0]}x{size[1]} image is above"):
        decode_image(_png(*size), 256)


@pytest.mark.parametrize("size", [(MAX_ASPECT * 2, 2), (3, MAX_ASPECT * 3), (37, 53), (64, 200), (5, 5), (40, 9)])
def test_accepted_shapes_match_the_adm_reference_pixel_for_pixel(size, tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(_png(*size))
    for resolution in (8, 16):
        expected = np.asarray(reference_preprocess(path, resolution)).transpose(2, 0, 1)
        np.testing.assert_array_equal(decode_image(path.read_bytes(), resolution), expected)


# Decodes thin and extreme-but-accepted images at 256 px under an address-space limit of 256 MiB
# above what the interpreter already maps: resizing the 8000x1 image whole needs ~1.5 GB.
_BOUNDED = """
import io, json, resource, sys
import numpy as np
from PIL import Image
from data_prep.preprocess import MAX_ASPECT, RejectedImage, decode_image

def png(width, height):
    encoded = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(encoded, format="PNG")
    return encoded.getvalue()

inputs = {f"{w}x{h}": png(w, h) for w, h in [(8000, 1), (1, 8000), (100000, 2), (MAX_ASPECT * 20, 20)]}
mapped = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (mapped + (256 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
outcome = {}
for name, data in inputs.items():
    try:
        outcome[name] = list(decode_image(data, 256).shape)
    except RejectedImage as e:
        outcome[name] = str(e)
print(json.dumps(outcome))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and limits RLIMIT_AS (Linux)")
def test_thin_images_are_handled_within_a_hard_memory_limit():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _BOUNDED], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    for name in ("8000x1", "1x8000", "100000x2"):
        assert "aspect ratio" in outcome[name], outcome
    assert outcome[f"{MAX_ASPECT * 20}x20"] == [3, 256, 256]  # at the limit: 12800x256 resized, then cropped


def test_an_encode_lists_a_thin_image_among_its_rejects(tmp_path):
    from data_prep.encode import main
    from dig_scale.data import read_metadata

    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "a" / "thin.png").write_bytes(_png(8000, 1))
    (tmp_path / "images" / "a" / "square.png").write_bytes(_png(20, 20))
    assert main(["--input", str(tmp_path / "images"), "--output", str(tmp_path / "ds"), "--vae", "none",
                 "--resolution", "8", "--num-workers", "0", "--no-progress"]) == 0
    meta = read_metadata(str(tmp_path / "ds"))
    assert meta.num_samples == 1
    assert [(r["path"], r["reason"].split(" of ")[0]) for r in meta.rejects] == [
        (str(tmp_path / "images" / "a" / "thin.png"), "aspect ratio 8000:1")]
