"""What every workbench screen shares: the navigation bar on top, the footer of key bindings below."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker

if TYPE_CHECKING:
    from glmcore.gpu import GpuSnapshot
    from glmtui.app import GlmApp

NAVIGATION: tuple[tuple[str, str, str], ...] = (
    ("f2", "models", "Models"),
    ("f3", "data", "Data"),
    ("f4", "config", "Config"),
    ("f5", "runs", "Runs"),
    ("f6", "training", "Training"),
    ("f7", "evaluate", "Evaluate"),
    ("f8", "chat", "Chat"),
)
"""(key, screen name, title) of the screens reachable from anywhere; the app binds the keys."""
UNLISTED_SCREENS: tuple[tuple[str, str, str], ...] = (("f9", "serve", "Serve"),)
"""Screens reachable from anywhere by key and from the command palette, but not named in the bar: at 80
columns it has no room left."""


class NavBar(Static):
    """One line naming every screen with its key, the current one highlighted: the map of the app."""

    def __init__(self, current: str) -> None:
        super().__init__(id="nav")
        self.current = current

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        for key, name, title in NAVIGATION:
            style = "bold reverse" if name == self.current else ""
            text.append(f"{key.upper()}", style="bold cyan")
            text.append(f" {title} ", style=style)
            text.append(" ")
        return text


class WorkbenchScreen(Screen):
    """A top-level screen of the workbench: subclasses set ``NAME`` and implement ``compose_body``."""

    NAME: ClassVar[str] = ""

    @property
    def workbench(self) -> GlmApp:
        """The app, typed (screens only ever run inside GlmApp)."""
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield NavBar(self.NAME)
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        raise NotImplementedError

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
