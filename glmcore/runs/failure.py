"""Why a training process failed, in a sentence that says what to change, and telling a full disk."""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.units import format_bytes

DISK_FULL_MARKERS = ("disk full", "No space left on device")
DISK_FULL_FREE_BYTES = 16 * 1024 * 1024
"""Below this much free space a failed torch.save write is taken for a full disk."""


class DiskFull(GlmError):
    """The disk filled up while the training process wrote to it; the message says how much is free where."""


def is_disk_full(error: BaseException, folder: Path) -> bool:
    """Whether ``error`` (or one it came from) is ENOSPC, or torch's zip writer failing on a disk with no room.

    torch.save reports a failed write as a RuntimeError from inline_container without the errno, so there the
    free space of ``folder`` decides.
    """
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT) for item in chain):
        return True
    if any("No space left on device" in str(item) for item in chain):  # safetensors' Rust I/O error, say
        return True
    torch_write_failed = any(
        isinstance(item, RuntimeError)
        and ("inline_container" in str(item) or "file write failed" in str(item))
        for item in chain
    )
    try:
        return torch_write_failed and shutil.disk_usage(folder).free < DISK_FULL_FREE_BYTES
    except OSError:
        return False


def describe_failure(exc: BaseException, step: int | None = None) -> str:
    """The ``reason`` to record for a training process that failed with ``exc``: what happened, what to change."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    at = f" at step {step}" if step is not None else ""
    if any(
        type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(error) for error in chain
    ):
        return (
            f"CUDA ran out of memory{at}: try a smaller per-device batch with more gradient accumulation, "
            "quantization_bit 4, or shorter max_source/target lengths"
        )
    if not isinstance(exc, GlmError) and is_disk_full(exc, Path.cwd()):
        filename = next(
            (error.filename for error in chain if isinstance(error, OSError) and error.filename), None
        )
        folder = (
            Path(filename).parent if filename else Path.cwd()
        )  # the training process runs in its run folder
        with contextlib.suppress(OSError):
            free = format_bytes(shutil.disk_usage(folder).free)
            return f"disk full{at}: {free} free on {folder} ({type(exc).__name__}: {exc})"
    if isinstance(exc, KeyboardInterrupt):
        return f"stopped at once{at} (a forced stop or interrupt); steps after the latest checkpoint are lost"
    if isinstance(exc, GlmError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
