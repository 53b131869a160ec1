"""HTTP plumbing shared by the hub and Seafile sources: one client, status codes turned into errors, retries.

Bytes move through ``httpx2``, the HTTP client huggingface_hub 2.x is built on (so it is always installed with it):
it streams a body in chunks with a read timeout, keeps a cookie jar (a Seafile password unlocks a session
cookie), follows redirects (the hub sends LFS files to a CDN, Seafile to its file server) while dropping the
``Authorization`` header when the redirect leaves the origin, and raises distinct exceptions for a refused
connection and for a body cut short. ``urllib.request`` can send a Range header too, but forwards credentials
across redirects and has no per-read timeout on a stalled stream.
"""

from __future__ import annotations

import email.utils
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import httpx2

from glmcore.download.errors import (
    AccessDenied,
    DownloadError,
    IncompleteBody,
    NoNetwork,
    ServerUnavailable,
    SourceNotFound,
)

CHUNK_SIZE = 256 * 1024
TIMEOUT = httpx2.Timeout(connect=20.0, read=60.0, write=60.0, pool=20.0)
USER_AGENT = "glmtui-download/0.1"

T = TypeVar("T")


class Cancelled(Exception):
    """Raised inside a download when its cancel event is set; partial files stay resumable."""


class Transient(Exception):
    """A failure worth retrying (dropped connection, 429, 5xx); ``final`` is raised when retries run out."""

    def __init__(self, final: DownloadError, retry_after: float | None = None) -> None:
        super().__init__(str(final))
        self.final = final
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``base_delay * 2**n`` capped at ``max_delay``; a server's Retry-After wins."""

    attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, failures: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        return min(self.base_delay * 2 ** (failures - 1), self.max_delay)


def new_client(headers: dict[str, str] | None = None) -> httpx2.Client:
    """A client for one download: redirects followed, identity encoding so Range offsets mean file bytes."""
    base_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    return httpx2.Client(follow_redirects=True, timeout=TIMEOUT, headers={**base_headers, **(headers or {})})


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (it is either a number of seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    parsed = email.utils.parsedate_to_datetime(value)
    return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


def raise_for_status(response: httpx2.Response, what: str, access_hint: str = "") -> None:
    """Turn a failed response into the error a user can act on; 408, 429 and 5xx become ``Transient``."""
    code = response.status_code
    if code < 400:
        return
    if code in (401, 403):
        hint = access_hint or "Check that the link is public or that you have access to it."
        raise AccessDenied(f"The server refused access to {what} (HTTP {code}). {hint}")
    if code in (404, 410):
        raise SourceNotFound(
            f"{what} was not found (HTTP {code}): the link may have expired or the file been removed. "
            "Check the link, or use another source (--source hf, modelscope or thu)."
        )
    if code in (408, 429) or code >= 500:
        busy = "is rate-limiting requests" if code == 429 else "is failing or overloaded"
        final = ServerUnavailable(
            f"The server {busy} (HTTP {code}) while fetching {what}, and still was after several retries. "
            "Try again later; the download resumes where it stopped."
        )
        raise Transient(final, parse_retry_after(response.headers.get("Retry-After")))
    raise DownloadError(f"The server answered HTTP {code} for {what}; the download cannot continue.")


def transport_failure(error: httpx2.TransportError, url: str) -> Transient:
    """A connection that could not be made, timed out or was cut: retried, then reported as no network."""
    host = urlsplit(url).netloc or url
    if isinstance(error, httpx2.RemoteProtocolError) and "complete message body" in str(error):
        return Transient(
            IncompleteBody(
                f"The connection to {host} broke off before the whole file arrived ({error}), and did again "
                "after several retries. Try again later; the download resumes where it stopped."
            )
        )
    if isinstance(error, httpx2.ConnectError | httpx2.ConnectTimeout):
        what = f"Could not connect to {host} ({error or type(error).__name__})."
    else:
        what = f"The connection to {host} broke off ({error or type(error).__name__})."
    return Transient(
        NoNetwork(
            f"{what} Check the network connection and proxy settings (HTTPS_PROXY), or use a mirror "
            "(HF_ENDPOINT) or the other source; run the download again and it resumes where it stopped."
        )
    )


def with_retries(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    cancel: threading.Event,
    on_retry: Callable[[Transient, float], None] | None = None,
) -> T:
    """Call ``attempt`` until it stops raising ``Transient`` or the policy's attempts are used up."""
    failures = 0
    while True:
        try:
            return attempt()
        except Transient as failure:
            failures += 1
            if failures >= policy.attempts:
                raise failure.final from None
            wait = policy.delay(failures, failure.retry_after)
            if on_retry is not None:
                on_retry(failure, wait)
            if cancel.wait(wait):
                raise Cancelled from None


@dataclass(frozen=True)
class Body:
    """A response body starting at byte ``start`` of a file of ``total`` bytes (None when not told)."""

    start: int
    total: int | None
    chunks: Iterator[bytes]


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


@contextmanager
def open_range(
    client: httpx2.Client, url: str, offset: int, what: str, access_hint: str = ""
) -> Iterator[Body]:
    """GET ``url`` from byte ``offset`` on; a server that ignores Range gives ``start == 0``."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with client.stream("GET", url, headers=headers) as response:
            content_range = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            total = int(content_range.group(2)) if content_range and content_range.group(2) != "*" else None
            if response.status_code == 416:  # nothing left after offset: the part file is already whole
                yield Body(start=offset, total=total, chunks=iter(()))
                return
            raise_for_status(response, what, access_hint)
            if response.status_code == 206 and content_range and content_range.group(1) is not None:
                start = int(content_range.group(1))
            else:
                start = 0
                length = response.headers.get("Content-Length")
                total = int(length) if length is not None and length.isdigit() else None
            yield Body(start=start, total=total, chunks=response.iter_raw())
    except httpx2.TransportError as error:
        raise transport_failure(error, url) from error


def header_filename(response: httpx2.Response) -> str | None:
    """The file name a server suggests in Content-Disposition (RFC 6266 ``filename*`` preferred)."""
    disposition = response.headers.get("Content-Disposition", "")
    extended = re.search(r"filename\*\s*=\s*([^']*)'[^']*'([^;]+)", disposition)
    if extended:
        return unquote(extended.group(2).strip().strip('"'), encoding=extended.group(1) or "utf-8")
    plain = re.search(r'filename\s*=\s*"?([^";]+)"?', disposition)
    return plain.group(1).strip() if plain else None
