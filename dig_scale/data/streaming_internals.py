"""Every use of mosaicml-streaming internals, in one place, for the pinned version (0.13.0): its
public API has no equivalent for either. Check them when the pin moves.

- `StreamingDataset._resume_incr_epoch`: where each worker learns the epoch it iterates, fresh or
  restored for a mid-epoch resume. LatentDataset overrides it to draw per-(sample, epoch) noise.
- The shared-memory registry of local directories (`streaming.base.shared.prefix`, the names in
  `streaming.base.constant`): to release what a killed job left for one dataset directory, where
  streaming's own `clean_stale_shared_memory()` would unlink the segments of every job on the node.
"""
from __future__ import annotations

from pathlib import Path

from streaming import StreamingDataset
from streaming.base.constant import LOCALS, SHM_TO_CLEAN
from streaming.base.shared.prefix import _get_path, _unpack_locals


def require_epoch_hook() -> None:
    """Fail at import, not mid-training, when streaming no longer has the method we override."""
    if not hasattr(StreamingDataset, "_resume_incr_epoch"):
        raise ImportError("dig_scale.data needs mosaicml-streaming's StreamingDataset._resume_incr_epoch (present "
                          "in 0.13.0, the pinned version); this streaming version lacks it")


def release_stale_segments(local_dir: str) -> int:
    """Unlink mosaicml-streaming shared-memory segments registered for `local_dir`.

    A SIGKILLed job leaves them behind, and for a remote dataset streaming then refuses the cache
    directory to the requeued job on the same node. Only segments naming this run's own local
    directory are touched. Returns how many prefixes were released.
    """
    from multiprocessing import resource_tracker, shared_memory

    target, released = str(Path(local_dir).resolve()), 0
    for prefix in range(1024):
        try:
            shm = shared_memory.SharedMemory(_get_path(prefix, LOCALS))
        except FileNotFoundError:
            break
        resource_tracker.unregister(shm._name, "shared_memory")  # we only peek; do not reap at exit
        locals_, _ = _unpack_locals(bytes(shm.buf))
        shm.close()
        if target not in {str(Path(d).resolve()) for d in locals_}:
            continue
        for name in SHM_TO_CLEAN:
            try:
                stale = shared_memory.SharedMemory(_get_path(prefix, name))
                stale.close()
                stale.unlink()
            except FileNotFoundError:
                pass
        released += 1
    return released
