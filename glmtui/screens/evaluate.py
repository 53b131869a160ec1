"""The Evaluate screen: the base model against a run's prefix checkpoints, metrics side by side, worst first.

The comparison runs in a thread worker through ``glmcore.evaluate.compare`` (which loads torch itself); its
progress snapshots come back as messages, and x sets the cancel event it watches.
"""

from __future__ import annotations

import threading
from pathlib import Path

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Label, ProgressBar, SelectionList, Static

from glmcore.runs import Run
from glmtui.presentation import format_duration
from glmtui.screens.base import WorkbenchScreen

BASE_LABEL = "base model"


class EvalProgressed(Message):
    def __init__(self, progress: object) -> None:
        super().__init__()
        self.progress = progress


class EvalFinished(Message):
    def __init__(self, comparison: object) -> None:
        super().__init__()
        self.comparison = comparison


def short(text: str | None, width: int = 40) -> str:
    """One line of at most ``width`` characters."""
    line = " ".join((text or "-").split())
    return line if len(line) <= width else line[: width - 1] + "…"


class EvaluateScreen(WorkbenchScreen):
    """Pick checkpoints and data, g evaluate, x cancel; browse examples worst first."""

    NAME = "evaluate"
    BINDINGS = [
        Binding(
            "ctrl+g", "evaluate", "Evaluate", id="evaluate-start", tooltip="Compare the picked checkpoints"
        ),
        Binding("ctrl+x", "cancel", "Cancel", id="evaluate-cancel", tooltip="Stop the evaluation"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.run: Run | None = None
        self.comparison: object | None = None
        self._cancel = threading.Event()

    def compose_body(self) -> ComposeResult:
        yield Static("No run picked: choose one on the Runs screen (F5) and press e.", id="evaluate-title")
        with Horizontal(id="evaluate-top"):
            with Vertical(id="evaluate-picks"):
                yield Label("Evaluate (space toggles):")
                yield SelectionList[str](id="evaluate-checkpoints")
            with Vertical(id="evaluate-settings"):
                yield Label("Data file:")
                yield Input(id="evaluate-data")
                yield Label("Only its first N examples (empty: all):")
                yield Input(id="evaluate-limit", type="integer", placeholder="all")
                yield ProgressBar(id="evaluate-progress", show_eta=False)
                yield Static("", id="evaluate-status")
        yield DataTable(id="evaluate-metrics", cursor_type="row")
        yield DataTable(id="evaluate-examples", cursor_type="row")
        yield Static("", id="evaluate-detail")

    def select_run(self, run: Run) -> None:
        """Offer the base model and ``run``'s checkpoints (the base and the latest picked)."""
        self.run = run
        if self.is_mounted:
            self._fill()

    def on_mount(self) -> None:
        self._fill()

    def _fill(self) -> None:
        if self.run is None:
            return
        run = self.run
        self.query_one("#evaluate-title", Static).update(f"[b]{run.id}[/b]: base model vs prefix checkpoints")
        checkpoints = run.checkpoints()
        picks = self.query_one("#evaluate-checkpoints", SelectionList)
        picks.clear_options()
        picks.add_option((BASE_LABEL, "base", True))
        for number, checkpoint in enumerate(checkpoints):
            picks.add_option((checkpoint.path.name, str(checkpoint.path), number == len(checkpoints) - 1))
        data = run.config.validation_file or run.config.train_file
        self.query_one("#evaluate-data", Input).value = str(data)
        if not checkpoints:
            self.query_one("#evaluate-status", Static).update(
                "This run has no complete checkpoint yet; evaluate it after its first save."
            )

    def action_evaluate(self) -> None:
        if self.run is None:
            self.notify("Pick a run on the Runs screen (F5) first.", severity="warning")
            return
        picked = list(self.query_one("#evaluate-checkpoints", SelectionList).selected)
        if not picked:
            self.notify("Tick at least one entry to evaluate.", severity="warning")
            return
        limit_text = self.query_one("#evaluate-limit", Input).value.strip()
        if limit_text and not limit_text.isdigit():
            self.notify(
                "The limit is a number of examples, e.g. 20; leave it empty for all.", severity="error"
            )
            return
        limit = int(limit_text) if limit_text else None
        self._cancel = threading.Event()
        self.query_one("#evaluate-status", Static).update("Loading the model…")
        self.compare(
            self.run, picked, Path(self.query_one("#evaluate-data", Input).value.strip()), limit, self._cancel
        )

    def action_cancel(self) -> None:
        self._cancel.set()

    @work(thread=True, exclusive=True, exit_on_error=False, group="evaluate")
    def compare(
        self, run: Run, picked: list[str], data_file: Path, limit: int | None, cancel: threading.Event
    ) -> None:
        from glmcore.data import Columns
        from glmcore.evaluate import EvalSettings, compare, new_run_evaluation_folder

        config = run.config
        comparison = compare(
            config.model_path,
            picked,
            data_file,
            EvalSettings(
                max_source_length=config.max_source_length, max_target_length=config.max_target_length
            ),
            new_run_evaluation_folder(run),
            columns=Columns(config.prompt_column, config.response_column, config.history_column),
            quantization_bit=config.quantization_bit,
            progress=lambda snapshot: self.post_message(EvalProgressed(snapshot)),
            cancel=cancel,
            limit=limit,
        )
        self.post_message(EvalFinished(comparison))

    def on_eval_progressed(self, message: EvalProgressed) -> None:
        progress = message.progress
        bar = self.query_one("#evaluate-progress", ProgressBar)
        bar.update(total=progress.total, progress=progress.done)
        self.query_one("#evaluate-status", Static).update(
            f"{progress.label} ({progress.evaluation}/{progress.evaluations}): {progress.phase} "
            f"{progress.done}/{progress.total}, {progress.tokens_per_second:,.0f} tok/s, "
            f"ETA {format_duration(progress.eta_seconds)}"
        )

    def on_eval_finished(self, message: EvalFinished) -> None:
        comparison = message.comparison
        self.comparison = comparison
        metrics = comparison.metrics()
        labels = list(metrics)
        table = self.query_one("#evaluate-metrics", DataTable)
        table.clear(columns=True)
        table.add_columns("metric", *labels)
        names = list(next(iter(metrics.values()))) if metrics else []
        for name in names:
            table.add_row(name, *(f"{metrics[label].get(name, 0):.2f}" for label in labels))
        self.show_examples(comparison.output_dir)
        state = "done" if comparison.complete else "cancelled; finished evaluations kept"
        self.query_one("#evaluate-status", Static).update(f"Evaluation {state}: {comparison.output_dir}")

    def show_examples(self, folder: Path) -> None:
        """List comparison_examples.jsonl (worst first, as written)."""
        import json

        from glmcore.evaluate import COMPARISON_EXAMPLES_FILE

        self.example_rows = [
            json.loads(line)
            for line in (folder / COMPARISON_EXAMPLES_FILE).read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        table = self.query_one("#evaluate-examples", DataTable)
        table.clear(columns=True)
        table.add_columns("#", "input", "before", "after")
        for row in self.example_rows:
            after = list(row["after"].values())[-1] if row["after"] else None
            table.add_row(
                str(row["index"]), short(row["input"], 24), short(row["before"], 24), short(after, 24)
            )

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id != "evaluate-examples" or event.cursor_row >= len(
            getattr(self, "example_rows", [])
        ):
            return
        row = self.example_rows[event.cursor_row]
        lines = [f"[b]input[/b] {escape(row['input'])}", f"[b]label[/b] {escape(row['label'])}"]
        if row["before"] is not None:
            lines.append(f"[b]before[/b] {escape(row['before'])}")
        lines += [
            f"[b]{escape(label)}[/b] {escape(prediction)}" for label, prediction in row["after"].items()
        ]
        self.query_one("#evaluate-detail", Static).update("\n".join(lines))
