"""GPU figures in the manner of nvidia-smi and nvitop, read through NVML (nvidia-ml-py) in a background thread.

The training view shows, per GPU, memory used/total, utilisation, temperature, power and the processes holding
memory; the run config form compares its VRAM estimate with free memory. Both read NVML directly, so the figures
are the ones nvidia-smi prints. Two rules shape the code:

- Nothing here raises into the caller because of the machine: with no NVIDIA driver the snapshot says
  ``available=False`` with a sentence for the user, and the rest of glmtui carries on.
- Every NVML field is read on its own: a field the card does not support (the fan on an H100) becomes None
  instead of losing the whole GPU.

NVML is read into plain "raw" dicts in NVML's own units (bytes, milliwatts) first and turned into dataclasses by
one parser. The same parser reads recorded samples (``RecordedGpuBackend``), which is what stands in for NVML
on machines without a GPU; ``python -m glmcore.gpu --record FILE`` records them on a machine with one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from glmcore.errors import GlmError

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.5
NO_DRIVER_REASON = "No NVIDIA driver found: GPU panels are off; everything else works."
SAMPLES_FORMAT = "glmtui-gpu-samples/1"
_MIB = 1024 * 1024

RawSample = dict[str, Any]
"""One NVML reading in NVML's units: ``{"timestamp", "driver_version", "cuda_driver_version", "devices"}``."""


class GpuUnavailableError(GlmError):
    """NVML cannot be read on this machine; the message says why, for the user."""


class GpuSampleFileError(GlmError):
    """A recorded-samples file is missing or not in the recorded format."""


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU, as nvidia-smi's process table lists it."""

    pid: int
    used_memory: int | None
    """Bytes; None where the driver does not report it (e.g. for another container's process)."""
    command: str | None
    """The command line from /proc/<pid>/cmdline; None when the process is gone or not visible from here."""
    kind: str = "C"
    """nvidia-smi's Type column: "C" compute, "G" graphics, "C+G" both."""


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


def process_command(pid: int) -> str | None:
    """The command line of ``pid`` from /proc, or None if it has exited or is not visible from here."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    arguments = [part.decode("utf-8", errors="replace") for part in raw.split(b"\0") if part]
    return " ".join(arguments) or None


def _cuda_version_text(cuda_driver_version: int | None) -> str | None:
    """NVML's integer CUDA version (12040) as nvidia-smi prints it ("12.4")."""
    if cuda_driver_version is None:
        return None
    return f"{cuda_driver_version // 1000}.{cuda_driver_version % 1000 // 10}"


def _milliwatts_to_watts(milliwatts: int | None) -> float | None:
    return None if milliwatts is None else milliwatts / 1000


def _processes_from_raw(compute: list[dict] | None, graphics: list[dict] | None) -> tuple[GpuProcess, ...]:
    """Merge NVML's compute and graphics process lists, one entry per pid, as nvidia-smi's table does."""
    merged: dict[int, GpuProcess] = {}
    for kind, entries in (("C", compute or []), ("G", graphics or [])):
        for entry in entries:
            pid = int(entry["pid"])
            process = GpuProcess(pid, entry.get("usedGpuMemory"), entry.get("command"), kind)
            seen = merged.get(pid)
            if seen is not None:
                known_memory = [m for m in (seen.used_memory, process.used_memory) if m is not None]
                process = dataclasses.replace(
                    seen, used_memory=max(known_memory, default=None), kind=f"{seen.kind}+{kind}"
                )
            merged[pid] = process
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
    return [
        {"pid": entry.pid, "usedGpuMemory": entry.usedGpuMemory, "command": process_command(entry.pid)}
        for entry in entries
    ]


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


