"""python -m dig_scale.sample end to end: the ADM .npz read back, the same images from 1 and 2
ranks (torchrun, gloo), resumption that keeps finished parts, grids, refusals."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sampling_fixtures import one_thread, write_tiny_export  # noqa: F401 (autouse fixture)

from dig_scale import sample
from dig_scale.sampling.npz import SampleNpz, write_sample_npz
from dig_scale.sampling.parts import PartStore

ARGS = ["--num-samples", "10", "--batch-size", "4", "--sampler", "ddim", "--steps", "8", "--classes", "1,2,3"]
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def run_in_process(monkeypatch):
    """sample.main in this process, as a world of one (what it sets in os.environ is undone by
    conftest's environment_restored)."""
    for name in DIST_VARS:
        monkeypatch.delenv(name, raising=False)
    return sample.main


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return write_tiny_export(tmp_path_factory.mktemp("sample") / "export")


def test_npz_layout_and_labels(export, tmp_path, run_in_process):
    out = tmp_path / "samples.npz"
    assert run_in_process([str(export), *ARGS, "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as data:
        assert sorted(data.files) == ["arr_0", "labels"]
        images, labels = data["arr_0"], data["labels"]
    assert images.shape == (10, 8, 8, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    assert images.std() > 10  # decoded samples, not a blank array
    assert not out.with_name("samples.npz.parts").exists()
    streamed = SampleNpz(out)
    assert len(streamed) == 10 and np.array_equal(np.concatenate(list(streamed.batches(3))), images)


def test_two_ranks_write_the_same_images_as_one(export, tmp_path, run_in_process):
    assert run_in_process([str(export), *ARGS, "--out", str(tmp_path / "one.npz")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "dig_scale.sample", str(export), *ARGS, "--out", str(tmp_path / "two.npz")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()


def test_an_interrupted_job_resumes_keeping_finished_parts(export, tmp_path, run_in_process, monkeypatch):
    reference = tmp_path / "reference.npz"
    assert run_in_process([str(export), *ARGS, "--out", str(reference)]) == 0

    out = tmp_path / "resumed.npz"
    original_images, calls = sample.Job.images, []

    def interrupted(self, indices, labels):
        if calls:
            raise KeyboardInterrupt  # as a kill after the first part
        calls.append(indices)
        return original_images(self, indices, labels)

    monkeypatch.setattr(sample.Job, "images", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_in_process([str(export), *ARGS, "--out", str(out)])
    parts = out.with_name("resumed.npz.parts")
    assert sorted(p.name for p in parts.iterdir()) == ["part-000000.npz", "plan.json"]
    assert not out.exists()

    monkeypatch.setattr(sample.Job, "images", original_images)
    written = []
    original_write = PartStore.write
    monkeypatch.setattr(PartStore, "write", lambda self, k, *a: written.append(k) or original_write(self, k, *a))
    assert run_in_process([str(export), *ARGS, "--out", str(out)]) == 0
    assert written == [1, 2]
    assert out.read_bytes() == reference.read_bytes()


def test_a_job_with_other_settings_does_not_mix_into_the_parts(export, tmp_path, run_in_process, capsys):
    out = tmp_path / "samples.npz"
    parts = out.with_name("samples.npz.parts")
    parts.mkdir()
    plan = {"steps": 5}
    (parts / "plan.json").write_text(json.dumps(plan))
    assert run_in_process([str(export), *ARGS, "--out", str(out)]) == 2
    assert "steps: 5 -> 8" in capsys.readouterr().err
    assert json.loads((parts / "plan.json").read_text()) == plan


def test_existing_output_is_not_overwritten(export, tmp_path, run_in_process):
    out = tmp_path / "samples.npz"
    out.write_bytes(b"precious")
    with pytest.raises(SystemExit):
        run_in_process([str(export), *ARGS, "--out", str(out)])
    assert out.read_bytes() == b"precious"


def test_grid_has_a_column_per_class(export, tmp_path, run_in_process):
    out = tmp_path / "grid.png"
    assert run_in_process([str(export), "--grid", "--classes", "0,5,9", "--num-samples", "6", "--sampler", "dpm++",
                           "--steps", "5", "--out", str(out)]) == 0
    assert Image.open(out).size == (3 * 66 + 2, 2 * 66 + 2)  # 8 px enlarged to 64, 2 px borders


def test_bad_requests_are_named(export, tmp_path, run_in_process, capsys):
    assert run_in_process([str(export), "--num-samples", "2", "--classes", "10", "--out", str(tmp_path / "a.npz")]) == 2
    assert "classes 0..9" in capsys.readouterr().err
    assert run_in_process([str(tmp_path), "--num-samples", "2", "--out", str(tmp_path / "b.npz")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_npz_writer_refuses_inconsistent_parts_and_leaves_nothing(tmp_path):
    out = tmp_path / "x.npz"
    parts = [np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 5, 5, 3), np.uint8)]
    with pytest.raises(ValueError, match="part 1: images of shape"):
        write_sample_npz(out, parts, 4, None)
    with pytest.raises(ValueError, match="3 images written, expected 4"):
        write_sample_npz(out, [np.zeros((3, 4, 4, 3), np.uint8)], 4, None)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no 'arr_0'"):
        np.savez(tmp_path / "other.npz", images=np.zeros(3))
        SampleNpz(tmp_path / "other.npz")
