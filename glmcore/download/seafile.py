"""Seafile share links (Tsinghua Cloud and any other Seafile server) as sources.

A folder share ``https://host/d/<key>/`` is listed through ``/api/v2.1/share-links/<key>/dirents/?path=``, one
folder at a time, and each file is fetched from ``/d/<key>/files/?p=<path>&dl=1`` (a redirect to a one-time file
server URL, so every resume asks that URL again). A single-file link ``https://host/f/<key>/`` is fetched from
``?dl=1``. A password-protected share is opened the way a browser does: read the CSRF token from the share page's
form, post it with the password, and keep the session cookie for every later request.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from html.parser import HTMLParser
from pathlib import PurePosixPath
from urllib.parse import quote, urlsplit

import httpx2

from glmcore.catalog import Manifest
from glmcore.download.archive import archive_suffix
from glmcore.download.errors import AccessDenied, DownloadError, WrongPassword
from glmcore.download.http import (
    Body,
    RetryPolicy,
    header_filename,
    new_client,
    open_range,
    raise_for_status,
    transport_failure,
    with_retries,
)
from glmcore.download.transfer import Listing, RemoteFile, Source

PASSWORD_HINT = "The share may be protected by a password: pass it with --password."


def parse_share_link(url: str) -> tuple[str, str, str]:
    """``https://host/prefix/d/<key>/`` -> (``https://host/prefix``, ``d``, ``<key>``); ValueError otherwise."""
    parts = urlsplit(url.strip())
    segments = [segment for segment in parts.path.split("/") if segment]
    for index in range(len(segments) - 1):
        if segments[index] in ("d", "f"):
            prefix = "/".join(segments[:index])
            base = f"{parts.scheme}://{parts.netloc}" + (f"/{prefix}" if prefix else "")
            return base, segments[index], segments[index + 1]
    raise ValueError(f"{url} is not a Seafile share link (…/d/<key>/ or …/f/<key>/)")


class _PasswordForm(HTMLParser):
    """The fields of the share page's password form: hidden inputs (CSRF token, share token) and the password."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self.password_field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "input":
            return
        attributes = dict(attrs)
        name = attributes.get("name")
        if not name:
            return
        if attributes.get("type") == "password":
            self.password_field = name
        elif attributes.get("type") == "hidden":
            self.fields[name] = attributes.get("value") or ""


class _SeafileShare(Source):
    """What both kinds of link share: the client with its cookie jar, and unlocking with a password."""

    def __init__(self, url: str, password: str | None, retry: RetryPolicy | None) -> None:
        self.url = url
        self.base, self.link_type, self.key = parse_share_link(url)
        self.password = password
        self.retry = retry or RetryPolicy()
        self.client: httpx2.Client = new_client()
        self._unlocked = False

    @property
    def share_page(self) -> str:
        return f"{self.base}/{self.link_type}/{self.key}/"

    def _retrying(self, attempt):  # noqa: ANN001, ANN202 - a thin typed wrapper would only repeat with_retries
        return with_retries(attempt, self.retry, threading.Event())

    def _unlock(self) -> None:
        """Post the password with the page's CSRF token; the session cookie then opens the share."""
        if self.password is None or self._unlocked:
            return

        def post_password() -> None:
            try:
                page = self.client.get(self.share_page)
                raise_for_status(page, f"the share {self.url}")
                form = _PasswordForm()
                form.feed(page.text)
                if form.password_field is None:  # not protected: the password is not needed
                    return
                data = {**form.fields, form.password_field: self.password}
                answer = self.client.post(self.share_page, data=data, headers={"Referer": self.share_page})
                raise_for_status(answer, f"the share {self.url}")
            except httpx2.TransportError as error:
                raise transport_failure(error, self.url) from error
            again = _PasswordForm()
            again.feed(answer.text)
            if again.password_field is not None:
                raise WrongPassword(f"The share {self.url} did not accept the password. Check --password.")

        self._retrying(post_password)
        self._unlocked = True

    def access_hint(self) -> str:
        if self.password is None:
            return PASSWORD_HINT
        return "The share did not accept the password; check --password."

    def open_range(self, file: RemoteFile, offset: int) -> AbstractContextManager[Body]:
        return open_range(
            self.client, file.location, offset, f"{file.path} from {self.url}", self.access_hint()
        )

    def close(self) -> None:
        self.client.close()


