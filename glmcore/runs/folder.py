"""One run folder: its files, its status (with Slurm's word for a Slurm run) and its checkpoints."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from glmcore.config import RunConfig
from glmcore.errors import GlmError, RunError
from glmcore.process_identity import process_matches, process_start_time
from glmcore.runs.failure import DISK_FULL_MARKERS, DiskFull, is_disk_full
from glmcore.runs.tail import EventTail, latest_by_step, open_run_file
from glmcore.units import format_bytes
from glmcore.workspace import atomic_write_text

STATES = ("created", "queued", "running", "stopping", "stopped", "finished", "failed", "crashed")
ACTIVE_STATES = ("running", "stopping")
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
CHECKPOINT_COMPLETE_MARKER = "trainer_state.json"
"""The Trainer writes this last into a checkpoint folder; a folder without it was cut off mid-save."""
PARTIAL_CHECKPOINTS = ".partial"
"""``checkpoints/.partial/checkpoint-N/`` is where a checkpoint is written before it is renamed into place."""
CLAIM_LOCK = "claim.lock"
TRAINER_LOCK = "trainer.lock"
"""Held (flock) by the run's training process for its whole life: a live trainer blocks a second one."""
TRAINER_LOCK_VARIABLE = "GLMTUI_TRAINER_LOCK_FD"
"""The descriptor of trainer.lock a launched training process inherits, already locked by its launcher."""
KILL_AFTER_SPAWN_VARIABLE = "GLMTUI_TEST_KILL_AFTER_SPAWN"
"""Test hook: a launcher with this set kills itself right after spawning a trainer, before recording it."""
TRAINER_EXIT_WAIT_S = 10.0
"""How long a launch waits for the trainer of a run that recorded its end to exit and free trainer.lock."""
FINAL_STATES = ("stopped", "finished", "failed", "crashed")
RUN_ENTRIES = (
    "config.toml",
    "status.json",
    "events.jsonl",
    "train.log",
    "status.lock",
    CLAIM_LOCK,
    TRAINER_LOCK,
    "stop-request",
    "best-checkpoint.json",
    "checkpoints",
    "tensorboard",
)
"""What glmtui reads and writes in a run folder; none may be a symbolic link (it could lead outside)."""
APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT
BEST_CHECKPOINT_FILE = "best-checkpoint.json"
"""The run's best evaluated checkpoint, written by the training process after each save that holds it."""
TENSORBOARD_FOLDER = "tensorboard"
"""Held (flock) by a launch or resume from its state check until the new process is recorded in status.json."""
LOG_TAIL_BYTES = 64 * 1024
STOP_POLL_S = 0.2
KILL_WAIT_S = 30.0
"""How long to wait for a SIGKILLed process to disappear (one stuck in the GPU driver can take a while)."""


def now_iso() -> str:
    """The local time with its offset, to the second: what status.json and events.jsonl record."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class RunStatus:
    """The contents of status.json: where a run stands, and which process (on which host) is running it."""

    state: str = "created"
    pid: int | None = None
    pid_start_time: float | None = None
    """Seconds since the epoch; with ``pid`` it tells the training process from a later one given the same pid."""
    host: str | None = None
    gpus: list[int] = field(default_factory=list)
    step: int = 0
    total: int = 0
    created: str | None = None
    started: str | None = None
    ended: str | None = None
    reason: str | None = None
    """Why the run ended other than finishing (failure message, crash, forced stop)."""
    resumed_from: int | None = None
    queued: str | None = None
    """When the run joined the queue (state ``queued``): it waits for ``glmcore.queue`` to start it."""
    updated: str | None = None
    slurm_job: int | None = None
    """The Slurm job id of a run sent to Slurm (its latest submission); None for a run started here."""
    nodes: list[str] = field(default_factory=list)
    """The Slurm nodes the run's job runs (or ran) on."""
    pending_reason: str | None = None
    """Why Slurm has not started the run's job yet (squeue's reason: Resources, Priority…); read, never stored."""

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def waits_in_slurm(self) -> bool:
        """Queued in Slurm (its job waiting or starting): it will run without anyone here starting it."""
        return self.state == "queued" and self.slurm_job is not None

    @classmethod
    def from_dict(cls, data: object) -> RunStatus:
        """Keys this version does not know are ignored, so a newer writer never breaks an older reader; a known
        key holding the wrong kind of value is a ValueError saying which."""
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        values = {}
        for status_field in fields(cls):
            if status_field.name in data:
                value = data[status_field.name]
                if not _is_kind(value, str(status_field.type)):
                    raise ValueError(
                        f"its {status_field.name} is {json.dumps(value)}, not {status_field.type}"
                    )
                values[status_field.name] = value
        return cls(**values)


