"""The Runs screen: every run folder under the workspace's runs/, live, with the keys that act on them.

It reads the folders, not a process it started, so runs launched by the CLI, an earlier session or another user
appear as well. A thread worker rereads status.json and the new lines of each events.jsonl every second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Static

from glmcore.runs import EventTail, Run, RunStatus
from glmtui.commands.runs import format_duration
from glmtui.screens.base import WorkbenchScreen
from glmtui.screens.confirm import ConfirmScreen
from glmtui.screens.run_actions import RunActions

REFRESH_S = 1.0
# Fixed widths: rows are replaced every second, and auto-sized columns would shrink and regrow meanwhile.
# Run and Step grow to their longest value (they change only when runs come or go).
COLUMNS = {"Run": 12, "State": 8, "Step": 7, "Loss": 7, "Tok/s": 7, "ETA": 7, "GPUs": 5, "Age": 7}
GROWING_COLUMNS = ("Run", "Step")
DROP_ORDER = ("Age", "GPUs", "Tok/s", "Loss", "Step")
"""Least important first: the columns left out, in this order, while the table is wider than the terminal
(the highlighted run's line below the table still shows them). Run, State and ETA always stay."""
CELL_PADDING = 2
STATE_STYLES = {
    "running": "bold green",
    "stopping": "yellow",
    "finished": "cyan",
    "failed": "bold red",
    "crashed": "bold red",
    "stopped": "yellow",
}


@dataclass(frozen=True)
class RunRow:
    """What the table shows of one run, read from its folder."""

    run: Run
    status: RunStatus
    last_log: dict | None

    def cells(self, now: datetime) -> dict[str, str]:
        """The text of every column, by column name."""
        status, log = self.status, self.last_log or {}
        loss = log.get("loss")
        speed = log.get("tokens_per_s")
        eta = log.get("eta_s") if status.is_active else None
        age = None
        if status.created:
            age = (now - datetime.fromisoformat(status.created)).total_seconds()
        return {
            "Run": self.run.id,
            "State": status.state,
            "Step": f"{status.step}/{status.total}",
            "Loss": "-" if loss is None else f"{loss:.4f}",
            "Tok/s": "-" if speed is None else f"{speed:,.0f}",
            "ETA": format_duration(eta),
            "GPUs": ",".join(map(str, status.gpus)) or "cpu",
            "Age": format_duration(age),
        }

    def describe(self, now: datetime, hidden: list[str]) -> str:
        """One line about the run: where it runs, the columns the table left out, why it ended."""
        cells = self.cells(now)
        parts = [f"[b]{self.run.id}[/b]", f"host {self.status.host or 'unknown'}"]
        parts += [f"{column} {cells[column]}" for column in COLUMNS if column in hidden]
        if self.status.reason:
            parts.append(f"{self.status.state}: {escape(self.status.reason)}")
        return " · ".join(parts)


def fitting_columns(rows: list[RunRow], width: int, now: datetime) -> dict[str, int]:
    """The columns to show in ``width`` cells and their widths: every column, less DROP_ORDER's first ones
    while the table would be wider."""
    widths = dict(COLUMNS)
    for column in GROWING_COLUMNS:
        widths[column] = max([widths[column], *(len(row.cells(now)[column]) for row in rows)])
    for column in DROP_ORDER:
        if sum(cell + CELL_PADDING for cell in widths.values()) <= width:
            break
        del widths[column]
    return widths


class RunsRead(Message):
    def __init__(self, rows: list[RunRow]) -> None:
        super().__init__()
        self.rows = rows


class RunsScreen(RunActions, WorkbenchScreen):
    """Every run, live; n new, enter open, s stop, r resume/start, e evaluate, c chat, k clone, d delete."""

    NAME = "runs"
    BINDINGS = [
        Binding("n", "new_run", "New", id="runs-new", tooltip="Configure a new run"),
        Binding("enter", "open_run", "Open", id="runs-open", tooltip="Watch the selected run"),
        Binding("s", "stop_run", "Stop", id="runs-stop", tooltip="Ask the selected run to save and stop"),
        Binding("r", "resume_run", "Resume", id="runs-resume", tooltip="Start or resume the selected run"),
        Binding("e", "evaluate_run", "Eval", id="runs-evaluate", tooltip="Evaluate the run's checkpoints"),
        Binding("c", "chat_run", "Chat", id="runs-chat", tooltip="Chat with the run's latest checkpoint"),
        Binding("k", "clone_run", "Clone", id="runs-clone", tooltip="Edit a copy of the run's config"),
        Binding("d", "delete_run", "Delete", id="runs-delete", tooltip="Delete the run folder"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._tails: dict[Run, tuple[EventTail, dict | None]] = {}
        self.rows: dict[str, RunRow] = {}
        self.shown_columns: dict[str, int] = {}

    def compose_body(self) -> ComposeResult:
        yield Static("", id="runs-summary")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="runs-detail")

    def on_resize(self) -> None:
        if self.rows:
            self._show_rows(list(self.rows.values()))

    def on_mount(self) -> None:
        self.refresh_runs()
        self.set_interval(REFRESH_S, self.refresh_runs)

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs-read")
    def refresh_runs(self) -> None:
        """Read every run folder (status and new events) and post the rows."""
        rows = []
        runs = self.workbench.run_store.list()
        for run in runs:
            tail, last_log = self._tails.get(run) or (run.tail_events(), None)
            for record in tail.read_events():
                if record.get("kind") == "log":
                    last_log = record
            self._tails[run] = (tail, last_log)
            rows.append(RunRow(run, run.status(), last_log))
        for gone in set(self._tails) - set(runs):
            del self._tails[gone]
        self.post_message(RunsRead(rows))

    def on_runs_read(self, message: RunsRead) -> None:
        self._show_rows(message.rows)

    def _show_rows(self, rows: list[RunRow]) -> None:
        table = self.query_one("#runs-table", DataTable)
        selected = self.selected_run()
        now = self.workbench.clock()
        columns = fitting_columns(rows, table.scrollable_content_region.width or self.size.width, now)
        same_runs = (
            list(self.rows) == [row.run.id for row in rows]
            and table.row_count == len(self.rows)
            and columns == self.shown_columns
        )
        self.rows = {row.run.id: row for row in rows}
        if columns != self.shown_columns:
            table.clear(columns=True)
            for label, width in columns.items():
                table.add_column(label, width=width, key=label)
            self.shown_columns = columns
        elif not same_runs:
            # Runs came or went: rebuild. Otherwise cells change in place, so the table neither flickers
            # nor loses its column widths and cursor every second.
            table.clear()
        for row in rows:
            cells = row.cells(now)
            cells["State"] = Text(cells["State"], style=STATE_STYLES.get(row.status.state, ""))
            if same_runs:
                for column in columns:
                    table.update_cell(row.run.id, column, cells[column])
            else:
                table.add_row(*(cells[column] for column in columns), key=row.run.id)
        if not same_runs and selected is not None and selected.id in self.rows:
            table.move_cursor(row=table.get_row_index(selected.id))
        active = sum(row.status.is_active for row in rows)
        self.query_one("#runs-summary", Static).update(
            f"{len(rows)} run{'s' if len(rows) != 1 else ''} in {self.workbench.workspace.runs_dir}, {active} active"
            if rows
            else "No runs yet: press n to configure one."
        )
        self._show_detail()

    def _show_detail(self) -> None:
        run = self.selected_run()
        row = self.rows.get(run.id) if run else None
        hidden = [column for column in COLUMNS if column not in self.shown_columns]
        # query, not query_one: the table can report a highlight while the screen is still composing
        for detail in self.query("#runs-detail").results(Static):
            detail.update(row.describe(self.workbench.clock(), hidden) if row else "")

    def on_data_table_row_highlighted(self) -> None:
        self._show_detail()

    def selected_run(self) -> Run | None:
        table = self.query_one("#runs-table", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        row = self.rows.get(key or "")
        return row.run if row else None

    def _require_run(self) -> Run | None:
        run = self.selected_run()
        if run is None:
            self.notify("There is no run to act on: press n to configure one.", severity="warning")
        return run

    # actions

    def action_new_run(self) -> None:
        self.workbench.action_show("config")

    def action_open_run(self) -> None:
        if run := self._require_run():
            self.workbench.workbench_screen("training").open_run(run)  # type: ignore[attr-defined]
            self.workbench.action_show("training")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def after_run_action(self) -> None:
        self.refresh_runs()

    def action_clone_run(self) -> None:
        if run := self._require_run():
            self.workbench.workbench_screen("config").clone_from(run)  # type: ignore[attr-defined]
            self.workbench.action_show("config")

    def action_delete_run(self) -> None:
        run = self._require_run()
        if run is None:
            return

        def answered(delete: bool | None) -> None:
            if delete:
                self.delete_run(run)

        self.app.push_screen(ConfirmScreen(f"Delete run {run.id} and all its checkpoints?"), answered)

    @work(thread=True, exit_on_error=False, group="runs-control")
    def delete_run(self, run: Run) -> None:
        run.delete()
        self.app.call_from_thread(self.notify, f"Deleted {run.id}.")
        self.app.call_from_thread(self.refresh_runs)
