"""`glmtui stop RUN [--force]`: ask a run to stop at its next step (saving a checkpoint), or stop it at once.

A Slurm run's job is cancelled (scancel) when it has not stopped within --wait, and at once with --force; a
run still waiting in Slurm's queue is taken out of it."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from glmcore.errors import GlmError
from glmcore.runs import stop, wait_for_end
from glmtui.commands.runs import store_from_workspace
from glmtui.text.runs import run_end_sentence

DEFAULT_WAIT_S = 120.0
FORCE_GRACE_S = 10.0


def stop_run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        run = store_from_workspace().resolve(args.run)
        if args.force:
            status = stop(run, force=True, grace=FORCE_GRACE_S)
        else:
            status = stop(run)
            if status.is_active:
                console.print(
                    Text(f"Asked run {run.id} to stop; it saves a checkpoint after its current step.")
                )
                with console.status("waiting for it to stop…"):
                    status = wait_for_end(run, args.wait)
                if status.is_active and status.slurm_job is not None:
                    console.print(
                        Text(
                            f"Run {run.id} is still {status.state} after {args.wait:.0f}s; "
                            f"cancelling its Slurm job {status.slurm_job} (scancel)."
                        )
                    )
                    status = stop(run, force=True, grace=FORCE_GRACE_S)
    except GlmError as error:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(error))}")
        return 1
    if status.is_active:
        console.print(
            Text(
                f"Run {run.id} is still {status.state} after {args.wait:.0f}s; it will stop on its own "
                f"(`glmtui stop {run.id} --force` stops it at once)."
            )
        )
        return 0
    console.print(Text(run_end_sentence(run.id, status)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stop",
        help="stop a training run (gracefully, saving a checkpoint)",
        description="Ask RUN to stop: it finishes its current step, saves a checkpoint and ends `stopped`, so "
        "`glmtui resume RUN` continues from there. --force stops it at once instead (SIGTERM to the whole "
        "training process group, SIGKILL after a grace period); steps since the last checkpoint are lost.",
    )
    parser.add_argument("run", metavar="RUN", help="run id, unique id prefix, run name, or run folder")
    parser.add_argument("--force", action="store_true", help="stop at once instead of at the next step")
    parser.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"how long to wait for a graceful stop before returning (default {DEFAULT_WAIT_S:.0f})",
    )
    parser.set_defaults(func=stop_run)
