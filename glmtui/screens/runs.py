"""The Runs screen: every run folder under the workspace's runs/, live, with the keys that act on them.

It shows the folders, not a process it started, so runs launched by the CLI, an earlier session or another user
appear as well. The app's runs watcher reads each status.json and the new lines of each events.jsonl every
second; with each look a thread worker reads the queue's plan: queued runs show their position, and the lines
under the table say why each waits; when runs are queued and no worker is alive, it starts one. The runs of a
sweep stand together.
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

from glmcore.errors import GlmError
from glmcore.gpu import GpuSnapshot
from glmcore.model_folders import family_title_of
from glmcore.queue import Decision, Queue
from glmcore.runs import Run, RunStatus, start_queued_now
from glmcore.runs_watcher import RunsLook
from glmcore.sweep import group_runs, sweep_of
from glmtui.messages import CompareRuns, EditConfig, OpenRun
from glmtui.screens.confirm import ConfirmScreen
from glmtui.screens.run_actions import RunActions
from glmtui.text.figures import MISSING
from glmtui.text.queue import (
    moved_sentence,
    queue_wait,
    started_now_sentence,
    unqueued_sentence,
    worker_started_sentence,
)
from glmtui.text.runs import fit_run_columns, run_cells, slurm_detail, state_text

# Fixed widths: rows are replaced every second, and auto-sized columns would shrink and regrow meanwhile.
# Run and Step grow to their longest value (they change only when runs come or go).
COLUMNS = {
    "Run": 12,
    "State": 8,
    "Family": 11,
    "Step": 7,
    "Loss": 7,
    "Tok/s": 7,
    "ETA": 7,
    "GPUs": 5,
    "Age": 7,
}
GROWING_COLUMNS = ("Run", "Step")
CELL_PADDING = 2


@dataclass(frozen=True)
class RunRow:
    """What the table shows of one run, read from its folder."""

    run: Run
    status: RunStatus
    last_log: dict | None
    queued: Decision | None = None
    """Its place in the queue and why it waits, while it is queued."""
    marked: bool = False
    """Marked (space) for the Compare screen."""
    family: str = MISSING
    """Its model's family as users read it (`family_title`), read with the folders."""

    def cells(self, now: datetime) -> dict[str, str | Text]:
        """The text of every column, by column name (Text where a value must not be read as markup)."""
        return {
            "Run": Text(("✓ " if self.marked else "") + self.run.id),
            "State": state_text(
                self.status.state, f" {self.queued.position}" if self.queued else slurm_detail(self.status)
            ),
            **run_cells(self.status, self.last_log, now, self.family),
        }

    def describe(self, now: datetime, hidden: list[str]) -> Text:
        """One line about the run: where it runs, the columns the table left out, why it ended (as Text: every
        part is read from the run folder)."""
        cells = self.cells(now)
        parts = [f"host {self.status.host or 'unknown'}"]
        parts += [f"{column} {cells[column]}" for column in COLUMNS if column in hidden]
        if self.status.reason:
            parts.append(f"{self.status.state}: {self.status.reason}")
        return Text.assemble((self.run.id, "bold"), *(f" · {part}" for part in parts))


def fitting_columns(rows: list[RunRow], width: int, now: datetime) -> dict[str, int]:
    """The columns to show in ``width`` cells and their widths: every column, less those no row has a value in
    and then the least important ones while the table would be wider (`fit_run_columns`)."""
    widths = dict(COLUMNS)
    cells = [row.cells(now) for row in rows]
    for column in GROWING_COLUMNS:
        widths[column] = max([widths[column], *(len(row[column]) for row in cells)])
    empty = [column for column in COLUMNS if cells and all(str(row[column]) == MISSING for row in cells)]
    return fit_run_columns(widths, width, CELL_PADDING, empty)


@dataclass
class RunsRead(Message):
    """The rows of the runs table, read off the UI thread."""

    rows: list[RunRow]
    queue_problem: str | None = None
    """Why the queue could not be planned (an unreadable settings.toml); the runs still show."""


