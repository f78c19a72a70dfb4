"""Engine pieces that need no process group: batch arithmetic, the DeepSpeed config, EMA math,
signal handling, the console line, library notices."""
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from dig_scale.config import ConfigError, config_from_dict
from dig_scale.train.deepspeed_config import build_deepspeed_config, deep_merge, gradient_accumulation_steps
from dig_scale.train.ema import EMA
from dig_scale.train.metrics import drop_rows_after, format_line
from dig_scale.train.preemption import DUPLICATE_WINDOW_S
from dig_scale.train.run_dir import config_differences
from dig_scale.train.trainer import step_seed


def config(**train):
    return config_from_dict({"data": {"path": "/d"}, "train": train})


def test_global_batch_is_micro_times_accumulation_times_world():
    assert gradient_accumulation_steps(config(global_batch_size=256, micro_batch_size=32), 4) == 2
    with pytest.raises(ConfigError, match="train.global_batch_size=256 is not a multiple of "
                                          "train.micro_batch_size=32 x world size 3"):
        gradient_accumulation_steps(config(global_batch_size=256, micro_batch_size=32), 3)


def test_deepspeed_section_is_merged_over_the_generated_config():
    cfg = config_from_dict({"data": {"path": "/d"}, "optim": {"warmup_steps": 10, "grad_clip": 1.0},
                            "deepspeed": {"zero_optimization": {"reduce_bucket_size": 1e7},
                                          "bf16": {"enabled": False}}})
    ds = build_deepspeed_config(cfg, world_size=8, hosts=2)
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                                       "reduce_scatter": True, "reduce_bucket_size": 1e7, "allgather_bucket_size": 5e8,
                                       "compute_grad_norm": False}
    assert ds["bf16"] == {"enabled": False, "check_grad_overflow": False}
    # Clipping happens in the trainer's fused update, never twice.
    assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 0.0
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 10
    assert build_deepspeed_config(cfg, world_size=1, hosts=1)["zero_optimization"]["overlap_comm"] is True
    graphed = config_from_dict({"data": {"path": "/d"}, "train": {"compile": True, "cuda_graphs": True}})
    assert build_deepspeed_config(graphed, world_size=1, hosts=1)["zero_optimization"]["overlap_comm"] is False
    assert build_deepspeed_config(graphed, world_size=2, hosts=1)["zero_optimization"]["overlap_comm"] is False
    graphed_16 = config_from_dict({"data": {"path": "/d"}, "train": {
        "compile": True, "cuda_graphs": True, "global_batch_size": 512, "micro_batch_size": 32}})
    assert build_deepspeed_config(graphed_16, world_size=16, hosts=2)["zero_optimization"]["overlap_comm"] is True
    # On one host with one micro-batch per step, no copy of every gradient into a bucket. Several
    # hosts keep it (reduce-scatter's bytes), and so do micro-batches that accumulate (their
    # gradients leave graph memory at once).
    for global_batch, world_size, hosts, contiguous in ((32, 1, 1, False), (64, 2, 1, False), (64, 1, 1, True),
                                                        (256, 8, 2, True)):
        batches = config_from_dict({"data": {"path": "/d"}, "train": {
            "compile": True, "cuda_graphs": True, "global_batch_size": global_batch, "micro_batch_size": 32}})
        zero = build_deepspeed_config(batches, world_size, hosts)["zero_optimization"]
        assert zero["contiguous_gradients"] is contiguous, (world_size, hosts, global_batch)
    refused = config_from_dict({"data": {"path": "/d"},
                                "deepspeed": {"zero_optimization": {"contiguous_gradients": False}},
                                "train": {"compile": True, "cuda_graphs": True, "global_batch_size": 64,
                                          "micro_batch_size": 32}})
    with pytest.raises(ConfigError, match="contiguous_gradients=false: with train.cuda_graphs and 2 micro-batches"):
        build_deepspeed_config(refused, world_size=1, hosts=1)
    assert deep_merge({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize("section, key", [
    ({"gradient_clipping": 1.0}, "deepspeed.gradient_clipping"),
    ({"optimizer": {"type": "Adam"}}, "deepspeed.optimizer"),
    ({"bf16": {"check_grad_overflow": True}}, "deepspeed.bf16.check_grad_overflow"),
])
def test_deepspeed_section_cannot_take_over_what_the_trainer_does(section, key):
    cfg = config_from_dict({"data": {"path": "/d"}, "deepspeed": section})
    with pytest.raises(ConfigError, match=f"{key}: not settable here"):
        build_deepspeed_config(cfg, world_size=1, hosts=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("flat", [False, True])
def test_ema_update_is_the_exponential_average_in_fp32(flat, dtype):
    """Separate weights, or views into one flat buffer as DeepSpeed ZeRO keeps them; bf16 or fp32
    live weights (an fp32 EMA must still be its own copy, never the live weights themselves)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)).to(dtype)
    model[1].bias.requires_grad_(False)
    if flat:
        buffer = torch.cat([p.detach().flatten() for p in model.parameters()])
        offset = 0
        for p in model.parameters():
            p.data = buffer[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    ema.update(applied=torch.tensor(0.0))  # a skipped step leaves the average alone
    for name, p in model.named_parameters():
        expected = 0.9 * start[name] + 0.1 * p.float() if p.requires_grad else start[name]
        assert ema.module.get_parameter(name).dtype == torch.float32
        torch.testing.assert_close(ema.module.get_parameter(name), expected)


def test_step_randomness_depends_only_on_seed_step_and_rank():
    def noise(seed, step, rank, drawn_before=0):
        torch.manual_seed(123)
        torch.randn(drawn_before)  # whatever the process drew before: a resumed run drew nothing
        torch.manual_seed(step_seed(seed, step, rank))
        return torch.randn(4096, dtype=torch.float64)

    assert torch.equal(noise(0, 5, 1), noise(0, 5, 1, drawn_before=777))
    streams = torch.stack([noise(0, 5, 1), noise(0, 6, 1), noise(0, 5, 0), noise(1, 5, 1)])
    correlation = torch.corrcoef(streams) - torch.eye(4, dtype=torch.float64)
    assert correlation.abs().max() < 0.1  # other steps, ranks and seeds draw unrelated noise (|r| ~ 0.016)


def test_second_signal_exits_at_once_unless_it_repeats_the_first():
    program = textwrap.dedent("""
        import sys, time
        from dig_scale.train.preemption import PreemptionHandler
        with PreemptionHandler() as handler:
            print("ready", flush=True)
            while True:
                time.sleep(0.05)
                if handler.received:
                    print("first", flush=True)
                    while True:
                        time.sleep(0.05)
    """)
    process = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    start = time.monotonic()
    process.send_signal(signal.SIGUSR1)
    assert process.stdout.readline().strip() == "first"
    # A launcher forwarding the signal its process also got directly: the same request, twice.
    process.send_signal(signal.SIGUSR1)
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.3)
    assert time.monotonic() - start < DUPLICATE_WINDOW_S, "the duplicate came too late to test the window"
    time.sleep(DUPLICATE_WINDOW_S)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 128 + signal.SIGTERM


def test_config_differences_name_each_changed_key():
    assert config_differences({"model": {"depth": 2, "name": "a"}}, {"model": {"depth": 3, "name": "a"}}) == \
        ["model.depth: 2 -> 3"]


def test_console_line_has_progress_eta_and_throughput():
    line = format_line({"step": 50, "loss": 0.1234, "grad_norm": 0.5, "lr": 1e-4, "images_per_s": 812.0,
                        "tokens_per_s": 207872.0, "mfu": 0.412, "peak_mem_gb": 31.2, "data_wait": 0.02,
                        "skipped_steps": 0}, max_steps=100, eta_seconds=3725)
    assert line.startswith("[##########..........] 50/100")
    for part in ("loss 0.1234", "812.0 img/s", "207.9k tok/s", "MFU 41.2%", "mem 31.2GB", "data 2%", "ETA 1h02m"):
        assert part in line


def test_data_loader_workers_ignore_job_signals_but_not_their_parents_sigterm():
    program = textwrap.dedent("""
        import multiprocessing, signal, subprocess, sys, time
        from dig_scale.train.preemption import ignore_job_signals

        def worker(ready):
            ignore_job_signals(0)
            ready.set()
            while True:
                time.sleep(0.05)

        if __name__ == "__main__":
            ready = multiprocessing.Event()
            child = multiprocessing.Process(target=worker, args=(ready,), daemon=True)
            child.start()
            ready.wait()
            for sig in ("TERM", "USR1", "INT"):  # from another process: a job-wide signal
                subprocess.run(["kill", f"-{sig}", str(child.pid)], check=True)
            child.join(timeout=1)
            print("survived" if child.is_alive() else f"died {child.exitcode}", flush=True)
            child.terminate()  # SIGTERM from the parent: the DataLoader's own shutdown
            child.join(timeout=60)
            print(f"exit {child.exitcode}", flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.stdout.split("\n")[:2] == ["survived", "exit 0"], result.stdout + result.stderr


def test_metrics_rows_past_the_resume_step_are_dropped_and_earlier_rows_kept_byte_for_byte(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"time": 1.5 + s, "step": s, "loss": 0.1 * s}).encode() + b"\n" for s in range(1, 6)]
    path.write_bytes(b"".join(rows) + b'{"time": 9.5, "st')  # the last line torn by a kill
    assert drop_rows_after(path, 3) == [4, 5]
    assert path.read_bytes() == b"".join(rows[:3])
    assert drop_rows_after(path, 3) == [] and path.read_bytes() == b"".join(rows[:3])
    assert drop_rows_after(path, 0) == [1, 2, 3] and path.read_bytes() == b""  # a restart from step 0
    assert drop_rows_after(tmp_path / "absent.jsonl", 3) == []
