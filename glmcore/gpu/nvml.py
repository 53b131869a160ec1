"""The live GPU backend: NVML through nvidia-ml-py, the figures nvidia-smi prints.

Nothing here raises into the caller because of the machine: with no NVIDIA driver (or no nvidia-ml-py) the
snapshot says ``available=False`` with a sentence for the user. Every NVML field is read on its own, so a field
the card does not support costs only itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from glmcore.gpu.processes import process_identity
from glmcore.gpu.snapshot import (
    NO_DRIVER_REASON,
    GpuSnapshot,
    GpuUnavailableError,
    RawSample,
    snapshot_from_raw,
)

logger = logging.getLogger(__name__)


class NvmlBackend:
    """Reads the GPUs through NVML; initialises on first read and remembers if it cannot."""

    def __init__(self) -> None:
        self._initialised = False
        self._failure: str | None = None

    def _initialise(self) -> None:
        if self._failure is not None:
            raise GpuUnavailableError(self._failure)
        if self._initialised:
            return
        try:
            import pynvml
        except ImportError:
            self._failure = (
                "nvidia-ml-py is not installed: GPU panels are off; everything else works. "
                "Install it with `pip install nvidia-ml-py` to see the GPUs."
            )
            raise GpuUnavailableError(self._failure) from None
        try:
            pynvml.nvmlInit()
        except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded):
            self._failure = NO_DRIVER_REASON
            raise GpuUnavailableError(self._failure) from None
        except pynvml.NVMLError as error:
            self._failure = (
                f"The NVIDIA driver did not answer ({error}): GPU panels are off; everything else works."
            )
            raise GpuUnavailableError(self._failure) from None
        self._initialised = True

    def read_raw(self) -> RawSample:
        """Read every GPU in NVML's units; raises GpuUnavailableError when NVML cannot be used here."""
        self._initialise()
        import pynvml

        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as error:
            raise GpuUnavailableError(
                f"The NVIDIA driver could not list the GPUs ({error}): GPU panels are off; everything else works."
            ) from None
        if count == 0:
            raise GpuUnavailableError(
                "The NVIDIA driver reports no GPUs: GPU panels are off; everything else works."
            )
        return {
            "timestamp": time.time(),
            "driver_version": _text(_nvml_field(pynvml.nvmlSystemGetDriverVersion)),
            "cuda_driver_version": _nvml_field(pynvml.nvmlSystemGetCudaDriverVersion),
            "devices": [_read_device(pynvml, index) for index in range(count)],
        }

    def read(self) -> GpuSnapshot:
        """One snapshot; when NVML cannot be used, an unavailable snapshot with the reason."""
        try:
            return snapshot_from_raw(self.read_raw())
        except GpuUnavailableError as error:
            return GpuSnapshot.unavailable(str(error))

    def close(self) -> None:
        """Shut NVML down if this backend started it (NVML counts starts, so others keep theirs)."""
        if self._initialised:
            import pynvml

            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()
            self._initialised = False


def _nvml_field(read: Callable[..., Any], *args: Any) -> Any:
    """Call one NVML getter; None if this card or driver does not support it (or it fails for this GPU)."""
    import pynvml

    try:
        return read(*args)
    except pynvml.NVMLError as error:
        logger.debug("NVML %s: %s", getattr(read, "__name__", read), error)
        return None


def _text(value: str | bytes | None) -> str | None:
    """NVML strings arrive as bytes from older nvidia-ml-py releases."""
    return value.decode() if isinstance(value, bytes) else value


def _read_processes(read: Callable[..., Any], handle: Any) -> list[dict] | None:
    entries = _nvml_field(read, handle)
    if entries is None:
        return None
    processes = []
    for entry in entries:
        identity = process_identity(entry.pid)
        processes.append(
            {
                "pid": entry.pid,
                "usedGpuMemory": entry.usedGpuMemory,
                "command": identity.command,
                "user": identity.user,
                "run": identity.run,
                "rank": identity.rank,
            }
        )
    return processes


def _read_memory(pynvml: Any, handle: Any) -> dict[str, int] | None:
    """Memory as nvidia-smi shows it: version 2 keeps the driver's reserved memory out of "used"; drivers
    older than that have only version 1, where "used" includes it."""
    memory = _nvml_field(pynvml.nvmlDeviceGetMemoryInfo, handle, pynvml.nvmlMemory_v2)
    if memory is not None:
        return {"total": memory.total, "reserved": memory.reserved, "free": memory.free, "used": memory.used}
    memory = _nvml_field(pynvml.nvmlDeviceGetMemoryInfo, handle)
    return None if memory is None else {"total": memory.total, "free": memory.free, "used": memory.used}


def _read_device(pynvml: Any, index: int) -> dict[str, Any]:
    """One GPU's raw figures, each field read on its own so one unsupported field costs only itself."""
    handle = _nvml_field(pynvml.nvmlDeviceGetHandleByIndex, index)
    if handle is None:
        return {"index": index}
    utilization = _nvml_field(pynvml.nvmlDeviceGetUtilizationRates, handle)
    return {
        "index": index,
        "uuid": _text(_nvml_field(pynvml.nvmlDeviceGetUUID, handle)),
        "name": _text(_nvml_field(pynvml.nvmlDeviceGetName, handle)),
        "memory": _read_memory(pynvml, handle),
        "utilization": None
        if utilization is None
        else {"gpu": utilization.gpu, "memory": utilization.memory},
        "temperature": _nvml_field(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU),
        "power_usage": _nvml_field(pynvml.nvmlDeviceGetPowerUsage, handle),
        "enforced_power_limit": _nvml_field(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle),
        "fan_speed": _nvml_field(pynvml.nvmlDeviceGetFanSpeed, handle),
        "compute_processes": _read_processes(pynvml.nvmlDeviceGetComputeRunningProcesses, handle),
        "graphics_processes": _read_processes(pynvml.nvmlDeviceGetGraphicsRunningProcesses, handle),
    }
