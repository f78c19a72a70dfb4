"""The data a config names is checked when the trainer starts, before the model is built: a
missing or non-MDS data.path and a micro-batch the dataset cannot fill (it used to hang forever)
are refused naming the key, exit 2."""
from __future__ import annotations

import shutil

import pytest
from engine_runs import TINY, assert_refused, launch, write_config
from pixel_datasets import write_pixel_dataset

from dig_scale.config import ConfigError, config_from_dict
from dig_scale.data.integrity import DataError
from dig_scale.launch_env import ProcessPlace
from dig_scale.train.data_loading import open_dataset

N = 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 pixel samples of TINY's shape (3 x 8 x 8)."""
    return write_pixel_dataset(tmp_path_factory.mktemp("data") / "ds", N)


def config(path, micro_batch_size: int = 2):
    return config_from_dict({**TINY, "data": {**TINY["data"], "path": str(path)},
                             "train": {**TINY["train"], "micro_batch_size": micro_batch_size}})


def place(world_size: int) -> ProcessPlace:
    return ProcessPlace(0, world_size, 0, world_size, "torchrun")


def test_a_dataset_that_fits_opens(dataset):
    files = open_dataset(config(dataset, micro_batch_size=6), place(2))
    assert files.path == str(dataset) and files.metadata.num_samples == N


def test_a_missing_data_path_is_named(tmp_path):
    with pytest.raises(ConfigError, match=rf"data.path: {tmp_path / 'nowhere'}: no dig_scale_dataset.json; expected "
                                          "a finished dataset written by data_prep/encode.py"):
        open_dataset(config(tmp_path / "nowhere"), place(1))


def test_a_folder_that_is_not_mds_is_named(dataset, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "cat.png").write_bytes(b"\x89PNG")
    with pytest.raises(ConfigError, match=rf"data.path: {images}: no dig_scale_dataset.json; expected a finished"):
        open_dataset(config(images), place(1))
    no_index = tmp_path / "no_index"
    shutil.copytree(dataset, no_index)
    (no_index / "index.json").unlink()
    with pytest.raises(ConfigError, match=r"has dig_scale_dataset.json but no index.json; not an MDS dataset"):
        open_dataset(config(no_index), place(1))
    (no_index / "index.json").write_text("{}")
    with pytest.raises(DataError, match=r"index.json: not an MDS index"):
        open_dataset(config(no_index), place(1))


@pytest.mark.parametrize("world_size, micro_batch_size", [(1, 13), (2, 7), (4, 4)])
def test_a_micro_batch_larger_than_a_ranks_share_is_refused(dataset, world_size, micro_batch_size):
    share = -(-N // world_size)
    with pytest.raises(ConfigError, match=rf"train.micro_batch_size={micro_batch_size} is larger than the {N} samples "
                                          rf"of .* give each of {world_size} rank\(s\) per epoch \({share}\)"):
        open_dataset(config(dataset, micro_batch_size), place(world_size))


def test_the_trainer_refuses_a_missing_dataset_at_start(tmp_path):
    cfg = write_config(tmp_path, data={"path": str(tmp_path / "nowhere")})
    result = launch(cfg, nproc=1, timeout=300)
    assert result.returncode == 2
    assert_refused(result, "config error: data.path: ")
    assert not (tmp_path / "runs").exists()  # refused before the run directory was made


def test_a_loader_with_no_micro_batch_per_epoch_raises_instead_of_spinning(dataset):
    """What open_dataset refuses, had it got through: the epoch is empty, and forever() says so."""
    from streaming import StreamingDataLoader

    from dig_scale.data import LatentDataset
    from dig_scale.train.data_loading import forever

    loader = StreamingDataLoader(LatentDataset(str(dataset), batch_size=16), batch_size=16, drop_last=True)
    with pytest.raises(DataError, match=rf"an epoch of {dataset} gave this rank no micro-batch"):
        next(forever(loader))


@pytest.mark.parametrize("override, key", [("model.arch.depth=-1", "model.arch.depth"),
                                           ("optim.lr=inf", "optim.lr"), ("optim.betas=[0.9, 1.5]", "optim.betas[1]"),
                                           ("train.hang_dump_minutes=0", "train.hang_dump_minutes")])
def test_the_trainer_exits_2_naming_the_key_before_starting(tmp_path, capsys, override, key):
    from dig_scale.train.__main__ import main

    assert main([str(write_config(tmp_path)), override]) == 2
    assert capsys.readouterr().err.startswith(f"config error: {key}")
    assert not (tmp_path / "runs").exists()
