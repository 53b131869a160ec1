"""The `--family` option every command that takes a model folder shares: one name, one list of values.

A family given on the command line is remembered for the folder in the workspace (`glmcore.model_folders.
choose_family`), so later commands on it need no option; `glmtui models --family auto MODEL_DIR` forgets it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.text import Text

from glmcore.errors import GlmError
from glmcore.models import family_named, family_names


def family_name(value: str) -> str:
    """The registry name of the family `value` names (a name or an alias), for argparse."""
    try:
        return family_named(value).name
    except GlmError:
        raise argparse.ArgumentTypeError(
            f"{value} is not a model family glmtui knows; use one of: {family_names()}"
        ) from None


def add_family_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--family",
        type=family_name,
        default=None,
        metavar="NAME",
        help=f"the model folder's family, when glmtui cannot tell it from config.json: {family_names()}; "
        "remembered for the folder in the workspace",
    )


def apply_family(name: str | None, model_dir: Path) -> None:
    """Remember `name` for `model_dir` (nothing when None), saying so on stderr when it is new."""
    from glmcore.model_folders import choose_family
    from glmcore.workspace import Workspace

    workspace = Workspace.from_env()
    if name is None or workspace.chosen_family(model_dir) == name:
        return
    choose_family(workspace, model_dir, name)
    Console(stderr=True).print(
        Text(
            f"The family of {model_dir} is now {name}, remembered in {workspace.model_families_path} "
            f"(glmtui models --family auto {model_dir} forgets it)."
        )
    )
