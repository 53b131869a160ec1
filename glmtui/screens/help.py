"""The help screen (F1 or ?): every key of every screen, read from the bindings themselves.

Nothing here is written by hand: the keys, their names and their tooltips come from the app's and each screen's
``BINDINGS``, so a key added to a screen shows up here (and in the command palette) with no other change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

PALETTE_KEY = Binding("ctrl+p", "command_palette", "Command palette", tooltip="Find any action by its name")


def key_names(app: App, binding: Binding) -> str:
    """How the footer writes ``binding``'s key or keys ("n,escape" becomes "n / esc")."""
    if binding.key_display:
        return binding.key_display
    return " / ".join(app.get_key_display(Binding(key.strip(), "")) for key in binding.key.split(","))


def described(bindings: Iterable[object]) -> Iterator[Binding]:
    """The bindings that say what they do (a binding without a description is an implementation detail)."""
    for binding in bindings:
        if isinstance(binding, Binding) and binding.description:
            yield binding


def keys_text(app: App, sections: list[tuple[str, list[Binding]]]) -> Text:
    """One block per screen: its title, then a line per key: the key, its name, what it does."""
    text = Text()
    for title, bindings in sections:
        if not bindings:
            continue
        text.append(f"{title}\n", style="bold underline")
        width = max(len(key_names(app, binding)) for binding in bindings)
        for binding in bindings:
            text.append(f"  {key_names(app, binding):<{width}}  ", style="bold cyan")
            text.append(binding.description)
            if binding.tooltip and binding.tooltip != binding.description:
                text.append(f": {binding.tooltip}", style="dim")
            text.append("\n")
        text.append("\n")
    text.rstrip()
    return text


class HelpScreen(ModalScreen[None]):
    """Every key of every screen; escape, q, F1 or ? closes it."""

    BINDINGS = [Binding("escape,q,f1,question_mark", "dismiss", "Close", id="help-close")]

    def __init__(self, sections: list[tuple[str, list[Binding]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog"):
            yield Static(
                Text("Every key of every screen · ↑↓ scroll · escape closes · ctrl+p finds by name"),
                id="help-title",
            )
            with VerticalScroll(id="help-keys"):
                yield Static(keys_text(self.app, self.sections), id="help-text")

    def on_mount(self) -> None:
        self.query_one("#help-keys").focus()

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
