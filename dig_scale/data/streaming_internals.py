"""Every use of mosaicml-streaming internals, in one place, for the pinned version (0.13.0): its
public API has no equivalent for any of them. Check them when the pin moves.

- `StreamingDataset._resume_incr_epoch`: where each worker learns the epoch it iterates, fresh or
  restored for a mid-epoch resume. LatentDataset overrides it to draw per-(sample, epoch) noise.
- The per-node shard states in shared memory (`_shard_states`, `_ShardState`, the cache file
  lock): a shard whose preparation failed goes back to "not on disk", so the next process that
  needs it fails with its own clear error instead of waiting forever; reads wait for a verified
  shard; the data-wait timeout names the shards being prepared. The failure event of the
  download threads (`_event`): set, it ends the epoch quietly; we set it instead of raising in
  those threads, because a thread that raises never counts itself as exited and the end of the
  epoch then waits for it forever (the hang of a truncated shard).
- `World.detect()`: whether this process is its node's local leader (streaming's own definition).
- The names of streaming's shared-memory segments (`<prefix:06>_<name>` in /dev/shm, the names in
  `streaming.base.constant`) and of its file locks in the temp dir: to release what killed jobs
  left behind without touching a live job's.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from filelock import FileLock
from streaming import StreamingDataset
from streaming.base.constant import BARRIER_FILELOCK, CACHE_FILELOCK, SHM_TO_CLEAN
from streaming.base.dataset import _ShardState
from streaming.base.world import World

SHM_DIR = Path("/dev/shm")
_SEGMENT = re.compile(r"(\d{6})_(" + "|".join(map(re.escape, SHM_TO_CLEAN)) + ")")
_FILE_LOCK = re.compile(rf"(\d{{6}})_({BARRIER_FILELOCK}|{CACHE_FILELOCK})")


def require_epoch_hook() -> None:
    """Fail at import, not mid-training, when streaming no longer has the method we override."""
    if not hasattr(StreamingDataset, "_resume_incr_epoch"):
        raise ImportError("dig_scale.data needs mosaicml-streaming's StreamingDataset._resume_incr_epoch (present "
                          "in 0.13.0, the pinned version); this streaming version lacks it")


def is_local_leader() -> bool:
    """Whether this process is the one of its node that sets up shared state (local rank 0)."""
    return World.detect().is_local_leader


def mark_unprepared(dataset: StreamingDataset, shard_id: int) -> None:
    """After a failed preparation: the shard is no longer 'being prepared' but 'not on disk'."""
    with FileLock(dataset._cache_filelock_path):
        if dataset._shard_states[shard_id] == _ShardState.PREPARING:
            dataset._shard_states[shard_id] = _ShardState.REMOTE


def is_prepared(dataset: StreamingDataset, shard_id: int) -> bool:
    """Whether the shard is on disk and verified for this job (see verified_stream.py)."""
    return dataset._shard_states[shard_id] == _ShardState.LOCAL


def background_failed(dataset: StreamingDataset) -> bool:
    """Whether a download or ready thread of this process failed (streaming then ends the epoch)."""
    return hasattr(dataset, "_event") and dataset._event.is_set()


def end_epoch_early(dataset: StreamingDataset) -> None:
    """Make this process's download and ready threads and its yield loop stop at their next check,
    each through its normal exit (the way streaming stops them after an exception)."""
    dataset._event.set()


def shards_being_prepared(dataset: StreamingDataset) -> list[int]:
    """The shards some process on this node is downloading, decompressing or verifying now."""
    return [i for i in range(dataset.num_shards) if dataset._shard_states[i] == _ShardState.PREPARING]


def release_dead_jobs_shared_memory() -> list[str]:
    """Unlink the shared-memory segments and file locks that streaming left for jobs that are gone.

    A SIGKILLed job leaves its segments in /dev/shm; for a remote dataset streaming then refuses
    the cache directory to the next job on the node ("Reused local directory"), and the segments
    hold memory. Its file locks in the temp dir (left by every job) make streaming skip their
    prefix for good. A prefix is released only when no live process maps any of its segments
    (read from /proc/*/maps, for this user's processes: the segments are this user's), and every
    such prefix is, wherever it sits among live ones. Returns the prefixes released. Releases
    nothing where /proc cannot tell (not Linux).

    Conservative where streaming blurs ownership: a job starting up attaches to the segments of
    the prefixes registered before it (it checks them for a clashing directory) and keeps them
    mapped for its life, so a dead job's segments that a live job attached to that way are
    released once that job ends too. A requeued job calls this before it creates its dataset.
    """
    files: dict[str, list[Path]] = {}
    for directory, pattern in ((SHM_DIR, _SEGMENT), (Path(tempfile.gettempdir()), _FILE_LOCK)):
        for path in _own_files(directory):
            match = pattern.fullmatch(path.name)
            if match:
                files.setdefault(match.group(1), []).append(path)
    if not files:
        return []
    in_use = _mapped_shared_memory()
    if in_use is None:
        return []
    released = []
    for prefix, paths in sorted(files.items()):
        if any(path.parent == SHM_DIR and path.name in in_use for path in paths):
            continue
        for path in paths:
            path.unlink(missing_ok=True)
        released.append(prefix)
    return released


def _owned(path: Path) -> bool:
    try:
        return path.lstat().st_uid == os.getuid()
    except FileNotFoundError:
        return False


def _own_files(directory: Path) -> list[Path]:
    try:
        return [path for path in directory.iterdir() if _owned(path)]
    except OSError:
        return []


def _mapped_shared_memory() -> set[str] | None:
    """Names of the /dev/shm files that this user's processes map; None without /proc."""
    proc = Path("/proc")
    if not (proc / "self" / "maps").is_file():
        return None
    names: set[str] = set()
    for process in proc.iterdir():
        if not process.name.isdigit() or not _owned(process):
            continue
        try:
            maps = (process / "maps").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        except PermissionError:
            # Not dumpable (a container's init, a setuid program): the kernel hides its maps even
            # from its owner. A Python process running streaming is dumpable, so it is not one.
            continue
        for line in maps.splitlines():
            where = line.find(f"{SHM_DIR}/")
            if where >= 0:
                names.add(line[where + len(str(SHM_DIR)) + 1:].removesuffix(" (deleted)"))
    return names
