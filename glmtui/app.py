"""The glmtui app: a keyboard-driven workbench over the engine in glmcore.

The app holds what every screen shares: the workspace, the GPU sampler and runs watcher threads, the screen
switching, the
command palette and the one place worker errors become notifications. Screens are built on first visit and
kept, so a screen keeps its state while the user looks elsewhere. Nothing here imports torch or transformers:
screens import them inside their workers when they need a model, so the first frame never waits for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TypeVar

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.message import Message
from textual.notifications import Notification, Notify
from textual.worker import Worker, WorkerState

from glmcore.errors import GlmError
from glmcore.gpu import GpuBackend, GpuSampler, GpuSnapshot
from glmcore.notify import Ending, RunWatch
from glmcore.runs import Run, RunStatus, RunStore
from glmcore.runs_watcher import RunsLook, RunsWatcher
from glmcore.sweep import sweep_of
from glmcore.workspace import Workspace
from glmtui.messages import ChatWith, CompareRuns, EditConfig, EvaluateRun, OpenRun, UseData
from glmtui.screens.base import NAVIGATION, WorkbenchScreen
from glmtui.screens.help import PALETTE_KEY, HelpScreen, described, key_names
from glmtui.text.runs import ending_sentence

Clock = Callable[[], datetime]
AnyScreen = TypeVar("AnyScreen", bound=WorkbenchScreen)


def describe_error(error: BaseException | None) -> str:
    """The sentence to show for a failed worker: a GlmError's message as it is, else the type and message."""
    if error is None:
        return "A background task failed without saying why."
    if isinstance(error, GlmError):
        return str(error)
    return f"{type(error).__name__}: {error}"


@dataclass
class RunsChanged(Message):
    """A look at the run folders from the runs watcher thread, with the runs and sweeps seen ending in it."""

    look: RunsLook
    endings: list[Ending]
    problem: str | None
    """Why notify.toml's command cannot be used, when it cannot."""


@dataclass
class GpuSampled(Message):
    """A new GPU snapshot from the sampler thread."""

    snapshot: GpuSnapshot


TASKS: tuple[tuple[str, str, str], ...] = (
    (
        "Sweep: train several values of a setting",
        "config",
        "Type several values in Prefix length or Learning rate, e.g. 64,128 or 1e-2,2e-2: the form then "
        "stands for one run per combination, and ctrl+g starts them all.",
    ),
    (
        "Queue: runs waiting their turn",
        "runs",
        "Queued runs are listed under the Runs table with why each waits: + moves one earlier, - later, "
        "g starts it now, x unqueues it. `glmtui queue` lists them all.",
    ),
)
"""(palette title, screen, what to do there) of the tasks that are a way of using a screen, not a key."""


class WorkbenchCommands(Provider):
    """Command palette entries: every screen, help, the tasks above, the demo build while it runs, and every
    key of every screen by its name (those of the screen the palette was opened on first)."""

    def _commands(self) -> list[tuple[str, Callable[[], object], str]]:
        app: GlmApp = self.app  # type: ignore[assignment]
        commands: list[tuple[str, Callable[[], object], str]] = [
            (f"Go to {title}", partial(app.action_show, name), f"{key.upper()}: open the {title} screen")
            for key, name, title in NAVIGATION
        ]
        commands.append(("Help: every key of every screen", app.action_help, "F1 or ?: list every key"))
        if app.demo_build is not None:
            commands.append(
                ("Demo build: show its progress", partial(app.action_show, "welcome"), "The demo being built")
            )
        commands += [(title, partial(app.show_task, name, how), how) for title, name, how in TASKS]
        sections = app.key_sections()
        current = [section for section in sections if section[0] == app.screen_title(self.screen)]
        for title, bindings, name in current + [section for section in sections if section not in current]:
            for binding in bindings:
                keys = key_names(app, binding)
                commands.append(
                    (
                        f"{title}: {binding.description}",
                        partial(app.run_on_screen, name, binding.action),
                        f"{keys}: {binding.tooltip or binding.description}",
                    )
                )
        return commands

    async def discover(self) -> Hits:
        for title, callback, help_text in self._commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        """Titles match first; what an entry does matches too, at half the score ("queue" finds Unqueue)."""
        matcher = self.matcher(query)
        for title, callback, help_text in self._commands():
            score = max(matcher.match(title), matcher.match(help_text) / 2)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)


