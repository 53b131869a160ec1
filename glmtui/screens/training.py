"""The Training view: one run's loss and learning-rate curves, progress, throughput, log lines and GPUs.

The app's runs watcher follows the open run's folder in the manner of toolong: it reads what was appended to
events.jsonl and train.log since the last look (complete lines only) and status.json, and hands them over; the
screen keeps the records and shows them as ``latest_by_step`` orders them, so a resumed run's abandoned steps drop
out. The run is followed while it is open, whichever screen is in front, so nothing is read twice.
"""

from __future__ import annotations

import math
import re
import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import ProgressBar, Static
from textual_plotext import PlotextPlot

from glmcore.gpu import GpuSnapshot
from glmcore.runs import Run, RunStatus, latest_by_step
from glmcore.runs_watcher import RunsLook
from glmcore.slurm.gpus import NodeReading, merged_snapshot
from glmtui.preferences import Preferences
from glmtui.screens.run_actions import RunActions
from glmtui.text.figures import eta_figure, loss_figure, speed_figure
from glmtui.text.gpus import node_heading
from glmtui.text.runs import event_sentence, slurm_detail
from glmtui.widgets.gpu_panel import GpuPanel
from glmtui.widgets.marked_log import MarkedLog

LOG_LINES = 500
ZOOMS = ("plots", "log", "gpus")
ZOOM_PREFERENCE = "training.zoom"
WIDE_COLUMNS = 110
"""Narrower terminals show only the loss curve beside the log (the learning rate joins it when zoomed)."""


STEP_LINE = re.compile(r"step (\d+)/")


def merge_by_step(log_lines: list[str], events: list[dict]) -> list[str]:
    """train.log's lines and the event lines of one read in step order: each event goes before the first log
    line of a later step (a log line's step is that of the last ``step N/...`` line up to it). On reopening a
    run both files come at once; without this every event would follow the last log line."""
    described = [(record.get("step") or 0, line) for record in events if (line := event_sentence(record))]
    merged: list[str] = []
    step = 0
    for line in log_lines:
        if match := STEP_LINE.match(line):
            step = int(match[1])
        while described and described[0][0] < step:
            merged.append(described.pop(0)[1])
        merged.append(line)
    return merged + [line for _, line in described]


def header_figures(status: RunStatus | None, logs: list[dict]) -> list[str]:
    """The figures beside the progress bar, most wanted first: where the run is, when it ends, how fast it
    goes, how it learns (`fitting` keeps those that fit on the line)."""
    if status is None:
        return []
    last = logs[-1] if logs else {}
    figures = [f"step {status.step}/{status.total}"]
    if status.is_active and last.get("eta_s") is not None:
        figures.append(eta_figure(last["eta_s"]))
    if (samples := last.get("samples_per_s")) is not None:
        figures.append(f"{samples:.1f} samples/s")
    if (loss := last.get("loss")) is not None:
        figures.append(loss_figure(loss))
    if (speed := last.get("tokens_per_s")) is not None:
        figures.append(speed_figure(speed))
    return figures


def fitting(figures: list[str], width: int, gap: str = "  ") -> str:
    """The first ``figures`` that fit in ``width`` cells on one line, whole (the header never wraps)."""
    shown: list[str] = []
    for figure in figures:
        if len(gap.join([*shown, figure])) > width:
            break
        shown.append(figure)
    return gap.join(shown)


