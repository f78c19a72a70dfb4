"""Robustness of data_prep/encode.py at the process level: SIGKILL mid-run then rerun, and two
ranks under torchrun writing parts that end up in one index."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_many_images, make_tiny_vae, read_raw_samples

from data_prep.encode import main
from dig_scale.data import METADATA_FILENAME

REPO = Path(__file__).resolve().parent.parent
ENCODE = str(REPO / "data_prep" / "encode.py")
NUM_IMAGES, PART_SIZE = 240, 8


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    return {"images": make_many_images(root / "images", NUM_IMAGES), "folder": root / "images",
            "vae": make_tiny_vae(root / "vae")}


def encode_args(many, output: Path) -> list[str]:
    return ["--input", str(many["folder"]), "--output", str(output), "--resolution", "32", "--vae", str(many["vae"]),
            "--part-size", str(PART_SIZE), "--batch-size", "4", "--num-workers", "1", "--no-progress"]


def assert_exactly_the_inputs(samples, many) -> None:
    stored = sorted((s["key"], int(s["label"])) for s in samples)
    assert stored == sorted((img.relpath, img.label) for img in many["images"])


def test_killed_run_resumes_to_exactly_the_full_dataset(many, tmp_path):
    output = tmp_path / "ds"
    log = open(tmp_path / "first_run.log", "w")
    first = subprocess.Popen([sys.executable, ENCODE, *encode_args(many, output)], stdout=log, stderr=log,
                             start_new_session=True)  # its own process group: the kill takes its workers too
    deadline = time.monotonic() + 180
    while not list(output.glob("part-*/dig_scale_part.json")):
        assert first.poll() is None, f"ended before it could be killed: {(tmp_path / 'first_run.log').read_text()}"
        assert time.monotonic() < deadline, "first run never finished a part"
        time.sleep(0.005)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished = {p: p.stat().st_mtime_ns for p in output.glob("part-*/dig_scale_part.json")}
    assert not (output / METADATA_FILENAME).exists(), "killed too late: the run had finished"
    assert 0 < len(finished) < NUM_IMAGES // PART_SIZE

    assert main(encode_args(many, output)) == 0

    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "finished parts must be kept, not redone"
    resumed = read_raw_samples(output)
    assert_exactly_the_inputs(resumed, many)
    assert main(encode_args(many, tmp_path / "uninterrupted")) == 0
    for got, expected in zip(resumed, read_raw_samples(tmp_path / "uninterrupted")):
        assert got["key"] == expected["key"]
        np.testing.assert_allclose(got["mean"], expected["mean"], rtol=1e-3, atol=1e-3)


def test_two_torchrun_ranks_merge_into_one_index(many, tmp_path):
    output = tmp_path / "ds"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             ENCODE, *encode_args(many, output)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        assert f"rank {rank}: " in result.stdout and f"rank {rank}: 0 images" not in result.stdout
    assert (output / METADATA_FILENAME).exists()
    index = json.loads((output / "index.json").read_text())
    parts = {int(shard["zip_data"]["basename"].split("/")[0].split("-")[1]) for shard in index["shards"]}
    assert parts == set(range(NUM_IMAGES // PART_SIZE))  # rank r wrote parts r, r + 2, ...: all in one index
    assert_exactly_the_inputs(read_raw_samples(output), many)
