"""`glmtui export RUN`: a LoRA or full fine-tuning run as a model folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a LoRA or full fine-tuning run as a model folder")
    parser.add_argument("run", help="run id, unique prefix or path")
    parser.add_argument("--checkpoint", help="checkpoint name or step (default: the latest)")
    parser.add_argument("--to", type=Path, help="destination folder (default: <workspace>/models/<run-id>)")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from glmcore.export import export_run
    from glmcore.runs import RunStore
    from glmcore.workspace import Workspace

    workspace = Workspace.from_env()
    run = RunStore(workspace.runs_dir).resolve(args.run)
    destination = args.to or workspace.models_dir / run.id
    print(f"exporting {run.id} to {destination} ...", flush=True)
    export_run(run, destination, checkpoint=args.checkpoint)
    print(f"done: load it with --model {destination}")
    return 0
