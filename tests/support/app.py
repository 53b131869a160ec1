"""Shared set-up for the app tests: a workspace with the tiny model and sample data, runs as files, the app on
recorded GPUs, and what a screen cuts off."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from glmcore.config import RunConfig
from glmcore.gpu import RecordedGpuBackend
from glmcore.models.chatglm6b.tiny import write_tiny_checkpoint
from glmcore.runs import Run
from glmcore.sample_data import write_sample_dataset
from glmcore.workspace import Workspace
from glmtui.app import GlmApp

GPU_SAMPLES = Path(__file__).parents[1] / "fixtures" / "gpu_samples.json"
SIZES = [(120, 40), (80, 24)]
"""The sizes `snapshot_at_both_sizes` takes, the one a test starts at first."""
FIXED_NOW = datetime.fromisoformat("2026-05-01T12:00:00+00:00")


def make_workspace(root: Path, *, with_model: bool = True) -> Workspace:
    """A workspace at ``root`` (emptied first) with the tiny model and a small sample data set."""
    shutil.rmtree(root, ignore_errors=True)
    workspace = Workspace(root).ensure()
    if with_model:
        write_tiny_checkpoint(workspace.models_dir / "tiny-chatglm", init_std=0.3, seed=1)
        write_sample_dataset(workspace.data_dir / "sample", train_count=48, dev_count=4)
    return workspace


def make_app(workspace: Workspace) -> GlmApp:
    """The app on ``workspace`` with recorded GPUs sampled once and a fixed clock: what it shows repeats."""
    return GlmApp(
        workspace, gpu_backend=RecordedGpuBackend(GPU_SAMPLES), gpu_interval=3600, clock=lambda: FIXED_NOW
    )


def tiny_config(workspace: Workspace, **changes: object) -> RunConfig:
    """A short CPU P-tuning run on the tiny model."""
    settings: dict[str, object] = {
        "name": "tiny-ptuning",
        "model_path": workspace.models_dir / "tiny-chatglm",
        "train_file": workspace.data_dir / "sample" / "train.json",
        "validation_file": workspace.data_dir / "sample" / "dev.json",
        "quantization_bit": 16,
        "pre_seq_len": 4,
        "learning_rate": 1e-2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": 30,
        "save_steps": 10,
        "logging_steps": 1,
        "max_source_length": 32,
        "max_target_length": 32,
        "gpus": [],
        **changes,
    }
    return RunConfig(**settings)


def write_run(
    workspace: Workspace,
    run_id: str,
    config: RunConfig,
    *,
    state: str,
    step: int,
    losses: list[float],
    host: str = "gpu-server",
) -> Run:
    """A run folder as a training process on another host leaves it: config, status, events, log."""
    run = Run(workspace.runs_dir / run_id)
    run.path.mkdir(parents=True)
    (run.path / "checkpoints").mkdir()
    config.save(run.config_path)
    status = {
        "state": state,
        "pid": 4242,
        "host": host,
        "gpus": [0],
        "step": step,
        "total": config.max_steps,
        "created": "2026-05-01T10:30:00+00:00",
        "started": "2026-05-01T10:30:05+00:00",
    }
    run.status_path.write_text(json.dumps(status))
    events = [{"kind": "start", "step": 0, "total": config.max_steps}]
    for number, loss in enumerate(losses, start=1):
        events.append(
            {
                "kind": "log",
                "step": number * config.logging_steps,
                "loss": loss,
                "learning_rate": 0.02 * (1 - number / (len(losses) + 1)),
                "tokens_per_s": 1234.0,
                "samples_per_s": 8.0,
                "eta_s": 600.0,
            }
        )
    run.events_path.write_text("".join(json.dumps(event) + "\n" for event in events))
    run.log_path.write_text("loading the model\ntraining\n")
    return run


def message_recorder(kind: type) -> tuple[list, Callable[[object], None]]:
    """A list and a `message_hook` for `app.run_test` that appends each message of `kind` to it: how often a
    screen's worker posted its reading, without timing anything."""
    seen: list = []

    def record(message: object) -> None:
        if isinstance(message, kind):
            seen.append(message)

    return seen, record


async def paste(pilot, text: str) -> None:
    """Paste ``text`` into the focused field as a terminal does, in one event: typing a path key by key takes
    seconds (each key waits for the app to idle, and the config editor checks the disk on every change)."""
    from textual.events import Paste

    from support.waiting import wait_until_in_app

    field = pilot.app.focused
    before = field.value
    pilot.app.post_message(Paste(text))
    await wait_until_in_app(pilot, lambda: field.value != before and text in field.value, f"{text!r} pasted")


