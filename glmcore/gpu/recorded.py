"""Recorded NVML samples: what stands in for NVML on machines without a GPU, and how they are recorded.

A samples file holds raw NVML readings (``{"format": SAMPLES_FORMAT, "samples": [...]}``), parsed by the same
``snapshot_from_raw`` as live ones. ``glmtui gpus --record FILE`` writes one on a machine with an NVIDIA GPU.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.gpu.nvml import NvmlBackend
from glmcore.gpu.snapshot import GpuSnapshot, snapshot_from_raw

SAMPLES_FORMAT = "glmtui-gpu-samples/1"
_RECORD_ADVICE = "Record samples with `glmtui gpus --record FILE` on a machine with an NVIDIA GPU."


class GpuSampleFileError(GlmError):
    """A recorded-samples file is missing or not in the recorded format."""


class RecordedGpuBackend:
    """Replays recorded NVML samples in a loop.

    Each read returns the next recorded sample stamped with the current time, so a panel fed from it looks live.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._snapshots = self._load(self.path)
        self._next = 0
        self._lock = threading.Lock()

    @staticmethod
    def _load(path: Path) -> list[GpuSnapshot]:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GpuSampleFileError(
                f"The GPU samples file {path} does not exist. {_RECORD_ADVICE}"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise GpuSampleFileError(
                f"Cannot read GPU samples from {path} ({error}). {_RECORD_ADVICE}"
            ) from None
        if not isinstance(document, dict) or document.get("format") != SAMPLES_FORMAT:
            raise GpuSampleFileError(
                f"{path} is not a GPU samples file (format {SAMPLES_FORMAT}). {_RECORD_ADVICE}"
            )
        try:
            snapshots = [snapshot_from_raw(sample) for sample in document["samples"]]
        except (KeyError, TypeError, ValueError) as error:
            raise GpuSampleFileError(
                f"{path} has a malformed GPU sample ({error!r}). {_RECORD_ADVICE}"
            ) from None
        if not snapshots:
            raise GpuSampleFileError(f"{path} holds no GPU samples. {_RECORD_ADVICE}")
        return snapshots

    def read(self) -> GpuSnapshot:
        """The next recorded snapshot (wrapping around), stamped now."""
        with self._lock:
            snapshot = self._snapshots[self._next]
            self._next = (self._next + 1) % len(self._snapshots)
        return dataclasses.replace(snapshot, timestamp=time.time())

    def close(self) -> None:
        """Nothing to release: the samples were read at construction."""


def record_samples(path: str | Path, *, count: int, interval: float) -> Path:
    """Record ``count`` raw NVML samples to ``path`` in the format RecordedGpuBackend replays.

    Raises GpuUnavailableError (with the sentence for the user) when NVML cannot be read here.
    """
    backend = NvmlBackend()
    samples = []
    try:
        for number in range(count):
            if number:
                time.sleep(interval)
            samples.append(backend.read_raw())
    finally:
        backend.close()
    target = Path(path)
    document = {"format": SAMPLES_FORMAT, "samples": samples}
    target.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return target
