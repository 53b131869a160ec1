"""A real Slurm cluster on this machine for the tests: munged, slurmctld and two slurmd (nodes n1 and n2).

Debian's packages (slurmctld slurmd slurm-client munge) are all it needs; without them, or without root
(the daemons run as root, munged as the munge user), the tests that use it are skipped with the reason. Every
file lives in one temporary folder (its own munge key and socket, ports picked free, no accounting,
jobcomp/filetxt for finished jobs); the daemons are started detached, their pids kept, and stopped at the end.
Commands find the cluster through SLURM_CONF, which ``SlurmCluster.environment`` holds.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
NODES = ("n1", "n2")
CPUS_PER_NODE = 2
START_TIMEOUT_S = 30.0
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
"""Where the commands are looked for: Debian puts the daemons in /usr/sbin, which a user's PATH may lack."""


def missing_reason() -> str | None:
    """Why a local Slurm cannot run here, or None when it can."""
    missing = [name for name in DAEMONS if shutil.which(name, path=SEARCH_PATH) is None]
    if missing:
        return (
            f"Slurm is not installed ({', '.join(missing)} missing); "
            "apt-get install slurmctld slurmd slurm-client munge"
        )
    if os.geteuid() != 0:
        return "a local Slurm needs root (slurmd runs jobs as their user)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "there is no munge user (install Debian's munge package)"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            sockets.append(probe)
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


@dataclass
class SlurmCluster:
    folder: Path
    environment: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def jobcomp(self) -> Path:
        return self.folder / "jobcomp.txt"

    def command(self, *argv: str) -> str:
        return subprocess.run(argv, env=self.environment, check=True, capture_output=True, text=True).stdout

    def squeue(self, job_id: int) -> str:
        """The job's state as squeue shows it (finished jobs too), "" when it does not list it."""
        done = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"],
            env=self.environment,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()


def _write_config(folder: Path, ports: list[int]) -> Path:
    host = socket.gethostname()
    controller, slurmd, *node_ports = ports
    nodes = "\n".join(
        f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={CPUS_PER_NODE} "
        "RealMemory=4000 State=UNKNOWN"
        for name, port in zip(NODES, node_ports, strict=True)
    )
    config = folder / "slurm.conf"
    config.write_text(
        f"""ClusterName=glmtui-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={controller}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool-%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={folder}/jobcomp.txt
SchedulerParameters=batch_sched_delay=0
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=5
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
""",
        encoding="utf-8",
    )
    return config


def _start_munge(folder: Path) -> None:
    """munged as the munge user with its own key and socket in ``folder``/munge (it detaches itself)."""
    munge = folder / "munge"
    munge.mkdir(mode=0o755)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    user = pwd.getpwnam("munge")
    for path in (munge, key):
        os.chown(path, user.pw_uid, user.pw_gid)
    key.chmod(0o600)
    subprocess.run(
        [
            shutil.which("munged", path=SEARCH_PATH),
            f"--socket={munge}/socket",
            f"--key-file={key}",
            f"--pid-file={munge}/pid",
            f"--log-file={munge}/log",
            f"--seed-file={munge}/seed",
        ],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        check=True,
        capture_output=True,
    )


def _wait_for_idle_nodes(environment: dict[str, str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        done = subprocess.run(["sinfo", "-h", "-o", "%T %D"], env=environment, capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.split() == ["idle", str(len(NODES))]:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the local Slurm's nodes did not come up within {START_TIMEOUT_S:.0f}s")


@contextlib.contextmanager
def local_cluster() -> Iterator[SlurmCluster]:
    """Start the cluster and yield it; everything is stopped and removed afterwards."""
    # Outside pytest's 0700 tmp folders: munged needs every folder above its socket to be searchable.
    folder = Path(tempfile.mkdtemp(prefix="glmtui-slurm-"))
    folder.chmod(0o755)
    (folder / "state").mkdir()
    config = _write_config(folder, _free_ports(2 + len(NODES)))
    environment = {**os.environ, "PATH": SEARCH_PATH, "SLURM_CONF": str(config)}
    cluster = SlurmCluster(folder, environment)
    try:
        _start_munge(folder)
        starts = [["slurmctld", "-D", "-i"]] + [["slurmd", "-D", "-N", name] for name in NODES]
        with open(folder / "daemons.log", "ab") as logs:
            for argv in starts:
                cluster.processes.append(
                    subprocess.Popen(argv, env=environment, stdout=logs, stderr=logs, start_new_session=True)
                )
        _wait_for_idle_nodes(environment)
        yield cluster
    finally:
        _end_jobs(environment)
        for process in cluster.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in cluster.processes:
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(OSError, ValueError):
            munged = int((folder / "munge" / "pid").read_text().strip())
            os.kill(munged, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while Path(f"/proc/{munged}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        _kill_leftovers(f"SLURM_CONF={config}".encode())
        shutil.rmtree(folder, ignore_errors=True)


def _end_jobs(environment: dict[str, str]) -> None:
    """Cancel every job and wait for them to end, so no job step outlives the daemons."""
    subprocess.run(["scancel", "--user=root"], env=environment, capture_output=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = subprocess.run(["squeue", "-h", "-o", "%T"], env=environment, capture_output=True, text=True)
        if done.returncode != 0 or not done.stdout.split():
            return
        time.sleep(0.2)


def _kill_leftovers(marker: bytes) -> None:
    """SIGKILL what is left of this cluster (job steps whose daemons are gone): every process whose
    environment names its slurm.conf, this one excepted."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environment:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
