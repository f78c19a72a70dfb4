"""One job per run directory (see ARCHITECTURE.md, "The run directory").

Rank 0 holds an exclusive POSIX lock on `runs/<run>/lock` for the life of the job and writes its
owner there (user, host, pid, start time, Slurm job). The operating system drops the lock when the
process dies however it dies, so a lock file nobody holds is a stale record of a job that is gone:
it is taken over, with a message. POSIX locks (not flock) work across the hosts of an NFS mount
and are not inherited by forked data-loader workers, which may outlive a killed trainer.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import getpass
import json
import os
import socket
from pathlib import Path
from typing import IO


class RunDirectoryInUse(Exception):
    """Another live job holds the run directory."""


def _owner() -> dict[str, str | int]:
    owner: dict[str, str | int] = {"user": getpass.getuser(), "host": socket.gethostname(), "pid": os.getpid(),
                                   "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if "SLURM_JOB_ID" in os.environ:
        owner["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return owner


def _describe(record: str) -> str:
    try:
        owner = json.loads(record)
        text = f"pid {owner['pid']} on {owner['host']} (user {owner['user']}, since {owner['started']}"
        return text + (f", Slurm job {owner['slurm_job']})" if "slurm_job" in owner else ")")
    except (ValueError, KeyError, TypeError):
        return f"unreadable owner record {record[:120]!r}"


class RunLock:
    def __init__(self, path: Path):
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> str | None:
        """Hold the lock until this process exits. Returns a note when a dead job's lock was taken
        over; raises RunDirectoryInUse naming the owner when a live job holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+", encoding="utf-8")  # never truncate before holding the lock
        try:
            fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            file.seek(0)
            record = file.read()
            file.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):  # held by another process
                raise RunDirectoryInUse(f"{self.path.parent} is in use by another job: {_describe(record)}. One "
                                        "job per run directory: wait for it to end, stop it, or use another run_name"
                                        ) from None
            raise RunDirectoryInUse(f"cannot lock {self.path}: {e} (the file system must support POSIX locks, "
                                    "as local disks and NFS do)") from None
        file.seek(0)
        previous = file.read().strip()
        file.seek(0)
        file.truncate()
        file.write(json.dumps(_owner()))
        file.flush()
        os.fsync(file.fileno())
        self._file = file
        return f"took over {self.path} from a job that is gone: {_describe(previous)}" if previous else None

    def release(self) -> None:
        """Clear the owner record (a clean end) and drop the lock."""
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.close()
            self._file = None
