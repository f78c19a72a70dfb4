"""The built-in demo: scikit-learn's digits, upsampled, in pixel space; written once, read by the trainer."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from data_fixtures import read_raw_samples
from PIL import Image
from sklearn.datasets import load_digits

from data_prep.encode import main
from dig_scale.data import DEMO_DEFAULT_RESOLUTION, METADATA_FILENAME, LatentDataset, ensure_demo_dataset, read_metadata


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "digits"
    start = time.perf_counter()
    returned = ensure_demo_dataset(str(path))
    return {"path": path, "returned": returned, "seconds": time.perf_counter() - start}


def test_demo_encodes_on_cpu_well_under_a_minute(demo):
    assert demo["returned"] == str(demo["path"])
    assert demo["seconds"] < 60, f"demo took {demo['seconds']:.1f} s"


def test_demo_holds_every_digit_upsampled(demo):
    digits = load_digits()
    samples = read_raw_samples(demo["path"])
    assert len(samples) == len(digits.target) == 1797
    assert [int(s["label"]) for s in samples] == digits.target.tolist()
    r = DEMO_DEFAULT_RESOLUTION
    for i in (0, 1, 500, 1796):
        grey = Image.fromarray((digits.images[i] * 255 / 16).round().astype(np.uint8))
        expected = np.asarray(grey.resize((r, r), Image.Resampling.BICUBIC).convert("RGB")).transpose(2, 0, 1)
        np.testing.assert_array_equal(samples[i]["pixels"], expected)
    meta = read_metadata(str(demo["path"]))
    assert meta.kind == "pixel" and meta.sample_shape == (3, r, r) and meta.num_classes == 10
    assert meta.class_counts == np.bincount(digits.target).tolist()
    x = np.stack([s["pixels"] for s in samples]).astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(meta.latent_mean, x.mean(axis=(0, 2, 3)), atol=1e-9)
    np.testing.assert_allclose(meta.latent_std, x.std(axis=(0, 2, 3)), atol=1e-9)


def test_reader_gives_the_image_or_its_mirror_in_minus_one_to_one(demo):
    raw = read_raw_samples(demo["path"])
    dataset = LatentDataset(str(demo["path"]), batch_size=8, shuffle=False)
    flips = []
    for i in range(32):
        sample = dataset[i]
        image = torch.from_numpy(raw[i]["pixels"].astype(np.float32) / 127.5 - 1)
        flips.append(not torch.equal(sample["x"], image))
        assert torch.equal(sample["x"], image.flip(-1) if flips[-1] else image)
        assert int(sample["y"]) == int(raw[i]["label"])
    assert any(flips) and not all(flips)


def test_existing_demo_is_reused_and_unfinished_one_rewritten(demo, tmp_path):
    stamp = (demo["path"] / METADATA_FILENAME).stat().st_mtime_ns
    assert ensure_demo_dataset(str(demo["path"])) == str(demo["path"])
    assert (demo["path"] / METADATA_FILENAME).stat().st_mtime_ns == stamp
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "index.json").write_text("{}")
    ensure_demo_dataset(str(unfinished), resolution=8)
    assert read_metadata(str(unfinished)).resolution == 8
    with pytest.raises(ValueError, match="another dataset"):
        ensure_demo_dataset(str(unfinished), resolution=16)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match="not a dig-scale dataset"):
        ensure_demo_dataset(str(tmp_path / "foreign"))


def test_encode_demo_command(tmp_path, capsys):
    assert main(["--demo", "--output", str(tmp_path / "d"), "--resolution", "8"]) == 0
    assert str(tmp_path / "d") in capsys.readouterr().out
    assert read_metadata(str(tmp_path / "d")).num_samples == 1797
