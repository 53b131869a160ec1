"""`glmtui download MODEL_OR_LINK`: fetch a model or data set into the workspace with a live progress display."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from glmcore.catalog import DATASETS, MODELS, find_model
from glmcore.download import (
    SOURCES,
    DownloadPlan,
    DownloadProgress,
    DownloadResult,
    default_destination,
    plan_download,
    resolve_source,
    run_download,
)
from glmcore.errors import GlmError
from glmcore.models.checkpoint import model_folder_problems
from glmcore.units import format_bytes
from glmcore.workspace import Workspace
from glmtui.text.models import SOURCE_TITLES

EXIT_CANCELLED = 130


def register(subparsers: argparse._SubParsersAction) -> None:
    known = ", ".join([*MODELS, *DATASETS])
    parser = subparsers.add_parser(
        "download",
        help="download a model or data set (resumable, verified)",
        description=(
            f"Download a model or data set into the workspace. MODEL_OR_LINK is a catalog name ({known}), "
            "a hub id (owner/name; THUDM/ and zai-org/ both name a catalog model), a ModelScope id with "
            "--source modelscope or a modelscope.cn/models/ link, a Seafile share link "
            "(https://cloud.tsinghua.edu.cn/d/<key>/ or /f/<key>/) or a local folder or archive. An interrupted "
            "download resumes where it stopped."
        ),
    )
    parser.add_argument("target", metavar="MODEL_OR_LINK", help="what to download")
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default=None,
        help="for catalog models: "
        + ", ".join(f"{SOURCE_TITLES[name]} ({name})" for name in SOURCES)
        + "; hf by default. With modelscope an owner/name is a ModelScope id",
    )
    parser.add_argument(
        "--to", type=Path, default=None, help="destination folder (default: inside the workspace)"
    )
    parser.add_argument(
        "--revision",
        default=None,
        help="hub or ModelScope revision (default: the catalog's pinned one, else main, ModelScope's master)",
    )
    parser.add_argument("--password", default=None, metavar="P", help="password of a protected Seafile share")
    parser.add_argument(
        "--endpoint",
        default=None,
        help="hub endpoint or mirror (default: $HF_ENDPOINT or huggingface.co), or ModelScope's with --source "
        "modelscope (default: https://$MODELSCOPE_DOMAIN or www.modelscope.cn)",
    )
    parser.add_argument(
        "--include-code",
        action="store_true",
        help="also fetch the checkpoint's Python files (glmtui does not use them)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        source = resolve_source(
            args.target,
            source=args.source,
            revision=args.revision,
            password=args.password,
            endpoint=args.endpoint,
            include_code=args.include_code,
        )
        console.print(f"Listing {source.label} …", highlight=False, markup=False)
        model = find_model(args.target)
        if model is not None and model.revision is None and source.kind == "model":
            console.print(
                f"note: the catalog pins no revision of {model.title}: this follows the latest files, each "
                "checked against the sha256 the manifest or the source lists.",
                highlight=False,
                markup=False,
            )
        if args.to is not None:
            destination = args.to.expanduser()
        else:
            workspace = Workspace.from_env()
            destination = default_destination(source, workspace.models_dir, workspace.data_dir)
        plan = plan_download(source, destination)
        describe_plan(console, plan)
        result = run_with_progress(console, plan)
    except GlmError as error:
        console.print(f"[red]error:[/red] {error}", highlight=False)
        return 1
    if result.cancelled:
        console.print("Cancelled. Run the same command again to resume where it stopped.")
        return EXIT_CANCELLED
    console.print(
        f"Done: {plan.destination} ({format_bytes(result.bytes_fetched)} fetched, "
        f"{len(plan.files) - len(result.files)} files already there)."
    )
    if plan.missing:
        console.print(
            f"[yellow]{len(plan.missing)} files of the manifest are not in this source[/yellow] "
            f"({', '.join(plan.missing)}). Fetch them with `glmtui download {args.target} --source hf --to "
            f"{plan.destination}`: the files already here are kept."
        )
    elif source.kind == "model":
        for problem in model_folder_problems(plan.destination):
            console.print(f"[yellow]note:[/yellow] {problem}")
    print(plan.destination)
    return 0


def describe_plan(console: Console, plan: DownloadPlan) -> None:
    total = plan.total_bytes
    size = format_bytes(total) if total is not None else "size not told by the server"
    console.print(
        f"{len(plan.files)} files ({size}) into {plan.destination}; "
        f"{format_bytes(plan.bytes_to_fetch)} left to fetch."
    )
    if plan.skipped:
        console.print(
            f"Skipping {len(plan.skipped)} Python files glmtui does not run (--include-code fetches them)."
        )


def run_with_progress(console: Console, plan: DownloadPlan) -> DownloadResult:
    """Run the download on a worker thread so that Ctrl-C cancels it cleanly (the .part files stay resumable)."""
    cancel = threading.Event()
    outcome: dict[str, object] = {}
    with Progress(
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bars:
        display = _ProgressDisplay(bars, console)

        def work() -> None:
            try:
                outcome["result"] = run_download(plan, progress=display.show, cancel=cancel)
            except BaseException as error:  # handed to the main thread, which re-raises it
                outcome["error"] = error

        worker = threading.Thread(target=work, name="glmtui-download", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
        except KeyboardInterrupt:
            cancel.set()
            worker.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]


class _ProgressDisplay:
    """Maps progress snapshots to rich tasks: one for the total, one per file while it is being fetched."""

    def __init__(self, bars: Progress, console: Console) -> None:
        self.bars = bars
        self.console = console
        self.total = bars.add_task("total", total=None)
        self.tasks: dict[str, TaskID] = {}
        self.notes_shown = 0

    def show(self, snapshot: DownloadProgress) -> None:
        for note in snapshot.notes[self.notes_shown :]:
            self.console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
        self.notes_shown = len(snapshot.notes)
        for file in snapshot.files:
            task = self.tasks.get(file.path)
            if file.state in ("downloading", "checking") and task is None:
                self.tasks[file.path] = self.bars.add_task(file.path, total=file.total, completed=file.done)
            elif task is not None and file.state in ("done", "skipped", "pending"):
                self.bars.remove_task(task)
                del self.tasks[file.path]
            elif task is not None:
                label = f"{file.path} (checking)" if file.state == "checking" else file.path
                self.bars.update(task, description=label, completed=file.done, total=file.total)
        self.bars.update(
            self.total,
            description=f"total ({snapshot.state})",
            completed=snapshot.bytes_done,
            total=snapshot.bytes_total,
        )