async def settle(pilot) -> None:
    """Wait for the app's first GPU reading, then for its workers until none is running, also those that the
    results of others started (a cancelled or failed one counts as done), then a frame."""
    from support.waiting import wait_until_in_app

    await wait_until_in_app(pilot, lambda: pilot.app.gpu_snapshot is not None, "the first GPU reading")
    # A pause lets the messages posted meanwhile be handled; one of them may start the next worker (the runs
    # watcher's look starts the Runs screen's read): on a loaded machine one pass is not enough.
    while running := [worker for worker in pilot.app.workers if not worker.is_finished]:
        await finish(running)
        await pilot.pause()
    # Rows posted by a worker are laid out on a later refresh (a DataTable sizes its columns then).
    for _ in range(3):
        await pilot.pause()
    await pilot.wait_for_scheduled_animations()


async def finish(workers) -> None:
    """Wait for each of ``workers`` to end, however it ends."""
    from textual.worker import WorkerCancelled, WorkerFailed

    for worker in workers:
        with contextlib.suppress(WorkerCancelled, WorkerFailed):
            await worker.wait()


def columns_fit_rows(table) -> bool:
    """Whether a DataTable has sized every column to its widest cell: it does so when idle after rows are added,
    so until then a column is only as wide as its label (a snapshot taken then cuts its cells)."""
    from rich.text import Text

    rows = [table.get_row_at(index) for index in range(table.row_count)]
    for index, column in enumerate(table.ordered_columns):
        cells = [Text(str(row[index])) if not isinstance(row[index], Text) else row[index] for row in rows]
        if column.content_width < max((cell.cell_len for cell in cells), default=0):
            return False
    return True


def cut_text(screen) -> list[str]:
    """What ``screen`` cuts off as it stands, one line per widget: a widget partly outside what contains it
    (with no scrolling to reach the rest), text taller than its widget, a table wider than itself or with
    cells wider than their column, a field whose value does not fit. Logs and scrolled-away rows do not count."""
    from rich.cells import cell_len
    from textual.widgets import DataTable, Input, Label, Log, Static

    def scrolls(widget) -> bool:
        return any(
            ancestor.max_scroll_y > 0 for ancestor in widget.ancestors if hasattr(ancestor, "max_scroll_y")
        )

    found = []
    for widget, (region, clip) in screen._compositor.visible_widgets.items():
        name = f"{type(widget).__name__}#{widget.id or '?'}"
        if not clip.contains_region(region) and not scrolls(widget):
            found.append(f"{name} is clipped: {region} shown in {clip}")
        if isinstance(widget, Log):
            continue
        content = widget.content_region
        if isinstance(widget, (Static, Label)) and not widget.allow_vertical_scroll:
            needed = widget.get_content_height(content.size, screen.size, content.width)
            if needed > content.height:
                found.append(f"{name} needs {needed} lines and has {content.height}: {widget.render()!s:.60}")
        if isinstance(widget, DataTable):
            if widget.max_scroll_x > 0:
                found.append(f"{name} is {widget.virtual_size.width} wide in {widget.size.width} columns")
            for column in widget.columns.values():
                if not column.auto_width and column.content_width > column.width:
                    found.append(f"{name} column {column.label} cuts cells to {column.width}")
        if isinstance(widget, Input) and cell_len(widget.value) >= content.width:
            found.append(f"{name} shows {content.width - 1} of {cell_len(widget.value)} characters")
    return found


async def snapshot_at_both_sizes(pilot, snapshot, name: str) -> None:
    """The screen as it is now at each of SIZES, compared with its snapshot; at 80x24 nothing may be cut."""
    from pytest_textual_snapshot import SVGImageExtension
    from textual.widgets import Input

    pilot.app.clear_notifications()
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    for width, height in SIZES:
        await pilot.resize_terminal(width, height)
        await settle(pilot)
        if (width, height) == (80, 24):
            cuts = cut_text(pilot.app.screen)
            assert cuts == [], "\n".join(cuts)
        svg = pilot.app.export_screenshot()
        assert snapshot(name=f"{name}-{width}x{height}", extension_class=SVGImageExtension) == svg
    await pilot.resize_terminal(*SIZES[0])
    await settle(pilot)
