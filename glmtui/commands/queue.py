"""`glmtui queue`: the queued runs with their position and why each waits; work the queue, reorder it, change it.

`glmtui queue` lists; `glmtui queue work` admits and starts runs in front until none is queued (what the
detached worker does); `up`, `down`, `start` and `cancel` act on one queued run; `set KEY=VALUE` changes the
admission settings (max_runs_per_gpu, max_cpu_runs, safety_margin_gib, poll_s) kept in the workspace.
"""

from __future__ import annotations

import argparse
import dataclasses

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from glmcore.queue import Queue, QueueSettings
from glmcore.runs import start_queued_now
from glmcore.sweep import parse_value
from glmcore.workspace import Workspace
from glmtui.commands.runs import PIPED_WIDTH, store_from_workspace
from glmtui.text.queue import moved_sentence, queue_wait, started_now_sentence, unqueued_sentence


def workspace_queue() -> Queue:
    return Queue(Workspace.from_env())


def show_queue(console: Console, queue: Queue) -> None:
    """The queued runs, next first, each with why it waits (or that it starts at the next pass)."""
    planned = queue.plan()
    if not planned:
        console.print(
            "Nothing is queued; queue a run with `glmtui train CONFIG.toml --queue` or `glmtui sweep`."
        )
        return
    if not console.is_terminal:
        console.width = PIPED_WIDTH  # whole ids and reasons for grep and scripts, as `glmtui runs` does
    table = Table(box=None, header_style="bold", collapse_padding=True, pad_edge=False)
    for column in ("#", "RUN", "GPUS", "WHY IT WAITS"):
        table.add_column(column, justify="right" if column == "#" else "left")
    for run, decision in planned:
        gpus = "?" if decision.unstartable else ",".join(map(str, run.config.gpus)) or "cpu"
        table.add_row(str(decision.position), Text(run.id), gpus, Text(queue_wait(decision)))
    console.print(table)
    settings = queue.settings()
    worker = "a worker is working it" if queue.worker_alive() else "no worker is alive (`glmtui queue work`)"
    console.print(
        f"{len(planned)} queued; {worker}; at most {settings.max_runs_per_gpu} per GPU, "
        f"{settings.max_cpu_runs} on the CPU, {settings.safety_margin_gib:g} GiB margin."
    )


def queue_command(args: argparse.Namespace) -> int:
    console = Console()
    queue = workspace_queue()
    action = args.action
    if action is None:
        show_queue(console, queue)
        return 0
    if action == "work":
        console.print("Working the queue until it is empty (Ctrl-C leaves the queued runs queued).")
        queue.work(say=lambda line: console.print(Text(line)))
        return 0
    if action == "set":
        return change_settings(console, queue, args.settings)
    run = store_from_workspace().resolve(args.run)
    if action in ("up", "down"):
        position = queue.move(run, -1 if action == "up" else 1)
        console.print(Text(moved_sentence(run.id, position)))
    elif action == "start":
        console.print(Text(started_now_sentence(run.id, start_queued_now(run))))
    else:
        queue.cancel(run)
        console.print(Text(unqueued_sentence(run.id)))
    return 0


def change_settings(console: Console, queue: Queue, texts: list[str]) -> int:
    values = dataclasses.asdict(queue.settings())
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals:
            Console(stderr=True).print(
                f"[red]error:[/] {escape(text)!r} is not KEY=VALUE; nothing was changed"
            )
            return 2
        values[key.strip()] = parse_value(value.strip())
    settings = QueueSettings.from_values(values, where="glmtui queue set")
    settings.save(queue.settings_path)
    shown = ", ".join(f"{key} = {value}" for key, value in dataclasses.asdict(settings).items())
    console.print(f"Queue settings in {escape(str(queue.settings_path))}: {escape(shown)}.")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "queue",
        help="list the queued runs and why each waits; work, reorder or change the queue",
        description="Without an action, list the queued runs, next first, with why each waits "
        '("GPU 0: needs 6.1 GiB + 1.0 margin, 4.2 free"). A queued run starts when the GPUs it asks for have room.',
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("work", help="admit and start queued runs in front until none is left")
    for name, helptext in (
        ("up", "move a queued run one place towards the front"),
        ("down", "move a queued run one place back"),
        ("start", "start a queued run now, without waiting for room"),
        ("cancel", "take a run off the queue (its folder stays)"),
    ):
        action = actions.add_parser(name, help=helptext)
        action.add_argument("run", metavar="RUN", help="run id, unique id prefix, name or folder")
    settings = actions.add_parser("set", help="change the admission settings of this workspace")
    settings.add_argument(
        "settings",
        nargs="+",
        metavar="KEY=VALUE",
        help="max_runs_per_gpu, max_cpu_runs (default 1 each), safety_margin_gib (1.0), poll_s (5)",
    )
    parser.set_defaults(func=queue_command)