def whole_steps(steps: list[int], count: int = 5) -> list[int]:
    """At most ``count`` round whole steps between the first and the last (multiples of 1, 2 or 5 times a power
    of ten), for a plot's x-axis: steps are counted, never fractional."""
    first, last = min(steps), max(steps)
    wanted = max(1, last - first) / (count - 1)
    magnitude = 10 ** math.floor(math.log10(wanted))
    stride = max(1, int(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= wanted)))
    return list(range(-(-first // stride) * stride, last + 1, stride)) or [first]


class TrainingScreen(RunActions):
    """Watch one run; s stop, r resume, e evaluate, c chat."""

    NAME = "training"
    BINDINGS = [
        Binding("s", "stop_run", "Stop", id="training-stop", tooltip="Ask the run to save and stop"),
        Binding(
            "r", "resume_run", "Resume", id="training-resume", tooltip="Resume the run from its checkpoint"
        ),
        Binding(
            "e", "evaluate_run", "Eval", id="training-evaluate", tooltip="Evaluate this run's checkpoints"
        ),
        Binding(
            "c",
            "chat_run",
            "Chat",
            id="training-chat",
            tooltip="Chat with this run's best or latest checkpoint",
        ),
        Binding("p", "zoom('plots')", "Plot", id="training-zoom-plots", tooltip="Give the curves the screen"),
        Binding("l", "zoom('log')", "Log", id="training-zoom-log", tooltip="Give the log the screen"),
        Binding("g", "zoom('gpus')", "GPUs", id="training-zoom-gpus", tooltip="Give the GPUs the screen"),
        Binding("escape", "zoom(None)", "All", id="training-zoom-none", tooltip="Show every pane again"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.run: Run | None = None
        self.records: list[dict] = []
        self.status: RunStatus | None = None
        self.node_gpus: list[NodeReading] | None = None
        self._unwritten_lines: list[str] = []
        """Log lines that came before the screen was mounted."""
        self.zoom: str | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("No run open: pick one on the Runs screen (F5) and press enter.", id="training-title")
        with Horizontal(id="training-progress-row"):
            yield ProgressBar(id="training-progress", show_eta=False)
            yield Static("", id="training-stats")
        with Vertical(id="training-panes"):
            with Horizontal(id="training-top"):
                with Horizontal(id="training-plots"):
                    yield PlotextPlot(id="loss-plot")
                    yield PlotextPlot(id="lr-plot")
                with Vertical(id="training-log-box"):
                    yield MarkedLog(id="training-log", max_lines=LOG_LINES)
            yield GpuPanel(id="training-gpus")

    # following the run folder

    def open_run(self, run: Run) -> None:
        """Show ``run`` from the start of its files."""
        if run == self.run:
            return
        self.run = run
        self.records = []
        self.status = None
        self.node_gpus = None
        self._unwritten_lines = []
        self.workbench.runs_watcher.follow(run)
        if self.is_mounted:
            self.query_one("#training-log", MarkedLog).clear()
            self._redraw()
        self.workbench.look_at_runs()

    def on_mount(self) -> None:
        self.preferences = Preferences.of(self.workbench.workspace)
        remembered = self.preferences.get(ZOOM_PREFERENCE)
        self._apply_zoom(remembered if remembered in ZOOMS else None)
        self.query_one("#training-log", MarkedLog).write_lines(self._unwritten_lines)
        self._unwritten_lines = []
        self._redraw()

    def on_resize(self) -> None:
        self.query_one("#training-panes").set_class(self.size.width < WIDE_COLUMNS, "-narrow")
        self.call_after_refresh(self._redraw)  # the header's figures are chosen for its width

    def runs_changed(self, look: RunsLook) -> None:
        """A look from the app's runs watcher: what the open run's folder gained."""
        followed = look.followed
        if followed is None or followed.run != self.run:
            return
        self.records.extend(followed.events)
        if self.status is None or self.status.is_active != followed.status.is_active:
            self.call_after_refresh(self.refresh_bindings)  # Stop or Resume in the footer
        self.status = followed.status
        self.node_gpus = followed.node_gpus
        self._unwritten_lines += merge_by_step(followed.log_lines, followed.events)
        if not self.is_mounted:
            return  # on_mount writes them
        self.query_one("#training-log", MarkedLog).write_lines(self._unwritten_lines)
        self._unwritten_lines = []
        self._redraw()
        if self.node_gpus is not None:
            self._show_node_gpus()

    def gpu_snapshot_changed(self, snapshot: GpuSnapshot | None) -> None:
        """This machine's GPUs, unless the run trains on Slurm nodes: then its nodes' readings are shown."""
        if self.node_gpus is None:
            super().gpu_snapshot_changed(snapshot)
        else:
            self._show_node_gpus()

    def _show_node_gpus(self) -> None:
        readings = self.node_gpus or []
        self.query_one("#training-gpus", GpuPanel).show(
            merged_snapshot(readings), node_heading(readings, time.time())
        )

    # drawing

    def log_records(self) -> list[dict]:
        """The ``log`` events as they stand after resumes, in step order."""
        return sorted(
            (record for record in latest_by_step(self.records) if record.get("kind") == "log"),
            key=lambda record: record.get("step") or 0,
        )

    def _redraw(self) -> None:
        logs = self.log_records()
        status = self.status
        title = self.query_one("#training-title", Static)
        if self.run is not None:
            state = status.state if status else "reading…"
            reason = f" — {status.reason}" if status and status.reason else ""
            # Any state and reason, as text; a Slurm job's reason to wait, or its nodes.
            where = slurm_detail(status) if status else ""
            title.update(Text.assemble((self.run.id, "bold"), f"  {state}{where}{reason}"))
        progress = self.query_one("#training-progress", ProgressBar)
        progress.display = status is not None and bool(status.total)
        if status is not None and status.total:
            progress.update(total=status.total, progress=status.step)
        stats = self.query_one("#training-stats", Static)
        stats.update(
            Text(fitting(header_figures(status, logs), stats.content_region.width or self.size.width // 2))
        )
        evaluations = [
            (record["step"], record["eval_loss"])
            for record in latest_by_step(self.records)
            if record.get("kind") == "eval" and record.get("eval_loss") is not None
        ]
        self._plot("#loss-plot", "loss", logs, "loss", validation=sorted(evaluations))
        self._plot("#lr-plot", "learning rate", logs, "learning_rate")

    def _plot(
        self, selector: str, title: str, logs: list[dict], key: str, validation: list[tuple[int, float]] = ()
    ) -> None:
        """One curve of ``key`` over the steps; ``validation`` points (the eval loss) as dots over it."""
        points = [(record["step"], record[key]) for record in logs if record.get(key) is not None]
        plot = self.query_one(selector, PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(f"{title} (validation: dots)" if validation else title)
        if points:
            steps, values = zip(*points, strict=True)
            plt.plot(list(steps), list(values), marker="braille")
            plt.xticks(whole_steps([step for step, _ in [*points, *validation]]))
        if validation:
            steps, values = zip(*validation, strict=True)
            plt.scatter(list(steps), list(values), marker="dot", color="orange")
        plot.refresh()

    def loss_points(self) -> list[tuple[int, float]]:
        """The loss curve's points (step, loss) as plotted."""
        return [
            (record["step"], record["loss"])
            for record in self.log_records()
            if record.get("loss") is not None
        ]

    # panes

    def action_zoom(self, pane: str | None) -> None:
        """Give ``pane`` the whole screen (its key again, or escape, brings every pane back); remembered."""
        zoom = None if pane == self.zoom else pane
        self._apply_zoom(zoom)
        self.preferences.set(ZOOM_PREFERENCE, zoom)

    def _apply_zoom(self, zoom: str | None) -> None:
        self.zoom = zoom
        panes = self.query_one("#training-panes")
        for name in ZOOMS:
            panes.set_class(zoom == name, f"-zoom-{name}")
        focus = {"gpus": "#training-gpus", "log": "#training-log"}.get(zoom or "")
        if focus:
            self.query_one(focus).focus()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "zoom" and parameters == (None,):
            return self.zoom is not None  # "escape All" is in the footer only while a pane is zoomed
        return super().check_action(action, parameters)

    # actions

    def run_in_view(self) -> Run | None:
        return self.run

    def status_in_view(self) -> RunStatus | None:
        return self.status

    def _require_run(self) -> Run | None:
        if self.run is None:
            self.notify("No run is open: pick one on the Runs screen (F5).", severity="warning")
        return self.run
