"""`glmtui runs`: a table of every run in the workspace, with the columns and figures the Runs screen shows."""

from __future__ import annotations

import argparse
import socket
from datetime import datetime

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from glmcore.errors import GlmError
from glmcore.model_folders import family_title_of
from glmcore.notify import report_found_in
from glmcore.runs import Run, RunStore
from glmcore.sweep import group_runs
from glmcore.workspace import Workspace
from glmtui.text.figures import MISSING
from glmtui.text.runs import fit_run_columns, run_cells, slurm_detail, state_text

PIPED_WIDTH = 200
COLUMNS = ("Run", "State", "Family", "Step", "Loss", "Tok/s", "ETA", "GPUs", "Age")
RIGHT_ALIGNED = ("Step", "Loss", "Tok/s", "ETA", "Age")


def last_log_event(run: Run) -> dict | None:
    """The newest per-step training record of a run, or None before its first logging step."""
    logs = [event for event in run.events() if event.get("kind") == "log"]
    return logs[-1] if logs else None


def store_from_workspace() -> RunStore:
    return RunStore(Workspace.from_env().runs_dir)


def _cells(run: Run) -> dict[str, str | Text]:
    status = run.status()
    away = f" on {status.host}" if status.is_active and status.host != socket.gethostname() else ""
    now = datetime.now().astimezone()
    return {
        "Run": Text(run.id),
        "State": state_text(status.state, slurm_detail(status) or away),
        **run_cells(
            status,
            last_log_event(run),
            now,
            family_title_of(run.config.model_path, run.config.family) or MISSING,
        ),
    }


def show_runs(args: argparse.Namespace) -> int:
    console = Console()
    store = store_from_workspace()
    runs = store.list()
    if not runs:
        console.print(
            f"No runs in {escape(str(store.runs_dir))} yet; start one with `glmtui train CONFIG.toml`."
        )
        return 0
    rows: list[dict[str, str | Text]] = []
    for run, sweep in group_runs(runs):
        if sweep is not None:
            rows.append({"Run": Text(f"sweep {sweep}", style="bold")})
        try:
            rows.append(_cells(run))
        except GlmError as error:
            rows.append({"Run": Text(run.id), "State": Text.assemble(("unreadable", "red"), f": {error}")})
    columns: list[str] = list(COLUMNS)
    if console.is_terminal:
        # As the Runs screen does: leave out the least important columns rather than cut every cell short
        # (the widths of readable runs' rows: sweep titles and errors wrap).
        widths = {
            column: max(
                cell_len(column), *(cell_len(str(row.get(column, ""))) for row in rows if "Step" in row)
            )
            for column in COLUMNS
        }
        columns = list(fit_run_columns(widths, console.width, 1))
    else:
        console.width = PIPED_WIDTH  # a pipe or file has no width to fit; keep whole ids for grep and scripts
    table = Table(box=None, header_style="bold", collapse_padding=True, pad_edge=False)
    for column in columns:
        table.add_column(column.upper(), justify="right" if column in RIGHT_ALIGNED else "left")
    for row in rows:
        table.add_row(*(row.get(column, "") for column in columns))
    console.print(table)
    if problem := report_found_in(store):  # a crash or a sweep's end nobody reported yet
        Console(stderr=True).print(Text(f"glmtui: no notification was sent: {problem}"))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="list the training runs in the workspace",
        description="List every run in the workspace, newest first: state, progress, last loss, speed and ETA.",
    )
    parser.set_defaults(func=show_runs)
