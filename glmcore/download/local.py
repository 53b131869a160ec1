"""A folder or archive already on this machine (copied by hand, from a USB disk) as a source.

A folder is copied file by file through the transfer core, so it is checked against the manifest like a download;
an archive is copied and unpacked. Copies resume like downloads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from glmcore.catalog import Manifest
from glmcore.download.archive import archive_suffix
from glmcore.download.errors import SourceNotFound
from glmcore.download.http import CHUNK_SIZE, Body
from glmcore.download.transfer import VERIFIED_FILE, Listing, RemoteFile, Source


class LocalSource(Source):
    """Files under ``path`` (or the archive ``path``); with a manifest, only its files, found by path or name."""

    def __init__(
        self,
        path: Path,
        *,
        manifest: Manifest | None = None,
        include_code: bool = False,
        name: str | None = None,
        kind: str = "model",
    ) -> None:
        self.path = Path(path).expanduser()
        self.manifest = manifest
        self.include_code = include_code
        suffix = archive_suffix(self.path.name)
        self.name = name or (self.path.name[: -len(suffix)] if suffix else self.path.name)
        self.kind = "dataset" if kind == "dataset" else "model"
        self.label = f"local {'archive' if self.path.is_file() else 'folder'} {self.path}"

    def list_files(self) -> Listing:
        if not self.path.exists():
            raise SourceNotFound(f"{self.path} does not exist; check the path.")
        if self.path.is_file():
            self.unpack = archive_suffix(self.path.name) is not None
            return Listing((RemoteFile(self.path.name, self.path.stat().st_size, None, str(self.path)),))
        present = {
            str(file.relative_to(self.path).as_posix()): file
            for file in sorted(self.path.rglob("*"))
            if file.is_file() and not file.name.endswith(".part") and file.name != VERIFIED_FILE
        }
        if self.manifest is None:
            return Listing(
                tuple(RemoteFile(rel, file.stat().st_size, None, str(file)) for rel, file in present.items())
            )
        by_name: dict[str, list[Path]] = {}
        for file in present.values():
            by_name.setdefault(file.name, []).append(file)
        files, missing, skipped = [], [], []
        for wanted in self.manifest.files:
            found = (
                [present[wanted.path]]
                if wanted.path in present
                else by_name.get(PurePosixPath(wanted.path).name, [])
            )
            if wanted.path.endswith(".py") and not self.include_code:
                skipped.append(wanted.path)
            elif len(found) != 1:
                missing.append(wanted.path)
            else:
                files.append(RemoteFile(wanted.path, wanted.size, wanted.sha256, str(found[0])))
        return Listing(tuple(files), tuple(missing), tuple(skipped))

    @contextmanager
    def open_range(self, file: RemoteFile, offset: int) -> Iterator[Body]:
        location = Path(file.location)
        try:
            handle = location.open("rb")
        except FileNotFoundError as error:
            raise SourceNotFound(f"{location} disappeared while copying; check the source folder.") from error
        with handle:
            handle.seek(offset)
            yield Body(
                start=offset, total=location.stat().st_size, chunks=iter(lambda: handle.read(CHUNK_SIZE), b"")
            )

    def mismatch_hint(self, file: RemoteFile) -> str:
        return f"The copy at {file.location} is damaged or another version; download it again from the hub."
