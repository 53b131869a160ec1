"""The GPU panel: every GPU's row, then the processes on them, in whatever space the screen gives it.

The text comes from ``glmtui.text.gpus`` (the one GPU renderer, shared with ``glmtui gpus``); this widget only
decides how much room it asks for and which process rows are in view. It asks for the two-row view of every
GPU plus every process, at most half its container (never less than a row per GPU, the process header and
one process); given less, the renderer falls back to a row per GPU, and the process rows scroll (↑↓, page
keys, the mouse wheel) under a header that says which are shown. Where the GPUs cannot be read (no NVIDIA
driver), it shows this machine's CPU and memory instead, reread every HOST_INTERVAL_S.
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.events import MouseScrollDown, MouseScrollUp
from textual.geometry import Size
from textual.widget import Widget

from glmcore.gpu import GpuSnapshot
from glmcore.gpu.host import CpuTimes, HostUsage, read_host_usage
from glmtui.text.gpus import GpuView, gpu_view, snapshot_heading

SHARE_OF_CONTAINER = 0.5
"""Outside zoom, the panel takes at most this share of its container's height (when its GPUs fit in it)."""
HOST_INTERVAL_S = 2.0


class GpuPanel(Widget, can_focus=True):
    """Shows the latest GPU snapshot; the app's sampler feeds it through ``show``."""

    DEFAULT_CSS = """
    GpuPanel { height: auto; }
    """
    BINDINGS = [
        Binding("up", "scroll_processes(-1)", "Up", show=False),
        Binding("down", "scroll_processes(1)", "Down", show=False),
        Binding("pageup", "scroll_processes(-10)", "Page up", show=False),
        Binding("pagedown", "scroll_processes(10)", "Page down", show=False),
        Binding("home", "scroll_processes(-1000000)", "First", show=False),
        Binding("end", "scroll_processes(1000000)", "Last", show=False),
    ]

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.snapshot: GpuSnapshot | None = None
        self.first_process = 0
        self.border_title = snapshot_heading(None)
        self.host: HostUsage | None = None
        self._cpu_times: CpuTimes | None = None

    def on_mount(self) -> None:
        self.set_interval(HOST_INTERVAL_S, self._read_host)

    def _read_host(self) -> None:
        """This machine's CPU and memory, while the GPUs cannot be read (/proc: a few small reads)."""
        if self.snapshot is None or self.snapshot.available:
            return
        if (reading := read_host_usage(self._cpu_times)) is not None:
            self.host, self._cpu_times = reading
            self.refresh(layout=True)

    def show(self, snapshot: GpuSnapshot | None, title: str | None = None) -> None:
        """Display ``snapshot`` (call on the UI thread), under ``title`` if given (else its driver's line)."""
        self.snapshot = snapshot
        self.border_title = title or snapshot_heading(snapshot)
        if snapshot is not None and not snapshot.available and self.host is None:
            self._read_host()
        self.refresh(layout=True)

    def view(self) -> GpuView:
        """What the panel shows at its present size."""
        size = self.content_size
        return gpu_view(self.snapshot, size.width, size.height, self.first_process, self.host)

    def render(self) -> Text:
        view = self.view()
        self.first_process = view.first_process
        return Text("\n").join(view.lines)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        wanted = len(gpu_view(self.snapshot, width, host=self.host).lines)
        if self.snapshot is None or not self.snapshot.gpus:
            return wanted
        smallest = len(self.snapshot.gpus) + 2
        return min(wanted, max(int(container.height * SHARE_OF_CONTAINER), smallest))

    def action_scroll_processes(self, rows: int) -> None:
        self.first_process = max(0, self.first_process + rows)
        self.refresh()

    def on_mouse_scroll_down(self, event: MouseScrollDown) -> None:
        event.stop()
        self.action_scroll_processes(1)

    def on_mouse_scroll_up(self, event: MouseScrollUp) -> None:
        event.stop()
        self.action_scroll_processes(-1)
