"""data_prep/encode.py on an ImageFolder with a tiny random VAE, checked against direct VAE calls."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from data_fixtures import (
    CLASSES,
    POSTERIOR_ATOL,
    RESOLUTION,
    encode_inputs,
    read_raw_samples,
    reference_preprocess,
)

from data_prep.encode import main
from dig_scale.data import read_metadata

ATOL = POSTERIOR_ATOL


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return encode_inputs(tmp_path_factory.mktemp("inputs"))


def encode(inputs, output, *extra: str) -> int:
    return main(["--input", str(inputs["folder"]), "--output", str(output), "--resolution", str(RESOLUTION),
                 "--vae", str(inputs["vae"]), "--part-size", "3", "--batch-size", "2", "--num-workers", "2",
                 "--no-progress", *extra])


@pytest.fixture(scope="module")
def encoded(inputs, tmp_path_factory):
    output = tmp_path_factory.mktemp("encoded") / "ds"
    assert encode(inputs, output) == 0
    return output


def match_to_references(samples, inputs) -> list[int]:
    """For each stored sample, the reference image whose direct-VAE latents it equals."""
    matched = []
    for sample in samples:
        mean = torch.from_numpy(sample["mean"].astype(np.float32))
        distance = (inputs["mean"] - mean).flatten(1).abs().amax(dim=1)
        best = int(distance.argmin())
        assert distance[best] < ATOL, f"{sample['key']}: matches no reference image (closest {distance[best]:.2e})"
        matched.append(best)
    return matched


def test_every_good_image_is_stored_exactly_once_with_its_label_and_latents(encoded, inputs):
    samples = read_raw_samples(encoded)
    matched = match_to_references(samples, inputs)
    assert sorted(matched) == list(range(len(inputs["good"])))
    for sample, ref in zip(samples, matched):
        assert int(sample["label"]) == inputs["good"][ref].label
        assert sample["key"] == inputs["good"][ref].relpath
        torch.testing.assert_close(torch.from_numpy(sample["mean"].astype(np.float32)), inputs["mean"][ref],
                                   atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(torch.from_numpy(sample["std"].astype(np.float32)), inputs["std"][ref],
                                   atol=ATOL, rtol=ATOL)


def test_flipped_latents_are_the_vae_of_the_mirrored_image(encoded, inputs):
    for sample in read_raw_samples(encoded):
        ref = [g.relpath for g in inputs["good"]].index(sample["key"])
        flipped = torch.from_numpy(sample["mean"][1].astype(np.float32))
        torch.testing.assert_close(flipped, inputs["mean"][ref, 1], atol=ATOL, rtol=ATOL)
        assert not torch.allclose(flipped, inputs["mean"][ref, 0], atol=10 * ATOL)  # a flip, not a copy


def test_rejects_are_listed_with_path_and_reason(encoded, inputs):
    rejects = read_metadata(str(encoded)).rejects
    by_path = {r["path"]: r["reason"] for r in rejects}
    assert len(rejects) == len(inputs["bad"])
    for bad in inputs["bad"]:
        reason = by_path[str(inputs["folder"] / bad.relpath)]
        assert bad.why in reason


def test_metadata_describes_the_dataset(encoded, inputs):
    meta = read_metadata(str(encoded))
    vae_config = json.loads((inputs["vae"] / "config.json").read_text())
    assert meta.kind == "latent"
    assert meta.sample_shape == (4, RESOLUTION // 2, RESOLUTION // 2)
    assert meta.resolution == RESOLUTION
    assert meta.num_samples == len(inputs["good"])
    assert meta.num_classes == len(CLASSES) and meta.class_names == CLASSES
    assert meta.class_counts == np.bincount([g.label for g in inputs["good"]], minlength=len(CLASSES)).tolist()
    assert meta.vae == str(inputs["vae"]) and meta.scaling_factor == vae_config["scaling_factor"]
    assert meta.source["type"] == "imagefolder" and meta.preprocessing["method"] == "adm_center_crop"
    assert meta.tool["program"] == "data_prep/encode.py" and meta.tool["dig_scale"]
    # Per-channel statistics of z = mean + std * eps over images, both flips and positions.
    mean, std = inputs["mean"].double(), inputs["std"].double()
    expected_mean = mean.mean(dim=(0, 1, 3, 4))
    expected_std = ((mean**2 + std**2).mean(dim=(0, 1, 3, 4)) - expected_mean**2).sqrt()
    np.testing.assert_allclose(meta.latent_mean, expected_mean.numpy(), atol=1e-3)
    np.testing.assert_allclose(meta.latent_std, expected_std.numpy(), atol=1e-3)


def test_parts_are_merged_into_one_index(encoded, inputs):
    index = json.loads((encoded / "index.json").read_text())
    parts = sorted(p.name for p in encoded.glob("part-*"))
    assert len(parts) == -(-(len(inputs["good"]) + len(inputs["bad"])) // 3)
    listed = {shard["zip_data"]["basename"].split("/")[0] for shard in index["shards"]}
    assert listed <= set(parts)
    assert sum(shard["samples"] for shard in index["shards"]) == len(inputs["good"])


def test_rerun_of_a_finished_output_changes_nothing(encoded, inputs):
    before = read_raw_samples(encoded)
    assert encode(inputs, encoded) == 0
    after = read_raw_samples(encoded)
    assert [s["key"] for s in after] == [s["key"] for s in before]


def test_staged_output_like_a_remote_gives_the_same_samples(encoded, inputs, tmp_path):
    staged = tmp_path / "remote"
    assert encode(inputs, staged, "--staging-dir", str(tmp_path / "staging")) == 0
    assert [s["key"] for s in read_raw_samples(staged)] == [s["key"] for s in read_raw_samples(encoded)]
    assert not any((tmp_path / "staging").glob("part-*/*.zstd"))  # uploaded, then removed locally


def test_limit_takes_inputs_from_every_class(inputs, tmp_path):
    assert encode(inputs, tmp_path / "ds", "--limit", "4") == 0
    meta = read_metadata(str(tmp_path / "ds"))
    assert meta.num_samples + len(meta.rejects) == 4
    assert len(set(s["key"].split("/")[0] for s in read_raw_samples(tmp_path / "ds"))) > 1


def test_dry_run_writes_nothing(inputs, tmp_path, capsys):
    assert encode(inputs, tmp_path / "ds", "--dry-run") == 0
    assert not (tmp_path / "ds").exists()
    out = capsys.readouterr().out  # the plan: 11 files (3 classes) in parts of 3 (the encode helper's --part-size)
    assert "(11 files, 3 classes)" in out and "4 parts, 0 finished, 4 to encode by rank 0/1" in out


def test_pixel_output_is_the_preprocessed_image(inputs, tmp_path):
    assert encode(inputs, tmp_path / "px", "--vae", "none") == 0
    meta = read_metadata(str(tmp_path / "px"))
    assert meta.kind == "pixel" and meta.sample_shape == (3, RESOLUTION, RESOLUTION) and meta.scaling_factor == 1.0
    for sample in read_raw_samples(tmp_path / "px"):
        expected = np.asarray(reference_preprocess(inputs["folder"] / sample["key"])).transpose(2, 0, 1)
        np.testing.assert_array_equal(sample["pixels"], expected)


def test_other_settings_on_an_existing_output_are_refused(encoded, inputs, capsys):
    assert encode(inputs, encoded, "--vae", "none") == 2
    error = capsys.readouterr().err
    assert str(encoded) in error and "other settings" in error and "kind" in error


@pytest.mark.parametrize("change, expected", [
    (["--input", "/no/such/dir"], "/no/such/dir: no such directory"),
    (["--vae", "/no/such/vae"], "--vae /no/such/vae"),
])
def test_bad_input_fails_with_a_message_naming_it(inputs, tmp_path, capsys, change, expected):
    args = {"--input": str(inputs["folder"]), "--vae": str(inputs["vae"])}
    args[change[0]] = change[1]
    code = main(["--input", args["--input"], "--output", str(tmp_path / "ds"), "--vae", args["--vae"],
                 "--resolution", str(RESOLUTION), "--no-progress"])
    assert code == 2
    error = capsys.readouterr().err
    assert expected in error and "expected" in error


def test_folder_without_images_fails_clearly(inputs, tmp_path, capsys):
    (tmp_path / "empty" / "some_class").mkdir(parents=True)
    code = main(["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "ds"), "--vae", str(inputs["vae"]),
                 "--no-progress"])
    assert code == 2
    assert "no images" in capsys.readouterr().err


def test_vae_directory_without_config_fails_clearly(inputs, tmp_path, capsys):
    (tmp_path / "not_a_vae").mkdir()
    assert encode(inputs, tmp_path / "ds", "--vae", str(tmp_path / "not_a_vae")) == 2
    error = capsys.readouterr().err
    assert "config.json" in error and "AutoencoderKL" in error
