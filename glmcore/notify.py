"""Telling the user when a run ends (finishes, fails, crashes or is stopped) and when a sweep ends.

The app rings the terminal bell and shows a notification for what it sees end (``RunWatch``). For the user who
closed the laptop there is one command per workspace, in ``<workspace>/notify.toml``::

    command = ["notify-send", "glmtui"]     # or ["curl", "-fsS", "-d", "@-", "https://…"], a script…

It is run as an argument list (never through a shell), with the event's facts as ``GLMTUI_*`` environment
variables (``notification_env``), stdin empty, its output kept in the event's marker file.

Each event runs the command exactly once, however many glmtui processes see it: whoever reports an event first
creates its marker, ``<run>/notifications/<event>``, with O_CREAT | O_EXCL, and only the process that created it
runs the command. A run's own training process reports how it finished, failed or was stopped (``announce_end``)
and then whether that ended its sweep; a crash, which no training process is left to report, and a sweep's end are
reported by the first glmtui process that finds them (``report_found``: `glmtui runs`, the app, the queue worker).
One run attempt has one end, so the marker is named after the attempt (its pid and start time): a run resumed
and ended again is a new event. Without a configured command nothing is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.runs import Run, RunStatus, RunStore
from glmcore.sweep import sweep_of
from glmcore.text import without_unwritable

SETTINGS_FILE = "notify.toml"
"""In the workspace root: the notification command."""
NOTIFICATIONS_FOLDER = "notifications"
"""In a run folder: one marker per event reported, holding its facts and the command's output."""
ENDED_STATES = ("finished", "failed", "stopped", "crashed")
SWEEP_ENDED = "sweep-ended"
COMMAND_TIMEOUT_S = 300.0
"""A command still running after this is ended (it must not pile up on a host that runs many sweeps)."""


class NotifyError(GlmError):
    """notify.toml cannot be used as it is."""


@dataclass(frozen=True)
class NotifySettings:
    command: tuple[str, ...] = ()

    @classmethod
    def load(cls, workspace_root: Path) -> NotifySettings:
        """``<workspace>/notify.toml`` (absent: no command); NotifyError says what to fix in it."""
        path = workspace_root / SETTINGS_FILE
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise NotifyError(f"{path} cannot be read as TOML ({error}); fix it or delete it") from None
        unknown = sorted(set(data) - {"command"})
        if unknown:
            raise NotifyError(
                f"{path}: {', '.join(map(repr, unknown))} is not a setting; the one setting is command"
            )
        command = data.get("command", [])
        if not isinstance(command, list) or not all(isinstance(part, str) and part for part in command):
            raise NotifyError(
                f'{path}: command must be a list of arguments such as ["notify-send", "glmtui"], not {command!r} '
                "(it is never run through a shell)"
            )
        return cls(tuple(command))


@dataclass(frozen=True)
class Ending:
    """One event to tell the user about: a run's attempt that ended, or a whole sweep."""

    event: str
    """finished, failed, stopped, crashed, or sweep-ended."""
    run: Run
    """The run that ended; for a sweep, the run that holds the sweep's marker (its first)."""
    status: RunStatus
    sweep: str | None = None
    sweep_states: tuple[tuple[str, int], ...] = ()
    """For a sweep: how many of its runs ended in each state."""


def workspace_root(run: Run) -> Path:
    """Runs live in ``<workspace>/runs/<id>``."""
    return run.path.parent.parent


def _attempt(status: RunStatus) -> str:
    """A name for one attempt of a run: its process and when it started (a resume is a new attempt)."""
    return re.sub(r"[^0-9A-Za-z]+", "", f"{status.pid or 0}-{status.started or status.created or ''}")


def marker_path(ending: Ending) -> Path:
    name = f"sweep-{ending.sweep}" if ending.event == SWEEP_ENDED else f"end-{_attempt(ending.status)}"
    return ending.run.path / NOTIFICATIONS_FOLDER / name


def notification_env(ending: Ending) -> dict[str, str]:
    """The facts the command gets, as environment variables (all strings; empty when unknown)."""
    status, run = ending.status, ending.run
    last_loss = next((event.get("loss") for event in reversed(run.events()) if event["kind"] == "log"), None)
    facts = {
        "GLMTUI_EVENT": ending.event,
        "GLMTUI_RUN_ID": run.id,
        "GLMTUI_RUN_DIR": str(run.path),
        "GLMTUI_STATE": status.state,
        "GLMTUI_REASON": status.reason or "",
        "GLMTUI_STEP": str(status.step),
        "GLMTUI_TOTAL": str(status.total),
        "GLMTUI_HOST": status.host or "",
        "GLMTUI_LOSS": "" if last_loss is None else f"{last_loss:.6g}",
        "GLMTUI_SWEEP": ending.sweep or "",
    }
    with contextlib.suppress(GlmError):
        facts["GLMTUI_RUN_NAME"] = run.config.name
    if ending.event == SWEEP_ENDED:
        facts["GLMTUI_SWEEP_STATES"] = " ".join(f"{state}={count}" for state, count in ending.sweep_states)
    # A name or reason from a hand-edited or old run folder may hold a NUL, which no variable can carry.
    return {name: without_unwritable(value) for name, value in facts.items()}


