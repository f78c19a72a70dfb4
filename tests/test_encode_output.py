"""data_prep/encode.py never clobbers an output that is not its own: another dataset, another
encode or unrelated files are refused and left byte-identical; --overwrite replaces only dataset
files and says which; the same encode still resumes. Pixel-space encodes of a tiny ImageFolder."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from data_fixtures import make_image_folder, read_raw_samples

from data_prep.encode import main
from data_prep.errors import EncodeError
from data_prep.output_claim import claim_output
from data_prep.output_store import OutputStore
from data_prep.plan import PLAN_FILENAME
from dig_scale.data import METADATA_FILENAME, read_metadata
from dig_scale.data.demo import ensure_demo_dataset


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    good, _ = make_image_folder(root)
    return {"root": root, "good": good}


def encode(folder, output: Path, *extra: str) -> int:
    return main(["--input", str(folder["root"]), "--output", str(output), "--vae", "none", "--resolution", "8",
                 "--part-size", "4", "--batch-size", "2", "--num-workers", "0", "--no-progress", *extra])


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_is_the_encode(output: Path, folder) -> None:
    meta = read_metadata(str(output))
    assert meta.source["type"] == "imagefolder" and meta.num_samples == len(folder["good"])
    assert sorted(s["key"] for s in read_raw_samples(output)) == sorted(g.relpath for g in folder["good"])


@pytest.fixture
def other_dataset(tmp_path):
    """A finished dataset written by another tool (the digits demo: 1797 samples) plus a user's file."""
    path = tmp_path / "digits"
    ensure_demo_dataset(str(path), 8)
    (path / "NOTES.txt").write_text("where these came from\n")
    return path


def test_another_dataset_is_refused_naming_it_and_left_byte_identical(folder, other_dataset, capsys):
    before = snapshot(other_dataset)
    assert encode(folder, other_dataset) == 2
    error = capsys.readouterr().err
    assert f"--output {other_dataset}: holds a finished dataset of 1797 samples (sklearn-digits, 8 px) " \
           "from another encode" in error
    assert "index.json" in error and METADATA_FILENAME in error and "--overwrite" in error
    assert snapshot(other_dataset) == before


def test_a_stray_file_is_refused_and_nothing_written(folder, tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "draft.txt").write_text("mine")
    assert encode(folder, tmp_path / "ds") == 2
    assert "holds 1 entry and no encode (entries: draft.txt)" in capsys.readouterr().err
    assert snapshot(tmp_path / "ds") == {"draft.txt": b"mine"}


def test_an_unreadable_plan_is_refused_not_replaced(folder, tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / PLAN_FILENAME).write_text("{not json")
    assert encode(folder, tmp_path / "ds") == 2
    assert f"holds an unreadable {PLAN_FILENAME}" in capsys.readouterr().err
    assert snapshot(tmp_path / "ds") == {PLAN_FILENAME: b"{not json"}


def test_another_encode_is_refused_with_the_setting_that_differs(folder, tmp_path, capsys):
    assert encode(folder, tmp_path / "ds") == 0
    before = snapshot(tmp_path / "ds")
    assert encode(folder, tmp_path / "ds", "--resolution", "16") == 2
    error = capsys.readouterr().err
    assert "holds a finished dataset of 8 samples (imagefolder, 8 px) with other settings" in error
    assert "resolution: 8 there, 16 now" in error
    assert snapshot(tmp_path / "ds") == before


def test_an_interrupted_run_of_the_same_encode_still_resumes(folder, tmp_path):
    output = tmp_path / "ds"
    assert encode(folder, output) == 0
    kept = (output / "part-000000" / "dig_scale_part.json").stat().st_mtime_ns
    for name in ("index.json", METADATA_FILENAME, "part-000001/dig_scale_part.json"):  # as if killed mid-part 1
        (output / name).unlink()
    assert encode(folder, output) == 0
    assert (output / "part-000000" / "dig_scale_part.json").stat().st_mtime_ns == kept
    assert_is_the_encode(output, folder)


