"""The transfer core every source goes through: plan, resume, verify, retry, report progress, cancel.

Each file is fetched into ``<destination>/<path>.part``, appended to from where it stopped (an HTTP Range
request, or a seek for a local copy), hashed while it arrives, checked against the manifest's sha256 and only then
renamed into place, so a file under its real name is always whole. A file that fails its checksum is fetched
once more from zero; if it fails again the source holds other bytes than the manifest and we say so. Files
verified once are remembered in ``.glmtui-verified.json`` by size and mtime, so restarting a 13 GB download does
not hash 13 GB again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from glmcore.download.archive import unpack_archive
from glmcore.download.errors import (
    ChecksumMismatch,
    DestinationNotWritable,
    IncompleteBody,
    NotEnoughDiskSpace,
    UnsafeArchive,
)
from glmcore.download.http import Body, Cancelled, RetryPolicy, Transient
from glmcore.download.paths import check_inside
from glmcore.errors import GlmError
from glmcore.units import format_bytes

if TYPE_CHECKING:
    from glmcore.catalog import Manifest

VERIFIED_FILE = ".glmtui-verified.json"
HASH_BLOCK = 4 * 1024 * 1024
INDEX_SUFFIX = ".index.json"
"""A weight index (``model.safetensors.index.json``): fetched first, its shard names checked like the listing."""


@dataclass(frozen=True)
class RemoteFile:
    """A file a source can deliver: where it goes (``path``, relative), what it should be, where it comes from."""

    path: str
    size: int | None
    sha256: str | None
    location: str


@dataclass(frozen=True)
class Listing:
    """What a source holds: the files to fetch, manifest files it lacks, files left out on purpose."""

    files: tuple[RemoteFile, ...]
    missing: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


def listing_of(listed: dict[str, RemoteFile], manifest: Manifest | None, include_code: bool) -> Listing:
    """What a source that lists its files delivers: the manifest's files (what the manifest leaves null, GLM-4's
    shards' size and sha256, taken from the source's listing), or every listed file without one; code files
    (.py) left out unless asked for, and the manifest's files the listing lacks named missing."""
    if manifest is None:
        wanted = [(path, None, None) for path in listed]
    else:
        wanted = [(file.path, file.size, file.sha256) for file in manifest.files]
    files, missing, skipped = [], [], []
    for path, size, sha256 in wanted:
        if path.endswith(".py") and not include_code:
            skipped.append(path)
        elif path not in listed:
            missing.append(path)
        else:
            entry = listed[path]
            size = size if size is not None else entry.size
            files.append(RemoteFile(path, size, sha256 or entry.sha256, entry.location))
    return Listing(tuple(files), tuple(missing), tuple(skipped))


