"""Runs on disk: one folder per run is the contract between a training process and everyone watching it.

A run folder (``<workspace>/runs/<yyyymmdd-hhmmss>-<name>``) holds config.toml, status.json, events.jsonl,
train.log, checkpoints/ and, while a stop is asked for, stop-request; docs/runs.md describes each file for other
tools. Nothing here depends on the process that started a run: the TUI, the CLI, a later SSH session or another
user read the same files, and a run keeps going when its launcher is gone.

Lessons taken from LLaMA-Factory's LlamaBoard, which runs training the same way: the child's output goes to a
file, never to a pipe nobody reads (a full pipe blocks training); a stop is a file every rank can see, decided
together at a step boundary; and a run is found again by its name, not by re-selecting an output folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import IO, NamedTuple

from glmcore.config import ConfigError, RunConfig, validate
from glmcore.distributed import launch_plan
from glmcore.errors import GlmError
from glmcore.slurm.script import OPTIONS_FILE as SLURM_OPTIONS_FILE
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
LINE_BLOCK_BYTES = 1 << 16
"""How much of a file is read at a time, forwards or backwards: memory stays this small whatever its size."""
BEST_CHECKPOINT_FILE = "best-checkpoint.json"
"""The run's best evaluated checkpoint, written by the training process after each save that holds it."""
TENSORBOARD_FOLDER = "tensorboard"
"""Held (flock) by a launch or resume from its state check until the new process is recorded in status.json."""
DISK_FULL_MARKERS = ("disk full", "No space left on device")
DISK_FULL_FREE_BYTES = 16 * 1024 * 1024
"""Below this much free space a failed torch.save write is taken for a full disk."""
LOG_TAIL_BYTES = 64 * 1024
START_TIME_TOLERANCE_S = 2.0
"""Process start times computed from /proc drift by up to a second with the boot time; a reused pid differs
by far more."""
STOP_POLL_S = 0.2
KILL_WAIT_S = 30.0
"""How long to wait for a SIGKILLed process to disappear (one stuck in the GPU driver can take a while)."""


class RunError(GlmError):
    """A run cannot be found, started, stopped, resumed or deleted as asked."""


def now_iso() -> str:
    """The local time with its offset, to the second: what status.json and events.jsonl record."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if there is no such live process.

    Read from /proc/<pid>/stat (field 22, clock ticks after boot) plus the boot time from /proc/stat; a zombie
    counts as gone. Where /proc does not exist, psutil answers if installed.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else _psutil_start_time(pid)
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces; fields 3 onwards follow the last ")".
    after_name = stat[stat.rindex(")") + 2 :].split()
    if after_name[0] in ("Z", "X"):
        return None
    start_ticks = int(after_name[22 - 3])
    return _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RunError(
        "/proc/stat has no boot time; glmtui cannot check whether a training process is alive here"
    )


def _psutil_start_time(pid: int) -> float | None:
    try:
        import psutil
    except ImportError:
        raise RunError(
            "this system has no /proc; install psutil (`pip install psutil`) so glmtui can check training processes"
        ) from None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.Error:
        return None


def process_matches(pid: int | None, start_time: float | None) -> bool:
    """Whether ``pid`` is still the process that started at ``start_time`` (pids are reused)."""
    if pid is None:
        return False
    started = process_start_time(pid)
    if started is None:
        return False
    return start_time is None or abs(started - start_time) <= START_TIME_TOLERANCE_S


def process_command(pid: int) -> tuple[list[str], str | None] | None:
    """The command line of process ``pid`` and its working folder (None when unreadable); None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self/cmdline").exists():
            return None
        return _psutil_command(pid)
    except OSError:
        return None
    try:
        folder: str | None = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        folder = None
    return [part.decode("utf-8", errors="replace") for part in raw.split(b"\0") if part], folder


def _psutil_command(pid: int) -> tuple[list[str], str | None] | None:
    import psutil

    try:
        process = psutil.Process(pid)
        return process.cmdline(), process.cwd()
    except psutil.Error:
        return None


