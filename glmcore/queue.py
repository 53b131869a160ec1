"""The run queue: runs that wait, in the workspace's files, until the GPUs they ask for have room.

A queued run is an ordinary run folder whose status.json says ``queued``; that state is the truth, and
``<workspace>/queue/`` only adds what the folders cannot hold (docs/runs.md, "The queue"):

- ``order.json``: the queue's order, ``{"runs": [id, …]}``; a queued run missing from it comes last (by the time
  it was queued), an id that is no longer queued is dropped;
- ``queue.lock``: an ``flock`` held by whoever changes the order or admits runs, so one admission pass runs at a
  time on this host and two passes never both count the same free memory;
- ``worker.lock``: every worker holds a shared ``flock`` on it while it lives; an exclusive try tells whether any
  worker is alive (the kernel drops a dead worker's lock, so no pid file goes stale);
- ``worker.log``: what the detached worker did; ``settings.toml``: the admission settings.

No process has to stay up: a worker (``python -m glmcore.queue WORKSPACE``, which ``glmtui sweep`` and
``glmtui train --queue`` start detached, or ``glmtui queue work`` in front) admits what fits, starts it through
the run's claim (``start_queued_now``, so two workers never start one run twice), and exits when nothing
is queued. Kill every process and the next worker carries on from the files.

Admission (``admit``), in queue order: a run waits while a run ahead of it waits for one of its GPUs (or the
CPU), while its GPU already runs ``max_runs_per_gpu`` runs (``max_cpu_runs`` for CPU runs), or while its VRAM
estimate plus the safety margin exceeds NVML's free memory less what runs already started still have to
allocate before their peak (a run is at its peak once it logged a step past where it started; until then it is
held at its estimate less what NVML shows its processes using).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import socket
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from glmcore.errors import GlmError
from glmcore.gpu import NO_DRIVER_REASON, GpuSnapshot, read_gpus
from glmcore.notify import report_found_in
from glmcore.runs import Run, RunError, RunStore, claim, config_problem, now_iso, start_queued_now
from glmcore.units import GIB, format_gib
from glmcore.workspace import Workspace, atomic_write_text

QUEUE_FOLDER = "queue"
CPU = "cpu"
"""The resource a run without GPUs takes."""
WORKER_START_S = 30.0
"""How long ``ensure_worker`` waits for the worker it started to take worker.lock."""


class QueueError(GlmError):
    """The queue cannot do what was asked (a run that is not queued, unreadable settings)."""


@dataclass(frozen=True)
class QueueSettings:
    """How many runs may share a GPU or the CPU, and how much memory admission leaves free."""

    max_runs_per_gpu: int = 1
    max_cpu_runs: int = 1
    """Runs without GPUs at once (training on the CPU takes every core)."""
    safety_margin_gib: float = 1.0
    """Memory left free on a GPU beyond a run's estimate, for the estimate's error and other users' growth."""
    poll_s: float = 5.0
    """How often a worker looks again at the queue and the GPUs."""

    @classmethod
    def load(cls, path: Path) -> QueueSettings:
        """``settings.toml`` (absent: the defaults); QueueError names the file and the bad setting."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise QueueError(f"{path} cannot be read as TOML ({error}); fix it or delete it") from None
        return cls.from_values(data, where=str(path))

    @classmethod
    def from_values(cls, data: dict[str, object], *, where: str) -> QueueSettings:
        known = {setting.name: setting.type for setting in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for key, value in data.items():
            if key not in known:
                raise QueueError(f"{where}: {key!r} is not a queue setting; they are {', '.join(known)}")
            whole = known[key] == "int"
            if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
                kind = "a whole number" if whole else "a number"
                raise QueueError(f"{where}: {key} must be {kind}, not {value!r}")
            lowest, words = (1, "at least 1") if whole else (0, "0 or more")
            if value < lowest or (key == "poll_s" and value == 0):
                raise QueueError(
                    f"{where}: {key} must be {words if key != 'poll_s' else 'more than 0'}, not {value}"
                )
            values[key] = value
        return cls(**values)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, tomli_w.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class Candidate:
    """A queued run as admission sees it: the GPUs it asks for and its VRAM estimate per GPU (None: unknown)."""

    run_id: str
    gpus: tuple[int, ...]
    need: int | None


@dataclass(frozen=True)
class Occupant:
    """A run already going on this host: its GPUs and, per GPU, what it has yet to allocate before its peak."""

    run_id: str
    gpus: tuple[int, ...]
    pending: dict[int, int] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """Whether the run at ``position`` (1 is next) starts now, and if not, why it waits."""

    run_id: str
    position: int
    admitted: bool
    reason: str | None = None
    unstartable: bool = False
    """Its config cannot start it (``reason`` says why): it leaves the queue at the next pass."""


def _resource_name(resource: int | str) -> str:
    return "the CPU" if resource == CPU else f"GPU {resource}"


def admit(
    candidates: Sequence[Candidate],
    occupants: Sequence[Occupant],
    free: dict[int, int] | None,
    settings: QueueSettings,
    *,
    no_gpu_reason: str = "NVML cannot be read here",
) -> list[Decision]:
    """Which queued runs start now, in queue order, and why each other one waits.

    ``free`` is NVML's free memory per GPU (None when no GPU can be read). Each run admitted in this pass is held
    at its full estimate for the runs after it, so several admitted at once never oversubscribe a GPU.
    """
    running = Counter(resource for occupant in occupants for resource in (occupant.gpus or (CPU,)))
    held = Counter()
    for occupant in occupants:
        held.update(occupant.pending)
    margin = round(settings.safety_margin_gib * GIB)
    waiting_for: dict[int | str, tuple[str, int]] = {}
    decisions = []
    for position, candidate in enumerate(candidates, start=1):
        resources = candidate.gpus or (CPU,)
        reason = _blocked_reason(resources, waiting_for)
        if reason is None:
            for resource in resources:
                limit = settings.max_cpu_runs if resource == CPU else settings.max_runs_per_gpu
                if running[resource] >= limit:
                    reason = (
                        f"{_resource_name(resource)}: {running[resource]} running, at most {limit} at once"
                    )
                    break
        if reason is None and candidate.gpus:
            reason = _memory_reason(candidate, free, held, margin, no_gpu_reason)
        if reason is not None:
            decisions.append(Decision(candidate.run_id, position, False, reason))
            for resource in resources:
                waiting_for.setdefault(resource, (candidate.run_id, position))
            continue
        decisions.append(Decision(candidate.run_id, position, True))
        running.update(resources)
        for gpu in candidate.gpus:
            held[gpu] += candidate.need or 0
    return decisions


def _blocked_reason(
    resources: Sequence[int | str], waiting_for: dict[int | str, tuple[str, int]]
) -> str | None:
    for resource in resources:
        if resource in waiting_for:
            ahead, position = waiting_for[resource]
            return f"{_resource_name(resource)}: after {ahead} (position {position})"
    return None


def _memory_reason(
    candidate: Candidate, free: dict[int, int] | None, held: Counter, margin: int, no_gpu_reason: str
) -> str | None:
    for gpu in candidate.gpus:
        if free is None:
            return f"GPU {gpu}: free memory unknown ({no_gpu_reason})"
        if gpu not in free:
            return f"GPU {gpu} is not on this machine (it has {len(free)} GPUs)"
        if candidate.need is None:
            continue
        available = free[gpu] - held[gpu]
        if candidate.need + margin > available:
            starting = f" ({format_gib(held[gpu])} more held for runs starting)" if held[gpu] else ""
            return (
                f"GPU {gpu}: needs {format_gib(candidate.need)} GiB + {format_gib(margin)} margin, "
                f"{format_gib(max(0, available))} free{starting}"
            )
    return None


def estimate_need(run: Run) -> int | None:
    """The run's VRAM estimate per GPU in bytes; None when its model folder cannot be read (it will fail)."""
    from glmcore.estimate import ModelShape, estimate_vram

    try:
        shape = ModelShape.from_model_dir(run.config.model_path, run.config.family)
        return estimate_vram(shape, run.config).total
    except (GlmError, OSError):
        return None


