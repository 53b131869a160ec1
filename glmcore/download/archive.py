"""Unpacking a downloaded archive into its destination without letting any member escape it."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from glmcore.download.errors import UnsafeArchive

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")


def archive_suffix(name: str) -> str | None:
    """The archive suffix of ``name`` (``.tar.gz`` …), None when it is not an archive glmtui unpacks."""
    return next((suffix for suffix in ARCHIVE_SUFFIXES if name.lower().endswith(suffix)), None)


def unpack_archive(archive: Path, destination: Path) -> list[str]:
    """Extract ``archive`` into ``destination``; a single top-level folder is dropped (``AdvertiseGen/x`` -> ``x``).

    Members are extracted into a scratch folder first (tar with the ``data`` filter, zip after checking every
    name), so a refused archive leaves the destination untouched. Returns the extracted paths, relative.
    """
    scratch = destination / f".unpacking-{archive.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, scratch)
        else:
            _extract_tar(archive, scratch)
        entries = list(scratch.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else scratch
        extracted = []
        for child in sorted(root.iterdir()):
            target = destination / child.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            child.replace(target)
            extracted.extend(
                [str(path.relative_to(destination)) for path in sorted(target.rglob("*")) if path.is_file()]
                if target.is_dir()
                else [child.name]
            )
        return extracted
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _extract_tar(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    except tarfile.FilterError as error:
        raise UnsafeArchive(
            f"{archive.name} holds a member that would land outside its folder ({error}); nothing was unpacked. "
            "Do not use this archive."
        ) from error
    except tarfile.TarError as error:
        raise UnsafeArchive(
            f"{archive.name} is not a readable archive ({error}); delete it and download again."
        ) from error


def _extract_zip(archive: Path, into: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for name in bundle.namelist():
                member = PurePosixPath(name.replace("\\", "/"))
                if member.is_absolute() or ".." in member.parts or (member.parts and ":" in member.parts[0]):
                    raise UnsafeArchive(
                        f"{archive.name} holds a member that would land outside its folder ({name}); "
                        "nothing was unpacked. Do not use this archive."
                    )
            bundle.extractall(into)
    except zipfile.BadZipFile as error:
        raise UnsafeArchive(
            f"{archive.name} is not a readable archive ({error}); delete it and download again."
        ) from error
