"""Streaming's shared memory of jobs that are gone is released, all of it, and nothing of a live
job (issue 10 item 14): the old cleanup stopped at the first unused prefix and, with per-job temp
dirs, unlinked a live job's segments. Real streaming jobs: one SIGKILLed with its whole process
group (as a scheduler kills a job), one alive."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pixel_datasets import write_pixel_dataset

from dig_scale.data.streaming_internals import SHM_DIR, release_dead_jobs_shared_memory

JOB = textwrap.dedent("""
    import sys, time
    from dig_scale.data import LatentDataset
    dataset = LatentDataset(sys.argv[1], batch_size=2)
    print(f"{dataset._shm_prefix_int:06}", flush=True)  # streaming's prefix of this job's segments
    time.sleep(600)
""")

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir() or not Path("/proc/self/maps").is_file(),
                                reason="needs Linux /dev/shm and /proc")


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_pixel_dataset(tmp_path / "ds", 8, (3, 4, 4), num_classes=1)


def start_job(path: Path) -> tuple[subprocess.Popen, str]:
    """A process holding a streaming dataset, in its own process group; returns it and its prefix."""
    job = subprocess.Popen([sys.executable, "-c", JOB, str(path)], stdout=subprocess.PIPE, text=True,
                           start_new_session=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    prefix = job.stdout.readline().strip()
    assert prefix.isdigit(), "the job did not start"
    return job, prefix


def kill_job(job: subprocess.Popen) -> None:
    """SIGKILL the whole group (streaming's resource tracker too): nothing gets to clean up."""
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    job.stdout.close()


def segments(prefix: str) -> list[str]:
    return sorted(p.name for p in SHM_DIR.glob(f"{prefix}_*"))


def test_a_killed_jobs_segments_are_released_and_a_live_jobs_kept(dataset, tmp_path):
    live, live_prefix = start_job(dataset)
    copy = tmp_path / "copy"
    copy.symlink_to(dataset)  # a second job needs its own local directory
    killed, killed_prefix = start_job(copy)  # it maps the live job's segments too (streaming's registry walk)
    try:
        kill_job(killed)
        assert segments(killed_prefix), "a SIGKILLed job leaves its segments behind"
        live_segments = segments(live_prefix)
        released = release_dead_jobs_shared_memory()
        assert killed_prefix in released and live_prefix not in released
        assert segments(killed_prefix) == []
        assert segments(live_prefix) == live_segments
    finally:
        kill_job(live)
    assert live_prefix in release_dead_jobs_shared_memory()  # gone now: released too
    assert segments(live_prefix) == []
