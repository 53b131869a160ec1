"""One panel per GPU in the manner of nvidia-smi and nvitop: memory bar, utilisation, temperature, power, processes.

The text is built by ``render_gpu_panel`` (a Rich ``Text``) so the same figures can be printed without a terminal:
``python -m glmtui.widgets.gpu_panel`` prints the panel for the GPUs here (or ``--replay FILE`` for recorded
samples), which is how the panel is checked on the GPU machine.
"""

from __future__ import annotations

import argparse
import sys

from rich.text import Text
from textual.widgets import Static

from glmcore.gpu import GpuInfo, GpuSnapshot, RecordedGpuBackend, read_gpus

GIB = 2**30
BAR_FULL = "█"
BAR_EMPTY = "░"


def _bar(fraction: float | None, width: int) -> tuple[str, str]:
    """A bar of ``width`` cells for ``fraction`` and the colour that says how full it is."""
    if fraction is None:
        return "?" * width, "dim"
    filled = round(max(0.0, min(1.0, fraction)) * width)
    colour = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    return BAR_FULL * filled + BAR_EMPTY * (width - filled), colour


def _gib(value: int | None) -> str:
    return "N/A" if value is None else f"{value / GIB:.1f}"


def _number(value: float | None, unit: str) -> str:
    return "N/A" if value is None else f"{value:.0f}{unit}"


def _gpu_block(gpu: GpuInfo, width: int, text: Text) -> None:
    """One GPU: title and figures, memory and utilisation bars, processes; stacked when narrow."""
    narrow = width < 64
    bar_width = max(8, min(30, (width - 30 if narrow else width - 44) // (1 if narrow else 2)))
    title = f"GPU {gpu.index}  {gpu.name or 'unknown GPU'}"
    figures = (
        f"{_number(gpu.temperature, '°C')}  {_number(gpu.power_draw, 'W')} / {_number(gpu.power_limit, 'W')}"
    )
    if gpu.fan_speed is not None:
        figures = f"fan {gpu.fan_speed}%  " + figures
    if narrow:
        text.append(title + "\n", style="bold")
        text.append("    " + figures + "\n")
    else:
        text.append(title[: max(10, width - len(figures) - 1)], style="bold")
        text.append(" " * max(1, width - len(title) - len(figures)) + figures + "\n")

    memory_bar, memory_colour = _bar(gpu.memory_used_fraction, bar_width)
    text.append("MEM ")
    text.append(memory_bar, style=memory_colour)
    text.append(f" {_gib(gpu.memory_used)}/{_gib(gpu.memory_total)} GiB" + ("\n" if narrow else "  "))
    utilisation = None if gpu.utilization_gpu is None else gpu.utilization_gpu / 100
    utilisation_bar, utilisation_colour = _bar(utilisation, bar_width)
    text.append("GPU " if narrow else "UTIL ")
    text.append(utilisation_bar, style=utilisation_colour)
    text.append(f" {_number(gpu.utilization_gpu, '%')}\n")

    if not gpu.processes:
        text.append("  no processes\n", style="dim")
    for process in gpu.processes:
        prefix = f"  {process.pid:>8}  {_gib(process.used_memory):>6} GiB  "
        command = " ".join((process.command or "N/A").split())
        room = max(10, width - len(prefix))
        if len(command) > room:
            command = command[: room - 3] + "..."
        text.append(prefix)
        text.append(command + "\n", style="cyan")


def render_gpu_panel(snapshot: GpuSnapshot | None, width: int = 80) -> Text:
    """The panel's text for ``snapshot``: a block per GPU, or the sentence saying why there are none.

    Holds no clock reading, so the same snapshot always renders the same text.
    """
    text = Text(no_wrap=True, overflow="ellipsis")
    if snapshot is None:
        text.append("Reading the GPUs…", style="dim")
        return text
    if not snapshot.available:
        text.append(snapshot.reason or "The GPUs cannot be read here.", style="yellow")
        return text
    if not snapshot.gpus:
        text.append("The NVIDIA driver reports no GPU.", style="yellow")
        return text
    text.append(
        f"Driver {snapshot.driver_version or 'N/A'}  CUDA {snapshot.cuda_version or 'N/A'}\n", style="dim"
    )
    for gpu in snapshot.gpus:
        _gpu_block(gpu, width, text)
    text.rstrip()
    return text


def render_gpu_panel_text(snapshot: GpuSnapshot | None, width: int = 80) -> str:
    """The panel as plain text, for printing without a terminal."""
    return render_gpu_panel(snapshot, width).plain + "\n"


class GpuPanel(Static):
    """Shows the latest GPU snapshot; the app's sampler thread feeds it through ``show``."""

    DEFAULT_CSS = """
    GpuPanel { height: auto; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.snapshot: GpuSnapshot | None = None

    def show(self, snapshot: GpuSnapshot | None) -> None:
        """Display ``snapshot`` (call on the UI thread)."""
        self.snapshot = snapshot
        self.update(render_gpu_panel(snapshot, max(30, self.content_size.width or 80)))

    def on_resize(self) -> None:
        self.show(self.snapshot)


def main(argv: list[str] | None = None) -> int:
    """Print the GPU panel for the GPUs here, or for recorded samples."""
    parser = argparse.ArgumentParser(prog="python -m glmtui.widgets.gpu_panel", description=main.__doc__)
    parser.add_argument("--replay", metavar="FILE", help="render a recorded samples file instead of NVML")
    parser.add_argument("--width", type=int, default=100, help="characters per line (default 100)")
    arguments = parser.parse_args(argv)
    snapshot = read_gpus(RecordedGpuBackend(arguments.replay) if arguments.replay else None)
    sys.stdout.write(render_gpu_panel_text(snapshot, arguments.width))
    return 0 if snapshot.available else 1


if __name__ == "__main__":
    sys.exit(main())