class RecordedGpuBackend:
    """Replays recorded NVML samples in a loop: the stand-in for NVML on machines without a GPU.

    Each read returns the next recorded sample stamped with the current time, so a panel fed from it looks live.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._snapshots = self._load(self.path)
        self._next = 0
        self._lock = threading.Lock()

    @staticmethod
    def _load(path: Path) -> list[GpuSnapshot]:
        advice = "Record samples with `python -m glmcore.gpu --record FILE` on a machine with an NVIDIA GPU."
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GpuSampleFileError(f"The GPU samples file {path} does not exist. {advice}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise GpuSampleFileError(f"Cannot read GPU samples from {path} ({error}). {advice}") from None
        if not isinstance(document, dict) or document.get("format") != SAMPLES_FORMAT:
            raise GpuSampleFileError(f"{path} is not a GPU samples file (format {SAMPLES_FORMAT}). {advice}")
        try:
            snapshots = [snapshot_from_raw(sample) for sample in document["samples"]]
        except (KeyError, TypeError, ValueError) as error:
            raise GpuSampleFileError(f"{path} has a malformed GPU sample ({error!r}). {advice}") from None
        if not snapshots:
            raise GpuSampleFileError(f"{path} holds no GPU samples. {advice}")
        return snapshots

    def read(self) -> GpuSnapshot:
        """The next recorded snapshot (wrapping around), stamped now."""
        with self._lock:
            snapshot = self._snapshots[self._next]
            self._next = (self._next + 1) % len(self._snapshots)
        return dataclasses.replace(snapshot, timestamp=time.time())

    def close(self) -> None:
        """Nothing to release: the samples were read at construction."""


SnapshotCallback = Callable[[GpuSnapshot], None]


class GpuSampler:
    """Samples the GPUs every ``interval`` seconds in a daemon thread and hands each snapshot to subscribers.

    Callbacks run on the sampler's thread: a UI must hop to its own thread (Textual's ``call_from_thread``).
    A failing callback is logged and does not stop the sampling or the other callbacks.
    """

    def __init__(self, backend: GpuBackend | None = None, *, interval: float = DEFAULT_INTERVAL_S) -> None:
        if interval <= 0:
            raise ValueError(f"The sampling interval must be positive, got {interval}.")
        self.interval = interval
        self._backend: GpuBackend = backend if backend is not None else NvmlBackend()
        self._callbacks: list[SnapshotCallback] = []
        self._lock = threading.Lock()
        self._latest: GpuSnapshot | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glmcore-gpu-sampler", daemon=True)

    @property
    def latest(self) -> GpuSnapshot | None:
        """The most recent snapshot; None until the first sample is taken."""
        with self._lock:
            return self._latest

    @property
    def available(self) -> bool | None:
        """Whether the GPUs can be read; None until the first sample is taken."""
        latest = self.latest
        return None if latest is None else latest.available

    @property
    def reason(self) -> str | None:
        """Why the GPUs cannot be read, when they cannot."""
        latest = self.latest
        return None if latest is None else latest.reason

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def subscribe(self, callback: SnapshotCallback) -> Callable[[], None]:
        """Call ``callback(snapshot)`` after every sample; returns a function that unsubscribes it."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def start(self) -> GpuSampler:
        """Start sampling (the first sample is taken at once, on the sampler's thread)."""
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop sampling, wait for the thread to finish its current sample, and release the backend."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._backend.close()

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _sample(self) -> GpuSnapshot:
        try:
            return self._backend.read()
        except Exception as error:  # a backend bug must not kill the panels' thread
            logger.exception("Reading the GPUs failed")
            return GpuSnapshot.unavailable(f"Reading the GPUs failed ({error}): GPU panels are paused.")

    def _run(self) -> None:
        while not self._stop.is_set():
            snapshot = self._sample()
            with self._lock:
                self._latest = snapshot
                callbacks = list(self._callbacks)
            for callback in callbacks:
                try:
                    callback(snapshot)
                except Exception:
                    logger.exception("A GPU snapshot subscriber failed")
            self._stop.wait(self.interval)


def read_gpus(backend: GpuBackend | None = None) -> GpuSnapshot:
    """One snapshot now, without a sampler (NVML unless a backend is given); never raises for a missing driver."""
    reader = backend if backend is not None else NvmlBackend()
    try:
        return reader.read()
    finally:
        if backend is None:
            reader.close()


def free_memory_by_gpu(snapshot: GpuSnapshot | None = None) -> dict[int, int]:
    """Free memory in bytes per GPU index, for the VRAM estimate; empty when no GPU can be read."""
    if snapshot is None:
        snapshot = read_gpus()
    return {gpu.index: gpu.memory_free for gpu in snapshot.gpus if gpu.memory_free is not None}


def _mib(value: int | None) -> str:
    return "N/A" if value is None else f"{value // _MIB}MiB"


def _unit(value: float | None, unit: str) -> str:
    return "N/A" if value is None else f"{value:.0f}{unit}"


