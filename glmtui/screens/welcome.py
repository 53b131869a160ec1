"""The first screen on a machine with no model: offers a demo workspace per model family, builds the chosen one,
opens the config editor.

A demo (a tiny model of the family pretrained on ad copy, plus the AdvertiseGen-form sample) is built by
``glmcore.demo.ensure_demo_workspace`` in a thread worker; its progress callback comes back as messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import ProgressBar, Static
from textual.worker import Worker

from glmcore.models import FAMILIES, ModelFamily, family_named
from glmcore.models.family import family_titles
from glmtui.messages import EditConfig
from glmtui.screens.base import WorkbenchScreen

WELCOME_TEXT = """[b]Welcome to glmtui[/b]: fine-tune {titles}.

There is no model in {models_dir} yet.

Try a family without weights: a [b]demo workspace[/b] holds a tiny model of it
and the AdvertiseGen-form sample to configure, train, watch, evaluate, chat.
{demo_keys}A build pretrains the tiny model on the CPU: about a minute on two idle
cores, longer while the CPU is busy.

[b]F2[/b]  download {downloads} on the Models screen.
[b]F4[/b]  configure a run by hand.
"""


def demo_line(family: ModelFamily) -> str:
    """A family's key, its demo, and the same from the shell."""
    demo = f"{family.title} demo"
    return f"[b]{family.demo.key}[/b]   {demo:<18} (glmtui demo --family {family.short_name})\n"


def welcome_text(models_dir: str) -> str:
    """The screen's text: the registry's families, their demo keys, and those the Models screen downloads."""
    return WELCOME_TEXT.format(
        titles=family_titles(FAMILIES),
        models_dir=models_dir,
        demo_keys="".join(map(demo_line, FAMILIES)),
        downloads=family_titles([family for family in FAMILIES if family.download], "or"),
    )


@dataclass
class DemoProgressed(Message):
    """How far the demo build is (0 to 1) and what it does now."""

    fraction: float
    text: str


@dataclass
class DemoReady(Message):
    """The demo workspace is built: the run config to open in the editor."""

    config_path: Path


class WelcomeScreen(WorkbenchScreen):
    """A family's demo key (d, 2, 3, 4: `demo.key` of each family) builds its demo workspace and opens the config editor with its demo
    run."""

    NAME = "welcome"
    BINDINGS = [
        Binding(
            family.demo.key,
            f"build_demo('{family.name}')",
            f"{family.title} demo",
            id=f"welcome-demo-{family.name}",
            tooltip=f"Build the {family.title} demo workspace",
            show=False,  # the text lists every family's key; six do not fit an 80-column footer
        )
        for family in FAMILIES
    ]

    def compose_body(self) -> ComposeResult:
        with Vertical(id="welcome"):
            models_dir = escape(str(self.workbench.workspace.models_dir))
            yield Static(Text.from_markup(welcome_text(models_dir)), id="welcome-text")
            yield ProgressBar(id="demo-progress", total=1.0, show_eta=False)
            yield Static("", id="demo-status")

    def action_build_demo(self, family: str) -> None:
        title = family_named(family).title
        self.query_one("#demo-status", Static).update(f"Building the {title} demo workspace…")
        self.query_one("#demo-progress", ProgressBar).display = True
        self.workbench.set_demo_build(0.0)
        self.build_demo(family)

    @work(thread=True, exclusive=True, exit_on_error=False, group="demo")
    def build_demo(self, family: str) -> None:
        from glmcore.demo import ensure_demo_workspace, write_demo_configs

        ensure_demo_workspace(
            self.workbench.workspace,
            progress=lambda fraction, text: self.post_message(DemoProgressed(fraction, text)),
            family=family,
        )
        (ptuning_config, _), _ = write_demo_configs(self.workbench.workspace, family)
        self.post_message(DemoReady(ptuning_config))

    def on_demo_progressed(self, message: DemoProgressed) -> None:
        self.query_one("#demo-progress", ProgressBar).update(progress=message.fraction)
        self.query_one("#demo-status", Static).update(message.text)
        self.workbench.set_demo_build(message.fraction)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """However the build ends, the nav bar stops showing its progress (the app shows a failure's error)."""
        super().on_worker_state_changed(event)
        if event.worker.group == "demo" and event.worker.is_finished:
            self.workbench.set_demo_build(None)

    def on_demo_ready(self, message: DemoReady) -> None:
        from glmcore.config import RunConfig

        self.post_message(EditConfig(RunConfig.load(message.config_path)))
        self.notify(
            f"The demo is ready and its configs are in {message.config_path.parent}: "
            "check the config and press ctrl+g to start training."
        )
