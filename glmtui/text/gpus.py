"""GPU figures as text: the one renderer behind every GPU panel in the app and ``glmtui gpus``.

In the manner of nvitop's compact view and nvidia-smi's table: a row per GPU (index, name, memory used/total
with a bar, utilisation, temperature, power), or two rows per GPU with a utilisation bar when there is room;
then the processes on the GPUs, one row each (GPU, pid, user, memory, command), glmtui's own training ranks
marked with their run. Every line is built to the width it is given, and a GPU's row is never cut: when
space is short, whole figures are left out instead: the utilisation bar, the fan, the name, the labels, the
power, the temperature, in that order.

Functions return Rich ``Text`` lines and hold no clock reading, so a snapshot always renders the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text

from glmcore.gpu import NO_DRIVER_REASON, GpuInfo, GpuProcess, GpuSnapshot
from glmcore.gpu.host import HostUsage
from glmcore.slurm.gpus import NodeReading
from glmcore.units import format_gib

BAR_FULL = "█"
BAR_EMPTY = "░"
MIN_BAR = 4
FULL_VIEW_MIN_WIDTH = 56
"""Narrower than this, a GPU takes one row even when there is height for two."""
FULL_VIEW_MIN_PROCESS_ROWS = 3
"""The two-row view is used only if this many process rows (or all of them) still fit below it."""
OUR_RUN_MARK = "◆"
SHOWING_HOST = "No NVIDIA driver: showing this machine's CPU and memory"
"""The first line above the CPU and memory rows where there is no NVIDIA driver (the engine's reason says the
panels are off, which is true only where this machine's use cannot be read either)."""


def _bar(fraction: float | None, width: int) -> Text:
    """A bar of ``width`` cells for ``fraction``, coloured by how full it is."""
    if fraction is None:
        return Text("?" * width, style="dim")
    filled = round(max(0.0, min(1.0, fraction)) * width)
    colour = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    return Text(BAR_FULL * filled + BAR_EMPTY * (width - filled), style=colour)


def _gib(value: int | None) -> str:
    return "N/A" if value is None else format_gib(value)


def _number(value: float | None, unit: str) -> str:
    return "N/A" if value is None else f"{value:.0f}{unit}"


def short_gpu_name(name: str | None) -> str:
    """The card's name without the vendor ("H100 80GB HBM3"), as nvitop's compact view shows it."""
    if not name:
        return "unknown GPU"
    return name.removeprefix("NVIDIA ").strip() or name


def snapshot_heading(snapshot: GpuSnapshot | None) -> str:
    """The panel's title: how many GPUs and the driver behind them."""
    if snapshot is None or not snapshot.available:
        return "GPUs"
    count = len(snapshot.gpus)
    return (
        f"{count} GPU{'s' if count != 1 else ''} · driver {snapshot.driver_version or 'N/A'}"
        f" · CUDA {snapshot.cuda_version or 'N/A'}"
    )


def node_heading(readings: list[NodeReading], now: float) -> str:
    """The panel's title for GPUs read on a Slurm job's nodes: each node with the age of its reading."""
    if not readings:
        return "GPUs on the job's nodes: no reading yet"
    nodes = ", ".join(f"{reading.node} ({format_age_s(reading.age(now))})" for reading in readings)
    first = readings[0].snapshot
    return f"GPUs on {nodes} · driver {first.driver_version or 'N/A'} · CUDA {first.cuda_version or 'N/A'}"


def format_age_s(seconds: float) -> str:
    """How old a reading is: "3s ago", "2m ago"."""
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


# One row per GPU


@dataclass(frozen=True)
class _Column:
    """A figure of the compact row: its text per GPU, right- or left-aligned to the widest GPU's."""

    name: str
    text: Callable[[GpuInfo], str]
    left: bool = False

    def width(self, gpus: tuple[GpuInfo, ...]) -> int:
        return max(len(self.text(gpu)) for gpu in gpus)

    def cell(self, gpu: GpuInfo, width: int) -> str:
        text = self.text(gpu)
        return f"{text:<{width}}" if self.left else f"{text:>{width}}"


_INDEX = _Column("index", lambda gpu: str(gpu.index))
_NAME = _Column("name", lambda gpu: short_gpu_name(gpu.name), left=True)
_MEMORY = _Column("memory", lambda gpu: f"{_gib(gpu.memory_used)}/{_gib(gpu.memory_total)} GiB")
_UTILISATION = _Column("util", lambda gpu: _number(gpu.utilization_gpu, "%"))
_TEMPERATURE = _Column("temp", lambda gpu: _number(gpu.temperature, "°C"))
_POWER = _Column("power", lambda gpu: f"{_number(gpu.power_draw, '')}/{_number(gpu.power_limit, 'W')}")
_FAN = _Column("fan", lambda gpu: f"fan {_number(gpu.fan_speed, '%')}")

_COMPACT_CHOICES: tuple[tuple[str, ...], ...] = (
    ("name", "labels", "temp", "power", "fan", "util-bar"),
    ("name", "labels", "temp", "power", "fan"),
    ("name", "labels", "temp", "power"),
    ("labels", "temp", "power"),
    ("temp", "power"),
    ("temp",),
    (),
)
"""Which optional parts the compact row carries, richest first; the first that fits the width is used."""
_UTIL_BAR_MIN = 10


def _compact_width(choice: tuple[str, ...], widths: dict[str, int]) -> int:
    """The row's width for ``choice`` with bars at their smallest."""
    labels = "labels" in choice
    total = widths["index"] + 1 + (4 if labels else 0) + MIN_BAR + 1 + widths["memory"]
    total += 2 + (5 if labels else 0) + widths["util"]
    if "util-bar" in choice:
        total += _UTIL_BAR_MIN + 1
    for part in ("name", "temp", "power", "fan"):
        if part in choice:
            total += 2 + widths[part]
    return total


def compact_gpu_rows(gpus: tuple[GpuInfo, ...], width: int) -> list[Text]:
    """One whole row per GPU, all aligned: the richest set of figures that fits ``width``."""
    if not gpus:
        return []
    columns = (_INDEX, _NAME, _MEMORY, _UTILISATION, _TEMPERATURE, _POWER, _FAN)
    widths = {column.name: column.width(gpus) for column in columns}
    has_fan = any(gpu.fan_speed is not None for gpu in gpus)
    choices = [tuple(part for part in choice if has_fan or part != "fan") for choice in _COMPACT_CHOICES]
    choice = next((c for c in choices if _compact_width(c, widths) <= width), ())
    spare = max(0, width - _compact_width(choice, widths))
    bars = MIN_BAR + spare + (_UTIL_BAR_MIN if "util-bar" in choice else 0)
    memory_bar = bars // 2 if "util-bar" in choice else bars
    util_bar = bars - memory_bar
    labels = "labels" in choice
    rows = []
    for gpu in gpus:
        row = Text(no_wrap=True)
        row.append(_INDEX.cell(gpu, widths["index"]), style="bold")
        if "name" in choice:
            row.append(" " + _NAME.cell(gpu, widths["name"]) + " ", style="bold")
        row.append(" " + ("MEM " if labels else ""))
        row.append_text(_bar(gpu.memory_used_fraction, memory_bar))
        row.append(" " + _MEMORY.cell(gpu, widths["memory"]))
        row.append("  " + ("UTIL " if labels else ""))
        if "util-bar" in choice:
            utilisation = None if gpu.utilization_gpu is None else gpu.utilization_gpu / 100
            row.append_text(_bar(utilisation, util_bar))
            row.append(" ")
        row.append(_UTILISATION.cell(gpu, widths["util"]))
        for part, column in (("temp", _TEMPERATURE), ("power", _POWER), ("fan", _FAN)):
            if part in choice:
                row.append("  " + column.cell(gpu, widths[part]))
        rows.append(row)
    return rows


def _full_figures(gpus: tuple[GpuInfo, ...]) -> dict[int, str]:
    """Fan, temperature and power per GPU, each figure right-aligned to its column."""
    columns = [
        _TEMPERATURE.text,
        lambda gpu: f"{_number(gpu.power_draw, 'W')} / {_number(gpu.power_limit, 'W')}",
    ]
    if any(gpu.fan_speed is not None for gpu in gpus):
        columns.insert(0, _FAN.text)
    cells = {gpu.index: [column(gpu) for column in columns] for gpu in gpus}
    widths = [max(len(row[position]) for row in cells.values()) for position in range(len(columns))]
    return {
        index: "   ".join(f"{cell:>{width}}" for cell, width in zip(row, widths, strict=True))
        for index, row in cells.items()
    }


def full_gpu_rows(gpus: tuple[GpuInfo, ...], width: int) -> list[Text]:
    """Two rows per GPU: name and figures, then memory and utilisation bars (needs FULL_VIEW_MIN_WIDTH)."""
    rows = []
    memory_width = _MEMORY.width(gpus) if gpus else 0
    figures_of = _full_figures(gpus)
    for gpu in gpus:
        title = f"GPU {gpu.index}  {gpu.name or 'unknown GPU'}"
        figures = figures_of[gpu.index]
        first = Text(no_wrap=True, overflow="ellipsis")
        first.append(title[: max(0, width - len(figures) - 2)], style="bold")
        first.append(" " * max(2, width - len(title) - len(figures)) + figures)
        bars = width - (4 + 4 + 1 + memory_width + 3 + 5 + 1 + 4)
        memory_bar = max(MIN_BAR, bars // 2)
        second = Text(no_wrap=True)
        second.append("    MEM ")
        second.append_text(_bar(gpu.memory_used_fraction, memory_bar))
        second.append(f" {_MEMORY.cell(gpu, memory_width)}   UTIL ")
        utilisation = None if gpu.utilization_gpu is None else gpu.utilization_gpu / 100
        second.append_text(_bar(utilisation, max(MIN_BAR, bars - memory_bar)))
        second.append(f" {_number(gpu.utilization_gpu, '%'):>4}")
        rows += [first, second]
    return rows


# The processes below


def gpu_processes(snapshot: GpuSnapshot) -> list[tuple[int, GpuProcess]]:
    """(GPU index, process) for every process on every GPU, in GPU order as nvidia-smi lists them."""
    return [(gpu.index, process) for gpu in snapshot.gpus for process in gpu.processes]


_PROCESS_HEADER = f"{'GPU':>3} {'PID':>7} {'USER':<10} {'MEMORY':>9}  COMMAND"
_COMMAND_COLUMN = len(_PROCESS_HEADER) - len("COMMAND")


def _shown_command(command: str) -> str:
    """The command line on one row, the executable without its directory ("python", not ".venv/bin/python")."""
    arguments = command.split()
    if not arguments:
        return command
    return " ".join([os.path.basename(arguments[0]) or arguments[0], *arguments[1:]])


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def process_row(gpu_index: int, process: GpuProcess, width: int) -> Text:
    """One process: GPU, pid, user, memory, then its command (or, for a glmtui rank, its run and rank)."""
    memory = "N/A" if process.used_memory is None else f"{_gib(process.used_memory)} GiB"
    user = _fit(process.user or "?", 10)
    row = Text(f"{gpu_index:>3} {process.pid:>7} {user:<10} {memory:>9}  ", no_wrap=True, overflow="ellipsis")
    room = max(0, width - _COMMAND_COLUMN)
    if process.run is not None:
        label = f"{OUR_RUN_MARK} {os.path.basename(process.run.rstrip('/')) or process.run}"
        if process.rank is not None:
            label += f" rank {process.rank}"
        row.append(_fit(label, room), style="bold green")
        rest = room - len(label) - 2
        if process.command and rest > 8:
            row.append("  " + _fit(_shown_command(process.command), rest), style="dim")
    elif process.command is None:
        row.append(_fit("(not visible from here)", room), style="dim")
    else:
        row.append(_fit(_shown_command(process.command), room), style="cyan")
    return row


def process_header(width: int, first: int, shown: int, total: int) -> Text:
    """The process table's header, saying which rows are shown when not all fit."""
    header = Text(_PROCESS_HEADER, style="bold", no_wrap=True, overflow="ellipsis")
    if shown < total:
        where = f"{first + 1}-{first + shown} of {total} ↑↓" if shown else f"{total} processes ↑↓"
        header.append(" " * max(2, width - len(_PROCESS_HEADER) - len(where)) + where, style="dim")
    return header


# Everything in a given space


@dataclass(frozen=True)
class GpuView:
    """What fits in a width × height: the lines to draw and which processes they show."""

    lines: list[Text]
    full: bool
    """Whether each GPU got two rows."""
    first_process: int = 0
    shown_processes: int = 0
    total_processes: int = 0


def _message(text: str, style: str) -> GpuView:
    return GpuView([Text(text, style=style, no_wrap=True, overflow="ellipsis")], full=False)


def host_rows(usage: HostUsage, width: int) -> list[Text]:
    """This machine's CPU and memory as bars, one row each: what a machine without NVIDIA GPUs shows."""
    cpu = "…" if usage.cpu_fraction is None else f"{usage.cpu_fraction:4.0%}"
    figures = {
        "CPU": (usage.cpu_fraction, f" {cpu} of {usage.cpu_count} core{'s' if usage.cpu_count != 1 else ''}"),
        "RAM": (
            usage.memory_used / usage.memory_total if usage.memory_total else None,
            f" {_gib(usage.memory_used)}/{_gib(usage.memory_total)} GiB",
        ),
    }
    bar = max(4, min(30, width - 5 - max(len(figure) for _, figure in figures.values())))
    rows = []
    for name, (fraction, figure) in figures.items():
        row = Text(f" {name} ", style="bold", no_wrap=True, overflow="ellipsis")
        row.append_text(_bar(fraction, bar) if fraction is not None else Text(" " * bar))
        row.append(figure)
        rows.append(row)
    return rows


def gpu_view(
    snapshot: GpuSnapshot | None,
    width: int,
    height: int | None = None,
    first: int = 0,
    host: HostUsage | None = None,
) -> GpuView:
    """The GPUs and their processes in ``width`` × ``height`` (no height: everything, two rows per GPU).

    Each GPU's row comes first and whole; the processes fill what is left from row ``first`` (clamped so the
    last rows fill the space), and the header says which ones are shown. Where the GPUs cannot be read: why,
    then this machine's CPU and memory (``host``) when given, as a dashboard would.
    """
    if snapshot is None:
        return _message("Reading the GPUs…", "dim")
    if not snapshot.available:
        reason = snapshot.reason or "The GPUs cannot be read here."
        if host is None or (height is not None and height < 3):
            return _message(reason, "yellow")
        view = _message(SHOWING_HOST if reason == NO_DRIVER_REASON else reason, "yellow")
        view.lines.extend(host_rows(host, width))
        return view
    if not snapshot.gpus:
        return _message("The NVIDIA driver reports no GPU.", "yellow")
    processes = gpu_processes(snapshot)
    count = len(snapshot.gpus)
    minimum_process_rows = min(len(processes), FULL_VIEW_MIN_PROCESS_ROWS) or 1
    full = width >= FULL_VIEW_MIN_WIDTH and (height is None or 2 * count + 1 + minimum_process_rows <= height)
    lines = full_gpu_rows(snapshot.gpus, width) if full else compact_gpu_rows(snapshot.gpus, width)
    if not processes:
        lines.append(Text("No processes on the GPUs.", style="dim", no_wrap=True, overflow="ellipsis"))
        return GpuView(lines, full)
    room = len(processes) if height is None else max(0, height - len(lines) - 1)
    shown = min(room, len(processes))
    first = max(0, min(first, len(processes) - shown))
    lines.append(process_header(width, first, shown, len(processes)))
    lines += [process_row(index, process, width) for index, process in processes[first : first + shown]]
    return GpuView(lines, full, first, shown, len(processes))


def gpu_report(snapshot: GpuSnapshot | None, width: int = 100, host: HostUsage | None = None) -> Text:
    """Everything, heading first, two rows per GPU and every process: what ``glmtui gpus`` prints (without
    GPUs, this machine's CPU and memory when ``host`` is given)."""
    lines = gpu_view(snapshot, width, host=host).lines
    if snapshot is not None and snapshot.available:
        lines.insert(0, Text(snapshot_heading(snapshot), style="bold"))
    return Text("\n").join(lines)


def gpu_text(snapshot: GpuSnapshot | None, width: int = 100) -> str:
    """``gpu_report`` as plain text, each line without trailing spaces."""
    return "\n".join(line.rstrip() for line in gpu_report(snapshot, width).plain.splitlines()) + "\n"