_GPU_COLUMNS = (
    ("GPU", 3, ">"),
    ("Name", 22, "<"),
    ("Fan", 4, ">"),
    ("Temp", 5, ">"),
    ("Pwr:Usage/Cap", 13, ">"),
    ("Memory-Usage", 19, ">"),
    ("GPU-Util", 8, ">"),
    ("Mem-Util", 8, ">"),
)
_PROCESS_COLUMNS = (("GPU", 3, ">"), ("PID", 8, ">"), ("Type", 4, "<"), ("GPU Memory", 10, ">"))


def _fit(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` characters, marking the cut as nvidia-smi does with "..."."""
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def _row(cells: list[str], columns: tuple[tuple[str, int, str], ...]) -> str:
    return "  ".join(
        f"{_fit(cell, width):{align}{width}}" for cell, (_, width, align) in zip(cells, columns, strict=True)
    )


def _header(columns: tuple[tuple[str, int, str], ...]) -> str:
    return _row([name for name, _, _ in columns], columns)


def format_gpu_table(snapshot: GpuSnapshot, *, width: int = 100) -> str:
    """Render a snapshot as nvidia-smi-like plain text: a GPU table, then the processes holding memory.

    Commands are cut to fit ``width``; everything else has fixed columns so successive renders line up.
    """
    stamp = datetime.fromtimestamp(snapshot.timestamp).strftime("%a %b %d %H:%M:%S %Y")
    if not snapshot.available:
        return f"{stamp}\n{snapshot.reason}\n"
    lines = [
        f"{stamp}   Driver Version: {snapshot.driver_version or 'N/A'}   "
        f"CUDA Version: {snapshot.cuda_version or 'N/A'}",
        _header(_GPU_COLUMNS),
    ]
    for gpu in snapshot.gpus:
        cells = [
            str(gpu.index),
            gpu.name or "N/A",
            _unit(gpu.fan_speed, "%"),
            _unit(gpu.temperature, "C"),
            f"{_unit(gpu.power_draw, 'W')} / {_unit(gpu.power_limit, 'W')}",
            f"{_mib(gpu.memory_used)} / {_mib(gpu.memory_total)}",
            _unit(gpu.utilization_gpu, "%"),
            _unit(gpu.utilization_memory, "%"),
        ]
        lines.append(_row(cells, _GPU_COLUMNS))
    lines += ["", "Processes:"]
    processes = [(gpu.index, process) for gpu in snapshot.gpus for process in gpu.processes]
    if not processes:
        lines.append("No running processes found")
    else:
        lines.append(_header(_PROCESS_COLUMNS) + "  Command")
        command_width = max(width - len(lines[-1]) + len("Command"), 10)
        for index, process in processes:
            cells = [str(index), str(process.pid), process.kind, _mib(process.used_memory)]
            command = " ".join(
                (process.command or "N/A").split()
            )  # a -c script's newlines stay off the table
            lines.append(_row(cells, _PROCESS_COLUMNS) + "  " + _fit(command, command_width))
    return "\n".join(lines) + "\n"


def record_samples(path: str | Path, *, count: int, interval: float) -> Path:
    """Record ``count`` raw NVML samples to ``path`` in the format RecordedGpuBackend replays."""
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


def _iter_snapshots(arguments: argparse.Namespace) -> Iterator[GpuSnapshot]:
    if arguments.replay:
        backend = RecordedGpuBackend(arguments.replay)
        for _ in range(arguments.samples):
            yield backend.read()
    else:
        yield read_gpus()


def main(argv: list[str] | None = None) -> int:
    """Print GPU snapshots as nvidia-smi-like text, or record NVML samples for replay."""
    parser = argparse.ArgumentParser(prog="python -m glmcore.gpu", description=main.__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--record", metavar="FILE", help="record raw NVML samples to FILE")
    source.add_argument("--replay", metavar="FILE", help="print samples from a recorded FILE instead of NVML")
    parser.add_argument(
        "--samples", type=int, default=1, help="how many samples to record or replay (default 1)"
    )
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds between recorded samples"
    )
    arguments = parser.parse_args(argv)
    try:
        if arguments.record:
            written = record_samples(arguments.record, count=arguments.samples, interval=arguments.interval)
            print(f"Recorded {arguments.samples} sample(s) to {written}.")
            return 0
        for snapshot in _iter_snapshots(arguments):
            print(format_gpu_table(snapshot), end="")
            if not snapshot.available:
                return 1
    except GlmError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
