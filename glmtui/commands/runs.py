"""`glmtui runs`: a table of every run in the workspace, with the columns and figures the Runs screen shows."""

from __future__ import annotations

import argparse
import socket
from datetime import datetime

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from glmcore.errors import GlmError
from glmcore.runs import Run, RunStore
from glmcore.sweep import group_runs
from glmcore.workspace import Workspace
from glmtui.presentation import run_cells, slurm_detail, state_text

PIPED_WIDTH = 200
COLUMNS = ("Run", "State", "Step", "Loss", "Tok/s", "ETA", "GPUs", "Age")


def last_log_event(run: Run) -> dict | None:
    """The newest per-step training record of a run, or None before its first logging step."""
    logs = [event for event in run.events() if event.get("kind") == "log"]
    return logs[-1] if logs else None


def store_from_workspace() -> RunStore:
    return RunStore(Workspace.from_env().runs_dir)


def _row(run: Run) -> list[str | Text]:
    status = run.status()
    away = f" on {status.host}" if status.is_active and status.host != socket.gethostname() else ""
    cells = run_cells(status, last_log_event(run), datetime.now().astimezone())
    return [
        Text(run.id),
        state_text(status.state, slurm_detail(status) or away),
        *(cells[column] for column in COLUMNS[2:]),
    ]


def show_runs(args: argparse.Namespace) -> int:
    console = Console()
    store = store_from_workspace()
    runs = store.list()
    if not runs:
        console.print(
            f"No runs in {escape(str(store.runs_dir))} yet; start one with `glmtui train CONFIG.toml`."
        )
        return 0
    if not console.is_terminal:
        console.width = PIPED_WIDTH  # a pipe or file has no width to fit; keep whole ids for grep and scripts
    table = Table(box=None, header_style="bold", collapse_padding=True, pad_edge=False)
    for column in COLUMNS:
        table.add_column(column.upper(), justify="left" if column in ("Run", "State", "GPUs") else "right")
    for run, sweep in group_runs(runs):
        if sweep is not None:
            table.add_row(Text(f"sweep {sweep}", style="bold"), *[""] * (len(COLUMNS) - 1))
        try:
            table.add_row(*_row(run))
        except GlmError as error:
            table.add_row(Text(run.id), Text("unreadable", style="red"), Text(str(error)), "", "", "", "", "")
    console.print(table)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="list the training runs in the workspace",
        description="List every run in the workspace, newest first: state, progress, last loss, speed and ETA.",
    )
    parser.set_defaults(func=show_runs)