class SeafileShareSource(_SeafileShare):
    """A shared folder; with a manifest, only the manifest's files, matched by path or else by file name.

    `folder` lists only that folder of the share, paths relative to it (THUDM's share holds several models,
    ChatGLM2-6B's under /chatglm2-6b, whose file names repeat in the others).
    """

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        manifest: Manifest | None = None,
        include_code: bool = False,
        name: str | None = None,
        folder: str = "/",
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(url, password, retry)
        if self.link_type != "d":
            raise ValueError(f"{url} is a single-file link; use SeafileFileSource")
        self.folder = "/" + folder.strip("/")
        self.manifest = manifest
        self.include_code = include_code
        self.name = name or self.key
        self.label = f"Seafile share {self.share_page}"

    def list_files(self) -> Listing:
        self._unlock()
        shared: dict[str, tuple[str, int]] = {}
        folders = [self.folder]
        root = self.folder.rstrip("/") + "/"
        while folders:
            folder = folders.pop()
            for entry in self._retrying(lambda folder=folder: self._dirents(folder)):
                if entry.get("is_dir"):
                    folders.append(entry["folder_path"])
                elif entry["file_path"].startswith(root):
                    relative = entry["file_path"][len(root) :]
                    shared[relative] = (entry["file_path"], int(entry["size"]))
        if self.manifest is None:
            return Listing(
                tuple(
                    RemoteFile(path, size, None, self._file_url(share_path))
                    for path, (share_path, size) in sorted(shared.items())
                )
            )
        by_name: dict[str, list[str]] = {}
        for path in shared:
            by_name.setdefault(PurePosixPath(path).name, []).append(path)
        files, missing, skipped = [], [], []
        for wanted in self.manifest.files:
            candidates = (
                [wanted.path] if wanted.path in shared else by_name.get(PurePosixPath(wanted.path).name, [])
            )
            if wanted.path.endswith(".py") and not self.include_code:
                skipped.append(wanted.path)
            elif len(candidates) != 1:
                missing.append(wanted.path)
            else:
                share_path, listed_size = shared[candidates[0]]
                size = wanted.size if wanted.size is not None else listed_size
                files.append(RemoteFile(wanted.path, size, wanted.sha256, self._file_url(share_path)))
        return Listing(tuple(files), tuple(missing), tuple(skipped))

    def _file_url(self, share_path: str) -> str:
        return f"{self.base}/d/{self.key}/files/?p={quote(share_path)}&dl=1"

    def _dirents(self, folder: str) -> list[dict]:
        url = f"{self.base}/api/v2.1/share-links/{self.key}/dirents/"
        try:
            response = self.client.get(url, params={"path": folder})
        except httpx2.TransportError as error:
            raise transport_failure(error, url) from error
        if response.status_code == 403 and self.password is None:
            raise AccessDenied(f"The share {self.url} refused to list its files (HTTP 403). {PASSWORD_HINT}")
        raise_for_status(response, f"the share {self.url}", self.access_hint())
        try:
            return list(response.json()["dirent_list"])
        except (ValueError, KeyError) as error:
            raise DownloadError(
                f"{self.base} did not answer like a Seafile server when listing {folder} of the share; "
                "check the link."
            ) from error

    def mismatch_hint(self, file: RemoteFile) -> str:
        return (
            f"The share {self.url} holds another version of {file.path} than glmtui's manifest; "
            "use --source hf for the pinned revision."
        )


class SeafileFileSource(_SeafileShare):
    """A single-file link; an archive (.tar.gz, .zip) is unpacked into the destination and then removed."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        sha256: str | None = None,
        name: str | None = None,
        kind: str = "dataset",
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(url, password, retry)
        if self.link_type != "f":
            raise ValueError(f"{url} is a folder share; use SeafileShareSource")
        self.sha256 = sha256
        self._name = name
        self._listing: Listing | None = None
        self.kind = "model" if kind == "model" else "dataset"
        self.label = f"Seafile file link {self.share_page}"

    @property
    def name(self) -> str:
        """The folder name: the one given, else the file's name without its archive suffix (asks the server)."""
        if self._name is not None:
            return self._name
        filename = self.list_files().files[0].path
        return filename[: -len(suffix)] if (suffix := archive_suffix(filename)) else filename

    @property
    def download_url(self) -> str:
        return f"{self.share_page}?dl=1"

    def list_files(self) -> Listing:
        """Ask for the first byte to learn the file's name and size (every request gets a fresh one-time URL)."""
        if self._listing is not None:
            return self._listing
        self._unlock()

        def probe() -> RemoteFile:
            try:
                with self.client.stream("GET", self.download_url, headers={"Range": "bytes=0-0"}) as response:
                    raise_for_status(response, f"the file link {self.url}", self.access_hint())
                    filename = header_filename(response) or PurePosixPath(response.url.path).name
                    content_range = response.headers.get("Content-Range", "")
                    if response.status_code == 206 and "/" in content_range:
                        total = content_range.rsplit("/", 1)[1]
                        size = int(total) if total.isdigit() else None
                    else:
                        length = response.headers.get("Content-Length", "")
                        size = int(length) if length.isdigit() else None
            except httpx2.TransportError as error:
                raise transport_failure(error, self.url) from error
            if "text/html" in response.headers.get("Content-Type", ""):
                raise AccessDenied(
                    f"The file link {self.url} answered with a web page, not a file. {PASSWORD_HINT}"
                )
            safe_name = PurePosixPath(filename.replace("\\", "/")).name or self.key
            return RemoteFile(path=safe_name, size=size, sha256=self.sha256, location=self.download_url)

        remote = self._retrying(probe)
        self.unpack = archive_suffix(remote.path) is not None
        self._listing = Listing((remote,))
        return self._listing