def _screen_classes() -> dict[str, type[WorkbenchScreen]]:
    from glmtui.screens.chat import ChatScreen
    from glmtui.screens.compare import CompareScreen
    from glmtui.screens.config import ConfigScreen
    from glmtui.screens.data import DataScreen
    from glmtui.screens.evaluate import EvaluateScreen
    from glmtui.screens.models import ModelsScreen
    from glmtui.screens.runs import RunsScreen
    from glmtui.screens.serve import ServeScreen
    from glmtui.screens.training import TrainingScreen

    return {
        screen.NAME: screen
        for screen in (
            ModelsScreen,
            DataScreen,
            ConfigScreen,
            RunsScreen,
            TrainingScreen,
            EvaluateScreen,
            ChatScreen,
            ServeScreen,
            CompareScreen,
        )
    }


RUN_REQUESTS: dict[str, type[OpenRun | EvaluateRun | ChatWith]] = {
    "training": OpenRun,
    "evaluate": EvaluateRun,
    "chat": ChatWith,
}
"""The screens that show one run, and the request that shows a run there (F6, F7, F8 on the run in view)."""
SCREEN_TITLES = {name: title for _, name, title in NAVIGATION} | {"welcome": "Welcome", "compare": "Compare"}


class GlmApp(App[int]):
    """The workbench. ``gpu_backend``/``gpu_interval`` and ``clock`` exist so tests can fix what they show."""

    CSS_PATH = "app.tcss"
    TITLE = "glmtui"
    COMMANDS = App.COMMANDS | {WorkbenchCommands}
    BINDINGS = [
        Binding(
            key,
            f"show('{name}')",
            title,
            id=f"show-{name}",
            show=False,
            key_display=key.upper(),
            tooltip=f"Open the {title} screen",
        )
        for key, name, title in NAVIGATION
    ] + [
        # ctrl+q works while typing in a field, so the footer shows it on every screen; q is the short way.
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True, tooltip="Close glmtui (runs go on)"),
        Binding("q", "quit", "Quit", id="quit-q", show=False, tooltip="Close glmtui (runs go on)"),
        Binding("f1", "help", "Help", id="help", key_display="F1", tooltip="Every key of every screen"),
        Binding(
            "question_mark",
            "help",
            "Help",
            id="help-question",
            show=False,
            tooltip="Every key of every screen",
        ),
    ]

    def __init__(
        self,
        workspace: Workspace | None = None,
        *,
        gpu_backend: GpuBackend | None = None,
        gpu_interval: float = 1.5,
        clock: Clock | None = None,
    ) -> None:
        super().__init__()
        self.workspace = (workspace or Workspace.from_env()).ensure()
        self.run_store = RunStore(self.workspace.runs_dir)
        self.clock: Clock = clock or (lambda: datetime.now().astimezone())
        self.gpu_snapshot: GpuSnapshot | None = None
        self._gpu_sampler = GpuSampler(gpu_backend, interval=gpu_interval)
        self._screen_classes = _screen_classes()
        self.runs_watcher = RunsWatcher(self.run_store)
        self._run_watch = RunWatch(self.run_store, self.workspace.root)
        self._said_watch_problem: str | None = None
        self.left_running: list[Run] = []
        """The active runs the user quit away from (they go on; run_app says so once the screen is gone)."""
        self.notifications: list[Notification] = []
        """Every notification shown since the app started, oldest first, also those gone from the screen."""
        self.demo_build: float | None = None
        """How far the demo workspace's build is (0 to 1) while it runs: the nav bar shows it everywhere."""
        self._sweep_notifications: dict[str, Notification] = {}
        """The notification each sweep has on screen: a sweep's endings replace it rather than pile up."""
        self.judged_look: RunsLook | None = None
        """The last look at every run whose endings the app has judged and announced (what waits on a look does)."""

    # screens

    def on_mount(self) -> None:
        self._gpu_sampler.subscribe(lambda snapshot: self.post_message(GpuSampled(snapshot)))
        self._gpu_sampler.start()
        self.runs_watcher.subscribe(self._runs_looked)
        self.action_show(self.home_screen_name())
        self.look_at_runs()
        self.runs_watcher.start()

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs-look")
    def look_at_runs(self) -> RunsLook | None:
        """Have the runs watcher look now (at start, and when a screen changed a run or the queue) rather than
        at its next turn; the worker's result is the look."""
        return self.runs_watcher.look()

    def _runs_looked(self, look: RunsLook) -> None:
        """On the watcher's thread: what ended (and the notification command for crashes nobody reported
        yet, which may take a while), then one message for the screens."""
        endings = self._run_watch.see(look.statuses) if look.statuses is not None else []
        self.post_message(RunsChanged(look, endings, self._run_watch.problem))

    def on_runs_changed(self, message: RunsChanged) -> None:
        if message.look.statuses is not None:
            if message.endings or message.problem:
                self._announce_endings(message.endings, message.problem)
            self.judged_look = message.look
        from glmtui.screens.runs import RunsScreen
        from glmtui.screens.training import TrainingScreen

        for kind in (RunsScreen, TrainingScreen):
            if self.is_screen_installed(kind.NAME):
                self.screen_of(kind).runs_changed(message.look)

    def _announce_endings(self, endings: list[Ending], problem: str | None) -> None:
        """The terminal bell, and a notification per ending: a failure or crash as an error. The runs of one
        sweep share one notification, each ending replacing the last (the sweep's own ending comes last)."""
        if endings:
            self.bell()
        last_of_sweep: dict[str, Ending] = {}
        for ending in endings:
            if (sweep := ending.sweep or (sweep_of(ending.run) or {}).get("sweep")) is None:
                self._notify_ending(ending)
            else:
                last_of_sweep[sweep] = ending
        for sweep, ending in last_of_sweep.items():
            earlier = self._sweep_notifications.get(sweep)
            if earlier is not None and earlier in self._notifications:
                self._unnotify(earlier)
            self._sweep_notifications[sweep] = self._notify_ending(ending)
        if problem and problem != self._said_watch_problem:
            self.notify(f"No notification command was run: {problem}", severity="warning")
        self._said_watch_problem = problem

    @property
    def notifications_on_screen(self) -> list[Notification]:
        """The notifications showing now (those timed out or replaced, as a sweep's earlier endings, gone)."""
        return list(self._notifications)

    def on_notify(self, event: Notify) -> None:
        """Keep what was said (Textual shows it as a toast and forgets it when the toast times out)."""
        self.notifications.append(event.notification)

    def _notify_ending(self, ending: Ending) -> Notification:
        """Show ``ending``'s sentence (as plain text: it holds a reason read from disk); returns the notification."""
        failed = ending.status.state in ("failed", "crashed") or any(
            state in ("failed", "crashed") for state, _ in ending.sweep_states
        )
        notification = Notification(
            ending_sentence(ending), "", "error" if failed else "information", 30, markup=False
        )
        self.post_message(Notify(notification))
        return notification

    def home_screen_name(self) -> str:
        """Runs once any run exists; the demo offer while there is no model; else the config editor."""
        if self.run_store.list():
            return "runs"
        if not self.workspace.find_models():
            return "welcome"
        return "config"

    def workbench_screen(self, name: str) -> WorkbenchScreen:
        """The screen called ``name``, built on first use and kept afterwards."""
        if not self.is_screen_installed(name):
            if name == "welcome":
                from glmtui.screens.welcome import WelcomeScreen

                self.install_screen(WelcomeScreen(), name)
            else:
                self.install_screen(self._screen_classes[name](), name)
        screen = self.get_screen(name)
        assert isinstance(screen, WorkbenchScreen)
        return screen

    def screen_of(self, kind: type[AnyScreen]) -> AnyScreen:
        """The one screen of class ``kind``, typed, built on first use."""
        screen = self.workbench_screen(kind.NAME)
        assert isinstance(screen, kind)
        return screen

    def action_show(self, name: str) -> Awaitable[object] | None:
        """Bring the screen called ``name`` to the front (the base of the screen stack: no modal is open);
        returns what to await for it to be there. Training, Evaluate and Chat from a screen that shows one run
        take that run (unless an evaluation is under way: it keeps its run)."""
        current = self.screen.run_in_view() if isinstance(self.screen, WorkbenchScreen) else None
        if current is not None and name in RUN_REQUESTS and self._takes_run(name, current):
            self.post_message(RUN_REQUESTS[name](current))
            return None
        screen = self.workbench_screen(name)
        if self.screen is screen:
            return None
        if len(self.screen_stack) <= 1:
            return self.push_screen(screen)
        return self.switch_screen(screen)

    def _takes_run(self, name: str, run: Run) -> bool:
        """Whether the screen called ``name`` should switch to ``run`` (it shows another and is not busy)."""
        target = self.workbench_screen(name)
        busy = name == "evaluate" and any(
            worker.group == "evaluate" and not worker.is_finished for worker in self.workers
        )
        return target.run_in_view() != run and not busy

    async def run_on_screen(self, name: str, action: str) -> None:
        """Open the screen called ``name`` and do ``action`` there, as its key would (the command palette)."""
        screen = self.workbench_screen(name)
        if self.screen is not screen and (shown := self.action_show(name)) is not None:
            await shown
        await screen.run_action(action)

    def show_task(self, name: str, how: str) -> None:
        """Open the screen a task is done on and say how (the palette's sweep and queue entries)."""
        self.action_show(name)
        self.notify(how, title=SCREEN_TITLES[name], timeout=20, markup=False)

    # keys

    def screen_title(self, screen: object) -> str:
        return SCREEN_TITLES.get(getattr(screen, "NAME", ""), "")

    def key_sections(self) -> list[tuple[str, list[Binding], str]]:
        """(title, keys that say what they do, screen name) of every screen, read from their BINDINGS."""
        from glmtui.screens.welcome import WelcomeScreen

        classes = {"welcome": WelcomeScreen, **self._screen_classes}
        return [
            (SCREEN_TITLES[name], list(described(screen.BINDINGS)), name)
            for name, screen in classes.items()
            if list(described(screen.BINDINGS))
        ]

    def action_help(self) -> None:
        """Every key of every screen (F1, ?), the app's own first."""
        if isinstance(self.screen, HelpScreen):
            return
        everywhere = [*described(self.BINDINGS), PALETTE_KEY]
        sections = [("Everywhere", everywhere)] + [(title, keys) for title, keys, _ in self.key_sections()]
        self.push_screen(HelpScreen(sections))

    def set_demo_build(self, fraction: float | None) -> None:
        """The demo build's progress (None: not building), shown in the nav bar of whatever screen is up."""
        self.demo_build = fraction
        if isinstance(self.screen, WorkbenchScreen):
            for nav in self.screen.query("#nav"):  # none yet on a screen still being composed
                nav.refresh()

    # requests between screens (glmtui/messages.py)

    def on_open_run(self, message: OpenRun) -> None:
        from glmtui.screens.training import TrainingScreen

        self.screen_of(TrainingScreen).open_run(message.run)
        self.action_show(TrainingScreen.NAME)

    def on_evaluate_run(self, message: EvaluateRun) -> None:
        from glmtui.screens.evaluate import EvaluateScreen

        self.screen_of(EvaluateScreen).select_run(message.run)
        self.action_show(EvaluateScreen.NAME)

    def on_chat_with(self, message: ChatWith) -> None:
        from glmtui.screens.chat import ChatScreen

        self.screen_of(ChatScreen).select_run(message.run)
        self.action_show(ChatScreen.NAME)

    def on_compare_runs(self, message: CompareRuns) -> None:
        from glmtui.screens.compare import CompareScreen

        self.screen_of(CompareScreen).compare(message.runs)
        self.action_show(CompareScreen.NAME)

    def on_edit_config(self, message: EditConfig) -> None:
        from glmtui.screens.config import ConfigScreen

        self.screen_of(ConfigScreen).load(message.config)
        self.action_show(ConfigScreen.NAME)

    def on_use_data(self, message: UseData) -> None:
        from glmtui.screens.config import ConfigScreen

        self.screen_of(ConfigScreen).use_data(message.choice)
        self.action_show(ConfigScreen.NAME)

    # quitting

    async def action_quit(self) -> None:
        """Close the app (q, ctrl+q); while runs are training, first say that they go on without it (a run
        that is only stopping ends on its own)."""
        from glmtui.screens.confirm import ConfirmScreen

        if isinstance(self.screen, ConfirmScreen):
            return
        training = [run for run, status in self.known_statuses().items() if status.state == "running"]
        if not training:
            self.exit()
            return

        def answered(leave: bool | None) -> None:
            if leave:
                self.left_running = training
                self.exit()

        self.push_screen(ConfirmScreen(leaving_runs_message(training), yes="Quit", no="Stay"), answered)

    # shared services

    def known_statuses(self) -> dict[Run, RunStatus]:
        """Every run's status as already known: the runs watcher's last look, and status.json as written for a
        run it has not seen yet. Nothing is asked of Slurm or of a process, so the UI thread never waits (squeue
        can take its 20 s timeout)."""
        latest = self.runs_watcher.latest
        seen = latest.statuses or {} if latest is not None else {}
        statuses = {}
        for run in self.run_store.list():
            with contextlib.suppress(GlmError, OSError):
                statuses[run] = seen.get(run) or run.stored_status()
        return statuses

    def on_gpu_sampled(self, message: GpuSampled) -> None:
        self.gpu_snapshot = message.snapshot
        if isinstance(self.screen, WorkbenchScreen):
            self.screen.gpu_snapshot_changed(message.snapshot)

    def notify(self, message: str, *, markup: bool = False, **options) -> None:
        """Every toast shows its text as written: run names, states and reasons read from disk are never
        parsed as markup (a reason holding "[/]" would end the app), whatever a screen passes."""
        super().notify(message, markup=False, **options)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Every failed worker ends up here (screens forward theirs, as the message does not bubble): show its
        error instead of losing it."""
        if event.state is WorkerState.ERROR:
            self.notify(describe_error(event.worker.error), title="Error", severity="error", timeout=15)

    def on_unmount(self) -> None:
        self.runs_watcher.stop()  # not waited for: its look may be waiting on squeue
        self._gpu_sampler.stop(timeout=5.0)


def leaving_runs_message(active: list[Run]) -> str:
    """What quitting means for the runs still training: they are separate processes and go on."""
    count = len(active)
    names = ", ".join(run.id for run in active[:3]) + (", …" if count > 3 else "")
    return (
        f"{count} run{'s are' if count != 1 else ' is'} still training ({names}). "
        f"{'They go' if count != 1 else 'It goes'} on after glmtui closes: reopen glmtui or use "
        "`glmtui runs` and `glmtui logs` to follow, `glmtui stop` to stop. Quit now?"
    )


def run_app() -> int:
    """Open the workbench in this terminal; returns the exit code."""
    try:
        app = GlmApp()
    except GlmError as error:
        print(f"glmtui: {error}")
        return 1
    app.run()
    if app.left_running:
        count = len(app.left_running)
        print(f"glmtui: {count} run{'s' if count != 1 else ''} still training; `glmtui runs` shows progress.")
    return app.return_code or 0
