"""The training reader treats a dataset as untrusted input, each fault reproduced on purpose: shard
names that leave the dataset are refused before anything is read, and damaged shards (truncated,
flipped bytes, noise written over the pixels, a stale cache) are caught by their hashes and named,
with one worker or several, instead of training on garbage, hanging or ending the epoch early."""
from __future__ import annotations

import faulthandler
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pixel_datasets import write_pixel_dataset
from streaming import StreamingDataLoader

from dig_scale.data import LatentDataset
from dig_scale.data.integrity import DataError
from dig_scale.train.data_loading import forever

N, SHAPE = 64, (3, 8, 8)


def pixels(i: int) -> np.ndarray:
    return np.full(SHAPE, i, np.uint8)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A pixel dataset of 64 samples (sample i is all i) in 4 zstd shards, never modified."""
    return write_pixel_dataset(tmp_path_factory.mktemp("pristine") / "ds", N, SHAPE,
                               size_limit=16 * int(np.prod(SHAPE)))


@pytest.fixture
def dataset(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "ds"))


@pytest.fixture(autouse=True)
def no_hang():
    """A hang here would be the bug under test: dump every stack and exit instead of waiting forever."""
    faulthandler.dump_traceback_later(240, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def zip_shards(path: Path) -> list[Path]:
    return sorted(path.glob("shard.*.mds.zstd"))


def read_all(path: Path, num_workers: int = 0, cache_dir: Path | None = None) -> dict[int, torch.Tensor]:
    dataset = LatentDataset(str(path), None if cache_dir is None else str(cache_dir), batch_size=4, shuffle=False,
                            random_flip=False)
    loader = StreamingDataLoader(dataset, batch_size=4, num_workers=num_workers)
    return {i: x for batch in loader for i, x in zip(batch["index"].tolist(), batch["x"])}


def assert_intact(samples: dict[int, torch.Tensor]) -> None:
    assert sorted(samples) == list(range(N))
    for i, x in samples.items():
        assert torch.equal(x, torch.from_numpy(pixels(i)).float() / 127.5 - 1), i


@pytest.mark.parametrize("name", ["../outside/shard.00000.mds", "../x", "/tmp/shard.00000.mds", "a/../../shard.mds",
                                  "part-0//shard.mds", "..", "shard\\..\\x.mds", "", None])
def test_shard_names_leaving_the_dataset_are_refused_before_anything_is_read(dataset, tmp_path, name):
    index = json.loads((dataset / "index.json").read_text())
    index["shards"][1]["zip_data"]["basename"] = name
    (dataset / "index.json").write_text(json.dumps(index))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for cache in (None, tmp_path / "cache" / "deep"):
        with pytest.raises(DataError, match=re.escape(f"{dataset / 'index.json'}: shard 1's zip_data names {name!r}; "
                                                      "expected a path of plain names inside the dataset")):
            LatentDataset(str(dataset), None if cache is None else str(cache), batch_size=4)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_truncated_zstd_shard_is_named_not_a_hang(dataset, num_workers):
    shard = zip_shards(dataset)[2]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{shard}: cannot prepare this shard for reading"):
        read_all(dataset, num_workers)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_flipped_bytes_are_caught_by_the_hash_not_trained_on(dataset, num_workers):
    shard = zip_shards(dataset)[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{shard.with_suffix('')}|{shard}"):
        read_all(dataset, num_workers)


def test_noise_over_the_pixels_of_a_decompressed_shard_is_caught(dataset):
    assert_intact(read_all(dataset))  # decompresses every shard next to its zstd file, as streaming does
    raw = dataset / "shard.00003.mds"
    data = bytearray(raw.read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes()
    data[-700:-100] = noise  # same size, same header: only the hash can tell
    raw.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{raw}: damaged shard \(xxh64 [0-9a-f]+, the index records [0-9a-f]+\)"):
        read_all(dataset)
    shards = json.loads((dataset / "index.json").read_text())["shards"]
    in_that_shard = sum(shard["samples"] for shard in shards[:3])
    with pytest.raises(DataError, match=rf"{raw}: damaged shard"):  # random access too
        LatentDataset(str(dataset), batch_size=4)[in_that_shard]


def test_a_stale_or_damaged_cache_is_fetched_again(dataset, tmp_path):
    cache = tmp_path / "cache"
    assert_intact(read_all(dataset, cache_dir=cache))
    cached = cache / "shard.00000.mds"
    cached.write_bytes(b"\0" * cached.stat().st_size)
    assert_intact(read_all(dataset, cache_dir=cache))
    assert (dataset / "shard.00000.mds.zstd").is_file()  # the source is untouched


def test_a_loader_that_waits_too_long_says_what_for(dataset):
    """Another process of the node stalled while preparing shard 2 (simulated by setting its state in
    streaming's shared memory): the worker that needs it waits, and the data-wait timeout names it."""
    from streaming.base.dataset import _ShardState

    reader = LatentDataset(str(dataset), batch_size=4, shuffle=False, random_flip=False)
    reader._shard_states[2] = _ShardState.PREPARING
    loader = StreamingDataLoader(reader, batch_size=4, num_workers=1, timeout=2)
    with pytest.raises(DataError, match=r"no micro-batch from the data loader for 0.0333333 minutes .*; waiting for "
                                        rf"samples of {dataset}; shards being downloaded or decompressed on this node: "
                                        rf"{dataset / 'shard.00002.mds'}"):
        for _ in forever(loader):
            pass


def test_training_on_a_damaged_shard_stops_naming_it(pristine, tmp_path):
    """The trainer end to end (loader workers, one rank): flipped bytes in a shard used to train on
    garbage; now the run stops with the shard's name and no traceback through our code."""
    from engine_runs import assert_refused, launch, run_dir, write_config

    dataset = Path(shutil.copytree(pristine, tmp_path / "ds"))
    shard = zip_shards(dataset)[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    config = write_config(tmp_path, data={"path": str(dataset), "num_workers": 2, "shuffle": False},
                          train={"max_steps": 40})
    result = launch(config, nproc=1, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert_refused(result, f"error: {shard}: ")  # zstd's own check or the hash, whichever sees it first
    metrics = run_dir(config) / "metrics.jsonl"
    assert not metrics.is_file() or '"step": 40' not in metrics.read_text()


def test_shards_in_part_directories_as_merge_writes_them_are_read(dataset):
    """data_prep/merge.py names shards part-NNNNN/shard.*: a '/' between plain names is fine."""
    index = json.loads((dataset / "index.json").read_text())
    (dataset / "part-00000").mkdir()
    for shard in index["shards"]:
        for info in (shard["raw_data"], shard["zip_data"]):  # only the zstd files are on disk
            if (dataset / info["basename"]).is_file():
                (dataset / info["basename"]).replace(dataset / "part-00000" / info["basename"])
            info["basename"] = f"part-00000/{info['basename']}"
    (dataset / "index.json").write_text(json.dumps(index))
    assert_intact(read_all(dataset))