def open_run_file(path: Path, flags: int) -> IO[bytes]:
    """``path`` opened (``os.open`` flags, binary) without following a symbolic link at its last part.

    A link in a run folder could point anywhere (a crafted or copied folder); glmtui never reads or appends
    through one, and says so instead.
    """
    mode = {os.O_RDONLY: "rb", os.O_WRONLY: "ab", os.O_RDWR: "ab+"}[flags & os.O_ACCMODE]
    try:
        descriptor = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RunError(_link_sentence(path)) from None
        raise
    return os.fdopen(descriptor, mode)


def _link_sentence(path: Path) -> str:
    return (
        f"{path} is a symbolic link; glmtui does not follow links inside a run folder (one could lead outside "
        "it): replace it with the real file or folder"
    )


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


class DiskFull(GlmError):
    """The disk filled up while the training process wrote to it; the message says how much is free where."""


def is_disk_full(error: BaseException, folder: Path) -> bool:
    """Whether ``error`` (or one it came from) is ENOSPC, or torch's zip writer failing on a disk with no room.

    torch.save reports a failed write as a RuntimeError from inline_container without the errno, so there the
    free space of ``folder`` decides.
    """
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT) for item in chain):
        return True
    if any("No space left on device" in str(item) for item in chain):  # safetensors' Rust I/O error, say
        return True
    torch_write_failed = any(
        isinstance(item, RuntimeError)
        and ("inline_container" in str(item) or "file write failed" in str(item))
        for item in chain
    )
    try:
        return torch_write_failed and shutil.disk_usage(folder).free < DISK_FULL_FREE_BYTES
    except OSError:
        return False


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


def _format_bytes(count: float) -> str:
    from glmcore.download.transfer import format_bytes

    return format_bytes(count)


def latest_by_step(records: Iterable[dict]) -> list[dict]:
    """Events as readers should see them after resumes: the latest record of each (kind, step), in file order.

    A ``resumed`` event at step K also drops earlier records past step K: they belong to the attempt that was
    abandoned when the run went back to checkpoint K.
    """
    kept: dict[object, dict] = {}
    for position, record in enumerate(records):
        step = record.get("step")
        if record.get("kind") == "resumed" and isinstance(step, int):
            kept = {
                key: earlier
                for key, earlier in kept.items()
                if not (isinstance(earlier.get("step"), int) and earlier["step"] > step)
            }
        key = (record.get("kind"), step) if step is not None else ("unstepped", position)
        kept.pop(key, None)
        kept[key] = record
    return list(kept.values())


