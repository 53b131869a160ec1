"""This machine's CPU and memory use, read from /proc: what the GPU panels show where there is no NVIDIA GPU.

The CPU's use is a share of the time since the previous reading (the idle and iowait columns of /proc/stat
against the rest), so a reader keeps its last `CpuTimes` and passes it back. Where /proc does not exist
(macOS), there is no reading.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class CpuTimes:
    """The all-CPU line of /proc/stat, in clock ticks: busy and total; and how many cores it lists."""

    busy: int
    total: int
    cores: int


@dataclass(frozen=True)
class HostUsage:
    cpu_fraction: float | None
    """Share of all cores busy since the previous reading (None on the first)."""
    cpu_count: int
    memory_used: int
    """Bytes in use: MemTotal less MemAvailable."""
    memory_total: int


def read_cpu_times(proc: Path | None = None) -> CpuTimes | None:
    proc = proc or PROC
    try:
        lines = (proc / "stat").read_text().splitlines()
        ticks = [int(value) for value in lines[0].split()[1:8]]  # user nice system idle iowait irq softirq
    except (OSError, IndexError, ValueError):
        return None
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    idle = ticks[3] + ticks[4]
    return CpuTimes(busy=sum(ticks) - idle, total=sum(ticks), cores=cores)


def read_host_usage(previous: CpuTimes | None, proc: Path | None = None) -> tuple[HostUsage, CpuTimes] | None:
    """The usage now and the CPU times to pass next time; None without /proc (``proc``: PROC, read then)."""
    proc = proc or PROC
    times = read_cpu_times(proc)
    try:
        meminfo = dict(
            (line.split(":")[0], int(line.split()[1]) * 1024)
            for line in (proc / "meminfo").read_text().splitlines()
            if line.startswith(("MemTotal:", "MemAvailable:"))
        )
    except (OSError, ValueError, IndexError):
        return None
    if times is None or len(meminfo) != 2:
        return None
    fraction = None
    if previous is not None and times.total > previous.total:
        fraction = (times.busy - previous.busy) / (times.total - previous.total)
    usage = HostUsage(
        cpu_fraction=fraction,
        cpu_count=times.cores,
        memory_used=meminfo["MemTotal"] - meminfo["MemAvailable"],
        memory_total=meminfo["MemTotal"],
    )
    return usage, times


def measure_host_usage(seconds: float = 0.5, proc: Path | None = None) -> HostUsage | None:
    """One reading with the CPU's use over ``seconds`` (two readings apart), for a one-off report such as
    `glmtui gpus`; None without /proc."""
    first = read_host_usage(None, proc)
    if first is None:
        return None
    time.sleep(seconds)
    second = read_host_usage(first[1], proc)
    return None if second is None else second[0]
