"""Who a GPU process is, read from /proc: its command line, its owner, and whether it trains a glmtui run.

NVML gives only pids and memory; nvidia-smi and nvitop look the rest up in /proc, and so does this. A process
of another container (or one hidden by ``hidepid``) is not visible: its fields stay None and the panels say so.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

TRAINER_MODULE = "glmcore.train"
"""The module every glmtui training rank runs (``python -m glmcore.train RUN_DIR``)."""


@dataclass(frozen=True)
class ProcessIdentity:
    """What /proc says about one process; None where it cannot be read from here."""

    command: str | None
    user: str | None
    run: str | None
    """The run folder when the process is a glmtui training rank."""
    rank: int | None
    """torchrun's RANK for a training rank of a multi-GPU run (readable for one's own processes only)."""


def _arguments(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode("utf-8", errors="replace") for part in raw.split(b"\0") if part] or None


def process_command(pid: int) -> str | None:
    """The command line of ``pid`` from /proc, or None if it has exited or is not visible from here."""
    arguments = _arguments(pid)
    return None if arguments is None else " ".join(arguments)


def process_user(pid: int) -> str | None:
    """The login name owning ``pid`` (its uid where the name is unknown), or None if it is not visible."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def trained_run(arguments: list[str]) -> str | None:
    """The run folder a ``python -m glmcore.train RUN_DIR`` command line trains, or None for any other."""
    for position in range(len(arguments) - 2):
        if arguments[position] == "-m" and arguments[position + 1] == TRAINER_MODULE:
            return arguments[position + 2]
    return None


def _torchrun_rank(pid: int) -> int | None:
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in environment:
        if entry.startswith(b"RANK="):
            value = entry[len(b"RANK=") :]
            return int(value) if value.isdigit() else None
    return None


def process_identity(pid: int) -> ProcessIdentity:
    """Everything the GPU panels show about ``pid`` beyond NVML's memory figure."""
    arguments = _arguments(pid)
    run = None if arguments is None else trained_run(arguments)
    return ProcessIdentity(
        command=None if arguments is None else " ".join(arguments),
        user=process_user(pid),
        run=run,
        rank=_torchrun_rank(pid) if run is not None else None,
    )