class FileTail:
    """Follows a growing file from a byte offset, handing back what was appended since the last read.

    In the manner of toolong: read new bytes in chunks, hand back complete lines only, and keep a partial last
    line for the next read (the writer may be mid-line). A file that shrank was replaced; it is read afresh.
    """

    def __init__(self, path: Path, offset: int = 0, chunk_size: int = LINE_BLOCK_BYTES) -> None:
        self.path = path
        self.offset = offset
        self.chunk_size = chunk_size

    def chunks(self, *, complete_lines: bool = True) -> Iterator[bytes]:
        """What was appended since the last read, a chunk at a time: up to the last newline, or all of it when
        the writer is known to be done (``complete_lines=False``). A line longer than a chunk comes in pieces.
        The file is never opened through a symbolic link (RunError)."""
        try:
            handle = open_run_file(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        with handle:
            if os.fstat(handle.fileno()).st_size < self.offset:
                self.offset = 0
            handle.seek(self.offset)
            while chunk := handle.read(self.chunk_size):
                if complete_lines and (len(chunk) < self.chunk_size or b"\n" in chunk):
                    chunk = chunk[: chunk.rfind(b"\n") + 1]
                if not chunk:
                    return
                self.offset += len(chunk)
                handle.seek(self.offset)
                yield chunk

    def read_bytes(self, *, complete_lines: bool = True) -> bytes:
        """Everything appended since the last read, at once (see ``chunks``)."""
        return b"".join(self.chunks(complete_lines=complete_lines))

    def read_lines(self) -> list[str]:
        """The complete lines appended since the last read, without their newlines."""
        return self.read_bytes().decode("utf-8", errors="replace").splitlines()


class EventTail(FileTail):
    """Follows events.jsonl, handing back the new event records (lines that are not JSON objects are skipped)."""

    def read_events(self) -> list[dict]:
        return list(self.iter_events())

    def iter_events(self) -> Iterator[dict]:
        """The new event records one chunk of the file at a time."""
        for chunk in self.chunks():
            yield from _parse_events(chunk.decode("utf-8", errors="replace").splitlines())


def last_lines_offset(path: Path, lines: int) -> int:
    """Where the last ``lines`` lines of ``path`` begin, found by reading backwards a block at a time (0 when
    the file has fewer lines, does not exist, or ``lines`` is 0). A last line without its newline counts."""
    if lines <= 0:
        return 0
    try:
        handle = open_run_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    with handle:
        end = handle.seek(0, os.SEEK_END)
        if end:
            handle.seek(end - 1)
            if handle.read(1) == b"\n":
                end -= 1  # the newline that ends the last line starts no line after it
        found = 0
        while end > 0:
            start = max(0, end - LINE_BLOCK_BYTES)
            handle.seek(start)
            block = handle.read(end - start)
            position = len(block)
            while (position := block.rfind(b"\n", 0, position)) >= 0:
                found += 1
                if found == lines:
                    return start + position + 1
            end = start
    return 0


def _parse_events(lines: Iterable[str]) -> Iterator[dict]:
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                yield record


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
                    f"disk full: {_format_bytes(shutil.disk_usage(self.checkpoints_dir).free)} free on "
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


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or "run"


def _given_name(run: Run) -> str | None:
    """The name the run was given (config.toml's ``name``), None when its config cannot be read."""
    try:
        return run.config.name
    except GlmError:
        return None


class RunStore:
    """The runs/ folder of a workspace."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir).absolute()

    def create(self, config: RunConfig) -> Run:
        """A new run folder holding the config, a ``created`` status and an empty events file."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        base = f"{datetime.now():%Y%m%d-%H%M%S}-{_slug(config.name)}"
        for attempt in range(1, 1000):
            path = self.runs_dir / (base if attempt == 1 else f"{base}-{attempt}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise RunError(f"cannot find a free run folder name for {base} in {self.runs_dir}")
        run = Run(path)
        config.save(run.config_path)
        run.checkpoints_dir.mkdir()
        run.events_path.touch()
        run.write_status(state="created", created=now_iso(), total=config.max_steps, gpus=list(config.gpus))
        return run

    def list(self) -> list[Run]:
        """Every run folder (one holding config.toml), newest first (the id starts with the creation time)."""
        if not self.runs_dir.is_dir():
            return []
        runs = [Run(folder) for folder in self.runs_dir.iterdir() if (folder / "config.toml").is_file()]
        return sorted(runs, key=lambda run: run.id, reverse=True)

    def resolve(self, name_or_path: str | Path) -> Run:
        """The run named by an exact id, a unique id prefix, the name it was given, or a path to its folder."""
        text = str(name_or_path)
        if os.sep in text or text in (".", ".."):
            path = Path(text).expanduser()
            if not (path / "config.toml").is_file():
                raise RunError(f"{path} is not a run folder (it holds no config.toml)")
            return Run(path)
        runs = self.list()
        exact = [run for run in runs if run.id == text]
        if exact:
            return exact[0]
        matches = [run for run in runs if run.id.startswith(text)] or [
            run for run in runs if run.id[len("yyyymmdd-hhmmss-") :].startswith(_slug(text))
        ]
        # A name given to exactly one run wins over the longer names it begins (a sweep over it, say).
        named = [run for run in matches if _given_name(run) == text] if len(matches) > 1 else []
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise RunError(
                f"{len(named)} runs are named {text!r} ({', '.join(run.id for run in named)}); give the id"
            )
        if len(matches) == 1:
            return matches[0]
        if matches:
            listed = ", ".join(run.id for run in matches[:10]) + (" ..." if len(matches) > 10 else "")
            raise RunError(f"{text!r} names {len(matches)} runs ({listed}); give more of the id")
        known = ", ".join(run.id for run in runs[:5]) or "there are none yet"
        raise RunError(
            f"no run named {text!r} in {self.runs_dir} (latest: {known}); `glmtui runs` lists them all"
        )

    def resolve_checkpoint(self, name: str, run: Run | None = None) -> Path:
        """The checkpoint folder ``name`` means (docs/runs.md, "Naming runs and checkpoints"): with ``run``,
        its ``checkpoint-N`` or ``N``; else a checkpoint folder's path; else a run (by any name ``resolve``
        takes), which stands for its default checkpoint."""
        if run is not None and (CHECKPOINT_PATTERN.fullmatch(name) or name.isdigit()):
            return run.find_checkpoint(name).path
        path = Path(name).expanduser()
        if path.is_dir() and not (path / "config.toml").is_file():
            return path
        try:
            return self.resolve(name).default_checkpoint().path
        except RunError as error:
            if os.sep in name or name.startswith("checkpoint-"):
                raise RunError(
                    f"{name} is neither a checkpoint folder nor a run"
                    + (" (a checkpoint-N of a run needs --run RUN)" if run is None else "")
                ) from None
            raise error from None


@contextlib.contextmanager
def claim(run: Run) -> Iterator[None]:
    """Exclusive right to start ``run``: held from the state check until the new process is in status.json.

    Every launch and resume, from the CLI, the app or the engine, in any process on this host, takes it
    (``flock`` on claim.lock, released by the kernel if the holder dies), so of N simultaneous attempts one
    starts a trainer and the others then find the run running and are refused. The lock file descriptor is not
    inherited by the training process.
    """
    with open_run_file(run.path / CLAIM_LOCK, APPEND) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_held_trainer_locks: dict[Path, int] = {}
"""trainer.lock descriptors this process holds as a run's training process, by run folder."""


def _open_trainer_lock(run: Run) -> int:
    with open_run_file(run.path / TRAINER_LOCK, APPEND) as handle:
        return os.dup(handle.fileno())  # a dup is close-on-exec; only pass_fds hands it on


def _take_trainer_lock(run: Run) -> int:
    """trainer.lock, locked, for a launcher to hand to the trainer it spawns; RunError while a live trainer
    holds it. A trainer that recorded its end is given a few seconds to exit."""
    descriptor = _open_trainer_lock(run)
    # A run that recorded its end, or whose trainer is gone (crashed), may still have a process on its way out
    # holding the lock (the trainer exiting, a child it forked): give it a few seconds rather than refuse.
    exiting = run.status().state in FINAL_STATES
    deadline = time.monotonic() + (TRAINER_EXIT_WAIT_S if exiting else 0.0)
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return descriptor
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                raise RunError(
                    f"run {run.id} already has a live training process (one whose launcher stopped before "
                    "recording it, or one still exiting); it was not started again: wait for it to show as "
                    "running or to end"
                ) from None
            time.sleep(STOP_POLL_S)


def hold_trainer_lock(run: Run) -> None:
    """Make this process the run's one training process, for its whole life; RunError if another live one is.

    A trainer started by ``launch`` inherits trainer.lock already locked (its descriptor in
    GLMTUI_TRAINER_LOCK_FD); one started some other way (by hand, a Slurm job) takes it here. The kernel
    drops the lock when the holder dies, so it never goes stale.
    """
    inherited = os.environ.get(TRAINER_LOCK_VARIABLE, "")
    descriptor = int(inherited) if inherited.isdigit() and _is_trainer_lock(int(inherited), run) else None
    if descriptor is None:
        descriptor = _open_trainer_lock(run)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise RunError(
            f"run {run.id} is already being trained by another live process; this one leaves the run alone "
            f"(`glmtui stop {run.id}` stops the other)"
        ) from None
    _held_trainer_locks[run.path] = descriptor


def _is_trainer_lock(descriptor: int, run: Run) -> bool:
    try:
        held, lock = os.fstat(descriptor), os.stat(run.path / TRAINER_LOCK, follow_symlinks=False)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (lock.st_dev, lock.st_ino)


def release_trainer_lock(run: Run) -> None:
    """Let a new trainer start as soon as this one has recorded its end (a no-op where none is held)."""
    if (descriptor := _held_trainer_locks.pop(run.path, None)) is not None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def refuse_links(run: Run) -> None:
    """RunError when a file or folder glmtui uses in the run folder is a symbolic link (see RUN_ENTRIES)."""
    for name in RUN_ENTRIES:
        if (run.path / name).is_symlink():
            raise RunError(_link_sentence(run.path / name))


def config_problem(run: Run) -> str | None:
    """Why the run's config.toml cannot start it (not TOML, a bad value: edited since it was checked), or None."""
    try:
        problems = validate(run.config)
    except GlmError as error:
        return str(error)
    return f"{run.config_path}: " + "; ".join(map(str, problems)) if problems else None


def _refuse_if_active(run: Run, status: RunStatus) -> None:
    if status.waits_in_slurm:
        raise RunError(
            f"run {run.id} already waits in Slurm as job {status.slurm_job}; "
            f"`glmtui stop {run.id}` takes it out of the queue"
        )
    if status.is_active:
        where = f" on {status.host}" if status.host != socket.gethostname() else ""
        raise RunError(f"run {run.id} is already {status.state}{where} (pid {status.pid}); stop it first")


def launch(
    run: Run,
    *,
    detach: bool,
    resume: bool = False,
    program: Sequence[str] | None = None,
    only_if: str | None = None,
) -> subprocess.Popen | int:
    """Start the training process for ``run``; returns its Popen (foreground) or its pid (detached).

    The child's stdout and stderr are appended to train.log (a file: a pipe nobody reads would block it), stdin
    is /dev/null, the working folder is the run folder, and CUDA_VISIBLE_DEVICES holds config.gpus. The child is
    always the leader of its own process group, so Ctrl-C in the launching terminal reaches only the launcher
    (which then asks for a graceful stop) and a forced stop can signal the whole group; detached, it also gets
    its own session so a dropped SSH connection (SIGHUP) does not reach it. With several GPUs the child is the
    torchrun agent that starts one rank per GPU (see glmcore.distributed); it is the run's process either way.
    ``program`` replaces ``python -m glmcore.train`` (what torchrun runs, with several ranks; a stand-in
    trainer in tests). Runs under the run's ``claim``; ``only_if`` (the queue's "queued") refuses unless the
    run is still in that state once the claim is held, so a run the queue started once is never started again.
    """
    with claim(run):
        refuse_links(run)
        status = run.status()
        _refuse_if_active(run, status)
        if only_if is not None and status.state != only_if:
            raise RunError(f"run {run.id} is {status.state}, no longer {only_if}; it was not started")
        return _start(run, detach=detach, resume=resume, program=program)


def _start(run: Run, *, detach: bool, resume: bool, program: Sequence[str] | None) -> subprocess.Popen | int:
    """Spawn the training process and record its pid (or submit its Slurm job); the caller holds the claim."""
    never_launched = run.stored_status().state in ("created", "queued")
    if program is None and (run.path / SLURM_OPTIONS_FILE).is_file():
        return _submit_to_slurm(run, resume=resume, never_launched=never_launched)
    try:
        if problem := config_problem(run):  # checked again: the config may have been edited since
            raise ConfigError(problem)
        plan = launch_plan(run.config, run.path, resume=resume, program=program)
    except GlmError as error:
        if never_launched:  # a queued run leaves the queue: it would fail the same way again
            run.write_status(state="created", reason=f"never launched: {error}")
        raise RunError(str(error)) from None
    argv = plan.command
    trainer_lock = _take_trainer_lock(run)
    environment = {**os.environ, **plan.environment, TRAINER_LOCK_VARIABLE: str(trainer_lock)}
    die_after_spawn = environment.pop(KILL_AFTER_SPAWN_VARIABLE, None)
    run.stop_request_path.unlink(missing_ok=True)
    try:
        with open_run_file(run.log_path, APPEND) as log:
            log.write(
                f"\n=== {now_iso()} glmtui: {'resuming' if resume else 'starting'} {' '.join(argv)}\n".encode()
            )
            log.flush()
            try:
                # The trainer inherits trainer.lock, locked: from here on it alone holds the run, whether or
                # not this launcher lives to record its pid.
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=run.path,
                    env=environment,
                    start_new_session=detach,
                    process_group=None if detach else 0,
                    pass_fds=(trainer_lock,),
                )
            except OSError as error:
                reason = f"the training process could not start: {error}"
                if never_launched:
                    run.write_status(state="created", reason=f"never launched: {reason}")
                else:
                    run.write_status(state="failed", reason=reason, ended=now_iso())
                raise RunError(reason) from None
    finally:
        os.close(trainer_lock)  # the trainer keeps its own copy, and with it the lock
    if die_after_spawn:
        os.kill(os.getpid(), signal.SIGKILL)
    run.mark_running(process.pid, only_if_unclaimed=True)
    return process.pid if detach else process


def _submit_to_slurm(run: Run, *, resume: bool, never_launched: bool) -> int:
    """Write the run's job script and ``sbatch`` it; the run is ``queued`` (in Slurm) with the job id."""
    from glmcore.slurm.jobs import submit
    from glmcore.slurm.script import TIME_LIMIT_FILE, read_options, write_job_script

    try:
        script = write_job_script(run.path, run.id, read_options(run.path), resume=resume)
        run.stop_request_path.unlink(missing_ok=True)
        (run.path / TIME_LIMIT_FILE).unlink(missing_ok=True)
        job_id = submit(script)
    except GlmError as error:
        if never_launched:
            run.write_status(state="created", reason=f"never launched: {error}")
        raise RunError(str(error)) from None
    with open(run.log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {now_iso()} glmtui: submitted {script.name} as Slurm job {job_id}\n")
    run.mark_submitted(job_id)
    return job_id


def resume(run: Run, *, detach: bool, program: Sequence[str] | None = None) -> subprocess.Popen | int:
    """Continue ``run`` from its latest whole checkpoint (or from step 0 if it saved none).

    A checkpoint whose files are cut short is passed over for the one before it (``Run.resume_point``); the
    ``resumed`` event names the step, the checkpoint and what was passed over and why, and readers drop the
    records of the abandoned attempt past that step (see ``latest_by_step``); the history in events.jsonl itself
    is never rewritten. Runs under the run's ``claim``, so a run is never resumed twice at once.
    """
    with claim(run):
        refuse_links(run)
        status = run.status()
        _refuse_if_active(run, status)
        if status.state == "finished":
            raise RunError(f"run {run.id} finished all its {status.total} steps; there is nothing to resume")
        record_resume(run)
        return _start(run, detach=detach, resume=True, program=program)


def record_resume(run: Run) -> ResumePoint:
    """Check where a resume continues from and say so: the ``resumed`` event and ``resumed_from``."""
    point = run.resume_point()
    if point.checkpoint is not None and run.config.method == "ptuning-v2":
        from glmcore.prefix import check_resumes

        check_resumes(point.checkpoint.path, run.config.pre_seq_len, run.config.prefix_projection)
    step = point.checkpoint.step if point.checkpoint else 0
    run.append_event(
        "resumed",
        step=step,
        checkpoint=str(point.checkpoint.path) if point.checkpoint else None,
        skipped=[{"checkpoint": str(bad.path), "problem": problem} for bad, problem in point.skipped],
    )
    run.write_status(resumed_from=step, step=step)
    return point


def describe_resume(run: Run) -> str:
    """What the latest resume of ``run`` did, for people: the checkpoint it continues from and any passed over."""
    resumed = [event for event in EventTail(run.events_path).read_events() if event.get("kind") == "resumed"]
    if not resumed:
        return f"Run {run.id} has not been resumed."
    event = resumed[-1]
    passed_over = "".join(
        f" {Path(item['checkpoint']).name} cannot be loaded ({item['problem']}), so it was passed over."
        for item in event.get("skipped") or []
    )
    if event.get("checkpoint"):
        return f"Resuming run {run.id} from {Path(event['checkpoint']).name}.{passed_over}"
    return f"Run {run.id} saved no checkpoint; it starts again from step 0.{passed_over}"


def wait_for_end(run: Run, timeout: float) -> RunStatus:
    """Poll until the run is no longer running or stopping, or ``timeout`` seconds pass; returns its status."""
    deadline = time.monotonic() + timeout
    status = run.status()
    while status.is_active and time.monotonic() < deadline:
        time.sleep(STOP_POLL_S)
        status = run.status()
    return status


def stop(run: Run, timeout: float = 0.0, *, force: bool = False, grace: float = 10.0) -> RunStatus:
    """Ask ``run`` to stop: it saves a checkpoint at its next step boundary and ends ``stopped``.

    Waits up to ``timeout`` seconds for it to end. ``force`` does not wait for the step: it sends SIGTERM to the
    training process group (every rank and data worker), then SIGKILL after ``grace`` seconds, so nothing is
    left holding a GPU; progress since the last checkpoint is lost. A run whose process is already gone is
    recorded as crashed.
    """
    status = run.status()
    if status.slurm_job is not None and (status.state == "queued" or (force and status.is_active)):
        return _cancel_slurm_job(run, status, grace)
    if status.state == "crashed" and run.stored_status().is_active:
        return run.write_status(state="crashed", reason=status.reason, ended=now_iso())
    if not status.is_active:
        raise RunError(f"run {run.id} is not running (it is {status.state}); there is nothing to stop")
    if force and status.host != socket.gethostname():
        raise RunError(
            f"run {run.id} runs on {status.host}; force-stop it there (`glmtui stop {run.id} --force`)"
        )
    if force and (stranger := _not_the_trainer(run, status)):
        # status.json names a live process that is not this run's trainer (a crafted or copied folder):
        # it is never signalled, and the run, whose own process is not there, is recorded as crashed.
        return run.finish(
            "crashed", f"{stranger}, so glmtui signalled nothing; `glmtui resume {run.id}` restarts it"
        )
    run.request_stop()
    if status.state != "stopping":
        run.write_status(state="stopping")
    if force:
        _terminate_group(status, grace)
        if run.stored_status().is_active:
            checkpoint = run.latest_checkpoint()
            run.write_status(
                state="stopped",
                ended=now_iso(),
                reason=f"stopped by force near step {run.stored_status().step}; "
                + (
                    f"resume continues from {checkpoint.path.name}"
                    if checkpoint
                    else "no checkpoint was saved"
                ),
            )
        return run.status()
    return wait_for_end(run, timeout)


def _cancel_slurm_job(run: Run, status: RunStatus, grace: float) -> RunStatus:
    """``scancel`` the run's job (a forced stop, or a job still waiting) and record the stop once it has ended.

    Slurm sends SIGTERM to every process of the job, then SIGKILL after its KillWait; this waits for the job
    to leave its running states (``grace`` plus a minute) before writing the run's final state.
    """
    from glmcore.slurm.jobs import cancel, job_info

    run.request_stop()
    cancel(status.slurm_job)
    deadline = time.monotonic() + grace + 60.0
    while (info := job_info(status.slurm_job)) is not None and info.running and time.monotonic() < deadline:
        time.sleep(STOP_POLL_S)
    stored = run.stored_status()
    if stored.state not in ("queued", *ACTIVE_STATES):
        return run.status()
    if stored.started is None:
        run.stop_request_path.unlink(missing_ok=True)
        return run.write_status(
            state="created",
            reason=f"never launched: its Slurm job {status.slurm_job} was cancelled before it started; "
            f"start it with `glmtui resume {run.id}`",
        )
    checkpoint = run.latest_checkpoint()
    return run.finish(
        "stopped",
        f"stopped by force (Slurm job {status.slurm_job} cancelled) near step {stored.step}; "
        + (f"resume continues from {checkpoint.path.name}" if checkpoint else "no checkpoint was saved"),
    )


def _not_the_trainer(run: Run, status: RunStatus) -> str | None:
    """Why the live process status.json names is not ``run``'s training process, or None when it is one.

    Its start time must be the recorded one, and its command line must name the run folder or it must run in
    it (every launch runs the trainer there; torchrun and a trainer started by hand name it).
    """
    pid = status.pid
    if pid is None or status.pid_start_time is None:
        return (
            f"status.json names pid {pid} without its start time, so it cannot be told from another process"
        )
    if not process_matches(pid, status.pid_start_time):
        return None  # gone: there is nothing to signal (the caller records the stop)
    found = process_command(pid)
    if found is None:
        return None
    command, folder = found
    places = {str(run.path), str(run.path.resolve())}
    named = any(os.path.normpath(os.path.join(folder or "/", part)) in places for part in command)
    if named or folder in places:
        return None
    shown = shlex.join(command)
    return f"pid {pid} runs `{shown[:80]}{'…' if len(shown) > 80 else ''}`, not run {run.id}'s training"


def _terminate_group(status: RunStatus, grace: float) -> None:
    """SIGTERM, then SIGKILL, the training process and its process group (when it leads one)."""
    pid = status.pid
    if pid is None or not process_matches(pid, status.pid_start_time):
        return
    leads_group = os.getpgid(pid) == pid

    def alive() -> bool:
        return process_matches(pid, status.pid_start_time)

    def send(signal_number: int) -> None:
        # A group id stays reserved while any member lives, so signalling the group is safe even after its
        # leader has exited; a lone pid is signalled only while it is still the same process.
        with contextlib.suppress(ProcessLookupError):
            if leads_group:
                os.killpg(pid, signal_number)
            elif alive():
                os.kill(pid, signal_number)

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(STOP_POLL_S)
    send(signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    while alive() and time.monotonic() < deadline:
        time.sleep(STOP_POLL_S / 4)


def describe_failure(exc: BaseException, step: int | None = None) -> str:
    """The ``reason`` to record for a training process that failed with ``exc``: what happened, what to change."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    at = f" at step {step}" if step is not None else ""
    if any(
        type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(error) for error in chain
    ):
        return (
            f"CUDA ran out of memory{at}: try a smaller per-device batch with more gradient accumulation, "
            "quantization_bit 4, or shorter max_source/target lengths"
        )
    if not isinstance(exc, GlmError) and is_disk_full(exc, Path.cwd()):
        filename = next(
            (error.filename for error in chain if isinstance(error, OSError) and error.filename), None
        )
        folder = (
            Path(filename).parent if filename else Path.cwd()
        )  # the training process runs in its run folder
        with contextlib.suppress(OSError):
            free = _format_bytes(shutil.disk_usage(folder).free)
            return f"disk full{at}: {free} free on {folder} ({type(exc).__name__}: {exc})"
    if isinstance(exc, KeyboardInterrupt):
        return f"stopped at once{at} (a forced stop or interrupt); steps after the latest checkpoint are lost"
    if isinstance(exc, GlmError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
