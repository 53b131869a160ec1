"""The Compare screen: runs marked on the Runs screen (space), side by side (v).

One plot overlays every run's training loss (and its validation loss, where it evaluated while training); below it
the runs best first by the chosen metric (b picks the next one) with their losses, speed, memory, time and
evaluation metrics, and the settings whose values differ between them. The figures are glmcore.compare's, the
text glmtui.text.compare's, as `glmtui compare` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from glmcore.compare import METRICS, RunComparison, compare_runs, order
from glmcore.runs import Run
from glmtui.screens.base import WorkbenchScreen
from glmtui.text.compare import comparison_columns, comparison_heading, comparison_rows, setting_rows
from glmtui.text.metrics import comparison_modes_line

ORDER_CHOICES = ("eval_loss", "final_loss", "best_loss", "bleu-4", "rouge-l", "tokens_per_s", "duration_s")
"""What b steps through (every metric of glmcore.compare.METRICS is available to `glmtui compare --by`)."""
COLORS = ("cyan", "orange", "green", "magenta", "red", "blue", "yellow", "white")
"""One colour per run, its training curve and validation dots alike; #N in the table is the Nth colour."""


@dataclass
class Compared(Message):
    """The runs side by side, read off the UI thread."""

    comparison: RunComparison


class CompareScreen(WorkbenchScreen):
    """Runs side by side; b orders them by the next metric, escape goes back to the Runs screen."""

    NAME = "compare"
    BINDINGS = [
        Binding(
            "b", "next_order", "Order by", id="compare-order", tooltip="Rank the runs by the next metric"
        ),
        Binding("escape", "app.show('runs')", "Runs", id="compare-back", tooltip="Back to the Runs screen"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []
        self.comparison: RunComparison | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("Mark runs on the Runs screen (space), then press v.", id="compare-heading")
        yield PlotextPlot(id="compare-plot")
        yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="compare-settings-heading")
        yield DataTable(id="compare-settings", cursor_type="none", show_cursor=False)

    def compare(self, runs: list[Run]) -> None:
        """Compare ``runs`` (read in a worker); the screen shows them once read."""
        self.runs = list(runs)
        self.read_comparison(None)

    @work(thread=True, exclusive=True, exit_on_error=False, group="compare-read")
    def read_comparison(self, metric: str | None) -> None:
        self.post_message(
            Compared(compare_runs(self.workbench.run_store, [run.id for run in self.runs], metric))
        )

    def on_compared(self, message: Compared) -> None:
        self.comparison = message.comparison
        if self.is_mounted:
            self._show()

    def on_mount(self) -> None:
        if self.comparison is not None:
            self._show()

    def action_next_order(self) -> None:
        if self.comparison is None:
            return
        current = self.comparison.metric
        choices = [metric for metric in ORDER_CHOICES if metric in METRICS]
        following = choices[(choices.index(current) + 1) % len(choices)] if current in choices else choices[0]
        self.comparison = order(self.comparison.runs, following)
        self._show()

    def _show(self) -> None:
        comparison = self.comparison
        assert comparison is not None
        modes = comparison_modes_line(comparison)
        heading = comparison_heading(comparison) + (f"\n{modes}" if modes else "")
        self.query_one("#compare-heading", Static).update(Text(heading))
        self._plot(comparison)
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        table.add_columns(*comparison_columns(comparison))
        for row in comparison_rows(comparison):
            table.add_row(*row)
        rows = setting_rows(comparison)
        self.query_one("#compare-settings-heading", Static).update(
            "Settings that differ" if rows else "No setting differs between these runs."
        )
        settings = self.query_one("#compare-settings", DataTable)
        settings.clear(columns=True)
        settings.add_columns("Setting", *(f"#{number}" for number in range(1, len(comparison.runs) + 1)))
        for row in rows:
            settings.add_row(*(Text(cell) for cell in row))

    def _plot(self, comparison: RunComparison) -> None:
        plot = self.query_one("#compare-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("loss (validation: dots)")
        for number, summary in enumerate(comparison.runs, start=1):
            color = COLORS[(number - 1) % len(COLORS)]
            if summary.losses:
                steps, losses = zip(*summary.losses, strict=True)
                plt.plot(list(steps), list(losses), marker="braille", color=color, label=f"#{number}")
            if summary.eval_losses:
                steps, losses = zip(*summary.eval_losses, strict=True)
                plt.scatter(list(steps), list(losses), marker="dot", color=color)
        plot.refresh()
