"""Following growing files (events.jsonl, train.log) in the manner of toolong, and reading events as they
stand after resumes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from glmcore.errors import RunError

LINE_BLOCK_BYTES = 1 << 16
"""How much of a file is read at a time, forwards or backwards: memory stays this small whatever its size."""


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