QUEUE_LINES = 3
"""Queued runs listed under the table with why they wait; `glmtui queue` lists them all."""
QUEUE_KEYS = "Queue (+ earlier, - later, g start now, x unqueue):\n"
"""The queue's keys, said above it: the footer has no room left for them at 80 columns."""


def queue_text(rows: list[RunRow]) -> Text:
    """One line per queued run, next first: its position, its id and why it waits."""
    queued = sorted((row for row in rows if row.queued), key=lambda row: row.queued.position)
    text = Text(QUEUE_KEYS if queued else "", style="dim")
    for row in queued[:QUEUE_LINES]:
        decision = row.queued
        why = queue_wait(decision)
        text.append(f"{decision.position} ", style="bold")
        text.append(f"{row.run.id}: ")
        text.append(why, style="yellow" if not decision.admitted else "green")
        text.append("\n")
    if len(queued) > QUEUE_LINES:
        text.append(f"… {len(queued) - QUEUE_LINES} more queued (`glmtui queue`)\n", style="dim")
    text.rstrip()
    return text


class RunsScreen(RunActions):
    """Every run, live; n new, enter open, s stop, r resume/start, e evaluate, c chat, k clone, d delete;
    for a queued run + and - move it in the queue, g starts it now, x takes it off the queue."""

    NAME = "runs"
    BINDINGS = [
        # Priority, so the footer names it while the table (whose own enter is unnamed) has the focus.
        Binding("enter", "open_run", "Open", id="runs-open", priority=True, tooltip="Watch the selected run"),
        Binding("n", "new_run", "New", id="runs-new", tooltip="Configure a new run"),
        Binding("s", "stop_run", "Stop", id="runs-stop", tooltip="Ask the selected run to save and stop"),
        Binding("r", "resume_run", "Resume", id="runs-resume", tooltip="Start or resume the selected run"),
        Binding("e", "evaluate_run", "Eval", id="runs-evaluate", tooltip="Evaluate the run's checkpoints"),
        Binding(
            "c", "chat_run", "Chat", id="runs-chat", tooltip="Chat with the run's best or latest checkpoint"
        ),
        Binding("space", "mark_run", "Mark", id="runs-mark", tooltip="Mark the run to compare"),
        Binding(
            "v",
            "compare_runs",
            "Compare",
            id="runs-compare",
            tooltip="Compare the marked runs (none marked: the selected run's sweep)",
        ),
        # Clone and Delete are out of the footer for want of room at 80 columns; F1 and the palette list them.
        Binding(
            "k", "clone_run", "Clone", id="runs-clone", show=False, tooltip="Edit a copy of the run's config"
        ),
        Binding("d", "delete_run", "Delete", id="runs-delete", show=False, tooltip="Delete the run folder"),
        # The queue's keys are named above the queue (shown only while runs are queued), not in the footer.
        Binding(
            "plus", "move_queued(-1)", "Earlier", id="runs-queue-up", show=False, tooltip="Move up the queue"
        ),
        Binding(
            "minus",
            "move_queued(1)",
            "Later",
            id="runs-queue-down",
            show=False,
            tooltip="Move down the queue",
        ),
        Binding(
            "g",
            "start_queued",
            "Start now",
            id="runs-queue-start",
            show=False,
            tooltip="Start, ahead of the queue",
        ),
        Binding(
            "x", "cancel_queued", "Unqueue", id="runs-queue-cancel", show=False, tooltip="Leave the queue"
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, RunRow] = {}
        self.shown_columns: dict[str, int] = {}
        self.queue_problem: str | None = None
        """Why the queue's settings could not be read, from the last read of the folders."""
        self.marked: set[str] = set()
        """The ids of the runs marked for the Compare screen."""
        self._footer_for: tuple[Run | None, bool | None] = (None, None)
        """The run the footer's keys were chosen for, and whether it was active then."""
        self._shown: tuple | None = None
        """What the table, the queue and the summary show (columns, cells, texts); a read that would show the same
        changes nothing on screen."""
        self._shown_detail: Text | None = None
        """The line under the table as shown."""

    def compose_body(self) -> ComposeResult:
        yield Static("", id="runs-summary")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="runs-detail")
        yield Static("", id="runs-queue")

    def on_resize(self) -> None:
        if self.rows:
            self._show_rows(list(self.rows.values()))

    def on_mount(self) -> None:
        if (look := self.workbench.runs_watcher.latest) is not None:
            self.runs_changed(look)

    def refresh_runs(self) -> None:
        """Have the app's runs watcher look at the folders now (after the queue or a run was changed here)."""
        self.workbench.look_at_runs()

    def runs_changed(self, look: RunsLook) -> None:
        """A look from the app's runs watcher: show it (with the queue's plan) once it reads every run."""
        if look.statuses is not None:
            self.read_rows(look)

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs-read")
    def read_rows(self, look: RunsLook) -> None:
        """The rows of ``look``: each run's family and its place in the queue, read here off the UI thread."""
        rows = []
        queue = Queue(self.workbench.workspace)
        # The app's sampler is where the app reads GPUs; until its first reading, the queue's GPU runs say so.
        snapshot = self.workbench.gpu_snapshot or GpuSnapshot.unavailable("no GPU reading yet")
        try:
            planned, queue_problem = dict(queue.plan(snapshot)), None
        except GlmError as error:
            planned, queue_problem = {}, str(error)
        if planned and (pid := queue.ensure_worker()) is not None:
            # Queued runs with no live worker (it was killed, or they were queued from elsewhere): start one,
            # as `glmtui train --queue` does, so nothing waits for a worker that is not there.
            self.app.call_from_thread(self.notify, worker_started_sentence(pid, queue.worker_log_path))
        statuses = look.statuses or {}
        newest_first = sorted([*statuses, *look.unreadable], key=lambda run: run.id, reverse=True)
        for run, _ in group_runs(newest_first):
            if run in look.unreadable:  # one damaged folder is listed as such; the others read on
                rows.append(RunRow(run, RunStatus(state="unreadable", reason=look.unreadable[run]), None))
                continue
            try:
                family = family_title_of(run.config.model_path, run.config.family) or MISSING
            except GlmError as error:
                rows.append(RunRow(run, RunStatus(state="unreadable", reason=str(error)), None))
                continue
            rows.append(RunRow(run, statuses[run], look.last_logs.get(run), planned.get(run), family=family))
        self.post_message(RunsRead(rows, queue_problem))

    def on_runs_read(self, message: RunsRead) -> None:
        if not self.query("#runs-table"):
            return  # read by a worker while the screen was being taken down (the app closing)
        self.queue_problem = message.queue_problem
        self._show_rows(message.rows)

    def _show_rows(self, rows: list[RunRow]) -> None:
        """Show ``rows``; when the table, the queue and the summary would show what they show already (the
        watcher reads every second, mostly finding nothing new), nothing is redrawn."""
        self.marked &= {row.run.id for row in rows}
        rows = [dataclasses.replace(row, marked=row.run.id in self.marked) for row in rows]
        table = self.query_one("#runs-table", DataTable)
        now = self.workbench.clock()
        columns = fitting_columns(rows, table.scrollable_content_region.width or self.size.width, now)
        cells = {row.run.id: row.cells(now) for row in rows}
        queue = Text(self.queue_problem, style="red") if self.queue_problem else queue_text(rows)
        queue_shown = bool(self.queue_problem) or any(row.queued for row in rows)
        active = sum(row.status.is_active for row in rows)
        marked = f"{len(self.marked)} marked (v compares, space unmarks) · " if self.marked else ""
        summary = Text(
            marked
            + f"{len(rows)} run{'s' if len(rows) != 1 else ''} in {self.workbench.workspace.runs_dir}, {active} active"
            if rows
            else "No runs yet: press n to configure one."
        )
        shown = (
            columns,
            [(run_id, [row_cells[column] for column in columns]) for run_id, row_cells in cells.items()],
            queue,
            queue_shown,
            summary,
        )
        selected = self.selected_run()
        same_runs = (
            list(self.rows) == [row.run.id for row in rows]
            and table.row_count == len(self.rows)
            and columns == self.shown_columns
        )
        self.rows = {row.run.id: row for row in rows}
        if shown != self._shown:
            self._shown = shown
            self._draw_rows(table, rows, cells, columns, same_runs, selected)
            queue_panel = self.query_one("#runs-queue", Static)
            queue_panel.update(queue)
            queue_panel.display = queue_shown
            self.query_one("#runs-summary", Static).update(summary)
        self._show_detail()

    def _draw_rows(
        self,
        table: DataTable,
        rows: list[RunRow],
        cells: dict[str, dict[str, str | Text]],
        columns: dict[str, int],
        same_runs: bool,
        selected: Run | None,
    ) -> None:
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
            if same_runs:
                for column in columns:
                    table.update_cell(row.run.id, column, cells[row.run.id][column])
            else:
                table.add_row(*(cells[row.run.id][column] for column in columns), key=row.run.id)
        if not same_runs and selected is not None and selected.id in self.rows:
            table.move_cursor(row=table.get_row_index(selected.id))

    def _show_detail(self) -> None:
        run = self.selected_run()
        row = self.rows.get(run.id) if run else None
        hidden = [column for column in COLUMNS if column not in self.shown_columns]
        described = row.describe(self.workbench.clock(), hidden) if row else Text()
        # query, not query_one: the table can report a highlight while the screen is still composing
        for detail in self.query("#runs-detail").results(Static):
            if described != self._shown_detail:
                self._shown_detail = described
                detail.update(described)
        if (footer := (run, row.status.is_active if row else None)) != self._footer_for:
            self._footer_for = footer
            self.refresh_bindings()  # Stop or Resume (check_action)

    def on_data_table_row_highlighted(self) -> None:
        self._show_detail()

    def status_in_view(self) -> RunStatus | None:
        run = self.selected_run()
        row = self.rows.get(run.id) if run else None
        return row.status if row else None

    def gpu_snapshot_changed(self, snapshot: GpuSnapshot | None) -> None:
        """A new GPU reading changes why queued runs wait."""
        super().gpu_snapshot_changed(snapshot)
        if self.is_mounted:
            self.refresh_runs()

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

    def action_mark_run(self) -> None:
        """Mark the selected run for comparison (or unmark it), then move to the next one."""
        if (run := self._require_run()) is None:
            return
        self.marked ^= {run.id}
        self._show_rows(list(self.rows.values()))
        self.query_one("#runs-table", DataTable).action_cursor_down()

    def action_compare_runs(self) -> None:
        """The marked runs side by side; with none marked, the selected run's sweep."""
        if (run := self._require_run()) is None:
            return
        runs = [row.run for row in self.rows.values() if row.run.id in self.marked]
        if len(runs) < 2 and (record := sweep_of(run)):
            runs = [
                row.run
                for row in self.rows.values()
                if (sweep_of(row.run) or {}).get("sweep") == record["sweep"]
            ]
        if len(runs) < 2:
            self.notify(
                "Mark two runs or more with space (or select a run of a sweep), then press v.",
                severity="warning",
            )
            return
        self.post_message(CompareRuns(runs))

    def after_run_action(self) -> None:
        self.refresh_runs()

    def _require_queued(self) -> Run | None:
        run = self._require_run()
        if run is not None and not self.rows[run.id].queued:
            self.notify(f"{run.id} is not queued.", severity="warning")
            return None
        return run

    def action_move_queued(self, offset: int) -> None:
        if run := self._require_queued():
            self.queue_action(run, "move", offset)

    def action_start_queued(self) -> None:
        if run := self._require_queued():
            self.queue_action(run, "start")

    def action_cancel_queued(self) -> None:
        if run := self._require_queued():
            self.queue_action(run, "cancel")

    @work(thread=True, exit_on_error=False, group="runs-queue")
    def queue_action(self, run: Run, action: str, offset: int = 0) -> None:
        queue = Queue(self.workbench.workspace)
        if action == "move":
            said = moved_sentence(run.id, queue.move(run, offset))
        elif action == "start":
            said = started_now_sentence(run.id, start_queued_now(run))
        else:
            queue.cancel(run)
            said = unqueued_sentence(run.id)
        self.app.call_from_thread(self.notify, said)
        self.app.call_from_thread(self.refresh_runs)

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
