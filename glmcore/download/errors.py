"""Every way a download can fail that a user can do something about, each with its own message."""

from __future__ import annotations

from glmcore.errors import GlmError


class DownloadError(GlmError):
    """Base of the download errors."""


class SourceNotFound(DownloadError):
    """HTTP 404 or a missing local path: the link expired, the repository or file is gone, or a typo."""


class AccessDenied(DownloadError):
    """HTTP 401/403: the source needs a token, a password or an invitation."""


class WrongPassword(AccessDenied):
    """The share's password page did not accept the password."""


class ServerUnavailable(DownloadError):
    """HTTP 429 or 5xx that did not go away after the retries."""


class NoNetwork(DownloadError):
    """The host could not be reached at all (DNS, refused connection, timeouts) after the retries."""


class ChecksumMismatch(DownloadError):
    """A file still differed from the manifest after fetching it a second time."""


class NotEnoughDiskSpace(DownloadError):
    """The free space of the destination is smaller than what is left to fetch, or the disk filled up."""


class DestinationNotWritable(DownloadError):
    """The destination folder cannot be created or written (permissions, read-only filesystem)."""


class UnsafeArchive(DownloadError):
    """An archive with a member that would land outside the destination (absolute path, ``..``, links)."""


class UnsafeListing(DownloadError):
    """A listing or an index names a file that would land outside the destination (absolute path, ``..``)."""


class IncompleteBody(DownloadError):
    """The server kept sending a file with another length than it announced, and no checksum could decide."""