def test_overwrite_replaces_the_dataset_files_and_keeps_the_rest(folder, other_dataset, capsys):
    assert encode(folder, other_dataset, "--overwrite") == 0
    out = capsys.readouterr().out
    assert "removed dig_scale_dataset.json, index.json, shard.00000.mds" in out
    assert "left in place (not dataset files): NOTES.txt" in out
    assert (other_dataset / "NOTES.txt").read_text() == "where these came from\n"
    assert not list(other_dataset.glob("shard.*"))
    assert_is_the_encode(other_dataset, folder)


def test_overwrite_replaces_an_encode_with_other_settings(folder, tmp_path):
    output = tmp_path / "ds"
    assert encode(folder, output, "--resolution", "16", "--part-size", "2") == 0
    assert encode(folder, output, "--overwrite") == 0
    assert read_metadata(str(output)).resolution == 8
    assert sorted(p.name for p in output.glob("part-*")) == ["part-000000", "part-000001", "part-000002"]
    assert_is_the_encode(output, folder)


def test_dry_run_reports_the_refusal_and_writes_nothing(folder, other_dataset, capsys):
    before = snapshot(other_dataset)
    assert encode(folder, other_dataset, "--dry-run") == 0
    assert "holds a finished dataset of 1797 samples" in capsys.readouterr().out
    assert snapshot(other_dataset) == before


def test_other_ranks_wait_for_rank_0_to_clear_before_writing(tmp_path):
    store = OutputStore(str(tmp_path / "ds"))
    (tmp_path / "ds" / "part-000000").mkdir(parents=True)
    (tmp_path / "ds" / "part-000000" / "shard.00000.mds").write_bytes(b"another encode's part")
    plan = {"settings": {"resolution": 8}, "parts": ["abc"]}
    waited = threading.Thread(target=claim_output, args=(store, plan), kwargs={
        "overwrite": True, "rank": 1, "wait_s": 60, "poll_s": 0.01})
    waited.start()
    waited.join(timeout=0.2)
    assert waited.is_alive(), "rank 1 went on before rank 0 had cleared the output"
    claim_output(store, plan, overwrite=True, rank=0)
    waited.join(timeout=60)
    assert not waited.is_alive()
    assert json.loads((tmp_path / "ds" / PLAN_FILENAME).read_text()) == plan
    assert not (tmp_path / "ds" / "part-000000").exists()


def test_a_rank_waiting_for_another_plan_gives_up_naming_it(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "index.json").write_text("{}")
    with pytest.raises(EncodeError, match="rank 0 did not record this encode's plan within 0 s"):
        claim_output(OutputStore(str(tmp_path / "ds")), {"settings": {}, "parts": []}, overwrite=True, rank=1,
                     wait_s=0.05, poll_s=0.01)


def test_object_store_outputs_are_never_deleted_from():
    with pytest.raises(EncodeError, match="deletes nothing in an object store"):
        OutputStore("s3://bucket/dataset").remove(["index.json"])


def test_output_that_is_a_file_or_a_foreign_demo_path_fails_clearly(folder, other_dataset, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert encode(folder, tmp_path / "a_file") == 2
    assert "is a file; expected a directory" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    assert main(["--demo", "--output", str(tmp_path / "mine")]) == 2
    assert "not a dig-scale dataset" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"


def test_two_torchrun_ranks_overwrite_another_dataset(folder, other_dataset):
    encode_py = Path(__file__).resolve().parent.parent / "data_prep" / "encode.py"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(encode_py),
         "--input", str(folder["root"]), "--output", str(other_dataset), "--vae", "none", "--resolution", "8",
         "--part-size", "2", "--num-workers", "0", "--no-progress", "--overwrite"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "removed dig_scale_dataset.json, index.json, shard.00000.mds" in result.stdout  # by rank 0 alone
    assert result.stdout.count("removed ") == 1
    assert_is_the_encode(other_dataset, folder)
