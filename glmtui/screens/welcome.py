"""The first screen on a machine with no model: offers the demo workspace, builds it, opens the config editor.

The demo (a tiny ChatGLM-architecture model pretrained on ad copy, plus the AdvertiseGen-form sample) is built by
``glmcore.demo.ensure_demo_workspace`` in a thread worker; its progress callback comes back as messages.
"""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import ProgressBar, Static
from textual.worker import Worker

from glmtui.messages import EditConfig
from glmtui.screens.base import WorkbenchScreen

WELCOME_TEXT = """[b]Welcome to glmtui[/b]

There is no model in {models_dir} yet.

[b]d[/b]   build the [b]demo workspace[/b]: a tiny ChatGLM-architecture model
    and the AdvertiseGen-form sample (it pretrains on this CPU: about a
    minute on 2 idle cores, longer while other work shares them);
    then configure, train, watch, evaluate and chat with it.
[b]F2[/b]  download ChatGLM-6B on the Models screen.
[b]F4[/b]  configure a run by hand.
"""


class DemoProgressed(Message):
    def __init__(self, fraction: float, text: str) -> None:
        super().__init__()
        self.fraction = fraction
        self.text = text


class DemoReady(Message):
    def __init__(self, config_path: Path) -> None:
        super().__init__()
        self.config_path = config_path


class WelcomeScreen(WorkbenchScreen):
    """d builds the demo workspace and opens the config editor with the demo run."""

    NAME = "welcome"
    BINDINGS = [
        Binding("d", "build_demo", "Build demo", id="welcome-demo", tooltip="Build the demo workspace")
    ]

    def compose_body(self) -> ComposeResult:
        with Vertical(id="welcome"):
            yield Static(
                WELCOME_TEXT.format(models_dir=self.workbench.workspace.models_dir), id="welcome-text"
            )
            yield ProgressBar(id="demo-progress", total=1.0, show_eta=False)
            yield Static("", id="demo-status")

    def action_build_demo(self) -> None:
        self.query_one("#demo-status", Static).update("Building the demo workspace…")
        self.query_one("#demo-progress", ProgressBar).display = True
        self.workbench.set_demo_build(0.0)
        self.build_demo()

    @work(thread=True, exclusive=True, exit_on_error=False, group="demo")
    def build_demo(self) -> None:
        from glmcore.demo import ensure_demo_workspace, write_demo_configs

        ensure_demo_workspace(
            self.workbench.workspace,
            progress=lambda fraction, text: self.post_message(DemoProgressed(fraction, text)),
        )
        (ptuning_config, _), _ = write_demo_configs(self.workbench.workspace)
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