class Source(ABC):
    """Where bytes come from. Subclasses list files and open a file from an offset; the core does the rest."""

    label: str
    name: str
    kind: Literal["model", "dataset"] = "model"
    unpack: bool = False
    retry: RetryPolicy = RetryPolicy()

    @abstractmethod
    def list_files(self) -> Listing:
        """The files this source would deliver (may go to the network)."""

    @abstractmethod
    def open_range(self, file: RemoteFile, offset: int) -> AbstractContextManager[Body]:
        """The bytes of ``file`` from ``offset`` on; raise ``Transient`` for failures worth retrying."""

    def mismatch_hint(self, file: RemoteFile) -> str:
        """What to tell the user when ``file`` keeps differing from its expected checksum."""
        return "The source serves different bytes than the manifest lists; try another source."

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release connections; called by ``run_download`` when it ends."""


FileState = Literal["complete", "unverified", "partial", "missing"]


@dataclass(frozen=True)
class PlannedFile:
    """A file of the plan with what is already on disk: ``present`` bytes (whole file or ``.part``)."""

    file: RemoteFile
    state: FileState
    present: int


@dataclass(frozen=True)
class DownloadPlan:
    """What a download will do: every file with its state, and the bytes still to fetch."""

    source: Source
    destination: Path
    files: tuple[PlannedFile, ...]
    missing: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int | None:
        """Size of all files, None when the source does not tell some sizes."""
        sizes = [planned.file.size for planned in self.files]
        return None if None in sizes else sum(size for size in sizes if size is not None)

    @property
    def bytes_to_fetch(self) -> int:
        """Bytes not yet on disk (files of unknown size count as zero)."""
        return sum(max((p.file.size or 0) - p.present, 0) for p in self.files if p.state != "complete")

    @property
    def is_complete(self) -> bool:
        return all(planned.state == "complete" for planned in self.files)


@dataclass(frozen=True)
class FileProgress:
    """One file in a progress snapshot; ``state`` is pending, checking, downloading, done or skipped."""

    path: str
    done: int
    total: int | None
    state: str


@dataclass(frozen=True)
class DownloadProgress:
    """An immutable snapshot passed to the progress callback (safe to hand to another thread).

    ``state`` is checking, downloading, retrying, unpacking, done, cancelled or failed. ``speed`` is bytes per
    second fetched in this run, smoothed; ``eta`` is seconds, None while unknown. ``notes`` are the messages
    worth showing (a checksum mismatch, a retry), oldest first; ``message`` is the latest one.
    """

    state: str
    files: tuple[FileProgress, ...]
    bytes_done: int
    bytes_total: int | None
    bytes_fetched: int
    speed: float
    eta: float | None
    current_file: str | None
    notes: tuple[str, ...] = ()
    message: str | None = None


@dataclass(frozen=True)
class DownloadResult:
    """How a download ended: ``cancelled`` leaves ``.part`` files to resume from."""

    destination: Path
    files: tuple[str, ...]
    bytes_fetched: int
    cancelled: bool
    missing: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


ProgressCallback = Callable[[DownloadProgress], None]


class VerifiedCache:
    """``.glmtui-verified.json``: files whose sha256 was checked, keyed by size and mtime, and unpacked archives."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / VERIFIED_FILE
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        self.files: dict[str, dict] = data.get("files", {})
        self.unpacked: dict[str, list[str]] = data.get("unpacked", {})

    def is_verified(self, folder: Path, path: str, sha256: str | None) -> bool:
        entry = self.files.get(path)
        try:
            stat = (folder / path).stat()
        except OSError:
            return False
        return (
            entry is not None
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
            and (sha256 is None or entry.get("sha256") == sha256)
        )

    def record(self, folder: Path, path: str, sha256: str | None) -> None:
        stat = (folder / path).stat()
        self.files[path] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}

    def save(self) -> None:
        """Write the cache; on a full or read-only disk nothing is left behind and the error says so."""
        if not self.path.parent.is_dir():
            return
        scratch = self.path.with_name(self.path.name + ".tmp")
        try:
            scratch.write_text(
                json.dumps({"files": self.files, "unpacked": self.unpacked}, indent=1), encoding="utf-8"
            )
            scratch.replace(self.path)
        except OSError as error:
            scratch.unlink(missing_ok=True)
            raise _write_error(error, self.path) from error


