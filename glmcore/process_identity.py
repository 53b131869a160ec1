"""Which process a pid names: its start time, so a reused pid is never taken for the process recorded
(run folders and model servers both record a pid with its start time)."""

from __future__ import annotations

import os
from pathlib import Path

from glmcore.errors import RunError

START_TIME_TOLERANCE_S = 2.0
"""Process start times computed from /proc drift by up to a second with the boot time; a reused pid differs
by far more."""


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
