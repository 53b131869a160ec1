"""`glmtui sweep CONFIG.toml --set KEY=V1,V2 [--set …] [--detach]`: one queued run per combination of values.

Every combination is checked like `glmtui train` before any run is created. The runs join the queue, a detached
worker starts them as the GPUs have room, and in front this command reports each run's state as it changes
(Ctrl-C leaves the sweep going: the runs and the queue live in the workspace's files).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from glmcore.errors import GlmError
from glmcore.queue import Queue, estimate_need
from glmcore.runs import Run
from glmcore.start import start_sweep, sweep_points
from glmcore.sweep import Sweep, parse_sets, problems
from glmcore.workspace import Workspace
from glmtui.commands.train import add_slurm_arguments, load_config, print_cautions, slurm_options
from glmtui.text.estimate import sweep_need
from glmtui.text.queue import sweep_queued_sentence, sweep_submitted_sentence, worker_started_sentence
from glmtui.text.runs import state_text

FOLLOW_INTERVAL_S = 1.0
WAITING_STATES = ("queued", "running", "stopping")


def sweep_command(args: argparse.Namespace) -> int:
    console = Console()
    errors = Console(stderr=True)
    workspace = Workspace.from_env()
    try:
        slurm = slurm_options(args, workspace)
        base = load_config(args, workspace, console, slurm)
        # On Slurm the GPUs are each job's, not this machine's: they are checked by Slurm, not here.
        points = sweep_points(base, parse_sets(args.set), slurm)
    except GlmError as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        return 2
    if slurm is None:  # on Slurm the GPUs are each job's: 4-bit there runs on them
        print_cautions(console, [point.config for point in points])
    found = problems(points, runs_dir=workspace.runs_dir)
    if found:
        combinations = len({id(point) for point, _ in found})
        errors.print(
            f"[red]{combinations} of the {len(points)} combinations have problems; nothing was created:[/]"
        )
        for point, problem in found:
            errors.print(f"  • {escape(point.label)}: {escape(str(problem))}")
        return 2
    try:
        started = start_sweep(workspace, base, parse_sets(args.set), slurm)
    except GlmError as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        return 1
    sweep = started.sweep
    if slurm is not None:
        console.print(Text(sweep_submitted_sentence(sweep.id, started.jobs)))
        for run, point, job in zip(sweep.runs, started.points, started.jobs, strict=True):
            console.print(Text(f"  {run.id}  {point.label}  (Slurm job {job})"))
        console.print("See them with `glmtui runs` (or squeue).")
        return 0 if args.detach else follow_sweep(console, sweep)
    console.print(Text(sweep_queued_sentence(sweep.id, len(sweep.runs))))
    for run, point in zip(sweep.runs, started.points, strict=True):
        needs = f"{sweep_need(estimate_need(run))} per GPU" if run.config.gpus else "the CPU"
        console.print(Text(f"  {run.id}  {point.label}  (needs {needs})"))
    if started.worker is not None:
        console.print(Text(worker_started_sentence(started.worker, Queue(workspace).worker_log_path)))
    console.print("See the queue with `glmtui queue`, the runs with `glmtui runs`.")
    if args.detach:
        return 0
    return follow_sweep(console, sweep)


def follow_sweep(console: Console, sweep: Sweep) -> int:
    """Print each run's state as it changes until none is queued or going; 0 when all finished."""
    shown: dict[Run, str] = {}
    try:
        while True:
            states = {run: run.status().state for run in sweep.runs}
            for run, state in states.items():
                if shown.get(run) != state:
                    shown[run] = state
                    console.print(Text.assemble(f"{run.id} ", state_text(state)))
            if not any(state in WAITING_STATES for state in states.values()):
                break
            time.sleep(FOLLOW_INTERVAL_S)
    except KeyboardInterrupt:
        console.print("The sweep goes on in the background; `glmtui queue` and `glmtui runs` show it.")
        return 0
    finished = sum(state == "finished" for state in shown.values())
    console.print(f"Sweep {sweep.id}: {finished} of {len(sweep.runs)} runs finished.")
    return 0 if finished == len(sweep.runs) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="queue one run per combination of setting values (a grid)",
        description="Create one run per combination of the --set values over CONFIG.toml, each named after its "
        "values and tagged with one sweep id, and queue them: they start as the GPUs have room. Every "
        "combination is checked first; nothing is created if any has a problem.",
    )
    parser.add_argument("config", type=Path, metavar="CONFIG.toml", help="the settings every run starts from")
    parser.add_argument(
        "--set",
        action="append",
        required=True,
        metavar="KEY=V1,V2",
        help="a setting and its values, e.g. pre_seq_len=64,128 (repeat --set for more settings)",
    )
    parser.add_argument(
        "--detach", action="store_true", help="return once the runs are queued instead of reporting them"
    )
    add_slurm_arguments(parser)
    parser.set_defaults(func=sweep_command)
