"""What every workbench screen shares: the navigation bar on top, the footer of key bindings below."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, Protocol, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker

if TYPE_CHECKING:
    from glmcore.gpu import GpuSnapshot
    from glmcore.runs import Run, RunStore
    from glmcore.runs_watcher import RunsWatcher
    from glmcore.workspace import Workspace

NAVIGATION: tuple[tuple[str, str, str], ...] = (
    ("f2", "models", "Models"),
    ("f3", "data", "Data"),
    ("f4", "config", "Config"),
    ("f5", "runs", "Runs"),
    ("f6", "training", "Training"),
    ("f7", "evaluate", "Evaluate"),
    ("f8", "chat", "Chat"),
    ("f9", "serve", "Serve"),
)
"""(key, screen name, title) of the screens reachable from anywhere; the app binds the keys."""
SHORT_TITLES = {"Training": "Train", "Evaluate": "Eval"}
"""The titles a narrow bar uses, so every screen stays named at 80 columns with the demo's progress beside."""


def nav_text(current: str, width: int, demo_build: float | None = None) -> Text:
    """The bar in ``width`` cells: each screen's key and title, ``current`` highlighted, and while the demo is
    being built its progress at the end. The roomiest layout that fits wins; the last one is cut with a mark."""
    building = Text(f"demo {demo_build:.0%}", style="bold yellow") if demo_build is not None else Text()
    for roomy, short in ((True, False), (False, False), (False, True)):
        text = Text(no_wrap=True, overflow="ellipsis")
        for key, name, title in NAVIGATION:
            shown = SHORT_TITLES.get(title, title) if short else title
            style = "bold reverse" if name == current else ""
            if roomy:  # "F2 Models  F3 Data  ": the current title highlighted with a space either side
                text.append(key.upper(), style="bold cyan")
                text.append(f" {shown} ", style=style)
                text.append(" ")
            else:  # "F2 Models F3 Data"
                text.append(" " if text else "")
                text.append(key.upper(), style="bold cyan")
                text.append(" ")
                text.append(shown, style=style)
        if building:
            text.append(" " if not roomy else "")
            text.append_text(building)
        if text.cell_len <= width:
            break
    return text


class Workbench(Protocol):
    """What a screen asks of the app it runs in (`glmtui.app.GlmApp` is the one): typed here, so that no screen
    imports the app module, which imports every screen."""

    workspace: Workspace
    run_store: RunStore
    runs_watcher: RunsWatcher
    gpu_snapshot: GpuSnapshot | None
    demo_build: float | None
    clock: Callable[[], datetime]

    def action_show(self, name: str) -> Awaitable[object] | None: ...

    def look_at_runs(self) -> object: ...

    def set_demo_build(self, fraction: float | None) -> None: ...

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None: ...


class NavBar(Static):
    """One line naming every screen with its key, the current one highlighted: the map of the app. While the
    demo workspace is being built, its progress too (ctrl+p "demo" opens it)."""

    def __init__(self, current: str) -> None:
        super().__init__(id="nav")
        self.current = current

    def render(self) -> Text:
        return nav_text(self.current, self.size.width, cast("Workbench", self.app).demo_build)


class WorkbenchScreen(Screen):
    """A top-level screen of the workbench: subclasses set ``NAME`` and implement ``compose_body``."""

    NAME: ClassVar[str] = ""

    @property
    def workbench(self) -> Workbench:
        """The app, typed (screens only ever run inside GlmApp)."""
        return cast("Workbench", self.app)

    def compose(self) -> ComposeResult:
        yield NavBar(self.NAME)
        yield from self.compose_body()
        # Compact, and no palette key: at 80 columns every key that works now must fit; F1 lists the rest
        # (and the palette, ctrl+p).
        yield Footer(compact=True, show_command_palette=False)

    def compose_body(self) -> ComposeResult:
        raise NotImplementedError

    def run_in_view(self) -> Run | None:
        """The one run the screen shows, if it shows one: F6, F7 and F8 from here watch, evaluate and chat
        with that run."""
        return None

    def gpu_snapshot_changed(self, snapshot: GpuSnapshot | None) -> None:
        """A new GPU sample arrived (or the screen came back): refresh the GPU panels it has."""
        from glmtui.widgets.gpu_panel import GpuPanel

        for panel in self.query(GpuPanel):
            panel.show(snapshot)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Hand worker state changes to the app, where errors become notifications."""
        self.workbench.on_worker_state_changed(event)

    def on_screen_resume(self) -> None:
        self.gpu_snapshot_changed(self.workbench.gpu_snapshot)
        self.query_one(NavBar).refresh()
