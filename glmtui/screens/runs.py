"""The Runs screen: every run folder under the workspace's runs/, live, with the keys that act on them.

It reads the folders, not a process it started, so runs launched by the CLI, an earlier session or another user
appear as well. A thread worker rereads status.json and the new lines of each events.jsonl every second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Static

from glmcore.runs import EventTail, Run, RunStatus
from glmtui.messages import EditConfig, OpenRun
from glmtui.presentation import run_cells, state_text
from glmtui.screens.confirm import ConfirmScreen
from glmtui.screens.run_actions import RunActions

REFRESH_S = 1.0
# Fixed widths: rows are replaced every second, and auto-sized columns would shrink and regrow meanwhile.
COLUMNS = {"Run": 30, "State": 9, "Step": 11, "Loss": 7, "Tok/s": 7, "ETA": 8, "GPUs": 5, "Age": 7}


@dataclass(frozen=True)
class RunRow:
    """What the table shows of one run, read from its folder."""

    run: Run
    status: RunStatus
    last_log: dict | None

    def cells(self, now: datetime) -> tuple[str | Text, ...]:
        figures = run_cells(self.status, self.last_log, now)
        return (
            Text(self.run.id),
            state_text(self.status.state),
            *(figures[name] for name in COLUMNS if name in figures),
        )


class RunsRead(Message):
    def __init__(self, rows: list[RunRow]) -> None:
        super().__init__()
        self.rows = rows


class RunsScreen(RunActions):
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

    def compose_body(self) -> ComposeResult:
        yield Static("", id="runs-summary")
        table: DataTable = DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        for label, width in COLUMNS.items():
            table.add_column(label, width=width)
        yield table

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
        if not self.query("#runs-table"):
            return  # read by a worker while the screen was being taken down (the app closing)
        table = self.query_one("#runs-table", DataTable)
        selected = self.selected_run()
        now = self.workbench.clock()
        same_runs = list(self.rows) == [row.run.id for row in message.rows] and table.row_count == len(
            self.rows
        )
        self.rows = {row.run.id: row for row in message.rows}
        if not same_runs:
            # Runs came or went: rebuild. Otherwise cells change in place, so the table neither flickers
            # nor loses its column widths and cursor every second.
            table.clear()
        for row in message.rows:
            cells = row.cells(now)
            if same_runs:
                for column, value in zip(table.columns, cells, strict=True):
                    table.update_cell(row.run.id, column, value)
            else:
                table.add_row(*cells, key=row.run.id)
        if not same_runs and selected is not None and selected.id in self.rows:
            table.move_cursor(row=table.get_row_index(selected.id))
        active = sum(row.status.is_active for row in message.rows)
        self.query_one("#runs-summary", Static).update(
            f"{len(message.rows)} run{'s' if len(message.rows) != 1 else ''} in {self.workbench.workspace.runs_dir}, {active} active"
            if message.rows
            else "No runs yet: press n to configure one."
        )

    def selected_run(self) -> Run | None:
        if not self.query("#runs-table"):
            return None  # a key reached the screen before it was built (type-ahead over a slow link)
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
            self.post_message(OpenRun(run))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def after_run_action(self) -> None:
        self.refresh_runs()

    def action_clone_run(self) -> None:
        if run := self._require_run():
            self.post_message(EditConfig(dataclasses.replace(run.config, name=f"{run.config.name}-copy")))

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
