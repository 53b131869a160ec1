"""One thread that reads the run folders for a process that stays open (the app), in the manner of toolong's
single watcher: every run's status and last logged step, and all that one followed run's files gained.

Each look hands one ``RunsLook`` to the subscribers (the Runs screen, the Training
view and the notifier all read the same look), so the folders are read once however many want them. A Slurm
run's status asks squeue, which can take its whole timeout: that happens here, never on a UI thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from glmcore.errors import GlmError
from glmcore.runs import EventTail, FileTail, Run, RunStatus, RunStore
from glmcore.slurm.gpus import NodeReading, latest_readings

FOLLOW_S = 0.5
"""How often the followed run's files are read (its curve and log move while the user watches)."""
ALL_RUNS_EVERY = 2
"""Every run's status is read once in this many looks (each second)."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FollowedRun:
    """What the followed run's folder gained since the last look (from the start after ``follow``)."""

    run: Run
    events: list[dict]
    log_lines: list[str]
    status: RunStatus
    node_gpus: list[NodeReading] | None = None
    """A Slurm run's GPU readings from its nodes (None for a run on this machine)."""


@dataclass(frozen=True)
class RunsLook:
    """One look at the run folders: every run (newest first) with its status and last ``log`` event, when this
    look read them all, and the followed run's news."""

    statuses: dict[Run, RunStatus] | None = None
    """Every readable run's status, newest first; None when only the followed run was read."""
    last_logs: dict[Run, dict | None] = field(default_factory=dict)
    unreadable: dict[Run, str] = field(default_factory=dict)
    """Why each run folder that cannot be read cannot (one damaged folder does not hide the others)."""
    followed: FollowedRun | None = None


LookCallback = Callable[[RunsLook], None]


class RunsWatcher:
    """Reads the run folders every ``interval`` seconds in a daemon thread and hands each look to the
    subscribers (on the watcher's thread: a UI must hop to its own). ``look`` can also be called from another
    thread for a look now; looks never overlap."""

    def __init__(self, store: RunStore, *, interval: float = FOLLOW_S) -> None:
        self.store = store
        self.interval = interval
        self._callbacks: list[LookCallback] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glmcore-runs-watcher", daemon=True)
        self._tails: dict[Run, tuple[EventTail, dict | None]] = {}
        self._follow_request: tuple[Run | None] = (None,)
        self._followed_request = self._follow_request
        self._followed: tuple[Run, EventTail, FileTail] | None = None
        self._followed_shown: tuple[RunStatus, list[NodeReading] | None] | None = None
        self._looks = 0
        self.latest: RunsLook | None = None
        """The last look that read every run; None before the first."""

    def subscribe(self, callback: LookCallback) -> None:
        self._callbacks.append(callback)

    def start(self) -> RunsWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread to end after its current look; never waits (a look may be waiting on squeue)."""
        self._stop.set()

    def follow(self, run: Run | None) -> None:
        """Follow ``run``'s files from their start (None: none); the next look hands all of them. Never waits
        for a look under way (it may be waiting on squeue): the request is only noted."""
        self._follow_request = (run,)  # a new tuple each time: following the same run again starts over

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.look(every_run=self._looks % ALL_RUNS_EVERY == 0)
            except Exception:  # runs/ unreadable for a moment: the next look tries again
                logger.exception("a look at the run folders failed")

    def look(self, *, every_run: bool = True) -> RunsLook | None:
        """Read the folders (all runs, or only the followed one) and hand the look to the subscribers; a look
        at the followed run alone that found nothing new is not handed on. Returns the look handed on."""
        with self._lock:
            self._looks += 1
            look = self._read_every_run() if every_run else RunsLook()
            if (followed := self._read_followed()) is not None:
                look = dataclasses.replace(look, followed=followed)
            if look.statuses is None and followed is None:
                return None
            if look.statuses is not None:
                self.latest = look
            for callback in list(self._callbacks):  # under the lock: subscribers see looks in order
                try:
                    callback(look)
                except Exception:  # one failing subscriber must not stop the others or the watching
                    logger.exception("a runs watcher subscriber failed")
            return look

    def _read_every_run(self) -> RunsLook:
        statuses: dict[Run, RunStatus] = {}
        last_logs: dict[Run, dict | None] = {}
        unreadable: dict[Run, str] = {}
        runs = self.store.list()
        for run in runs:
            try:
                tail, last_log = self._tails.get(run) or (run.tail_events(), None)
                for record in tail.iter_events():
                    if record.get("kind") == "log":
                        last_log = record
                self._tails[run] = (tail, last_log)
                statuses[run], last_logs[run] = run.status(), last_log
            except (GlmError, OSError) as error:
                unreadable[run] = str(error)
        for gone in set(self._tails) - set(runs):
            del self._tails[gone]
        return RunsLook(statuses, last_logs, unreadable)

    def _read_followed(self) -> FollowedRun | None:
        if (request := self._follow_request) is not self._followed_request:
            self._followed_request, (run,) = request, request
            self._followed = (run, run.tail_events(), FileTail(run.log_path)) if run is not None else None
            self._followed_shown = None
        if self._followed is None:
            return None
        run, events_tail, log_tail = self._followed
        with contextlib.suppress(GlmError, OSError):
            events = events_tail.read_events()
            lines = log_tail.read_lines()
            status = run.status()
            readings = latest_readings(run.path) if status.slurm_job is not None else None
            if events or lines or (status, readings) != self._followed_shown:
                self._followed_shown = (status, readings)
                return FollowedRun(run, events, lines, status, readings)
        return None