def _part_path(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def plan_download(source: Source, destination: Path) -> DownloadPlan:
    """List the source and compare with what ``destination`` already holds (no hashing, no downloading)."""
    destination = Path(destination).expanduser()
    listing = source.list_files()
    check_inside([file.path for file in listing.files], destination, source.label)
    cache = VerifiedCache(destination)
    planned = []
    for file in listing.files:
        final = destination / file.path
        part = _part_path(final)
        unpacked = cache.unpacked.get(file.path)
        if source.unpack and unpacked and all((destination / name).is_file() for name in unpacked):
            planned.append(PlannedFile(file, "complete", file.size or 0))
        elif final.is_file() and file.size in (None, final.stat().st_size):
            state: FileState = (
                "complete" if cache.is_verified(destination, file.path, file.sha256) else "unverified"
            )
            planned.append(PlannedFile(file, state, final.stat().st_size))
        elif part.is_file():
            planned.append(
                PlannedFile(file, "partial", min(part.stat().st_size, file.size or part.stat().st_size))
            )
        else:
            planned.append(PlannedFile(file, "missing", 0))
    return DownloadPlan(source, destination, tuple(planned), listing.missing, listing.skipped)


class _Mismatch(Exception):
    """The bytes fetched are not the bytes the manifest describes."""


class _Tracker:
    """Keeps the running totals and turns them into throttled ``DownloadProgress`` snapshots."""

    def __init__(self, plan: DownloadPlan, callback: ProgressCallback | None, interval: float) -> None:
        self.callback = callback
        self.interval = interval
        self.files = {
            p.file.path: FileProgress(p.file.path, p.present, p.file.size, "pending") for p in plan.files
        }
        self.state = "checking"
        self.current: str | None = None
        self.fetched = 0
        self.speed = 0.0
        self.notes: list[str] = []
        self._last_emit = 0.0
        self._sample = (time.monotonic(), 0)

    def update(self, path: str, **changes: object) -> None:
        self.files[path] = replace(self.files[path], **changes)  # type: ignore[arg-type]
        self.current = path
        self.emit(force="state" in changes)

    def advance(self, path: str, count: int) -> None:
        self.fetched += count
        current = self.files[path]
        self.files[path] = replace(current, done=current.done + count, state="downloading")
        self.current = path
        self.emit()

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.emit(force=True)

    def set_state(self, state: str) -> None:
        self.state = state
        self.emit(force=True)

    def emit(self, force: bool = False) -> None:
        now = time.monotonic()
        sampled_at, sampled_bytes = self._sample
        if now - sampled_at >= 0.5:
            rate = (self.fetched - sampled_bytes) / (now - sampled_at)
            self.speed = rate if self.speed == 0 else 0.7 * self.speed + 0.3 * rate
            self._sample = (now, self.fetched)
        if self.callback is None or (not force and now - self._last_emit < self.interval):
            return
        self._last_emit = now
        self.callback(self.snapshot())

    def snapshot(self) -> DownloadProgress:
        files = tuple(self.files.values())
        totals = [file.total for file in files]
        total = None if None in totals else sum(t for t in totals if t is not None)
        done = sum(file.done for file in files)
        eta = (total - done) / self.speed if total is not None and self.speed > 0 else None
        return DownloadProgress(
            state=self.state,
            files=files,
            bytes_done=done,
            bytes_total=total,
            bytes_fetched=self.fetched,
            speed=self.speed,
            eta=eta,
            current_file=self.current,
            notes=tuple(self.notes),
            message=self.notes[-1] if self.notes else None,
        )


@dataclass
class _Run:
    """One run of a plan: the pieces every step needs."""

    plan: DownloadPlan
    tracker: _Tracker
    cancel: threading.Event
    retry: RetryPolicy
    cache: VerifiedCache
    fetched_files: list[str] = field(default_factory=list)


def run_download(
    plan: DownloadPlan,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    retry: RetryPolicy | None = None,
    progress_interval: float = 0.1,
) -> DownloadResult:
    """Fetch what the plan still lacks; returns when done or cancelled, raises ``DownloadError`` on failure.

    Call it from a worker thread: ``progress`` is called on that thread with immutable snapshots (at most every
    ``progress_interval`` seconds, and at every change of state), and setting ``cancel`` stops it within one chunk.
    ``retry`` defaults to the source's policy.
    """
    check_inside([planned.file.path for planned in plan.files], plan.destination, plan.source.label)
    run = _Run(
        plan=plan,
        tracker=_Tracker(plan, progress, progress_interval),
        cancel=cancel or threading.Event(),
        retry=retry or plan.source.retry,
        cache=VerifiedCache(plan.destination),
    )
    try:
        _prepare_destination(plan)
        run.tracker.set_state("downloading")
        # Indexes first: the shard names they hold are checked before any weight file is fetched.
        for planned in sorted(plan.files, key=lambda planned: not planned.file.path.endswith(INDEX_SUFFIX)):
            if run.cancel.is_set():
                raise Cancelled
            _ensure_file(run, planned)
            if planned.file.path.endswith(INDEX_SUFFIX):
                _check_index(run, planned.file.path)
        run.tracker.set_state("done")
        run.cache.save()
        return _result(run, cancelled=False)
    except Cancelled:
        run.tracker.set_state("cancelled")
        run.cache.save()
        return _result(run, cancelled=True)
    except GlmError as error:
        with contextlib.suppress(GlmError):  # the failure is the message; a cache that cannot be saved is not
            run.cache.save()
        run.tracker.notes.append(str(error))
        run.tracker.set_state("failed")
        raise
    finally:
        plan.source.close()


def _check_index(run: _Run, path: str) -> None:
    """Refuse an index whose shard names would land outside the destination; the index itself is removed."""
    index = run.plan.destination / path
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        shards = sorted({str(name) for name in weight_map.values()}) if isinstance(weight_map, dict) else []
    except (OSError, ValueError, AttributeError):
        return  # not an index glmtui reads; the model loader reports it when it is used
    try:
        check_inside(shards, run.plan.destination, f"{run.plan.source.label} (in {path})", "a shard")
    except GlmError:
        index.unlink(missing_ok=True)
        run.cache.files.pop(path, None)
        raise


def _result(run: _Run, cancelled: bool) -> DownloadResult:
    return DownloadResult(
        destination=run.plan.destination,
        files=tuple(run.fetched_files),
        bytes_fetched=run.tracker.fetched,
        cancelled=cancelled,
        missing=run.plan.missing,
        notes=tuple(run.tracker.notes),
    )


def _prepare_destination(plan: DownloadPlan) -> None:
    """Create the folder and refuse up front when what is left to fetch cannot fit on its disk."""
    try:
        plan.destination.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(error, plan.destination) from error
    needed = plan.bytes_to_fetch
    free = shutil.disk_usage(plan.destination).free
    if needed > free:
        raise NotEnoughDiskSpace(
            f"The download needs {format_bytes(needed)} more but {plan.destination} has only "
            f"{format_bytes(free)} free. Free some space or choose another destination (--to DIR)."
        )


def _write_error(error: OSError, path: Path) -> GlmError:
    if error.errno == errno.ENOSPC:
        return NotEnoughDiskSpace(
            f"The disk filled up while writing {path}. Free some space and run the download again: "
            "it resumes where it stopped."
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DestinationNotWritable(
            f"Cannot write {path} ({error.strerror}). Choose a folder you can write to (--to DIR) "
            "or fix its permissions."
        )
    return DestinationNotWritable(f"Cannot write {path} ({error}). Choose another destination (--to DIR).")


def _hash_into(run: _Run, path: Path, label: str, digest: hashlib._Hash) -> None:
    """Feed a file on disk into ``digest``, reporting the bytes read as progress of ``label``."""
    run.tracker.update(label, done=0, state="checking")
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            if run.cancel.is_set():
                raise Cancelled
            digest.update(block)
            current = run.tracker.files[label]
            run.tracker.files[label] = replace(current, done=current.done + len(block))
            run.tracker.emit()


def _ensure_file(run: _Run, planned: PlannedFile) -> None:
    file = planned.file
    destination = run.plan.destination
    final = destination / file.path
    if planned.state == "complete":
        run.tracker.update(file.path, done=planned.present, state="skipped")
        return
    if planned.state == "unverified":
        digest = hashlib.sha256()
        if file.sha256 is not None:
            _hash_into(run, final, file.path, digest)
        if file.sha256 is None or digest.hexdigest() == file.sha256:
            run.cache.record(destination, file.path, file.sha256)
            run.tracker.update(file.path, state="done")
            return
        run.tracker.note(f"{file.path} on disk does not match its checksum; fetching it again.")
        final.unlink()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(error, final.parent) from error
    part = _part_path(final)
    for round_number in (1, 2):
        try:
            digest = _fetch(run, file, part)
            if file.sha256 is not None and digest != file.sha256:
                raise _Mismatch(f"its sha256 is {digest[:12]}…, expected {file.sha256[:12]}…")
        except _Mismatch as mismatch:
            part.unlink(missing_ok=True)
            run.tracker.update(file.path, done=0, total=file.size, state="pending")
            if round_number == 1:
                run.tracker.note(
                    f"{file.path} did not match its checksum ({mismatch}); fetching it again from the start."
                )
                continue
            if file.sha256 is None:
                raise IncompleteBody(
                    f"{file.path} from {run.plan.source.label} still came with another length than announced "
                    f"after fetching it again ({mismatch}); the server sends damaged answers. Try again later "
                    "or use another source."
                ) from None
            raise ChecksumMismatch(
                f"{file.path} still does not match its checksum after fetching it again ({mismatch}). "
                f"{run.plan.source.mismatch_hint(file)}"
            ) from None
        os.replace(part, final)
        run.cache.record(destination, file.path, file.sha256)
        run.cache.save()
        run.fetched_files.append(file.path)
        if run.plan.source.unpack:
            run.tracker.set_state("unpacking")
            try:
                run.cache.unpacked[file.path] = unpack_archive(final, destination)
            except UnsafeArchive:
                # A refused archive is not a download: the next run must fetch and judge it again.
                final.unlink(missing_ok=True)
                run.cache.files.pop(file.path, None)
                run.fetched_files.remove(file.path)
                raise
            final.unlink()
            run.cache.files.pop(file.path, None)
            run.tracker.set_state("downloading")
        run.tracker.update(file.path, state="done")
        return


@dataclass
class _PartFile:
    """The ``.part`` file being filled: how many bytes it holds and their running sha256."""

    path: Path
    offset: int
    digest: hashlib._Hash

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self.offset = 0
        self.digest = hashlib.sha256()


def _fetch(run: _Run, file: RemoteFile, part_path: Path) -> str:
    """Bring the ``.part`` file to the whole file, resuming and retrying; returns its sha256."""
    part = _PartFile(part_path, part_path.stat().st_size if part_path.exists() else 0, hashlib.sha256())
    if file.size is not None and part.offset > file.size:
        part.restart()
    if part.offset:
        _hash_into(run, part.path, file.path, part.digest)
    run.tracker.update(file.path, done=part.offset, state="downloading")
    failures = 0
    while True:
        offset_before = part.offset
        try:
            _transfer(run, file, part)
            return part.digest.hexdigest()
        except Transient as failure:
            failures = 1 if part.offset > offset_before else failures + 1
            if failures >= run.retry.attempts:
                raise failure.final from None
            wait = run.retry.delay(failures, failure.retry_after)
            run.tracker.note(f"{file.path}: {failure.final} Retrying in {wait:.0f} s.")
            run.tracker.set_state("retrying")
            if run.cancel.wait(wait):
                raise Cancelled from None
            run.tracker.set_state("downloading")


def _transfer(run: _Run, file: RemoteFile, part: _PartFile) -> None:
    """One request: append the bytes from ``part.offset`` on, hashing them as they are written."""
    with run.plan.source.open_range(file, part.offset) as body:
        if body.start != part.offset:  # the server ignored Range: start over rather than corrupt the file
            part.restart()
            run.tracker.update(file.path, done=0)
        if body.total is not None:
            if file.size is not None and body.total != file.size:
                listed = "the manifest" if file.sha256 else "its listing"
                raise _Mismatch(f"the server announced {body.total} bytes, {listed} {file.size}")
            run.tracker.update(file.path, total=body.total)
        expected = body.total if body.total is not None else file.size
        try:
            with part.path.open("ab", buffering=0) as out:
                for chunk in body.chunks:
                    if run.cancel.is_set():
                        raise Cancelled
                    out.write(chunk)
                    part.digest.update(chunk)
                    part.offset += len(chunk)
                    run.tracker.advance(file.path, len(chunk))
                    if expected is not None and part.offset > expected:
                        raise _Mismatch(f"the server sent more than the {expected} bytes announced")
        except OSError as error:
            if part.path.exists() and part.path.stat().st_size == 0:
                part.path.unlink()  # nothing to resume from: leave no empty file behind
            raise _write_error(error, part.path) from error
    if expected is not None and part.offset < expected:
        raise Transient(
            IncompleteBody(
                f"The server ended {file.path} after {part.offset} of its {expected} bytes, and still did after "
                "several retries. Try again later; the download resumes where it stopped."
            )
        )