def _is_kind(value: object, hint: str) -> bool:
    """Whether a JSON ``value`` fits RunStatus's field type ``hint`` ("int | None", "list[str]"…)."""
    if value is None:
        return hint.endswith(" | None")
    kind = hint.removesuffix(" | None")
    if kind.startswith("list["):
        return isinstance(value, list) and all(_is_kind(item, kind[5:-1]) for item in value)
    if isinstance(value, bool):
        return False
    return isinstance(value, {"str": str, "int": int, "float": int | float}[kind])


class Checkpoint(NamedTuple):
    step: int
    path: Path


class ResumePoint(NamedTuple):
    """Where a resume continues from (None: step 0) and the newer checkpoints it passed over, with why."""

    checkpoint: Checkpoint | None
    skipped: tuple[tuple[Checkpoint, str], ...]


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` cannot be loaded (a file cut short, garbled or holding pickled code),
    None when it looks whole. Nothing is loaded: see ``checkpoint_file_problem``."""
    from glmcore.models.checkpoint import checkpoint_file_problem

    for path in sorted(folder.iterdir()):
        if path.is_file() and (problem := checkpoint_file_problem(path)):
            return problem
    return None


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for sub in [folder, *[path for path in folder.rglob("*") if path.is_dir()]]:
        _fsync_folder(sub)


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Run:
    """One run folder; every method reads or writes the files there, so any process may hold a Run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).absolute()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_checkpoint_path(self) -> Path:
        return self.path / BEST_CHECKPOINT_FILE

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_FOLDER

    @property
    def stop_request_path(self) -> Path:
        return self.path / "stop-request"

    @cached_property
    def config(self) -> RunConfig:
        return RunConfig.load(self.config_path)

    # status.json

    def stored_status(self) -> RunStatus:
        """status.json as written, without checking that its process is alive."""
        try:
            with open_run_file(self.status_path, os.O_RDONLY) as handle:
                return RunStatus.from_dict(json.loads(handle.read().decode("utf-8")))
        except FileNotFoundError:
            return RunStatus()
        except (OSError, ValueError) as error:
            raise RunError(
                f"{self.status_path} cannot be read ({error}); restore it, or delete the run folder "
                "if it is not a run of this workspace"
            ) from None

    def status(self) -> RunStatus:
        """Where the run stands; a running or stopping run whose process is gone (on this host) is ``crashed``.

        On another host the process cannot be checked, so the stored state is returned as is (with its host).
        A run still ``created`` never launched; its reason says why when a launch failed.
        """
        status = self.stored_status()
        if status.state == "created" and not status.reason:
            status.reason = f"never launched; start it with `glmtui resume {self.id}`"
        if status.slurm_job is not None and status.state in ("queued", *ACTIVE_STATES):
            return self._slurm_status(status)
        if not status.is_active or status.host != socket.gethostname():
            return status
        if process_matches(status.pid, status.pid_start_time):
            return status
        # The process may have written its final state and exited between the two reads.
        status = self.stored_status()
        if not status.is_active or process_matches(status.pid, status.pid_start_time):
            return status
        status.state = "crashed"
        disk_full = self.last_disk_full_line()
        status.reason = (
            f"the training process (pid {status.pid}) is gone without writing a final state"
            + (f" (train.log: {disk_full}); free some space, then " if disk_full else "; ")
            + (
                f"resume it from {checkpoint.path.name}"
                if (checkpoint := self.latest_checkpoint())
                else "it saved no checkpoint, so resuming starts again from step 0"
            )
        )
        return status

    def _slurm_status(self, status: RunStatus) -> RunStatus:
        """A Slurm run's state as its job tells it: the pending reason, the nodes, or how the job ended.

        Slurm is asked rather than the pid (which may live on another host). A job that ended while the run
        still says queued, running or stopping ended without the run recording its end: ``crashed`` with
        Slurm's reason (or, if it never started, back to ``created``). If Slurm cannot be asked, the stored
        state is shown with why.
        """
        from glmcore.slurm.jobs import job_info

        try:
            info = job_info(status.slurm_job)
        except GlmError as error:
            status.pending_reason = f"Slurm cannot be asked: {error}"
            return status
        if info is not None and (info.waiting or info.running):
            status.nodes = list(info.nodes) or status.nodes
            if info.waiting:
                status.pending_reason = info.reason
            return status
        status = self.stored_status()  # the job may have recorded its end between the two reads
        if status.state not in ("queued", *ACTIVE_STATES):
            return status
        ended = info.end_sentence() if info else f"Slurm no longer knows job {status.slurm_job}"
        if status.started is None:
            status.state = "created"
            status.reason = f"never launched: {ended}; start it again with `glmtui resume {self.id}`"
            return status
        status.state = "crashed"
        checkpoint = self.latest_checkpoint()
        status.reason = f"{ended} without the run recording its end; " + (
            f"resume it from {checkpoint.path.name}"
            if checkpoint
            else "it saved no checkpoint, so resuming starts again from step 0"
        )
        return status

    def last_disk_full_line(self) -> str | None:
        """The last line of train.log's tail that says the disk was full, when the process died of it."""
        try:
            with open_run_file(self.log_path, os.O_RDONLY) as log:
                log.seek(max(log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES, 0))
                lines = log.read().decode("utf-8", errors="replace").splitlines()
        except (OSError, RunError):
            return None
        found = [line.strip() for line in lines if any(marker in line for marker in DISK_FULL_MARKERS)]
        return found[-1].removeprefix("glmtui: ") if found else None

    @contextlib.contextmanager
    def _status_lock(self) -> Iterator[None]:
        """Serialises read-modify-write of status.json between the launcher and the training process."""
        with open_run_file(self.path / "status.lock", APPEND) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def write_status(self, **changes: object) -> RunStatus:
        """Change the named fields of status.json (the rest stay) and write it atomically; returns the result."""
        if "state" in changes and changes["state"] not in STATES:
            raise ValueError(f"unknown run state {changes['state']!r}; states are {', '.join(STATES)}")
        with self._status_lock():
            status = RunStatus(**{**asdict(self.stored_status()), **changes, "updated": now_iso()})
            atomic_write_text(self.status_path, json.dumps(asdict(status), indent=2) + "\n")
        return status

    def mark_running(
        self, pid: int, *, total: int | None = None, only_if_unclaimed: bool = False
    ) -> RunStatus:
        """Record that process ``pid`` on this host now runs the run (the trainer calls this first thing).

        ``only_if_unclaimed`` is the launcher's form: it leaves the status alone if the training process has
        already written its own, so a fast child's final state is never overwritten with ``running``.
        """
        with self._status_lock():
            current = self.stored_status()
            if only_if_unclaimed and current.pid == pid:
                return current
            status = RunStatus(
                **{
                    **asdict(current),
                    "state": "running",
                    "pid": pid,
                    "pid_start_time": process_start_time(pid),
                    "host": socket.gethostname(),
                    "gpus": list(self.config.gpus),
                    "total": total if total is not None else self.config.max_steps,
                    "started": now_iso(),
                    "ended": None,
                    "reason": None,
                    "updated": now_iso(),
                }
            )
            atomic_write_text(self.status_path, json.dumps(asdict(status), indent=2) + "\n")
        return status

    def mark_submitted(self, job_id: int) -> RunStatus:
        """Record that Slurm job ``job_id`` will run the run: ``queued`` until it starts, unless the job has
        already started and said so itself (it records its job id first thing)."""
        with self._status_lock():
            current = self.stored_status()
            if current.slurm_job == job_id:
                return current
            changes = {"state": "queued", "queued": now_iso(), "slurm_job": job_id, "nodes": [], "pid": None}
            status = RunStatus(
                **{**asdict(current), **changes, "reason": None, "ended": None, "updated": now_iso()}
            )
            atomic_write_text(self.status_path, json.dumps(asdict(status), indent=2) + "\n")
        return status

    def finish(self, state: str, reason: str | None = None) -> RunStatus:
        """Record how the run ended (finished, stopped or failed) and clear a served stop request."""
        if state not in ("finished", "stopped", "failed", "crashed"):
            raise ValueError(f"{state!r} is not a final run state")
        status = self.write_status(state=state, reason=reason, ended=now_iso())
        self.stop_request_path.unlink(missing_ok=True)
        release_trainer_lock(self)
        return status

    # events.jsonl

    def append_event(self, kind: str, **fields: object) -> dict:
        """Append one event line (with its time) and make it durable before returning."""
        record = {"kind": kind, **fields, "time": now_iso()}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open_run_file(self.events_path, os.O_RDWR | os.O_APPEND | os.O_CREAT) as handle:
            # A writer killed mid-line leaves a partial last line; start on a fresh one so both stay readable.
            if handle.seek(0, os.SEEK_END) > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    line = "\n" + line
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def events(self) -> list[dict]:
        """Every event as readers should see it: see ``latest_by_step``."""
        return latest_by_step(EventTail(self.events_path).read_events())

    def tail_events(self, offset: int = 0) -> EventTail:
        return EventTail(self.events_path, offset)

    # checkpoints

    def checkpoints(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest step first (a folder still being written is left out)."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for folder in self.checkpoints_dir.iterdir():
            match = CHECKPOINT_PATTERN.fullmatch(folder.name)
            if match and (folder / CHECKPOINT_COMPLETE_MARKER).is_file():
                found.append(Checkpoint(int(match.group(1)), folder))
        return sorted(found)

    def latest_checkpoint(self) -> Checkpoint | None:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def resume_point(self) -> ResumePoint:
        """The newest checkpoint whose files are whole, and the newer ones passed over with their problem.

        Refuses (RunError) when checkpoints exist but none of them is whole: resuming would silently start
        from step 0 and throw the run's progress away.
        """
        skipped: list[tuple[Checkpoint, str]] = []
        for checkpoint in reversed(self.checkpoints()):
            problem = checkpoint_problem(checkpoint.path)
            if problem is None:
                return ResumePoint(checkpoint, tuple(skipped))
            skipped.append((checkpoint, problem))
        if skipped:
            bad, problem = skipped[0]
            raise RunError(
                f"{bad.path.name} cannot be loaded ({problem}) and no earlier checkpoint is complete; to start "
                f"run {self.id} again from step 0, delete {self.checkpoints_dir}/checkpoint-* and resume it"
            )
        return ResumePoint(None, ())

    @contextlib.contextmanager
    def saving_checkpoint(self, step: int, *, owner: bool = True) -> Iterator[Path]:
        """Yields the folder to write checkpoint-``step`` into; it appears under checkpoints/ whole or not at all.

        The folder lives under ``checkpoints/.partial/`` while it is written; ``owner`` (rank 0 with several
        ranks, which all write into it) then fsyncs every file and renames it into place. If writing fails the
        partial folder is deleted first; on a full disk the error becomes ``DiskFull`` ("disk full: N free on
        PATH"), so the run can end ``failed`` with that reason.
        """
        final = self.checkpoints_dir / f"checkpoint-{step}"
        partial = self.checkpoints_dir / PARTIAL_CHECKPOINTS / final.name
        if owner:
            shutil.rmtree(partial, ignore_errors=True)
        try:
            partial.mkdir(parents=True, exist_ok=True)
            yield partial
            if owner:
                _fsync_tree(partial)
                if final.exists():  # a damaged checkpoint of the same step, passed over by the resume
                    shutil.rmtree(final)
                partial.rename(final)
                _fsync_folder(self.checkpoints_dir)
        except BaseException as error:
            full = is_disk_full(error, self.checkpoints_dir)
            if owner:
                shutil.rmtree(partial, ignore_errors=True)
            if full:
                raise DiskFull(
                    f"disk full: {format_bytes(shutil.disk_usage(self.checkpoints_dir).free)} free on "
                    f"{self.checkpoints_dir} while saving {final.name} (its partial folder was deleted); free some "
                    f"space, then `glmtui resume {self.id}`"
                ) from error
            raise

    def mark_best_checkpoint(self, step: int, metric: str, value: float, *, greater_is_better: bool) -> None:
        """Record checkpoint-``step`` as the run's best by ``metric`` (best-checkpoint.json, atomically)."""
        record = {
            "checkpoint": f"checkpoint-{step}",
            "step": step,
            "metric": metric,
            "value": value,
            "greater_is_better": greater_is_better,
            "time": now_iso(),
        }
        atomic_write_text(self.best_checkpoint_path, json.dumps(record, indent=2) + "\n")

    def best_mark(self) -> dict | None:
        """best-checkpoint.json as written, or None when the run marks no best checkpoint (or it is unreadable)."""
        try:
            record = json.loads(self.best_checkpoint_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None

    def best_checkpoint(self) -> Checkpoint | None:
        """The checkpoint best-checkpoint.json names, while it is complete and its files are whole."""
        mark = self.best_mark()
        if mark is None:
            return None
        for checkpoint in self.checkpoints():
            if checkpoint.step == mark["step"]:
                return checkpoint if checkpoint_problem(checkpoint.path) is None else None
        return None

    def default_checkpoint(self) -> Checkpoint:
        """The checkpoint this run stands for where one is meant and none is named: its best evaluated one
        when it marks one, else its latest complete one (the rule of docs/runs.md, "Naming runs and
        checkpoints")."""
        best = self.best_checkpoint()
        if best is not None:
            return best
        whole = self.resume_point().checkpoint  # passes over a damaged newest one, as a resume does
        if whole is None:
            raise RunError(f"run {self.id} has no complete checkpoint yet; use it after its first save")
        return whole

    def find_checkpoint(self, name: str | None = None) -> Checkpoint:
        """This run's checkpoint named ``checkpoint-N`` or ``N``; with no name, ``default_checkpoint()``."""
        if name is None:
            return self.default_checkpoint()
        checkpoints = self.checkpoints()
        for checkpoint in checkpoints:
            if name in (checkpoint.path.name, str(checkpoint.step)):
                return checkpoint
        names = ", ".join(checkpoint.path.name for checkpoint in checkpoints) or "none yet"
        raise RunError(f"run {self.id} has no checkpoint {name!r} (complete checkpoints: {names})")

    # stop request and deletion

    def request_stop(self) -> None:
        """Ask the training process to save a checkpoint and stop at its next step boundary."""
        atomic_write_text(self.stop_request_path, now_iso() + "\n")

    def stop_requested(self) -> bool:
        return self.stop_request_path.exists()

    def delete(self) -> None:
        """Remove the run folder; refused while the run is running or stopping (or waits in Slurm)."""
        status = self.status()
        if status.is_active or status.waits_in_slurm:
            raise RunError(
                f"run {self.id} is {status.state}; stop it (`glmtui stop {self.id}`) before deleting it"
            )
        shutil.rmtree(self.path)


_held_trainer_locks: dict[Path, int] = {}
"""trainer.lock descriptors this process holds as a run's training process, by run folder."""


def release_trainer_lock(run: Run) -> None:
    """Let a new trainer start as soon as this one has recorded its end (a no-op where none is held)."""
    if (descriptor := _held_trainer_locks.pop(run.path, None)) is not None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)
