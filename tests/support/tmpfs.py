"""A really small filesystem for disk-full tests: a tmpfs of a given size, mounted for the test (root only)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``256k``) on ``mountpoint``; skips the test where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("a disk that really fills up needs a tmpfs, and mounting one needs root")
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Write a filler file until the filesystem of ``folder`` is full (then free ``leave`` bytes of it)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        block = b"\0" * 4096
        try:
            while True:
                handle.write(block)
        except OSError:
            pass
    if leave:
        os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler
