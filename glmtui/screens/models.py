"""The Models screen: the model folders in the workspace, and the catalog to download from.

Every folder under models/ is a row with its state (`glmcore.model_folders`): one that is not a GLM model, whose
family is unclear, or that is being built or downloaded is listed beside the working ones, and the detail below
the table says why. f sets the highlighted folder's family by hand (remembered in the workspace). s picks where a
catalog model is downloaded from (the Hugging Face Hub, ModelScope, Tsinghua Cloud).

A download runs ``glmcore.download`` in a thread worker: plan (lists the source), then transfer with a progress
callback and a cancel event. Cancelling leaves ``.part`` files; downloading again resumes from them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Input, Label, ProgressBar, Static
from textual.worker import Worker

from glmcore.catalog import MODELS
from glmcore.download import SOURCES, DownloadProgress
from glmcore.errors import GlmError
from glmcore.model_folders import AUTOMATIC, ModelFolderState, choose_family, list_model_folders
from glmcore.models import FAMILIES
from glmcore.units import format_bytes
from glmtui.screens.base import WorkbenchScreen
from glmtui.text.figures import format_duration
from glmtui.text.models import (
    MODEL_COLUMNS,
    SOURCE_TITLES,
    catalog_size,
    catalog_title,
    model_cells,
    model_detail,
)

SHOWN_FILES = 4


@dataclass
class LocalModelsRead(Message):
    """The workspace's model folders with their states, read off the UI thread."""

    folders: list[ModelFolderState]


@dataclass
class DownloadProgressed(Message):
    """How far the download is, from its worker."""

    progress: DownloadProgress


def describe_download(progress: DownloadProgress) -> str:
    """Total and per-file progress, speed and ETA, as lines of text."""
    total = format_bytes(progress.bytes_total) if progress.bytes_total is not None else "?"
    lines = [
        f"{progress.state}: {format_bytes(progress.bytes_done)} of {total}, "
        f"{format_bytes(progress.speed)}/s, ETA {format_duration(progress.eta)}"
    ]
    active = [file for file in progress.files if file.state in ("downloading", "checking")]
    for file in active[:SHOWN_FILES]:
        size = format_bytes(file.total) if file.total is not None else "?"
        lines.append(f"  {file.path}: {format_bytes(file.done)} / {size} ({file.state})")
    finished = sum(file.state in ("done", "skipped") for file in progress.files)
    lines.append(f"  {finished} of {len(progress.files)} files done")
    if progress.message:
        lines.append(progress.message)
    return "\n".join(lines)


