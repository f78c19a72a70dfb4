"""The training engine end to end: real DeepSpeed ZeRO-2, real mosaicml-streaming, 2 CPU processes
over gloo, launched with torchrun exactly as on a cluster (plus test-only fault injection)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import torch
from engine_runs import (
    HARNESS,
    ROOT,
    TINY,
    assert_ok,
    assert_refused,
    final_weights,
    launch,
    losses,
    recorded_indices,
    run_dir,
    write_config,
)

from dig_scale.checkpoint import read_ema_state_dict
from dig_scale.train.preemption import REQUEUE_EXIT_CODE


def test_loss_goes_down_on_the_demo_data(tmp_path):
    config = write_config(tmp_path, train={"max_steps": 40}, optim={"lr": 3e-3},
                          checkpoint={"every_steps": 40})
    assert_ok(launch(config))
    logged = losses(config)
    first, last = sum(logged[s] for s in range(1, 9)) / 8, sum(logged[s] for s in range(33, 41)) / 8
    assert last < 0.8 * first, (first, last)


def test_exact_resume_after_sigkill_including_a_kill_mid_save(tmp_path, uninterrupted):
    reference, _ = uninterrupted
    config = write_config(tmp_path)
    # Killed right after the step-3 checkpoint, then killed again while saving step 6.
    result = launch(config, harness=("--kill-after-save", "3"))
    assert result.returncode != 0
    checkpoints = run_dir(config) / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step-0000003"
    result = launch(config, harness=("--kill-in-save", "6"))
    assert result.returncode != 0
    assert (checkpoints / "step-0000006").is_dir()                 # DeepSpeed wrote its part ...
    assert (checkpoints / "latest").read_text() == "step-0000003"  # ... but latest never moved
    logged = (run_dir(config) / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    assert [json.loads(line)["step"] for line in logged] == [1, 2, 3, 4, 5, 6]
    assert_ok(launch(config))                                      # resumes from step 3 again
    assert (checkpoints / "latest").read_text() == "step-0000006"
    # One curve: the replayed steps 4-6 are logged once, the rows up to the checkpoint are untouched.
    relogged = (run_dir(config) / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    assert [json.loads(line)["step"] for line in relogged] == [1, 2, 3, 4, 5, 6]
    assert relogged[:3] == logged[:3] and relogged[3:] != logged[3:]

    assert losses(config) == losses(reference)  # every step, bit for bit
    model, ema = final_weights(config, 6)
    ref_model, ref_ema = final_weights(reference, 6)
    for name in ref_model:
        assert torch.equal(model[name], ref_model[name]), name
    for name in ref_ema:
        assert torch.equal(ema[name], ref_ema[name]), name


def test_resume_on_one_rank_from_a_two_rank_checkpoint(tmp_path, uninterrupted):
    reference, record = uninterrupted
    shutil.copytree(run_dir(reference), run_dir(write_config(tmp_path)))
    config = write_config(tmp_path)
    checkpoints = run_dir(config) / "checkpoints"
    shutil.rmtree(checkpoints / "step-0000006")
    saved = read_ema_state_dict(checkpoints / "step-0000003")

    # Step 0 of the resumed world: state as restored (universal checkpoint conversion).
    dump = tmp_path / "restored.pt"
    assert_ok(launch(config, "train.max_steps=3", nproc=1, harness=("--dump-state", str(dump))))
    restored = torch.load(dump, weights_only=True)
    assert restored["step"] == 3
    assert all(torch.equal(restored["ema"][k], v) for k, v in saved.items())
    universal = checkpoints / "step-0000003-universal" / "zero"
    for name, value in restored["fp32"].items():
        assert torch.equal(value, torch.load(universal / name / "fp32.pt", weights_only=True)["param"]), name
        assert torch.equal(restored["exp_avg"][name],
                           torch.load(universal / name / "exp_avg.pt", weights_only=True)["param"]), name

    # Continue on one rank: the stream goes on with exactly the samples the 2-rank run would have seen.
    resumed_record = tmp_path / "record"
    assert_ok(launch(config, nproc=1, harness=("--record", str(resumed_record))))
    two_ranks, one_rank = recorded_indices(record), recorded_indices(resumed_record)
    assert sorted(one_rank) == [4, 5, 6]
    seen = [i for s in (1, 2, 3) for i in two_ranks[s]] + [i for s in (4, 5, 6) for i in one_rank[s]]
    assert len(seen) == len(set(seen)) == 6 * 8  # nothing repeated, nothing skipped
    assert sorted(seen) == sorted(i for s in range(1, 7) for i in two_ranks[s])


def test_sigusr1_checkpoints_at_the_next_step_and_asks_for_requeue_and_a_second_job_is_refused(tmp_path):
    config = write_config(tmp_path, train={"max_steps": 100_000}, checkpoint={"every_steps": 100_000},
                          logging={"every_steps": 1, "wandb": "offline"})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, str(HARNESS), "--", str(config)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir(config) / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert process.poll() is None and time.time() < deadline, process.stdout.read()
        time.sleep(0.2)
    # One job per run directory: the same command again is refused while this one runs.
    second = launch(config, nproc=1)
    assert second.returncode == 2
    assert_refused(second, f"is in use by another job: pid {process.pid} on ")
    process.send_signal(signal.SIGUSR1)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == REQUEUE_EXIT_CODE, output
    last_step = json.loads(metrics.read_text().splitlines()[-1])["step"]
    checkpoints = run_dir(config) / "checkpoints"
    assert (checkpoints / "latest").read_text() == f"step-{last_step:07d}"
    # wandb (offline) wrote its run, with the logged metrics, under the run directory (for `wandb sync`)
    records = list((run_dir(config) / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(records) == 1
    assert b"train/loss" in records[0].read_bytes() and b"train/grad_norm" in records[0].read_bytes()


def test_non_finite_step_is_skipped_and_counted(tmp_path):
    config = write_config(tmp_path, train={"max_steps": 4}, checkpoint={"every_steps": 4})
    record = tmp_path / "record"
    assert_ok(launch(config, nproc=1, harness=("--nan-at-step", "2", "--record", str(record))))
    report = json.loads((record / "nan.json").read_text())
    assert report == {"applied": False, "unchanged": True}
    lines = [json.loads(line) for line in (run_dir(config) / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped_steps"] for m in lines] == [0, 1, 1, 1]


def test_activation_checkpointing_does_not_change_the_losses(tmp_path):
    plain = write_config(tmp_path / "plain", train={"max_steps": 3}, checkpoint={"every_steps": 3})
    ckpt = write_config(tmp_path / "ckpt", train={"max_steps": 3}, checkpoint={"every_steps": 3},
                        model={**TINY["model"], "activation_checkpointing": "all"})
    assert_ok(launch(plain, nproc=1))
    assert_ok(launch(ckpt, nproc=1))
    assert losses(plain) == losses(ckpt)


def test_relaunch_with_a_different_model_is_refused_even_with_the_config_record_lost(tmp_path, uninterrupted):
    reference, _ = uninterrupted
    config = write_config(tmp_path)
    shutil.copytree(run_dir(reference), run_dir(config))
    result = launch(config, "model.arch.depth=3", nproc=1)
    assert result.returncode == 2
    assert_refused(result, "model.arch.depth: 2 -> 3", "config.yaml")
    (run_dir(config) / "config.yaml").unlink()  # lost: the checkpoint's config still guards the run
    result = launch(config, "model.arch.depth=3", nproc=1)
    assert result.returncode == 2
    assert_refused(result, "model.arch.depth: 2 -> 3", "per its checkpoint")
    assert not (run_dir(config) / "config.yaml").exists()  # never rewritten from the changed config
