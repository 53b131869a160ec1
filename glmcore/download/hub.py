"""Hugging Face Hub as a source: huggingface_hub lists and addresses the files, the transfer core moves them.

huggingface_hub knows the endpoint (``HF_ENDPOINT`` mirrors), the token (``HF_TOKEN`` or a saved login), how
revisions are named in URLs, and lists a revision's files with sizes and LFS sha256. Its own downloader fills its
cache rather than a plain folder and reports progress through tqdm, so the bytes go through our transfer core
instead: per-file progress for the TUI, cancel between chunks, and ``.part`` files that resume.
"""

from __future__ import annotations

import os
import threading
from contextlib import AbstractContextManager

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers

from glmcore.catalog import Manifest
from glmcore.download.errors import AccessDenied, DownloadError, SourceNotFound
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

TOKEN_HINT = "If the repository is gated or private, set HF_TOKEN to a token that has access to it."


def hub_endpoint(endpoint: str | None = None) -> str:
    """The hub to talk to: the argument, else ``HF_ENDPOINT`` as it is now (huggingface_hub reads it at import)."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


class HubSource(Source):
    """A model repository at one revision; with a manifest, the manifest decides which files and checksums."""

    def __init__(
        self,
        repo_id: str,
        revision: str | None = None,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        manifest: Manifest | None = None,
        include_code: bool = False,
        name: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.repo_id = repo_id
        self.revision = revision
        self.endpoint = hub_endpoint(endpoint)
        self.token = token
        self.manifest = manifest
        self.include_code = include_code
        self.name = name or repo_id.split("/")[-1]
        self.retry = retry or RetryPolicy()
        self.label = f"Hugging Face Hub {repo_id} @ {revision or 'main'} ({self.endpoint})"
        self._client: httpx2.Client | None = None

    def list_files(self) -> Listing:
        info = with_retries(self._model_info, self.retry, threading.Event())
        commit = info.sha or self.revision or constants.DEFAULT_REVISION
        on_hub = {
            sibling.rfilename: RemoteFile(
                path=sibling.rfilename,
                size=sibling.size,
                sha256=sibling.lfs.sha256 if sibling.lfs else None,  # an LFS file's; a small file has none
                location=hf_hub_url(self.repo_id, sibling.rfilename, revision=commit, endpoint=self.endpoint),
            )
            for sibling in info.siblings or []
        }
        return listing_of(on_hub, self.manifest, self.include_code)

    def _model_info(self):  # noqa: ANN202 - huggingface_hub's ModelInfo
        api = HfApi(endpoint=self.endpoint, token=self.token)
        what = f"{self.repo_id} at revision {self.revision or 'main'} on {self.endpoint}"
        try:
            return api.model_info(self.repo_id, revision=self.revision, files_metadata=True, timeout=30)
        except GatedRepoError as error:
            raise AccessDenied(f"{self.repo_id} is gated on the hub. {TOKEN_HINT}") from error
        except RevisionNotFoundError as error:
            raise SourceNotFound(
                f"The hub has no revision {self.revision!r} of {self.repo_id}. Check --revision."
            ) from error
        except RepositoryNotFoundError as error:
            raise SourceNotFound(
                f"The hub has no repository {self.repo_id} ({self.endpoint}). {TOKEN_HINT}"
            ) from error
        except OfflineModeIsEnabled as error:
            raise DownloadError(
                "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set); unset it to download."
            ) from error
        except HfHubHTTPError as error:
            raise_for_status(error.response, what, TOKEN_HINT)
            raise DownloadError(f"The hub could not list {what}: {error}") from error
        except httpx2.TransportError as error:
            raise transport_failure(error, self.endpoint) from error

    def open_range(self, file: RemoteFile, offset: int) -> AbstractContextManager[Body]:
        if self._client is None:
            self._client = new_client(build_hf_headers(token=self.token))
        return open_range(self._client, file.location, offset, f"{file.path} from {self.repo_id}", TOKEN_HINT)

    def mismatch_hint(self, file: RemoteFile) -> str:
        if self.manifest is not None and self.manifest.lists_sha256(file.path):
            if self.manifest.revision is None:  # read from a mirror: main may have changed the file since
                return (
                    f"The hub's {file.path} on main is not the copy glmtui's manifest was read from: the file "
                    "was updated since. Pass --revision main to check each file against the hub's own sha256."
                )
            return (
                f"The hub's {file.path} at revision {self.revision or 'main'} is not the file glmtui's manifest "
                "lists: the hub has moved on from the pinned revision. Pass --revision with the manifest's "
                "revision, or use --source thu."
            )
        return "The hub served bytes that do not match the checksum it lists; try again later."

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
