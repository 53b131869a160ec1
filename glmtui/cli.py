"""The `glmtui` command line: no arguments opens the app, a subcommand runs one engine task."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.models import FAMILIES
from glmcore.models.family import family_titles
from glmcore.quiet import quiet_libraries
from glmtui.commands import COMMAND_MODULES


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` just that subcommand (so ``glmtui demo`` does not pay for
    importing every other command's dependencies)."""
    parser = argparse.ArgumentParser(
        prog="glmtui",
        description=(
            f"A terminal workbench for fine-tuning {family_titles(FAMILIES)}. Without a subcommand, opens the "
            f"app; `glmtui demo --family {'|'.join(family.short_name for family in FAMILIES)}` tries one without "
            "weights."
        ),
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="workspace folder holding models/, data/ and runs/ (default: $GLMTUI_HOME or ~/glmtui)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [only] if only in COMMAND_MODULES else COMMAND_MODULES:
        try:
            module = importlib.import_module(f"glmtui.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"glmtui.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def _named_command(argv: list[str] | None) -> str | None:
    """The subcommand named on the command line, if any, found without importing the commands."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--workspace")
    peek.add_argument("command", nargs="?")
    return peek.parse_known_args(argv)[0].command


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(_named_command(argv))
    args = parser.parse_args(argv)
    if args.workspace is not None:
        os.environ["GLMTUI_HOME"] = str(args.workspace.expanduser().resolve())
    quiet_libraries()
    if args.command is None:
        from glmtui.app import run_app

        return run_app()
    try:
        return int(args.func(args) or 0)
    except GlmError as error:
        print(f"glmtui: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