class ModelsScreen(WorkbenchScreen):
    """Local models and the catalog; g download (or resume), x cancel."""

    NAME = "models"
    BINDINGS = [
        Binding(
            "g",
            "download",
            "Download",
            id="models-download",
            tooltip="Download (or resume) the catalog model",
        ),
        Binding(
            "x", "cancel_download", "Cancel", id="models-cancel", tooltip="Cancel the download (resumable)"
        ),
        Binding("u", "refresh_local", "Rescan", id="models-rescan", tooltip="Rescan the workspace's models"),
        Binding(
            "f",
            "choose_family",
            "Family",
            id="models-family",
            tooltip="Set the highlighted folder's family by hand: each press picks the next, then automatic",
        ),
        Binding(
            "s",
            "next_source",
            "Source",
            id="models-source-choice",
            tooltip="Download catalog models from the next source: Hugging Face Hub, ModelScope, Tsinghua Cloud",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._cancel = threading.Event()
        self._folders: dict[str, ModelFolderState] = {}
        self._source = SOURCES[0]

    def compose_body(self) -> ComposeResult:
        # Paths are shown relative to the models folder named above the table, and the catalog's notes
        # below it whole, so neither table is wider than 80 columns.
        models_dir = escape(str(self.workbench.workspace.models_dir))
        yield Static(Text.from_markup(f"[b]In {models_dir}[/b]"), id="models-local-title")
        local: DataTable = DataTable(id="models-local", cursor_type="row")
        local.add_columns(*MODEL_COLUMNS)
        yield local
        yield Static("", id="models-detail")
        yield Label(catalog_title(self._source), id="catalog-title")
        catalog: DataTable = DataTable(id="models-catalog", cursor_type="row")
        catalog.add_columns("Name", "Title", "Size")
        for model in MODELS.values():
            catalog.add_row(model.name, model.title, catalog_size(model.total_size), key=model.name)
        yield catalog
        yield Static("", id="catalog-note")
        yield Input(
            placeholder="or a hub id, hub URL or Seafile share link; enter downloads it",
            id="models-source",
        )
        yield ProgressBar(id="download-progress", show_eta=False)
        yield Static("", id="download-status")

    def on_mount(self) -> None:
        self.action_refresh_local()

    def action_refresh_local(self) -> None:
        self.read_local_models()

    @work(thread=True, exclusive=True, exit_on_error=False, group="models-read")
    def read_local_models(self) -> None:
        self.post_message(LocalModelsRead(list_model_folders(self.workbench.workspace)))

    def on_local_models_read(self, message: LocalModelsRead) -> None:
        table = self.query_one("#models-local", DataTable)
        highlighted = self._highlighted_folder()
        models_dir = self.workbench.workspace.models_dir
        self._folders = {str(folder.path): folder for folder in message.folders}
        table.clear()
        for folder in message.folders:
            table.add_row(*model_cells(folder, models_dir), key=str(folder.path))
        if highlighted is not None and str(highlighted.path) in self._folders:
            table.move_cursor(row=table.get_row_index(str(highlighted.path)))
        self._show_detail()

    def _highlighted_folder(self) -> ModelFolderState | None:
        table = self.query_one("#models-local", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self._folders.get(str(key))

    def _show_detail(self) -> None:
        folder = self._highlighted_folder()
        detail = self.query_one("#models-detail", Static)
        detail.update(
            model_detail(folder) if folder is not None else "No model folder yet: download one below."
        )

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "models-local":
            self._show_detail()
        elif event.data_table.id == "models-catalog" and event.row_key.value in MODELS:
            model = MODELS[event.row_key.value]
            self.query_one("#catalog-note", Static).update(f"{model.title}: {escape(model.note)}")

    def action_choose_family(self) -> None:
        """The next family for the highlighted folder, by hand: each family in turn, then automatic again."""
        folder = self._highlighted_folder()
        if folder is None or folder.state in ("building", "downloading"):
            self.notify(
                "Highlight a model folder (one that is not being built or downloaded) to set its family."
            )
            return
        workspace = self.workbench.workspace
        cycle = [None, *(family.name for family in FAMILIES)]  # automatic, then each family in turn
        try:
            current = workspace.chosen_family(folder.path)
            following = cycle[(cycle.index(current) + 1) % len(cycle)] if current in cycle else None
            choose_family(workspace, folder.path, following or AUTOMATIC)
        except GlmError as error:
            self.notify(str(error), severity="error", markup=False)
            return
        self.notify(
            f"{folder.path.name}: family {following} (f again for the next)"
            if following
            else f"{folder.path.name}: family found from config.json again",
            markup=False,
        )
        self.read_local_models()

    def action_next_source(self) -> None:
        self._source = SOURCES[(SOURCES.index(self._source) + 1) % len(SOURCES)]
        self.query_one("#catalog-title", Label).update(catalog_title(self._source))
        self.notify(f"Catalog models now come from {SOURCE_TITLES[self._source]}.", markup=False)

    def action_download(self) -> None:
        catalog = self.query_one("#models-catalog", DataTable)
        name = str(catalog.coordinate_to_cell_key(catalog.cursor_coordinate).row_key.value)
        self.start_download(name, self._source)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "models-source" and event.value.strip():
            # An owner/name typed while ModelScope is chosen is a ModelScope id; otherwise a hub id or a link.
            self.start_download(event.value.strip(), "modelscope" if self._source == "modelscope" else None)

    def start_download(self, name: str, source: str | None) -> None:
        self._cancel = threading.Event()
        self.query_one("#download-status", Static).update(Text(f"Listing the files of {name}…"))
        self.query_one("#download-progress", ProgressBar).display = True
        self.download(name, source, self._cancel)

    def action_cancel_download(self) -> None:
        self._cancel.set()

    @work(thread=True, exclusive=True, exit_on_error=False, group="download")
    def download(self, name: str, source_name: str | None, cancel: threading.Event) -> None:
        from glmcore.download import default_destination, plan_download, resolve_source, run_download

        workspace = self.workbench.workspace
        source = resolve_source(name, source=source_name)
        plan = plan_download(source, default_destination(source, workspace.models_dir, workspace.data_dir))
        result = run_download(
            plan, progress=lambda progress: self.post_message(DownloadProgressed(progress)), cancel=cancel
        )
        text = (
            f"Cancelled: press g to resume {name} from where it stopped."
            if result.cancelled
            else f"Downloaded {name} to {result.destination}."
        )
        self.app.call_from_thread(self.query_one("#download-status", Static).update, text)
        self.app.call_from_thread(self.read_local_models)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The bar shows only while a download runs, however it ends (the app shows a failure's error)."""
        super().on_worker_state_changed(event)
        if event.worker.group == "download" and event.worker.is_finished:
            self.query_one("#download-progress", ProgressBar).display = False

    def on_download_progressed(self, message: DownloadProgressed) -> None:
        progress = message.progress
        bar = self.query_one("#download-progress", ProgressBar)
        bar.update(total=progress.bytes_total, progress=progress.bytes_done)
        self.query_one("#download-status", Static).update(describe_download(progress))
