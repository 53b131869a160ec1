"""`glmtui verify MODEL_DIR`: every file of a model folder against its catalog manifest (size and sha256, with the
bytes hashed shown as they go) and every tensor of its weight index in its shard (`glmcore.verify`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from glmcore.catalog import MODELS, find_model
from glmtui.commands.family_option import add_family_option, apply_family


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check a model folder: every file against its catalog manifest, every indexed tensor present",
        description=(
            "Check every file of MODEL_DIR against the catalog manifest its config.json or weight index "
            "belongs to (size and sha256), and every tensor its weight index names against the shard it names. "
            "A folder outside the catalog gets the second check only. Exit code 1 when anything is wrong."
        ),
    )
    parser.add_argument("model", metavar="MODEL_DIR", type=Path, help="the model folder")
    parser.add_argument(
        "--manifest",
        default=None,
        metavar="NAME|FILE",
        help=f"check against this manifest: a catalog name ({', '.join(MODELS)}) or a manifest JSON file "
        "(default: the catalog's that the folder's config.json belongs to)",
    )
    add_family_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glmcore.verify import VerifyError, read_manifest_file, verify_model_folder

    console = Console(highlight=False)
    model_dir = args.model.expanduser()
    apply_family(args.family, model_dir)
    manifest = None
    if args.manifest is not None:
        model = find_model(args.manifest)
        manifest = (
            model.manifest if model is not None else read_manifest_file(Path(args.manifest).expanduser())
        )
        if manifest is None:
            raise VerifyError(
                f"the catalog knows no file list of {args.manifest} (no reference gives one); verify without "
                "--manifest to check the folder's weight index against its shards"
            )
    with Progress(
        TextColumn("hashing {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None)
        report = verify_model_folder(
            model_dir,
            manifest=manifest,
            progress=lambda step: bar.update(
                task, description=step.path, completed=step.done, total=step.total
            ),
        )
    console.print(Text(f"{report.model_dir}: {report.manifest_note}."))
    console.print(
        Text(
            f"{report.files_checked} files checked ({report.bytes_hashed:,} bytes hashed), "
            f"{report.tensors_checked} tensors found in their shards."
        )
    )
    if report.absent_optional:
        console.print(
            Text(f"Not present, not needed to load: {', '.join(report.absent_optional)}.", style="dim")
        )
    for problem in report.problems:
        console.print(Text(f"✗ {problem}", style="red"))
    if report.ok:
        console.print(Text("The folder is whole.", style="bold green"))
        return 0
    console.print(Text(f"{len(report.problems)} problem(s).", style="bold red"))
    return 1
