"""`glmtui runs`: a table of every run in the workspace; also the small formatters the run commands share."""

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
from glmcore.workspace import Workspace

PIPED_WIDTH = 200
STATE_STYLES = {
    "created": "dim",
    "running": "green",
    "stopping": "yellow",
    "stopped": "cyan",
    "finished": "bold green",
    "failed": "bold red",
    "crashed": "bold red",
}


def format_duration(seconds: float | None) -> str:
    """A short human duration: 45s, 12m 03s, 3h 07m, 2d 04h; an em dash when unknown."""
    if seconds is None:
        return "—"
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def last_log_event(run: Run) -> dict | None:
    """The newest per-step training record of a run, or None before its first logging step."""
    logs = [event for event in run.events() if event.get("kind") == "log"]
    return logs[-1] if logs else None


def store_from_workspace() -> RunStore:
    return RunStore(Workspace.from_env().runs_dir)


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "—"
    return format_duration((datetime.now().astimezone() - datetime.fromisoformat(timestamp)).total_seconds())


def _row(run: Run) -> list[str | Text]:
    status = run.status()
    log = last_log_event(run)
    state = status.state + (
        f" on {status.host}" if status.is_active and status.host != socket.gethostname() else ""
    )
    loss = f"{log['loss']:.4f}" if log and log.get("loss") is not None else "—"
    tokens = f"{log['tokens_per_s']:,.0f}" if log and log.get("tokens_per_s") is not None else "—"
    eta = format_duration(log.get("eta_s")) if log and status.is_active else "—"
    return [
        run.id,
        Text(state, style=STATE_STYLES.get(status.state, "")),  # not markup: any state shows as it is
        f"{status.step}/{status.total}",
        loss,
        tokens,
        eta,
        ",".join(map(str, status.gpus)) or "cpu",
        _age(status.created or status.started),
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
    for column in ("RUN", "STATE", "STEP", "LOSS", "TOK/S", "ETA", "GPUS", "AGE"):
        table.add_column(
            column, justify="right" if column in ("STEP", "LOSS", "TOK/S", "ETA", "AGE") else "left"
        )
    for run in runs:
        try:
            table.add_row(*_row(run))
        except GlmError as error:
            table.add_row(run.id, "[red]unreadable[/]", escape(str(error)), "", "", "", "", "")
    console.print(table)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="list the training runs in the workspace",
        description="List every run in the workspace, newest first: state, progress, last loss, speed and ETA.",
    )
    parser.set_defaults(func=show_runs)
