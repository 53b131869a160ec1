"""Model folders as text: the Models screen and `glmtui models` (state words and styles, rows, details)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text

from glmcore.units import format_bytes
from glmtui.text.figures import MISSING

if TYPE_CHECKING:
    from glmcore.model_folders import ModelFolderState


MODEL_STATE_TEXT = {
    "ready": "complete",
    "building": "building",
    "downloading": "downloading",
    "foreign": "not a GLM model",
    "unclear": "family unclear: set it",
    "unreadable": "unreadable",
}
"""A model folder's state (`glmcore.model_folders.STATES`) as the Models screen and `glmtui models` show it;
an incomplete folder reads "missing N"."""
MODEL_STATE_STYLES = {
    "ready": "green",
    "building": "yellow",
    "downloading": "yellow",
    "unclear": "bold yellow",
}
MODEL_COLUMNS = ("Model", "Family", "Size", "State")


def model_state_text(folder: ModelFolderState) -> Text:
    """A model folder's state in a few words (an incomplete folder: "missing N"), styled."""
    if folder.state == "incomplete":
        words = f"missing {len(folder.missing)}"
    else:
        words = MODEL_STATE_TEXT.get(folder.state, folder.state)
    return Text(words, style=MODEL_STATE_STYLES.get(folder.state, ""))


def model_cells(folder: ModelFolderState, models_dir: Path) -> tuple[str, str, str, Text]:
    """A model folder's row: its path under models/, family, size and state (a `Text`: never markup)."""
    from glmcore.units import format_bytes

    inside = folder.path.is_relative_to(models_dir)
    name = str(folder.path.relative_to(models_dir)) if inside else str(folder.path)
    family = folder.family.title if folder.family is not None else MISSING
    return name, family, format_bytes(folder.size_bytes), model_state_text(folder)


def model_detail(folder: ModelFolderState) -> Text:
    """The detail of a model folder: its state and path, then why it is in that state."""
    text = model_state_text(folder)
    text.append(f" · {folder.path}\n", style="bold")
    text.append(folder.reason)
    return text


SOURCE_TITLES = {"hf": "the Hugging Face Hub", "modelscope": "ModelScope", "thu": "Tsinghua Cloud"}
"""Where a catalog model comes from (`glmcore.download.SOURCES`), as `glmtui download --source` and the Models
screen name it."""


def catalog_size(size: int | None) -> str:
    """A catalog model's size; "?" where its manifest does not give every file's (GLM-4's shards)."""
    return format_bytes(size) if size is not None else "?"


def catalog_title(source: str) -> str:
    """The Models screen's line above the catalog: where g downloads from, and the key that changes it."""
    return f"[b]Catalog[/b] from {SOURCE_TITLES[source]} (g downloads the highlighted one, s: source)"
