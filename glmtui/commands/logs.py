"""`glmtui logs RUN [-f] [--events]`: print a run's train.log (or its events), and follow it while it runs."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from rich.console import Console
from rich.markup import escape

from glmcore.errors import GlmError
from glmcore.runs import EventTail, FileTail, Run
from glmtui.commands.runs import store_from_workspace
from glmtui.presentation import event_line

FOLLOW_INTERVAL_S = 0.5


def _print_new(tail: FileTail, events: bool, *, final: bool = False) -> None:
    if events:
        assert isinstance(tail, EventTail)
        for event in tail.read_events():
            print(event_line(event))
    else:
        sys.stdout.write(tail.read_bytes(complete_lines=not final).decode("utf-8", errors="replace"))
    sys.stdout.flush()


def _follow(run: Run, tail: FileTail, events: bool) -> None:
    """Print what is appended until the run is no longer running or stopping (or waiting in Slurm)."""
    while (status := run.status()).is_active or status.waits_in_slurm:
        time.sleep(FOLLOW_INTERVAL_S)
        _print_new(tail, events)
    _print_new(tail, events, final=True)
    status = run.status()
    reason = f": {status.reason}" if status.reason else ""
    Console(stderr=True).print(f"[dim]run {run.id} is {status.state}{escape(reason)}[/]")


def show_logs(args: argparse.Namespace) -> int:
    try:
        run = store_from_workspace().resolve(args.run)
    except GlmError as error:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(error))}")
        return 1
    tail: FileTail = EventTail(run.events_path) if args.events else FileTail(run.log_path)
    _print_new(tail, args.events, final=not args.follow)
    if args.follow:
        with contextlib.suppress(KeyboardInterrupt):  # leaving the log leaves the run going
            _follow(run, tail, args.events)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="print a run's log, or follow it",
        description="Print RUN's train.log (the training process's output), or with --events its per-step "
        "events. -f keeps printing what is added until the run ends; Ctrl-C leaves the run going.",
    )
    parser.add_argument("run", metavar="RUN", help="run id, unique id prefix, run name, or run folder")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")
    parser.add_argument("--events", action="store_true", help="show events.jsonl as lines instead of the log")
    parser.set_defaults(func=show_logs)
