"""data_prep/encode.py on WebDataset tars holding the same inputs as the ImageFolder test."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import (
    POSTERIOR_ATOL,
    RESOLUTION,
    encode_inputs,
    make_tars,
    read_raw_samples,
    tar_key,
)

from data_prep.encode import main
from dig_scale.data import read_metadata

ATOL = POSTERIOR_ATOL


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return encode_inputs(tmp_path_factory.mktemp("wds"))


def encode(inputs, pattern: str, output, *extra: str) -> int:
    return main(["--input", pattern, "--output", str(output), "--resolution", str(RESOLUTION),
                 "--vae", str(inputs["vae"]), "--batch-size", "2", "--num-workers", "2", "--no-progress", *extra])


def test_brace_pattern_of_tars_gives_every_good_image_once_with_vae_latents(inputs, tmp_path):
    make_tars(inputs["folder"], inputs["good"], inputs["bad"], tmp_path / "shards", shards=3)
    assert encode(inputs, str(tmp_path / "shards" / "data-{0000..0002}.tar"), tmp_path / "ds") == 0
    samples = read_raw_samples(tmp_path / "ds")
    by_key = {tar_key(g.relpath): i for i, g in enumerate(inputs["good"])}
    assert sorted(s["key"].split("/")[1] for s in samples) == sorted(by_key)
    for sample in samples:
        ref = by_key[sample["key"].split("/")[1]]
        assert int(sample["label"]) == inputs["good"][ref].label
        for name in ("mean", "std"):
            torch.testing.assert_close(torch.from_numpy(sample[name].astype(np.float32)), inputs[name][ref],
                                       atol=ATOL, rtol=ATOL)
    meta = read_metadata(str(tmp_path / "ds"))
    assert meta.source["type"] == "webdataset" and meta.num_classes == 3 and meta.class_names is None
    rejected = {r["path"].split("#")[1] for r in meta.rejects}
    assert rejected == {tar_key(b.relpath) for b in inputs["bad"]}


def test_configurable_keys_and_limit(inputs, tmp_path):
    make_tars(inputs["folder"], inputs["good"], [], tmp_path / "shards", shards=2, image_ext="img", label_ext="target")
    pattern = str(tmp_path / "shards" / "data-0000.tar") + "::" + str(tmp_path / "shards" / "data-0001.tar")
    assert encode(inputs, pattern, tmp_path / "ds", "--image-key", "img", "--label-key", "target",
                  "--limit", "5", "--num-classes", "4") == 0
    meta = read_metadata(str(tmp_path / "ds"))
    assert meta.num_samples == 5 and meta.num_classes == 4 and not meta.rejects


def test_wrong_keys_reject_every_sample_and_fail_clearly(inputs, tmp_path, capsys):
    make_tars(inputs["folder"], inputs["good"], [], tmp_path / "shards", shards=1)
    assert encode(inputs, str(tmp_path / "shards" / "data-0000.tar"), tmp_path / "ds", "--label-key", "nope") == 2
    assert "none of its inputs could be used" in capsys.readouterr().err


def test_missing_shards_are_named(inputs, tmp_path, capsys):
    assert encode(inputs, str(tmp_path / "missing-{0..3}.tar"), tmp_path / "ds") == 2
    error = capsys.readouterr().err
    assert "missing-0.tar" in error and "4 of 4 tar shards do not exist" in error


def test_truncated_local_shard_keeps_what_precedes_the_damage(inputs, tmp_path):
    paths = make_tars(inputs["folder"], inputs["good"], [], tmp_path / "shards", shards=2)
    whole = paths[1].read_bytes()
    paths[1].write_bytes(whole[: len(whole) // 2])
    assert encode(inputs, str(tmp_path / "shards" / "data-{0000..0001}.tar"), tmp_path / "ds") == 0
    keys = {s["key"] for s in read_raw_samples(tmp_path / "ds")}
    first_shard = {f"data-0000.tar/{tar_key(g.relpath)}" for g in inputs["good"][0::2]}
    assert first_shard <= keys and len(keys) < len(inputs["good"])
    [reject] = read_metadata(str(tmp_path / "ds")).rejects
    assert reject["path"] == str(paths[1]) and "unreadable" in reject["reason"]
