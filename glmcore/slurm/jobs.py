"""Slurm's own commands, wrapped: submit, ask about jobs, cancel, requeue, list partitions.

Everything goes through the commands a cluster user has on the login node (sbatch, squeue, scontrol, scancel,
sinfo); nothing needs Slurm's accounting database (sacct), which many clusters do not offer to users. A job
that squeue no longer lists (past the controller's MinJobAge) is looked up in the job completion log when the
cluster keeps one as a readable file (``JobCompType=jobcomp/filetxt``).

This module imports nothing else of glmtui's, so the run folder code (``glmcore.runs``) can ask it about a
run's job without an import circle.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from glmcore.errors import GlmError

COMMAND_TIMEOUT_S = 20.0
"""A busy controller answers slowly; one that does not answer in this long is reported, not waited on."""
CACHE_S = 1.0
"""squeue answers are reused this long, so a screen reading every run each second asks Slurm once."""
WAITING_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED"}
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"})
ENDED_STATES = frozenset(
    {
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
END_MEANINGS = {
    "CANCELLED": "cancelled (scancel)",
    "TIMEOUT": "reached its time limit",
    "NODE_FAIL": "lost a node",
    "OUT_OF_MEMORY": "ran out of host memory",
    "PREEMPTED": "was preempted",
    "FAILED": "ended with a non-zero exit code",
    "BOOT_FAIL": "could not boot its nodes",
    "DEADLINE": "reached its deadline",
    "COMPLETED": "ended",
}
"""What a Slurm end state means, for the crash reason a run is given when its job ended without its end."""


class SlurmError(GlmError):
    """A Slurm command failed or is missing; the message says which and what Slurm said."""


def missing_commands() -> list[str]:
    """The Slurm commands glmtui needs that are not on PATH here."""
    return [
        name for name in ("sbatch", "squeue", "scontrol", "scancel", "sinfo") if shutil.which(name) is None
    ]


CONFIG_PLACES = ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/run/slurm/conf/slurm.conf")
"""Where Slurm's commands find the cluster's config without SLURM_CONF (the last: configless mode's copy)."""


def cluster_configured() -> bool:
    """Whether this host's Slurm commands have a cluster to talk to: they are installed and find a config
    (without one, each command retries for a minute before failing)."""
    if missing_commands():
        return False
    places = [os.environ["SLURM_CONF"]] if os.environ.get("SLURM_CONF") else CONFIG_PLACES
    return any(Path(place).is_file() for place in places)


def run_command(argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run one Slurm command and return its stdout; SlurmError says what failed, in Slurm's words."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise SlurmError(
            f"`{argv[0]}` is not installed here; run glmtui on a host with Slurm's client commands "
            "(the cluster's login node)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"`{' '.join(argv)}` did not answer within {timeout:.0f}s; is slurmctld up?"
        ) from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise SlurmError(f"`{' '.join(argv)}` failed: {said[-1] if said else f'exit code {done.returncode}'}")
    return done.stdout


def submit(script: Path) -> int:
    """``sbatch`` the job script (its #SBATCH lines say everything); returns the job id."""
    output = run_command(["sbatch", "--parsable", str(script)]).strip()
    job_id = output.split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {output!r}, not a job id")
    return int(job_id)


def cancel(job_id: int, *, signal: str | None = None, batch_only: bool = False) -> None:
    """``scancel`` the job, or send it ``signal`` (to the batch script alone with ``batch_only``)."""
    argv = ["scancel"]
    if signal:
        argv.append(f"--signal={signal}")
    if batch_only:
        argv.append("--batch")
    run_command([*argv, str(job_id)])
    forget(job_id)


def requeue(job_id: int) -> None:
    """Put a running job back in the queue (``scontrol requeue``): it runs its script again later."""
    run_command(["scontrol", "requeue", str(job_id)])
    forget(job_id)


@dataclass(frozen=True)
class JobInfo:
    """One job as Slurm reports it: its state, why it waits (or ended), and its nodes."""

    job_id: int
    state: str
    reason: str | None = None
    nodes: tuple[str, ...] = ()

    @property
    def waiting(self) -> bool:
        return self.state in WAITING_STATES

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES

    def end_sentence(self) -> str:
        """ "Slurm job 12 reached its time limit (TIMEOUT)"."""
        meaning = END_MEANINGS.get(self.state, "ended")
        why = f", {self.reason}" if self.reason and self.reason not in ("None", self.state) else ""
        return f"Slurm job {self.job_id} {meaning} ({self.state}{why})"


@dataclass
class _Cache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: dict[int, tuple[float, JobInfo | None]] = field(default_factory=dict)


_cache = _Cache()


def forget(job_id: int) -> None:
    """Drop what is remembered about ``job_id``, so the next question asks Slurm."""
    with _cache.lock:
        _cache.answers.pop(job_id, None)


def job_infos(job_ids: Iterable[int]) -> dict[int, JobInfo | None]:
    """What Slurm knows of each job (None: nothing, it ended long ago without a completion log entry).

    For the jobs not asked about in the last second, one ``squeue --me -t all`` (every job of this user, all
    remembered, so a screen asking about each run in turn asks Slurm once), then ``squeue -j`` for those of
    other users; those squeue does not list are read from the job completion log.
    """
    wanted = sorted(set(job_ids))
    now = time.monotonic()
    with _cache.lock:
        recent = {job: _cache.answers[job] for job in wanted if job in _cache.answers}
    fresh = {job: info for job, (asked, info) in recent.items() if now - asked < CACHE_S}
    missing = [job for job in wanted if job not in fresh]
    if missing:
        found = _squeue(["--me"])
        if others := [job for job in missing if job not in found]:
            found.update(_squeue(["-j", ",".join(map(str, others))]))
        if unknown := [job for job in missing if job not in found]:
            found.update(_completion_log(unknown))
        with _cache.lock:
            for job, info in found.items():
                _cache.answers[job] = (now, info)
            for job in missing:
                _cache.answers[job] = (now, found.get(job))
                fresh[job] = found.get(job)
    return fresh


def job_info(job_id: int) -> JobInfo | None:
    return job_infos([job_id])[job_id]


def _squeue(selection: list[str]) -> dict[int, JobInfo]:
    """The jobs squeue lists for ``selection`` (``--me``, ``-j IDS``), finished ones too."""
    try:
        output = run_command(["squeue", "-h", "-t", "all", *selection, "-o", "%i|%T|%r|%N"])
    except SlurmError as error:
        if "Invalid job id" in str(error):  # none of them is known any more
            return {}
        raise
    found: dict[int, JobInfo] = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        job_id, state, reason, nodelist = parts
        found[int(job_id)] = JobInfo(
            int(job_id),
            state.split()[0],
            reason if reason not in ("", "None") else None,
            tuple(expand_nodelist(nodelist)) if nodelist and nodelist != "(null)" else (),
        )
    return found


def _completion_log(job_ids: list[int]) -> dict[int, JobInfo]:
    """Finished jobs from the jobcomp/filetxt log, when the cluster keeps one this host can read."""
    try:
        config = run_command(["scontrol", "show", "config"])
    except SlurmError:
        return {}
    settings = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", config, flags=re.MULTILINE))
    if settings.get("JobCompType") != "jobcomp/filetxt" or not settings.get("JobCompLoc"):
        return {}
    try:
        lines = Path(settings["JobCompLoc"]).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    wanted = set(job_ids)
    found: dict[int, JobInfo] = {}
    for line in lines:
        record = dict(re.findall(r"(\w+)=(\S*)", line))
        job_id = record.get("JobId", "")
        if job_id.isdigit() and int(job_id) in wanted and record.get("JobState"):
            nodes = record.get("NodeList", "")
            found[int(job_id)] = JobInfo(
                int(job_id),
                record["JobState"],
                None,
                tuple(expand_nodelist(nodes)) if nodes and nodes != "(null)" else (),
            )
    return found


def expand_nodelist(nodelist: str) -> list[str]:
    """``n[1-2],gpu7`` as its node names (``scontrol show hostnames``)."""
    if not re.search(r"[\[,]", nodelist):
        return [nodelist]
    return run_command(["scontrol", "show", "hostnames", nodelist]).split()


def node_address(node: str) -> str:
    """The address Slurm reaches ``node`` at (its NodeAddr; by default the node's name)."""
    output = run_command(["scontrol", "show", "node", node])
    match = re.search(r"NodeAddr=(\S+)", output)
    return match.group(1) if match else node


@dataclass(frozen=True)
class Partition:
    """A partition as sinfo shows it: its nodes, how many are up, and its GPUs in all and free now."""

    name: str
    nodes: int
    nodes_up: int
    gpus: int
    gpus_free: int
    default: bool = False

    def summary(self) -> str:
        gpus = f"{self.gpus_free} of {self.gpus} GPUs free" if self.gpus else "no GPUs"
        return f"{self.name}{' (default)' if self.default else ''}: {self.nodes_up}/{self.nodes} nodes up, {gpus}"


DOWN_STATES = ("down", "drain", "drng", "fail", "maint", "unk", "boot", "futr")


def gpu_count(gres: str) -> int:
    """The GPUs in a gres string: ``gpu:a100:4(S:0-1),gpu:v100:2`` has 6, ``gpu:2(IDX:0-1)`` 2."""
    total = 0
    for item in re.split(r",(?![^()]*\))", gres):
        if not item.startswith("gpu"):
            continue
        count = re.sub(r"\(.*\)", "", item).split(":")[-1]
        total += int(count) if count.isdigit() else 0
    return total


def partitions() -> list[Partition]:
    """Every partition with its nodes and GPUs (``sinfo -N``, one line per node and partition)."""
    output = run_command(
        ["sinfo", "-h", "-N", "-O", "PartitionName:|,NodeList:|,StateCompact:|,Gres:|,GresUsed:|"]
    )
    totals: dict[str, list[int]] = {}
    default = run_command(["sinfo", "-h", "-o", "%P"]).split()
    for line in output.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) < 5:
            continue
        name, _, state, gres, used = parts[:5]
        name = name.rstrip("*")
        up = not state.rstrip("*~#!%$@^-").startswith(DOWN_STATES)
        gpus = gpu_count(gres) if gres != "(null)" else 0
        busy = gpu_count(used) if used != "(null)" else 0
        entry = totals.setdefault(name, [0, 0, 0, 0])
        entry[0] += 1
        entry[1] += up
        entry[2] += gpus
        entry[3] += max(0, gpus - busy) if up else 0
    return [Partition(name, *figures, default=f"{name}*" in default) for name, figures in totals.items()]
