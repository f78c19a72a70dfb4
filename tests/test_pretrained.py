"""Exported folders: load_pretrained rebuilds the model from the folder alone; bad folders are named."""
import json

import pytest
import torch
from sampling_fixtures import one_thread, tiny_model, write_tiny_export  # noqa: F401 (autouse fixture)

from dig_scale.models import load_pretrained
from dig_scale.models.pretrained import CONFIG_FILE, INFERENCE_ARGUMENTS, PretrainedError, read_pretrained_config
from dig_scale.models.registry import resolved_arguments


def test_load_pretrained_rebuilds_the_model_exactly(tmp_path):
    model = tiny_model()
    folder = write_tiny_export(tmp_path / "export", model)
    loaded = load_pretrained(folder)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3, 900]), torch.tensor([1, 2])
    assert torch.equal(loaded(x, t, y), model(x, t, y))
    assert load_pretrained(folder, dtype=torch.bfloat16, gla_backend="torch").pos_embed.dtype == torch.bfloat16


def test_the_config_lists_every_constructor_argument(tmp_path):
    config = read_pretrained_config(write_tiny_export(tmp_path / "export"))
    arguments = config["model"]["arguments"]
    assert set(arguments) == set(resolved_arguments("DiG-S/2"))
    assert arguments["gla_backend"] is None  # how it runs is chosen when loading, not recorded from training
    assert all(arguments[k] == v for k, v in INFERENCE_ARGUMENTS.items() if k in arguments)
    assert config["weights"]["ema"]["dtype"] == "float32" and len(config["weights"]["ema"]["sha256"]) == 64


def test_an_existing_folder_is_never_overwritten(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        write_tiny_export(folder)
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging leftovers


def test_damaged_folders_are_refused_with_the_reason(tmp_path):
    folder = write_tiny_export(tmp_path / "export")
    with pytest.raises(PretrainedError, match="no config.json"):
        load_pretrained(tmp_path)
    with pytest.raises(PretrainedError, match="no 'live' weights"):
        load_pretrained(folder, weights="live")
    with pytest.raises(TypeError, match="not run-time arguments"):
        load_pretrained(folder, depth=3)

    weights = folder / "ema.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PretrainedError, match="does not match the sha256"):
        load_pretrained(folder)

    config = json.loads((folder / CONFIG_FILE).read_text())
    config["model"]["arguments"]["depht"] = config["model"]["arguments"].pop("depth")
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match=r"unknown \['depht'\], missing \['depth'\]"):
        load_pretrained(folder)
    del config["data"]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match="missing data"):
        read_pretrained_config(folder)


def test_weights_that_do_not_fit_the_arguments_are_refused(tmp_path):
    folder = write_tiny_export(tmp_path / "export", tiny_model(hidden_size=64), hidden_size=32)
    with pytest.raises(PretrainedError, match="does not fit DiG-S/2"):
        load_pretrained(folder)
