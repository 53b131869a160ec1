"""`glmtui models`: the workspace's model folders with their state and why, as on the Models screen; and
`--family` to set a folder's family by hand (remembered in the workspace)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from glmcore.model_folders import AUTOMATIC, choose_family, describe_model_folder, list_model_folders
from glmcore.models import family_names
from glmcore.workspace import Workspace
from glmtui.commands.family_option import family_name
from glmtui.text.models import MODEL_COLUMNS, model_cells, model_detail


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the workspace's model folders with their state, or set a folder's family",
        description=(
            "Without MODEL_DIR, list every folder under the workspace's models/: its family, size and state "
            "(complete, missing N, building, downloading, not a GLM model, family unclear: set it), and why "
            "for each that cannot be used. With MODEL_DIR, that folder's state and why."
        ),
    )
    parser.add_argument("model", metavar="MODEL_DIR", type=Path, nargs="?", help="one model folder")
    parser.add_argument(
        "--family",
        type=lambda value: AUTOMATIC if value.strip().lower() == AUTOMATIC else family_name(value),
        default=None,
        metavar="NAME",
        help=f"set MODEL_DIR's family by hand ({family_names()}), remembered in the workspace; "
        f"{AUTOMATIC} forgets it",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    workspace = Workspace.from_env()
    if args.family is not None:
        if args.model is None:
            console.print("Name the model folder whose family to set: glmtui models MODEL_DIR --family NAME.")
            return 2
        folder = choose_family(workspace, args.model, args.family)
        done = "Forgotten" if args.family == AUTOMATIC else "Remembered"
        console.print(Text(f"{done} in {workspace.model_families_path}."))
        console.print(model_detail(folder))
        return 0
    if args.model is not None:
        folder = describe_model_folder(args.model.expanduser().absolute())
        console.print(model_detail(folder))
        return 0 if folder.state == "ready" else 1
    folders = list_model_folders(workspace)
    if not folders:
        console.print(Text(f"No model folder in {workspace.models_dir}: glmtui download, or glmtui demo."))
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False, title=None)
    for column in MODEL_COLUMNS:
        table.add_column(column, overflow="fold")
    for folder in folders:
        table.add_row(*model_cells(folder, workspace.models_dir))
    console.print(Text(f"In {workspace.models_dir}", style="bold"))
    console.print(table)
    for folder in folders:
        if folder.state != "ready":
            console.print()
            console.print(model_detail(folder))
    return 0
