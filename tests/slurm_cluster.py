"""A throwaway Slurm cluster on localhost for the launcher tests: munged, slurmctld and two slurmd
daemons (two simulated nodes, n1 and n2, each with 2 CPUs, 2 "GPU" slots (Slurm GRES backed by
empty files) and a private /dev/shm, which mosaicml-streaming keys its per-node state on) from
Debian's packages. All state, config, sockets and logs live in one temporary
directory; daemons are stopped by PID.

    with SlurmCluster.start(root) as cluster:
        job = cluster.sbatch(["launchers/slurm_dig_xl.sh", ...], cwd=repo, env=env)
        info = cluster.wait_until_done(job, timeout=600)
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue", "unshare")
NODES = ("n1", "n2")
INSTALL_HINT = "apt-get install slurmctld slurmd slurm-client munge (as .ci/run does)"


def unavailable_reason() -> str | None:
    """Why no cluster can run here, or None."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        return f"Slurm/munge not installed (missing {', '.join(missing)}): {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "the localhost Slurm cluster runs its daemons as root (SlurmdUser=root, a /dev/shm per node)"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _slurm_conf(root: Path, ports: list[int]) -> str:
    host = socket.gethostname().split(".")[0]
    nodes = "\n".join(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs=2 RealMemory=4000 "
                      "Gres=gpu:2" for name, port in zip(NODES, ports[1:]))
    return f"""ClusterName=ci
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job may start again after 10 s instead of ~2.5 min
AuthInfo=socket={root}/munge/sock,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
MinJobAge=3600
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = {"SLURM_CONF": str(root / "slurm.conf")}  # what points every Slurm command at this cluster
        self.env = {**os.environ, **self.conf}
        self._pid_files = [root / "munge" / "munged.pid", root / "slurmctld.pid",
                           *(root / f"slurmd-{n}.pid" for n in NODES)]

    @classmethod
    def start(cls, root: Path) -> SlurmCluster:
        cluster = cls(root)
        try:
            cluster._start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self) -> None:
        root = self.root
        for sub in ("state", "log", "munge", *(f"spool-{n}" for n in NODES)):
            (root / sub).mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)                   # munged wants a world-searchable path to its socket
        key = root / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (root / "slurm.conf").write_text(_slurm_conf(root, _free_ports(1 + len(NODES))))
        for name in NODES:  # stand-in device files: slurmd logs that they are no devices, and counts them
            for i in range(2):
                (root / f"{name}-gpu{i}").touch()
        (root / "gres.conf").write_text("".join(f"NodeName={n} Name=gpu File={root}/{n}-gpu[0-1]\n" for n in NODES))
        self._run(["munged", f"--key-file={key}", f"--socket={root}/munge/sock",
                   f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/log/munged.log",
                   f"--seed-file={root}/munge/seed"])
        self._run(["slurmctld"])
        for name in NODES:  # each "node" gets its own /dev/shm, as separate machines have
            self._run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f"mount -t tmpfs -o size=2g tmpfs /dev/shm && exec slurmd -N {name}"])
        self._wait_for(lambda: self.scontrol("show", "nodes").count("State=IDLE") == len(NODES), 30,
                       "both slurmd daemons to register as idle")

    def _run(self, command: list[str]) -> str:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}\n{self.logs()}")
        return result.stdout

    def _wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {what}\n{self.logs()}")
            time.sleep(0.2)

    def scontrol(self, *args: str) -> str:
        result = subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True, timeout=60)
        return result.stdout

    def sbatch(self, args: list[str], cwd: Path, env: dict[str, str]) -> str:
        """Submit; returns the job id."""
        result = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env={**env, **self.conf},
                                capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {result.stderr}")
        return result.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as key -> value (JobState, ExitCode, Restarts, StdOut, ...)."""
        fields = {}
        for token in self.scontrol("show", "job", "-o", job_id).split():
            key, _, value = token.partition("=")
            fields.setdefault(key, value)
        return fields

    def signal_tasks(self, job_id: str, signum: signal.Signals) -> None:
        """What Slurm does before preempting a job or at `--signal` time: signal every task."""
        self._run(["scancel", f"--signal={signum.name.removeprefix('SIG')}", job_id])

    def wait_until_done(self, job_id: str, timeout: float) -> dict[str, str]:
        """Wait for COMPLETED/FAILED/CANCELLED/TIMEOUT (a requeued job passes through PENDING)."""
        final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
        self._wait_for(lambda: self.job(job_id).get("JobState") in final, timeout, f"job {job_id} to end")
        return self.job(job_id)

    def logs(self) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {log.name} (last lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job (its processes belong to slurmstepd, which outlives slurmd), then stop
        every daemon by the PID it wrote, slurmd first, and wait until each is gone."""
        if (self.root / "slurmctld.pid").is_file():
            subprocess.run(["scancel", "--user", str(os.getuid())], env=self.env, capture_output=True, timeout=60)
            try:
                self._wait_for(lambda: not self._run(["squeue", "-h"]).strip(), 60, "cancelled jobs to end")
            except (TimeoutError, RuntimeError) as e:
                print(f"slurm_cluster: {e}")
        for pid_file in reversed(self._pid_files):
            try:
                pid = int(pid_file.read_text().strip())
            except (FileNotFoundError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
