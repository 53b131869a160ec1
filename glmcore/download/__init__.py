"""Getting models and data sets onto the disk: resumable, verified, with progress and cancel.

Public API (the CLI and the TUI's Models screen use only this)::

    source = resolve_source("chatglm-6b", source="hf")          # or a hub id, a share link, a path, "advertisegen"
    plan = plan_download(source, destination)                    # lists the source; plan.bytes_to_fetch, plan.files
    result = run_download(plan, progress=callback, cancel=event) # call from a worker thread

- ``resolve_source(model_or_link, *, source=None, revision=None, password=None, endpoint=None,
  include_code=False) -> Source``: ``HubSource``, ``ModelScopeSource``, ``SeafileShareSource``,
  ``SeafileFileSource`` or ``LocalSource`` (``source`` is ``hf``, ``modelscope`` or ``thu``: ``SOURCES``).
- ``plan_download(source, destination) -> DownloadPlan``: goes to the network to list files; nothing is written.
- ``run_download(plan, *, progress=None, cancel=None, retry=None, progress_interval=0.1) -> DownloadResult``:
  ``progress`` receives immutable ``DownloadProgress`` snapshots (per file: path, done, total, state; totals,
  smoothed speed, ETA, current file, state, notes); setting the ``threading.Event`` ``cancel`` stops within a
  chunk and returns ``result.cancelled`` with ``.part`` files to resume from. Failures raise a ``DownloadError``
  (a ``GlmError``) whose message says what to do.
- ``default_destination(source, models_dir, data_dir) -> Path`` (sizes are written with ``glmcore.units``).

Python files of a checkpoint (``modeling_chatglm.py`` …) are skipped unless ``include_code``: glmtui never runs them.
"""

from glmcore.download.errors import (
    AccessDenied,
    ChecksumMismatch,
    DestinationNotWritable,
    DownloadError,
    IncompleteBody,
    NoNetwork,
    NotEnoughDiskSpace,
    ServerUnavailable,
    SourceNotFound,
    UnsafeArchive,
    UnsafeListing,
    WrongPassword,
)
from glmcore.download.http import RetryPolicy
from glmcore.download.hub import HubSource
from glmcore.download.local import LocalSource
from glmcore.download.modelscope import ModelScopeSource
from glmcore.download.resolve import SOURCES, default_destination, resolve_source
from glmcore.download.seafile import SeafileFileSource, SeafileShareSource
from glmcore.download.transfer import (
    DownloadPlan,
    DownloadProgress,
    DownloadResult,
    FileProgress,
    PlannedFile,
    RemoteFile,
    Source,
    plan_download,
    run_download,
)

__all__ = [
    "AccessDenied",
    "ChecksumMismatch",
    "DestinationNotWritable",
    "DownloadError",
    "DownloadPlan",
    "DownloadProgress",
    "DownloadResult",
    "FileProgress",
    "HubSource",
    "IncompleteBody",
    "LocalSource",
    "ModelScopeSource",
    "NoNetwork",
    "NotEnoughDiskSpace",
    "PlannedFile",
    "RemoteFile",
    "RetryPolicy",
    "SOURCES",
    "SeafileFileSource",
    "SeafileShareSource",
    "ServerUnavailable",
    "Source",
    "SourceNotFound",
    "UnsafeArchive",
    "UnsafeListing",
    "WrongPassword",
    "default_destination",
    "plan_download",
    "resolve_source",
    "run_download",
]
