"""`glmtui convert MODEL_DIR`: a safetensors copy of the published `.bin` shards (the `.bin` files stay)."""

from __future__ import annotations

import argparse
from pathlib import Path

from glmtui.commands.family_option import add_family_option, apply_family


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a model's .bin shards to safetensors, once",
        description=(
            "Write a safetensors copy of the published .bin shards beside them, with its index: later loads "
            "are faster and read no pickle. The .bin files stay; once converted they are no longer read."
        ),
    )
    parser.add_argument("model", metavar="MODEL_DIR", type=Path, help="the model folder")
    add_family_option(parser)
    parser.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from glmcore.models.checkpoint import convert_to_safetensors, require_complete

    apply_family(args.family, args.model)
    if require_complete(args.model).weight_format == "safetensors":  # GLM-4's as published, or converted
        print(f"{args.model} already has safetensors weights, which glmtui reads: there is nothing to convert.")
        return 0
    with Progress() as progress:
        task = progress.add_task("converting", total=None)

        def report(done: int, total: int, name: str) -> None:
            progress.update(task, completed=done, total=total, description=f"converting {name}")

        index = convert_to_safetensors(args.model, progress=report)
    print(f"wrote {index}; the .bin shards are no longer read and may be deleted")
    return 0
