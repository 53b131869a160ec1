"""`glmtui logs RUN [-n N] [-f] [--events]`: print the end of a run's train.log (or its events), and follow it.

The file is streamed a chunk at a time from where its last N lines begin (found by reading backwards), so a log
of any size prints in constant memory."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import sys
import time

from rich.console import Console
from rich.markup import escape

from glmcore.errors import GlmError
from glmcore.runs import EventTail, FileTail, Run, last_lines_offset
from glmtui.commands.runs import store_from_workspace
from glmtui.text.runs import event_line

FOLLOW_INTERVAL_S = 0.5
DEFAULT_LINES = 200


def _print_new(tail: FileTail, events: bool, *, final: bool = False) -> None:
    if events:
        assert isinstance(tail, EventTail)
        for event in tail.iter_events():
            print(event_line(event))
    else:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in tail.chunks(complete_lines=not final):
            sys.stdout.write(decoder.decode(chunk))
        sys.stdout.write(decoder.decode(b"", final=True))
    sys.stdout.flush()


def _follow(run: Run, tail: FileTail, events: bool) -> None:
    """Print what is appended until the run is no longer running or stopping (or waiting in Slurm)."""
    while (status := run.status()).is_active or status.waits_in_slurm:
        time.sleep(FOLLOW_INTERVAL_S)
        _print_new(tail, events)
    _print_new(tail, events, final=True)
    status = run.status()
    reason = f": {status.reason}" if status.reason else ""
    Console(stderr=True).print(f"[dim]run {escape(run.id)} is {escape(status.state)}{escape(reason)}[/]")


def show_logs(args: argparse.Namespace) -> int:
    try:
        run = store_from_workspace().resolve(args.run)
        path = run.events_path if args.events else run.log_path
        start = last_lines_offset(path, args.lines)
        tail: FileTail = EventTail(path, start) if args.events else FileTail(path, start)
        _print_new(tail, args.events, final=not args.follow)
        if args.follow:
            with contextlib.suppress(KeyboardInterrupt):  # leaving the log leaves the run going
                _follow(run, tail, args.events)
    except (GlmError, OSError) as error:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(error))}")
        return 1
    return 0


def line_count(text: str) -> int:
    """A -n value: a whole number of lines, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of lines (0 or more; 0 prints the whole log)"
        )
    return int(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="print the end of a run's log, or follow it",
        description="Print the last lines of RUN's train.log (the training process's output), or with --events "
        "its per-step events. -f keeps printing what is added until the run ends; Ctrl-C leaves the run going.",
    )
    parser.add_argument("run", metavar="RUN", help="run id, unique id prefix, run name, or run folder")
    parser.add_argument(
        "-n",
        "--lines",
        type=line_count,
        default=DEFAULT_LINES,
        metavar="N",
        help=f"print the last N lines (default {DEFAULT_LINES}; 0 prints the whole file)",
    )
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")
    parser.add_argument("--events", action="store_true", help="show events.jsonl as lines instead of the log")
    parser.set_defaults(func=show_logs)
