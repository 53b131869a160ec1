"""The Evaluate screen: the base model against a run's prefix checkpoints, metrics side by side, worst first.

The comparison runs in a thread worker through ``glmcore.evaluate.compare_checkpoints`` (which loads torch itself); its
progress snapshots come back as messages, and x sets the cancel event it watches.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Input, Label, ProgressBar, SelectionList, Static
from textual.worker import Worker, WorkerState

from glmcore.evaluate import (
    BASE,
    CheckpointComparison,
    EvalError,
    EvalPlan,
    EvalProgress,
    new_run_evaluation_folder,
    plan_evaluation,
)
from glmcore.runs import Run
from glmtui.screens.base import WorkbenchScreen
from glmtui.text.figures import format_duration, speed_and_eta
from glmtui.text.metrics import metric_row_label
from glmtui.text.runs import skipped_checkpoint_line

BASE_LABEL = "base model"
READY = "space ticks what to compare; ctrl+g evaluates."


@dataclass
class EvalProgressed(Message):
    """How far the evaluation is, from its worker."""

    progress: EvalProgress


@dataclass
class EvalFinished(Message):
    """The finished (or cancelled) comparison of the checkpoints."""

    comparison: CheckpointComparison


def short(text: str | None, width: int = 40) -> str:
    """One line of at most ``width`` terminal cells (Chinese characters take two)."""
    line = Text(" ".join((text or "-").split()))
    line.truncate(width, overflow="ellipsis")
    return line.plain


class EvaluateScreen(WorkbenchScreen):
    """Pick checkpoints and data, g evaluate, x cancel; browse examples worst first."""

    NAME = "evaluate"
    BINDINGS = [
        Binding(
            "ctrl+g", "evaluate", "Evaluate", id="evaluate-start", tooltip="Compare the picked checkpoints"
        ),
        Binding(
            "ctrl+x",
            "cancel",
            "Cancel",
            id="evaluate-cancel",
            priority=True,  # over the data field's cut
            tooltip="Stop the evaluation",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.run: Run | None = None
        self.comparison: CheckpointComparison | None = None
        self._cancel = threading.Event()
        self._loading_since: float | None = None
        """When the evaluation began loading its model, until its first progress report."""

    def compose_body(self) -> ComposeResult:
        yield Static("No run picked: choose one on the Runs screen (F5) and press e.", id="evaluate-title")
        with Horizontal(classes="field"):
            yield Label("Data file", classes="field-label")
            yield Input(id="evaluate-data", placeholder="a .json/.jsonl/.csv file of the run's columns")
        with Horizontal(classes="field"):
            yield Label("First N only", classes="field-label")
            yield Input(id="evaluate-limit", type="integer", placeholder="empty: every example")
        with Horizontal(id="evaluate-top"):
            yield SelectionList[str](id="evaluate-checkpoints")
            with Vertical(id="evaluate-state"):
                yield Static(READY, id="evaluate-status")
                yield ProgressBar(id="evaluate-progress", show_eta=False)
        yield DataTable(id="evaluate-metrics", cursor_type="row")
        yield DataTable(id="evaluate-examples", cursor_type="row")
        with VerticalScroll(id="evaluate-detail-box", can_focus=True):
            yield Static("", id="evaluate-detail")

    def run_in_view(self) -> Run | None:
        return self.run

    def select_run(self, run: Run) -> None:
        """Offer the base model and ``run``'s checkpoints (the base and the latest picked)."""
        self.run = run
        if self.is_mounted:
            self._fill()

    def on_mount(self) -> None:
        self._fill()
        self.set_interval(1.0, self._show_loading)

    def _show_loading(self) -> None:
        """Until the first example is generated: which model loads, and for how long so far."""
        if self._loading_since is None or self.run is None:
            return
        self.query_one("#evaluate-status", Static).update(
            Text(
                f"Loading {self.run.config.model_path.name} "
                f"({format_duration(time.monotonic() - self._loading_since)}); the examples follow."
            )
        )

    def _fill(self) -> None:
        if self.run is None:
            return
        run = self.run
        self.query_one("#evaluate-title", Static).update(
            Text.assemble((run.id, "bold"), ": base model vs prefix checkpoints")
        )
        checkpoints = run.checkpoints()
        picks = self.query_one("#evaluate-checkpoints", SelectionList)
        picks.clear_options()
        picks.add_option((BASE_LABEL, BASE, True))
        for number, checkpoint in enumerate(checkpoints):
            picks.add_option((checkpoint.path.name, str(checkpoint.path), number == len(checkpoints) - 1))
        data = run.config.validation_file  # as the CLI: never the training file
        self.query_one("#evaluate-data", Input).value = str(data) if data else ""
        try:  # what the CLI would refuse for this run, said before anything is ticked
            plan_evaluation(run)
        except EvalError as error:
            self.query_one("#evaluate-status", Static).update(Text(str(error)))
        else:
            self.query_one("#evaluate-status", Static).update(READY)

    def action_evaluate(self) -> None:
        if self.run is None:
            self.notify("Pick a run on the Runs screen (F5) first.", severity="warning")
            return
        picked = list(self.query_one("#evaluate-checkpoints", SelectionList).selected)
        if not picked:
            self.notify("Tick at least one entry to evaluate.", severity="warning")
            return
        data_text = self.query_one("#evaluate-data", Input).value.strip()
        if not data_text:
            self.notify(
                "The Data file field is empty: type the path of a .json, .jsonl or .csv file with the run's "
                "columns.",
                severity="error",
            )
            return
        limit_text = self.query_one("#evaluate-limit", Input).value.strip()
        if limit_text and not limit_text.isdigit():
            self.notify(
                "The limit is a number of examples, e.g. 20; leave it empty for all.", severity="error"
            )
            return
        limit = int(limit_text) if limit_text else None
        try:
            plan = plan_evaluation(self.run, checkpoints=picked, data=Path(data_text))
        except EvalError as error:
            self.query_one("#evaluate-status", Static).update(Text(str(error)))
            self.notify(str(error), severity="error")
            return
        self._cancel = threading.Event()
        self._loading_since = time.monotonic()
        self._show_loading()
        self.query_one("#evaluate-progress", ProgressBar).display = True
        self.evaluate_checkpoints(
            plan, new_run_evaluation_folder(self.run, self.workbench.clock()), limit, self._cancel
        )

    def action_cancel(self) -> None:
        self._cancel.set()

    @work(thread=True, exclusive=True, exit_on_error=False, group="evaluate")
    def evaluate_checkpoints(
        self, plan: EvalPlan, output_root: Path, limit: int | None, cancel: threading.Event
    ) -> None:
        from glmcore.evaluate import compare_checkpoints

        comparison = compare_checkpoints(
            **plan.compare_arguments(),
            output_root=output_root,
            progress=lambda snapshot: self.post_message(EvalProgressed(snapshot)),
            cancel=cancel,
            limit=limit,
        )
        self.post_message(EvalFinished(comparison))

    def on_eval_progressed(self, message: EvalProgressed) -> None:
        self._loading_since = None
        progress = message.progress
        bar = self.query_one("#evaluate-progress", ProgressBar)
        bar.update(total=progress.total, progress=progress.done)
        self.query_one("#evaluate-status", Static).update(
            f"{progress.label} ({progress.evaluation}/{progress.evaluations}): {progress.phase} "
            f"{progress.done}/{progress.total}, {speed_and_eta(progress.tokens_per_second, progress.eta_seconds)}"
        )

    def on_eval_finished(self, message: EvalFinished) -> None:
        comparison = message.comparison
        self.comparison = comparison
        metrics = comparison.metrics()
        labels = list(metrics)
        table = self.query_one("#evaluate-metrics", DataTable)
        table.clear(columns=True)
        mode = comparison.metric_mode
        # The corner names the way the scores were computed (glmcore.metrics' modes), BLEU-4's row its scale.
        table.add_columns(mode.name, *labels, *(Text(entry.label) for entry in comparison.skipped))
        names = list(next(iter(metrics.values()))) if metrics else []
        skipped_cells = ["skipped"] * len(comparison.skipped)
        for name in names:
            table.add_row(
                metric_row_label(name, mode),
                *(f"{metrics[label].get(name, 0):.2f}" for label in labels),
                *skipped_cells,
            )
        if comparison.skipped:
            reasons = (Text(short(entry.reason)) for entry in comparison.skipped)
            table.add_row("skipped because", *[""] * len(labels), *reasons)
        self.show_examples(comparison.output_dir)
        state = "done" if comparison.complete else "cancelled; finished evaluations kept"
        folder = comparison.output_dir
        shown = (
            folder.relative_to(self.run.path) if self.run and folder.is_relative_to(self.run.path) else folder
        )
        lines = [f"Evaluation {state}; results in the run's {shown}"]
        lines += [skipped_checkpoint_line(entry) for entry in comparison.skipped]
        self.query_one("#evaluate-status", Static).update(Text("\n".join(lines)))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The bar shows only while an evaluation runs, however it ends (the app shows a failure's error)."""
        super().on_worker_state_changed(event)
        if event.worker.group == "evaluate" and event.worker.is_finished:
            self._loading_since = None
            self.query_one("#evaluate-progress", ProgressBar).display = False
            if event.worker.state is not WorkerState.SUCCESS:
                self.query_one("#evaluate-status", Static).update(
                    "Stopped before an evaluation finished; nothing was kept. ctrl+g starts again."
                )

    def on_resize(self) -> None:
        if getattr(self, "example_rows", None):
            self._fill_examples()

    def show_examples(self, folder: Path) -> None:
        """List comparison_examples.jsonl (worst first, as written)."""
        import json

        from glmcore.evaluate import COMPARISON_EXAMPLES_FILE

        self.example_rows = [
            json.loads(line)
            for line in (folder / COMPARISON_EXAMPLES_FILE).read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        self._fill_examples()

    def _fill_examples(self) -> None:
        """One row per example: the input, the base model's and the last checkpoint's answers, each cut to a
        third of the width (the line below the table shows the highlighted example whole)."""
        table = self.query_one("#evaluate-examples", DataTable)
        index_width = max([1, *(len(str(row["index"])) for row in self.example_rows)])
        text_width = max(8, (self.size.width - index_width - 2 - 4 * 2) // 3)
        table.clear(columns=True)
        table.add_column("#", width=index_width)
        for label in ("input", "before", "after"):
            table.add_column(label, width=text_width)
        for row in self.example_rows:
            after = list(row["after"].values())[-1] if row["after"] else None
            table.add_row(  # as Text: what a model wrote is never markup
                str(row["index"]),
                Text(short(row["input"], text_width)),
                Text(short(row["before"], text_width)),
                Text(short(after, text_width)),
            )

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id != "evaluate-examples" or event.cursor_row >= len(
            getattr(self, "example_rows", [])
        ):
            return
        row = self.example_rows[event.cursor_row]
        named = [("input", row["input"]), ("label", row["label"])]
        if row["before"] is not None:
            named.append(("before", row["before"]))
        named += list(row["after"].items())
        # Model output is shown as text: a prediction may hold anything, markup-like brackets included.
        lines = [Text.assemble((name, "bold"), " ", value) for name, value in named]
        self.query_one("#evaluate-detail", Static).update(Text("\n").join(lines))