def dispatch(ending: Ending, settings: NotifySettings) -> bool:
    """Run the command for ``ending`` if this process is the first to report it; True if it was."""
    if not settings.command:
        return False
    marker = marker_path(ending)
    marker.parent.mkdir(exist_ok=True)
    try:
        descriptor = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    env = notification_env(ending)
    with os.fdopen(descriptor, "wb") as output:
        output.write((json.dumps(env, ensure_ascii=False) + "\n").encode("utf-8"))
        output.flush()
        try:
            process = subprocess.Popen(
                list(settings.command),
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=ending.run.path,
                start_new_session=True,  # outlives a CLI that exits at once, and Ctrl-C in its terminal
            )
        except (OSError, ValueError) as error:
            failure = f"glmtui: the {ending.event} notification of run {ending.run.id} was not sent: "
            failure += f"could not run {settings.command[0]}: {error}"
            output.write(f"{failure}\n".encode())
            print(failure, file=sys.stderr, flush=True)  # a training process's stderr is its train.log
            return True
    threading.Thread(target=_reap, args=(process,), daemon=True).start()
    return True


def _reap(process: subprocess.Popen) -> None:
    try:
        process.wait(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def announce_end(run: Run) -> list[Ending]:
    """From the run's own process once it recorded how it ended: the run's end, and its sweep's if this ended it.

    Never raises for the notification: a command that cannot run, or a bad notify.toml, is printed (train.log).
    """
    try:
        settings = NotifySettings.load(workspace_root(run))
        status = run.stored_status()
        endings = [Ending(status.state, run, status)]
        endings += _sweep_endings([run], RunStore(run.path.parent))
        for ending in endings:
            dispatch(ending, settings)
        return endings
    except (GlmError, OSError, ValueError) as error:
        print(f"glmtui: the notification was not sent: {error}", flush=True)
        return []


def _sweep_endings(
    runs: Iterable[Run], store: RunStore, statuses: dict[Run, RunStatus] | None = None
) -> list[Ending]:
    """Each sweep of ``runs`` whose runs have all ended (none created-to-be-queued, queued or active)."""
    sweeps = {record["sweep"] for run in runs if (record := sweep_of(run))}
    if not sweeps:
        return []
    members: dict[str, list[tuple[int, Run]]] = {}
    for run in store.list():
        record = sweep_of(run)
        if record and record["sweep"] in sweeps:
            members.setdefault(record["sweep"], []).append((record.get("index", 0), run))
    endings = []
    for sweep, indexed in sorted(members.items()):
        group = [run for _, run in sorted(indexed, key=lambda item: item[0])]
        states = [(statuses or {}).get(run) or run.status() for run in group]
        if all(status.state in ENDED_STATES for status in states):
            counts: dict[str, int] = {}
            for status in states:
                counts[status.state] = counts.get(status.state, 0) + 1
            endings.append(Ending(SWEEP_ENDED, group[0], states[0], sweep, tuple(sorted(counts.items()))))
    return endings


def found_endings(store: RunStore, statuses: dict[Run, RunStatus]) -> list[Ending]:
    """What a reader finds that no training process reports: crashed runs and ended sweeps."""
    crashed = [
        Ending("crashed", run, status) for run, status in statuses.items() if status.state == "crashed"
    ]
    return crashed + _sweep_endings(statuses, store, statuses)


def report_found(store: RunStore, statuses: dict[Run, RunStatus], settings: NotifySettings) -> list[Ending]:
    """Run the command for each crash and sweep end in ``statuses`` not yet reported; returns those reported."""
    if not settings.command:
        return []
    return [ending for ending in found_endings(store, statuses) if dispatch(ending, settings)]


def report_found_in(store: RunStore) -> str | None:
    """``report_found`` over every run of a workspace (`glmtui runs`, the queue worker); returns why the command
    cannot be used when notify.toml is wrong, else None."""
    try:
        settings = NotifySettings.load(store.runs_dir.parent)
    except NotifyError as error:
        return str(error)
    if settings.command:
        report_found(store, read_statuses(store), settings)
    return None


def read_statuses(store: RunStore) -> dict[Run, RunStatus]:
    """Every run's status; a folder that cannot be read is left out."""
    statuses = {}
    for run in store.list():
        with contextlib.suppress(GlmError, OSError):
            statuses[run] = run.status()
    return statuses


class RunWatch:
    """What ended since the last look, for a process that stays open (the app, fed by its runs watcher): the
    first look sets the scene, then each ``see`` returns the runs seen going from not-ended to ended and the
    sweeps that ended with them, and runs the workspace's command for crashes and sweep ends nobody reported yet."""

    def __init__(self, store: RunStore, workspace: Path) -> None:
        self.store = store
        self.workspace = workspace
        self._seen: dict[Run, str] | None = None
        self.problem: str | None = None
        """Why the workspace's command cannot be used (a bad notify.toml), for the app to say."""

    def see(self, statuses: dict[Run, RunStatus]) -> list[Ending]:
        """What ended between the last look and ``statuses`` (every run's status now)."""
        previous, self._seen = self._seen, {run: status.state for run, status in statuses.items()}
        try:
            report_found(self.store, statuses, NotifySettings.load(self.workspace))
            self.problem = None
        except NotifyError as error:
            self.problem = str(error)
        if previous is None:
            return []
        ended = [
            Ending(status.state, run, status)
            for run, status in statuses.items()
            if status.state in ENDED_STATES and previous.get(run, "created") not in ENDED_STATES
        ]
        return ended + _sweep_endings([ending.run for ending in ended], self.store, statuses)