def _used_by(run: Run, snapshot: GpuSnapshot | None) -> dict[int, int]:
    """Memory NVML shows the run's own processes holding, per GPU."""
    used: Counter = Counter()
    for gpu in snapshot.gpus if snapshot else ():
        for process in gpu.processes:
            if process.run and Path(process.run) == run.path and process.used_memory:
                used[gpu.index] += process.used_memory
    return dict(used)


class Queue:
    """The queue of one workspace: its order, its lock, its workers and its settings."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.folder = workspace.root / QUEUE_FOLDER
        self.store = RunStore(workspace.runs_dir)

    @property
    def order_path(self) -> Path:
        return self.folder / "order.json"

    @property
    def lock_path(self) -> Path:
        return self.folder / "queue.lock"

    @property
    def worker_lock_path(self) -> Path:
        return self.folder / "worker.lock"

    @property
    def worker_log_path(self) -> Path:
        return self.folder / "worker.log"

    @property
    def settings_path(self) -> Path:
        return self.folder / "settings.toml"

    def settings(self) -> QueueSettings:
        return QueueSettings.load(self.settings_path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The queue lock: order changes and admission passes run one at a time on this host."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # the order

    def _stored_order(self) -> list[str]:
        try:
            ids = json.loads(self.order_path.read_text(encoding="utf-8")).get("runs", [])
        except (OSError, ValueError, AttributeError):
            return []
        return [run_id for run_id in ids if isinstance(run_id, str)]

    def _write_order(self, runs: Sequence[Run]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.order_path, json.dumps({"runs": [run.id for run in runs]}, indent=2) + "\n")

    def runs(self) -> list[Run]:
        """The queued runs, next first."""
        queued = {}
        for run in self.store.list():
            with contextlib.suppress(GlmError):
                status = run.stored_status()
                if status.state == "queued" and status.slurm_job is None:  # Slurm queues its own
                    queued[run.id] = (run, status.queued or "")
        ordered = [queued.pop(run_id)[0] for run_id in self._stored_order() if run_id in queued]
        return ordered + [run for run, _ in sorted(queued.values(), key=lambda item: (item[1], item[0].id))]

    def add(self, run: Run) -> int:
        """Queue a run that never started; returns its position."""
        with self.locked(), claim(run):
            status = run.status()
            if status.state not in ("created", "queued"):
                raise QueueError(
                    f"run {run.id} is {status.state}; only a run that never started can be queued"
                )
            order = self.runs()
            if status.state != "queued":
                run.write_status(state="queued", queued=now_iso(), reason=None)
                order.append(run)
            self._write_order(order)
            return order.index(run) + 1

    def move(self, run: Run, offset: int) -> int:
        """Move a queued run ``offset`` places (negative: towards the front); returns its new position."""
        with self.locked():
            order = self.runs()
            if run not in order:
                raise QueueError(f"run {run.id} is not queued (it is {run.status().state})")
            index = order.index(run)
            order.insert(max(0, min(len(order) - 1, index + offset)), order.pop(index))
            self._write_order(order)
            return order.index(run) + 1

    def cancel(self, run: Run) -> None:
        """Take a run off the queue; its folder stays, ``created``, to be started or deleted later."""
        with self.locked(), claim(run):
            status = run.status()
            if status.state != "queued":
                raise QueueError(
                    f"run {run.id} is not queued (it is {status.state}); there is nothing to cancel"
                )
            run.write_status(
                state="created",
                queued=None,
                reason=f"never launched: taken off the queue; start it with `glmtui resume {run.id}`",
            )
            self._write_order([queued for queued in self.runs() if queued != run])

    def _take_off(self, run: Run, problem: str) -> None:
        """Take a run that cannot start off the queue, with why (it would be refused at every pass)."""
        with contextlib.suppress(RunError), claim(run):  # else the next pass tries again
            if run.stored_status().state == "queued":
                run.write_status(state="created", queued=None, reason=f"never launched: {problem}")

    def queue_runs(self, runs: Sequence[Run]) -> tuple[list[int], int | None]:
        """Queue ``runs`` in their order and start a worker if none is alive; returns their positions and the
        new worker's pid (None: one was alive already)."""
        positions = [self.add(run) for run in runs]
        return positions, self.ensure_worker()

    # admission

    def occupants(self, snapshot: GpuSnapshot | None) -> list[Occupant]:
        """The runs going on this host, with what each has yet to allocate before its peak."""
        host = socket.gethostname()
        occupants = []
        for run in self.store.list():
            try:
                status = run.status()
            except GlmError:
                continue
            if not status.is_active or status.host != host:
                continue
            gpus = tuple(status.gpus)
            pending: dict[int, int] = {}
            at_peak = status.step > (status.resumed_from or 0)
            if gpus and not at_peak and (need := estimate_need(run)):
                used = _used_by(run, snapshot)
                pending = {gpu: max(0, need - used.get(gpu, 0)) for gpu in gpus}
            occupants.append(Occupant(run.id, gpus, pending))
        return occupants

    def plan(self, snapshot: GpuSnapshot | None = None) -> list[tuple[Run, Decision]]:
        """Every queued run with whether it would start now and why not; reads NVML when a run needs a GPU.

        A run whose config.toml cannot start it (edited by hand since it was queued: not TOML, a bad value) is
        ``unstartable``, with the reason, and takes no place from the others.
        """
        runs, problems = [], {}
        for run in self.runs():
            if problem := config_problem(run):
                problems[run] = problem
            else:
                runs.append(run)
        candidates = [
            Candidate(run.id, tuple(run.config.gpus), estimate_need(run) if run.config.gpus else None)
            for run in runs
        ]
        if snapshot is None and any(candidate.gpus for candidate in candidates):
            snapshot = read_gpus()
        free = None
        if snapshot is not None and snapshot.available:
            free = {gpu.index: gpu.memory_free for gpu in snapshot.gpus if gpu.memory_free is not None}
        reason = snapshot.reason if snapshot is not None else None
        if reason is None or reason == NO_DRIVER_REASON:  # the panels' sentence; here only the fact matters
            reason = "no NVIDIA driver here; `glmtui queue start RUN` starts it anyway"
        decisions = admit(candidates, self.occupants(snapshot), free, self.settings(), no_gpu_reason=reason)
        planned = list(zip(runs, decisions, strict=True))
        refused = [
            (run, Decision(run.id, len(planned) + number, False, problem, unstartable=True))
            for number, (run, problem) in enumerate(problems.items(), start=1)
        ]
        return planned + refused

    # workers

    def worker_alive(self) -> bool:
        """Whether any worker holds worker.lock (its lock dies with it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.worker_lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False

    def ensure_worker(self) -> int | None:
        """Start a detached worker when runs are queued and none is alive; returns its pid, or None."""
        with self.locked():
            if not self.runs() or self.worker_alive():
                return None
            with open(self.worker_log_path, "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "glmcore.queue", str(self.workspace.root)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.folder,
                    start_new_session=True,
                )
            # Until the worker holds worker.lock another caller would start a second one; wait for it.
            deadline = time.monotonic() + WORKER_START_S
            while process.poll() is None and not self.worker_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            return process.pid

    def work(self, *, program: Sequence[str] | None = None, say: Callable[[str], None] = print) -> None:
        """Admit and start queued runs until none is left, saying what starts and why the others wait.

        Holds a shared lock on worker.lock while it lives; it is released under the queue lock once the queue is
        empty, so a run queued a moment later either is seen here or finds no worker alive and starts one.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        worker_lock = open(self.worker_lock_path, "a")  # noqa: SIM115 (held for the worker's whole life)
        fcntl.flock(worker_lock, fcntl.LOCK_SH)
        said: dict[str, str] = {}
        try:
            while True:
                # A crash or a sweep's end nobody reported yet (the workspace's notification command, once).
                if (problem := report_found_in(self.store)) and said.get("notify") != problem:
                    said["notify"] = problem
                    say(f"{now_iso()} no notification was sent: {problem}")
                with self.locked():
                    if not self.runs():
                        fcntl.flock(worker_lock, fcntl.LOCK_UN)
                        say(f"{now_iso()} the queue is empty; the worker exits")
                        return
                    for run, decision in self._pass(program, None):
                        line = "started" if decision.admitted else f"waits: {decision.reason}"
                        if decision.unstartable:
                            line = f"left the queue: {decision.reason}"
                        if said.get(run.id) != line:
                            said[run.id] = line
                            say(f"{now_iso()} {run.id} {line}")
                time.sleep(self.settings().poll_s)
        finally:
            worker_lock.close()

    def _pass(
        self, program: Sequence[str] | None, snapshot: GpuSnapshot | None
    ) -> list[tuple[Run, Decision]]:
        """An admission pass for a caller that holds the queue lock; a launch refused or failed says why."""
        planned = []
        for run, decision in self.plan(snapshot):
            if decision.unstartable:
                self._take_off(run, decision.reason or "")
            elif decision.admitted:
                try:
                    start_queued_now(run, program=program)
                except RunError as error:  # started by hand meanwhile, or its launch failed (recorded)
                    decision = dataclasses.replace(decision, admitted=False, reason=f"not started: {error}")
            planned.append((run, decision))
        return planned


def main(argv: list[str]) -> int:
    """``python -m glmcore.queue WORKSPACE``: the detached worker."""
    if len(argv) != 1:
        print("usage: python -m glmcore.queue WORKSPACE", file=sys.stderr)
        return 2
    Queue(Workspace.from_env(Path(argv[0]))).work(say=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
