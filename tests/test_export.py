"""Export from a real 2-rank ZeRO-2 checkpoint, reload, and the digits demo's loop closed on the
same short training run: export -> samples -> the classifier's accuracy, far above chance."""
import json
import shutil

import pytest
import torch
from engine_runs import assert_ok, launch, run_dir, write_config

from dig_scale import checkpoint as checkpoints
from dig_scale.demo_loop import close_the_loop
from dig_scale.export import ExportError, export
from dig_scale.models import load_pretrained
from dig_scale.models.pretrained import read_pretrained_config

# The demo's model and data, 1,000 steps of 32 images on 2 ranks: long enough for the labels to
# matter (measured: 46% accuracy at cfg 10 with 25 DDIM steps; 10% is chance).
STEPS = 1000
ACCURACY_THRESHOLD = 0.25


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo_short")
    config = write_config(
        directory, seed=0,
        model={"arch": {"depth": 4, "hidden_size": 96, "num_heads": 3}},
        data={"random_flip": False},
        optim={"lr": 3e-3, "warmup_steps": 50},
        train={"global_batch_size": 32, "micro_batch_size": 16, "max_steps": STEPS, "ema_decay": 0.99,
               "precision": "fp32"},
        checkpoint={"every_steps": STEPS, "keep_last": 1},
        logging={"every_steps": 100})
    assert_ok(launch(config, timeout=1200))
    return run_dir(config)


def test_export_reloads_the_checkpoints_ema_exactly(trained_run, tmp_path):
    folder = export(trained_run, tmp_path / "export", live=True)
    ema = checkpoints.read_ema_state_dict(checkpoints.resolve_checkpoint(trained_run))
    model = load_pretrained(folder)
    assert model.state_dict().keys() == ema.keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ema[name]), name
    config = read_pretrained_config(folder)
    assert config["training"]["step"] == STEPS and config["training"]["world_size"] == 2
    assert config["data"]["kind"] == "pixel" and config["model"]["arguments"]["hidden_size"] == 96
    assert len(config["source"]["manifest_sha256"]) == 64
    live = load_pretrained(folder, weights="live")
    assert not torch.equal(live.pos_embed, model.pos_embed) or any(
        not torch.equal(a, b) for a, b in zip(live.parameters(), model.parameters()))


def copy_checkpoint(run, tmp_path):
    source = checkpoints.resolve_checkpoint(run)
    target = tmp_path / "run" / "checkpoints" / source.name
    shutil.copytree(source, target)
    (target.parent / "latest").write_text(source.name)
    return target


def test_corrupt_and_ema_less_checkpoints_are_refused(trained_run, tmp_path):
    checkpoint = copy_checkpoint(trained_run, tmp_path)
    ema = checkpoint / "ema.safetensors"
    data = bytearray(ema.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ema.write_bytes(bytes(data))
    with pytest.raises(checkpoints.CheckpointError, match="ema.safetensors: content differs"):
        export(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()

    ema.unlink()  # a checkpoint without EMA state, consistently so (its manifest agrees)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    del manifest["files"]["ema.safetensors"]
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(checkpoints.CheckpointError, match="no EMA weights"):
        export(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_and_unreachable_dataset_are_refused(trained_run, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export(trained_run, tmp_path / "taken")
    with pytest.raises(ExportError, match="pass --dataset"):
        export(trained_run, tmp_path / "out", dataset=str(tmp_path / "gone"))
    assert not (tmp_path / "out").exists()


def test_the_demo_loop_labels_samples_far_above_chance(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    metrics = close_the_loop(run, per_class=20, sampler="ddim", steps=25, cfg_scale=10.0)
    print(json.dumps(metrics, indent=1))
    assert metrics["num_samples"] == 200 and metrics["accuracy"] >= ACCURACY_THRESHOLD
    assert (run / "eval" / "grid.png").is_file() and (run / "eval" / "samples.npz").is_file()
