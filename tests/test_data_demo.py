"""The built-in demo: scikit-learn's digits, upsampled, in pixel space; written once, read by the trainer."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import read_raw_samples
from PIL import Image
from sklearn.datasets import load_digits

from dig_scale.data import DEMO_DEFAULT_RESOLUTION, METADATA_FILENAME, LatentDataset, ensure_demo_dataset, read_metadata

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "digits"
    return {"path": path, "returned": ensure_demo_dataset(str(path))}


def test_demo_holds_every_digit_upsampled(demo):
    assert demo["returned"] == str(demo["path"])
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


@pytest.mark.parametrize("command", [[str(ROOT / "data_prep" / "encode.py")], ["-m", "data_prep.encode"]],
                         ids=["script", "module"])
def test_encode_runs_as_the_readme_script_and_as_an_installed_module(tmp_path, command):
    """From an unrelated directory: data_prep is importable because it is installed, not because
    the repository happens to be the working directory."""
    result = subprocess.run([sys.executable, *command, "--demo", "--output", str(tmp_path / "d"), "--resolution", "8"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = read_metadata(str(tmp_path / "d"))
    assert (meta.num_samples, meta.resolution, meta.source["type"]) == (1797, 8, "sklearn-digits")
    assert len(read_raw_samples(tmp_path / "d")) == 1797
