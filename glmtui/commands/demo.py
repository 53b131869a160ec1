"""`glmtui demo`: build the demo workspace (a tiny ChatGLM-architecture model and the sample data) with a
progress display, then say what to do next."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from glmcore.errors import GlmError
from glmcore.workspace import Workspace


def build_demo(args: argparse.Namespace) -> int:
    from glmcore.demo import DEMO_FAMILY_CHOICES, demo_run_config, ensure_demo_workspace

    family = DEMO_FAMILY_CHOICES[args.family]

    console = Console()
    workspace = Workspace.from_env()
    try:
        with Progress(
            TextColumn("[bold]demo[/]"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
        ) as progress:
            task = progress.add_task("starting", total=1.0)
            paths = ensure_demo_workspace(
                workspace,
                progress=lambda fraction, message: progress.update(
                    task, completed=fraction, description=message
                ),
                family=family,
            )
    except GlmError as error:
        console.print(f"[red]glmtui demo:[/] {error}")
        return 1
    config = demo_run_config(workspace, family)
    console.print(f"Demo model: {paths.model_dir}")
    console.print(f"Demo data:  {paths.train_file.parent}")
    console.print(
        f"\nNext: run [bold]glmtui[/] and press ctrl+g in the config editor to train the demo prefix "
        f"({config.max_steps} CPU steps), or from the shell: save its config and run `glmtui train CONFIG`."
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="build the demo workspace: a tiny model and sample data to try the whole loop on a CPU"
    )
    parser.add_argument(
        "--family",
        choices=("chatglm", "chatglm2", "chatglm3"),
        default="chatglm",
        help="the demo model's family: ChatGLM-6B (default), ChatGLM2-6B or ChatGLM3-6B",
    )
    parser.set_defaults(func=build_demo)
