"""`glmtui demo`: build the demo workspace (a tiny model of the family and the sample data) with a
progress display, write its run configs, then say what to do next. On a built workspace it only writes the
configs that are missing, without loading torch."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from glmcore.demo import demo_ready, ensure_demo_workspace, write_demo_configs
from glmcore.models import DEFAULT_FAMILY, family_names
from glmcore.workspace import Workspace
from glmtui.commands.family_option import family_name

DESCRIPTION = (
    "Build the demo workspace: a tiny model of the family pretrained on ad copy and an AdvertiseGen-form sample "
    "(once; about a minute on 2 idle cores, longer on a busy CPU), plus the run configs configs/demo-ptuning.toml "
    "and configs/demo-lora.toml for `glmtui train` (configs/demo-glm4-ptuning.toml ... for the other families)."
)


def build_demo(args: argparse.Namespace) -> int:
    family = args.family
    console = Console()
    workspace = Workspace.from_env()
    if demo_ready(workspace, family):
        paths = ensure_demo_workspace(workspace, family=family)
    else:
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
    console.print(f"Demo model: {paths.model_dir}")
    console.print(f"Demo data:  {paths.train_file.parent}")
    configs = write_demo_configs(workspace, family)
    for path, fresh in configs:
        console.print(f"{'Wrote' if fresh else 'Kept'} {path}", highlight=False)
    console.print(
        f"\nNext: [bold]glmtui train {configs[0][0]}[/] trains the demo prefix on the CPU "
        f"(or {configs[1][0].name} for LoRA), or run [bold]glmtui[/] and press ctrl+g in the config editor.",
        highlight=False,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="build the demo workspace and its configs: the whole loop on a CPU",
        description=DESCRIPTION,
    )
    parser.add_argument(
        "--family",
        type=family_name,
        default=DEFAULT_FAMILY.name,
        metavar="NAME",
        help=f"the demo model's family: {family_names()}; {DEFAULT_FAMILY.name} by default",
    )
    parser.set_defaults(func=build_demo)
