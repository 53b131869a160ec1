"""Paths that come from a server (a listing, an index) checked before they are used under a destination.

A share link or a mirror is an arbitrary server, so a file name it sends is untrusted input: ``../../.bashrc``
or ``/etc/x`` must never become a place glmtui writes to. The archive unpacker applies the same rule to members.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from glmcore.download.errors import UnsafeListing
from glmcore.text import control_character


def path_problem(name: str, destination: Path) -> str | None:
    """Why ``name`` cannot be written under ``destination`` (None when it can): absolute, ``..``, outside, or
    holding a control character (no file name holds a NUL; a newline or escape garbles what is shown)."""
    member = PurePosixPath(name.replace("\\", "/"))
    if not name.strip() or not member.parts:
        return "it is empty"
    if control := control_character(name):
        return f"it holds the control character {control}"
    if member.is_absolute() or ":" in member.parts[0]:
        return "it is an absolute path"
    if ".." in member.parts:
        return "it has a '..' part"
    root = Path(destination).expanduser().resolve()
    if not (root / member).resolve().is_relative_to(root):
        return "it resolves outside the destination (through a link)"
    return None


def check_inside(names: list[str], destination: Path, server: str, what: str = "a file") -> None:
    """Refuse the whole download when one of ``names`` would land outside ``destination``."""
    for name in names:
        if problem := path_problem(name, destination):
            raise UnsafeListing(
                f"{server} names {what} {name!r} that would be written outside {destination} ({problem}); "
                "nothing was downloaded. Do not use this source."
            )
