"""What a GPU reading is: every GPU's figures at one moment, parsed from NVML's own names and units.

NVML is read into plain "raw" dicts in NVML's units (bytes, milliwatts) first and turned into these dataclasses
by one parser, ``snapshot_from_raw``. The same parser reads recorded samples, so a recording and a live reading
can never disagree on what a field means. A field the card does not support (the fan on an H100) is None.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Protocol

from glmcore.errors import GlmError

NO_DRIVER_REASON = "No NVIDIA driver found: GPU panels are off; everything else works."

RawSample = dict[str, Any]
"""One NVML reading in NVML's units: ``{"timestamp", "driver_version", "cuda_driver_version", "devices"}``."""


class GpuUnavailableError(GlmError):
    """NVML cannot be read on this machine; the message says why, for the user."""


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU, as nvidia-smi's process table lists it, plus who runs it."""

    pid: int
    used_memory: int | None
    """Bytes; None where the driver does not report it (e.g. for another container's process)."""
    command: str | None
    """The command line from /proc/<pid>/cmdline; None when the process is gone or not visible from here."""
    kind: str = "C"
    """nvidia-smi's Type column: "C" compute, "G" graphics, "C+G" both."""
    user: str | None = None
    """The login name owning the process; None when it is not visible from here."""
    run: str | None = None
    """The run folder when the process is a glmtui training rank (``python -m glmcore.train RUN``)."""
    rank: int | None = None
    """The torchrun rank of a glmtui training process of a multi-GPU run; None for a single-process run."""

    @property
    def is_training_rank(self) -> bool:
        """Whether this process trains one of glmtui's runs."""
        return self.run is not None


@dataclass(frozen=True)
class GpuInfo:
    """One GPU's figures at one moment; a field is None where NVML does not support it on this card."""

    index: int
    uuid: str | None
    name: str | None
    memory_used: int | None
    memory_total: int | None
    memory_free: int | None
    utilization_gpu: int | None
    """Percent of time a kernel was running over the driver's last sample period."""
    utilization_memory: int | None
    """Percent of time device memory was being read or written."""
    temperature: int | None
    """Degrees Celsius."""
    power_draw: float | None
    """Watts."""
    power_limit: float | None
    """Watts (the enforced limit)."""
    fan_speed: int | None
    """Percent; None on passively cooled cards such as the H100."""
    processes: tuple[GpuProcess, ...] = ()

    @property
    def memory_used_fraction(self) -> float | None:
        """Used over total memory, for bars; None when either is unknown."""
        if self.memory_used is None or not self.memory_total:
            return None
        return self.memory_used / self.memory_total


@dataclass(frozen=True)
class GpuSnapshot:
    """Every GPU at one moment, or why there are none to show."""

    timestamp: float
    gpus: tuple[GpuInfo, ...] = ()
    available: bool = True
    reason: str | None = None
    """Set when ``available`` is False: a sentence to show where the GPU panels would be."""
    driver_version: str | None = None
    cuda_version: str | None = None

    @classmethod
    def unavailable(cls, reason: str) -> GpuSnapshot:
        """A snapshot saying the GPUs cannot be read, and why."""
        return cls(timestamp=time.time(), available=False, reason=reason)


class GpuBackend(Protocol):
    """Where snapshots come from: NVML on a GPU machine, a recording elsewhere."""

    def read(self) -> GpuSnapshot:
        """Take one snapshot; report trouble in the snapshot rather than raising."""
        ...

    def close(self) -> None:
        """Release what ``read`` acquired."""
        ...


def _cuda_version_text(cuda_driver_version: int | None) -> str | None:
    """NVML's integer CUDA version (12040) as nvidia-smi prints it ("12.4")."""
    if cuda_driver_version is None:
        return None
    return f"{cuda_driver_version // 1000}.{cuda_driver_version % 1000 // 10}"


def _milliwatts_to_watts(milliwatts: int | None) -> float | None:
    return None if milliwatts is None else milliwatts / 1000


def _process_from_raw(entry: dict[str, Any], kind: str) -> GpuProcess:
    rank = entry.get("rank")
    return GpuProcess(
        pid=int(entry["pid"]),
        used_memory=entry.get("usedGpuMemory"),
        command=entry.get("command"),
        kind=kind,
        user=entry.get("user"),
        run=entry.get("run"),
        rank=None if rank is None else int(rank),
    )


def _processes_from_raw(compute: list[dict] | None, graphics: list[dict] | None) -> tuple[GpuProcess, ...]:
    """Merge NVML's compute and graphics process lists, one entry per pid, as nvidia-smi's table does."""
    merged: dict[int, GpuProcess] = {}
    for kind, entries in (("C", compute or []), ("G", graphics or [])):
        for entry in entries:
            process = _process_from_raw(entry, kind)
            seen = merged.get(process.pid)
            if seen is not None:
                known_memory = [m for m in (seen.used_memory, process.used_memory) if m is not None]
                process = dataclasses.replace(
                    seen, used_memory=max(known_memory, default=None), kind=f"{seen.kind}+{kind}"
                )
            merged[process.pid] = process
    return tuple(merged.values())


def gpu_info_from_raw(device: dict[str, Any]) -> GpuInfo:
    """Turn one device's raw NVML reading (NVML's names and units, None for unsupported) into a GpuInfo."""
    memory = device.get("memory") or {}
    utilization = device.get("utilization") or {}
    return GpuInfo(
        index=int(device["index"]),
        uuid=device.get("uuid"),
        name=device.get("name"),
        memory_used=memory.get("used"),
        memory_total=memory.get("total"),
        memory_free=memory.get("free"),
        utilization_gpu=utilization.get("gpu"),
        utilization_memory=utilization.get("memory"),
        temperature=device.get("temperature"),
        power_draw=_milliwatts_to_watts(device.get("power_usage")),
        power_limit=_milliwatts_to_watts(device.get("enforced_power_limit")),
        fan_speed=device.get("fan_speed"),
        processes=_processes_from_raw(device.get("compute_processes"), device.get("graphics_processes")),
    )


def snapshot_from_raw(sample: RawSample) -> GpuSnapshot:
    """Turn one raw NVML reading into a snapshot."""
    return GpuSnapshot(
        timestamp=float(sample["timestamp"]),
        gpus=tuple(gpu_info_from_raw(device) for device in sample["devices"]),
        driver_version=sample.get("driver_version"),
        cuda_version=_cuda_version_text(sample.get("cuda_driver_version")),
    )
