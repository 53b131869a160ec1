"""GPU readings from the nodes of a Slurm run, which the login node's NVML cannot see.

On each node of the job one process (``glmcore.slurm.node``, the node's launcher) reads NVML every few seconds
and appends the raw reading to ``<run>/gpus/<node>.jsonl``, one file per node so no two hosts append to one
file over NFS. The app reads the last line of each file and shows those GPUs, each file's node named with the
age of its reading. Raw readings are NVML's own units, parsed by the same ``snapshot_from_raw`` as live ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from glmcore.gpu.snapshot import GpuSnapshot, RawSample, snapshot_from_raw
from glmcore.workspace import atomic_write_text

SAMPLES_FOLDER = "gpus"
SAMPLE_INTERVAL_S = 2.0
MAX_FILE_BYTES = 1 << 20
"""A node's file is cut back to its latest reading once it grows past this (a reader only needs the last)."""
RECORDED_SAMPLES_VARIABLE = "GLMTUI_NODE_GPU_SAMPLES"
"""A recorded samples file (``glmtui gpus --record``) to append from instead of NVML: the tests' stand-in."""
TAIL_BYTES = 256 * 1024


def samples_path(run_dir: Path, node: str) -> Path:
    return Path(run_dir) / SAMPLES_FOLDER / f"{node}.jsonl"


def append_sample(run_dir: Path, node: str, raw: RawSample) -> None:
    """Append one reading of ``node``'s GPUs (stamped now) to its file in the run folder."""
    path = samples_path(run_dir, node)
    path.parent.mkdir(exist_ok=True)
    line = json.dumps({"node": node, **raw, "timestamp": time.time()}, ensure_ascii=False) + "\n"
    if path.exists() and path.stat().st_size > MAX_FILE_BYTES:
        atomic_write_text(path, line)
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)


@dataclass(frozen=True)
class NodeReading:
    """The latest GPU reading of one node of the job."""

    node: str
    snapshot: GpuSnapshot

    def age(self, now: float | None = None) -> float:
        return max(0.0, (now if now is not None else time.time()) - self.snapshot.timestamp)


def _last_line(path: Path) -> str | None:
    with open(path, "rb") as handle:
        handle.seek(max(handle.seek(0, os.SEEK_END) - TAIL_BYTES, 0))
        lines = handle.read().decode("utf-8", errors="replace").splitlines()
    complete = [line for line in lines if line.endswith("}")]
    return complete[-1] if complete else None


def latest_readings(run_dir: Path) -> list[NodeReading]:
    """Each node's latest reading, by node name; a file with no whole reading yet is left out."""
    folder = Path(run_dir) / SAMPLES_FOLDER
    readings = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        try:
            line = _last_line(path)
            if line is None:
                continue
            raw = json.loads(line)
            readings.append(NodeReading(str(raw.get("node") or path.stem), snapshot_from_raw(raw)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return readings


def merged_snapshot(readings: list[NodeReading]) -> GpuSnapshot | None:
    """Every node's GPUs as one snapshot for one GPU panel: numbered on across nodes in node order, each GPU's
    name led by its node's ("n1 NVIDIA H100…"), so every row says where it is."""
    if not readings:
        return None
    gpus = []
    for reading in readings:
        for gpu in reading.snapshot.gpus:
            gpus.append(dataclasses.replace(gpu, index=len(gpus), name=f"{reading.node} {gpu.name or 'GPU'}"))
    first = readings[0].snapshot
    available = any(reading.snapshot.available for reading in readings)
    return GpuSnapshot(
        timestamp=min(reading.snapshot.timestamp for reading in readings),
        gpus=tuple(gpus),
        available=available,
        reason=None if available else first.reason,
        driver_version=first.driver_version,
        cuda_version=first.cuda_version,
    )


def raw_source() -> Callable[[], RawSample] | None:
    """Where a node's readings come from: the recorded file named by GLMTUI_NODE_GPU_SAMPLES, else NVML; None
    when NVML cannot be read on this node (a CPU node)."""
    recorded = os.environ.get(RECORDED_SAMPLES_VARIABLE)
    if recorded:
        samples: Iterator[RawSample] = itertools.cycle(
            json.loads(Path(recorded).read_text(encoding="utf-8"))["samples"]
        )
        return lambda: next(samples)
    from glmcore.gpu.nvml import NvmlBackend
    from glmcore.gpu.snapshot import GpuUnavailableError

    try:
        backend = NvmlBackend()
        backend.read_raw()
    except GpuUnavailableError:
        return None
    return backend.read_raw


class NodeSampler:
    """A daemon thread appending this node's readings to the run folder until ``stop``."""

    def __init__(self, run_dir: Path, node: str, read: Callable[[], RawSample], interval: float) -> None:
        self.run_dir, self.node, self.read, self.interval = Path(run_dir), node, read, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"gpu-samples-{node}", daemon=True)

    def start(self) -> NodeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                append_sample(self.run_dir, self.node, self.read())
            except Exception as error:  # a failed reading must never take the node's training down
                print(f"glmtui: GPU reading on {self.node} failed: {error}", flush=True)
            self._stopped.wait(self.interval)
