"""`glmtui export RUN`: a LoRA or full fine-tuning run as a model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a LoRA or full fine-tuning run as a model folder",
        description=(
            "Write a LoRA run (adapters merged into the 16-bit base weights) or a full fine-tuning run "
            "(DeepSpeed ZeRO shards gathered) as a model folder that --model takes everywhere. A P-tuning "
            "run needs no export: its checkpoints are used as they are."
        ),
    )
    parser.add_argument("run", metavar="RUN", help="run id, unique id prefix, run name, or run folder")
    parser.add_argument(
        "--checkpoint",
        metavar="CK",
        help="checkpoint-N or N of the run (default: the one it stands for: its best when marked, else its latest complete one)",
    )
    parser.add_argument("--to", type=Path, help="destination folder (default: <workspace>/models/<run-id>)")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from glmcore.export import check_export, export_run
    from glmcore.runs import RunStore
    from glmcore.workspace import Workspace

    console = Console(stderr=True, highlight=False)
    workspace = Workspace.from_env()
    run = RunStore(workspace.runs_dir).resolve(args.run)
    destination = (args.to or workspace.models_dir / run.id).expanduser()
    source = check_export(run, destination, checkpoint=args.checkpoint)
    console.print(f"Exporting {escape(run.id)} {source.name} to {escape(str(destination))} …")
    export_run(run, destination, checkpoint=source.name)
    console.print(f"Done: load it with --model {escape(str(destination))}")
    print(destination)
    return 0
