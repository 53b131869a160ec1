"""ModelScope (modelscope.cn) as a source: its public file API, read the way the ``modelscope`` package reads it.

Follows ``modelscope`` 1.31.0 (``modelscope/hub/api.py`` ``HubApi.get_model_files`` and
``modelscope/hub/file_download.py`` ``get_file_download_url``; 1.40's api.py delegates to ``modelscope_hub`` and
asks the same endpoints). A model is listed by
``GET {endpoint}/api/v1/models/{owner}/{name}/repo/files?Revision=…&Recursive=True``, which answers
``{"Code": 200, "Data": {"Files": [{"Path", "Name", "Type": "blob" | "tree", "Size", "Sha256", "Revision"}]}}``,
and each file is fetched from ``{endpoint}/api/v1/models/{owner}/{name}/repo?Revision=…&FilePath=…`` (Range
honoured, which is how the package resumes). The package itself is not used: see docs/decisions.md.

The listing is untrusted input like any server's: a path that would leave the destination is refused by the
transfer core, and a size that is not a whole number of bytes below ``MAX_FILE_SIZE`` or a ``Sha256`` that is not
one refuses the whole listing.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import AbstractContextManager
from urllib.parse import quote_plus

import httpx2

from glmcore.catalog import Manifest
from glmcore.download.errors import DownloadError, SourceNotFound, UnsafeListing
from glmcore.download.http import (
    Body,
    RetryPolicy,
    new_client,
    open_range,
    raise_for_status,
    transport_failure,
    with_retries,
)
from glmcore.download.transfer import Listing, RemoteFile, Source, listing_of

DEFAULT_ENDPOINT = "https://www.modelscope.cn"
DEFAULT_REVISION = "master"
"""ModelScope's default branch (``MASTER_MODEL_BRANCH`` in the package)."""
MAX_FILE_SIZE = 2**40
"""No model file is a tebibyte: a listing that says so is broken or hostile."""
ACCESS_HINT = "The model may be private or need a login on modelscope.cn; glmtui fetches public models only."
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def modelscope_endpoint(endpoint: str | None = None) -> str:
    """The argument, else ``https://$MODELSCOPE_DOMAIN`` (the package's variable), else www.modelscope.cn."""
    if endpoint:
        return endpoint.rstrip("/")
    domain = os.environ.get("MODELSCOPE_DOMAIN", "").strip().rstrip("/")
    if domain:
        return domain if domain.startswith(("http://", "https://")) else f"https://{domain}"
    return DEFAULT_ENDPOINT


class ModelScopeSource(Source):
    """A ModelScope model at one revision; with a manifest, the manifest decides which files, and the listing
    gives the sizes and sha256 the manifest leaves null."""

    def __init__(
        self,
        repo_id: str,
        revision: str | None = None,
        *,
        endpoint: str | None = None,
        manifest: Manifest | None = None,
        include_code: bool = False,
        name: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.repo_id = repo_id
        self.revision = revision or DEFAULT_REVISION
        self.endpoint = modelscope_endpoint(endpoint)
        self.manifest = manifest
        self.include_code = include_code
        self.name = name or repo_id.split("/")[-1]
        self.retry = retry or RetryPolicy()
        self.label = f"ModelScope {repo_id} @ {self.revision} ({self.endpoint})"
        self._client: httpx2.Client | None = None
        self._commits: dict[str, str] = {}

    def list_files(self) -> Listing:
        entries = with_retries(self._list, self.retry, threading.Event())
        return listing_of({entry.path: entry for entry in entries}, self.manifest, self.include_code)

    def _list(self) -> list[RemoteFile]:
        url = f"{self.endpoint}/api/v1/models/{self.repo_id}/repo/files"
        what = f"{self.repo_id} at revision {self.revision} on {self.endpoint}"
        try:
            response = self.client().get(url, params={"Revision": self.revision, "Recursive": "True"})
        except httpx2.TransportError as error:
            raise transport_failure(error, url) from error
        if response.status_code == 404:
            raise SourceNotFound(
                f"ModelScope has no model {self.repo_id} at revision {self.revision} ({self.endpoint}). "
                "Check the id (owner/name as on modelscope.cn) and --revision."
            )
        raise_for_status(response, what, ACCESS_HINT)
        try:
            answer = response.json()
            if answer.get("Code") != 200:
                raise SourceNotFound(
                    f"ModelScope could not list {what}: {str(answer.get('Message'))[:200]}. "
                    "Check the id and --revision."
                )
            files = answer["Data"]["Files"] or []
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise DownloadError(
                f"{self.endpoint} did not answer like ModelScope's file API when listing {self.repo_id}; "
                "check --endpoint."
            ) from error
        return [self._entry(file) for file in files if isinstance(file, dict) and file.get("Type") != "tree"]

    def _entry(self, file: dict) -> RemoteFile:
        """One listed file, its fields checked: a path, a whole size below MAX_FILE_SIZE, a sha256 or none."""
        path, size, sha256 = file.get("Path"), file.get("Size"), file.get("Sha256")
        if not isinstance(path, str):
            raise UnsafeListing(
                f"{self.label} lists a file without a path ({str(file)[:120]}); nothing was downloaded. "
                "Do not use this source."
            )
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < MAX_FILE_SIZE:
            raise UnsafeListing(
                f"{self.label} lists {path!r} with a size of {str(size)[:40]} bytes, which no model file has; "
                "nothing was downloaded. Do not use this source."
            )
        if sha256 not in (None, "") and not (isinstance(sha256, str) and _SHA256.match(sha256.lower())):
            raise UnsafeListing(
                f"{self.label} lists {path!r} with the sha256 {str(sha256)[:80]!r}, which is not a sha256; "
                "nothing was downloaded. Do not use this source."
            )
        if isinstance(file.get("Revision"), str):
            self._commits[path] = file["Revision"]
        return RemoteFile(
            path=path, size=size, sha256=sha256.lower() if sha256 else None, location=self._file_url(path)
        )

    def _file_url(self, path: str) -> str:
        return (
            f"{self.endpoint}/api/v1/models/{self.repo_id}/repo"
            f"?Revision={quote_plus(self.revision)}&FilePath={quote_plus(path)}"
        )

    def open_range(self, file: RemoteFile, offset: int) -> AbstractContextManager[Body]:
        return open_range(self.client(), file.location, offset, f"{file.path} from {self.label}", ACCESS_HINT)

    def mismatch_hint(self, file: RemoteFile) -> str:
        commit = self._commits.get(file.path)
        at = f" (last changed in commit {commit[:12]})" if commit else ""
        if self.manifest is not None and self.manifest.lists_sha256(file.path):
            if self.manifest.revision is None:  # read from a mirror: the file may have been updated since
                return (
                    f"ModelScope's {file.path}{at} is not the copy glmtui's manifest was read from: the file was "
                    "updated since. Pass --revision master to check each file against ModelScope's own sha256."
                )
            return (
                f"ModelScope's {file.path}{at} is another version than glmtui's manifest lists; "
                "use --source hf for the hub's pinned revision."
            )
        return f"ModelScope served bytes of {file.path}{at} that do not match the sha256 it lists; try again later."

    def client(self) -> httpx2.Client:
        if self._client is None:
            self._client = new_client()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
