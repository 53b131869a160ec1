"""`glmtui resume RUN [--detach]`: continue a stopped, failed or crashed run from its latest checkpoint."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from glmcore.errors import GlmError
from glmtui.commands.runs import store_from_workspace
from glmtui.commands.train import start


def resume_run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        run = store_from_workspace().resolve(args.run)
        return start(run, detach=args.detach, resume=True, console=console)
    except GlmError as error:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(error))}")
        return 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "resume",
        help="continue a run from its latest checkpoint",
        description="Continue RUN (stopped, failed or crashed) from its latest complete checkpoint. The step "
        "count and events continue where the checkpoint left off; nothing is duplicated.",
    )
    parser.add_argument("run", metavar="RUN", help="run id, unique id prefix, run name, or run folder")
    parser.add_argument("--detach", action="store_true", help="continue in the background and return at once")
    parser.set_defaults(func=resume_run)
