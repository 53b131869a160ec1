"""A fixed workspace root for snapshot tests, clean when a test module that uses it starts.

The snapshots show the workspace's paths, so the root cannot be a fresh temporary folder: it is one fixed folder
under /tmp, whatever TMPDIR says (under another TMPDIR every snapshot would show other paths). What an earlier
session left there (or a session on the same machine that is still running) must not show in this one's
snapshots, so a test module takes the root under a lock and empties it first and last.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FIXED_PARENT = Path("/tmp")
"""Where the fixed roots live: the same folder on every machine and under any TMPDIR."""


def fixed_root(name: str) -> Path:
    """The folder ``name`` under /tmp (the same path on every run)."""
    return FIXED_PARENT / name


@contextmanager
def clean_root(root: Path) -> Iterator[Path]:
    """Hold ``root`` for this session alone (other sessions wait), empty before and after."""
    with open(root.with_name(root.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if root.exists():
                shutil.rmtree(root)  # a root that cannot be emptied fails the session, not a snapshot
            yield root
        finally:
            shutil.rmtree(root, ignore_errors=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


def module_on_a_clean_root(root: Path):
    """A fixture, for a module to assign to a name: its tests run on ``root`` held by `clean_root`."""

    @pytest.fixture(autouse=True, scope="module")
    def held_root() -> Iterator[Path]:
        with clean_root(root) as held:
            yield held

    return held_root
