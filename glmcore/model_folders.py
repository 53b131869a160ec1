"""The workspace's model folders, each with its state and the reason for it: the Models screen and `glmtui models`.

One folder never hides the others: a folder that is not a GLM model, whose family cannot be told, that is being
built or downloaded, or whose config.json is damaged is listed with what is wrong, beside the working ones.
Reading the list imports no torch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.models import ModelFamily, family_for, family_named, read_config_json
from glmcore.workspace import PART_SUFFIX, Workspace, folder_in_progress

AUTOMATIC = "auto"
"""The family choice that forgets a choice made by hand: detection decides again."""
STATES = ("ready", "incomplete", "building", "downloading", "foreign", "unclear", "unreadable")
"""What a model folder can be: only "ready" and "incomplete" folders have a family."""


@dataclass(frozen=True)
class ModelFolderState:
    """One model folder as the listing shows it."""

    path: Path
    state: str
    """One of `STATES`."""
    reason: str
    """Why the folder is in this state: the family's detection reason, or what is wrong and what to do."""
    size_bytes: int
    family: ModelFamily | None = None
    missing: tuple[str, ...] = ()


def folder_bytes(path: Path) -> int:
    """The bytes of the files in a folder and its subfolders (a download's ``.part`` files included); a file
    renamed or removed meanwhile (a download finishing one) is not counted."""
    total = 0
    for file in path.rglob("*"):
        with contextlib.suppress(OSError):
            total += file.stat().st_size if file.is_file() else 0
    return total


def describe_model_folder(path: Path) -> ModelFolderState:
    """The state of one model folder and why; never raises for what the folder holds."""
    path = Path(path)
    if not path.is_dir():
        return ModelFolderState(path, "unreadable", f"{path} is not a folder; name a model folder", 0)
    size = folder_bytes(path)
    progress = folder_in_progress(path)
    if progress == "building":
        final = path.name.rpartition(".")[0]
        return ModelFolderState(
            path, "building", f"being built; it becomes the model {final} when the build finishes", size
        )
    if progress == "downloading":
        parts = sorted(file.name for file in path.rglob(f"*{PART_SUFFIX}"))
        return ModelFolderState(
            path,
            "downloading",
            f"a download is filling it, or was stopped ({len(parts)} unfinished file(s): {', '.join(parts[:3])}"
            f"{', …' if len(parts) > 3 else ''}); `glmtui download` or g on the Models screen resumes it",
            size,
        )
    try:
        config = read_config_json(path)
    except GlmError as error:
        return ModelFolderState(path, "unreadable", str(error), size)
    try:
        family, why = family_for(path)
    except GlmError as error:
        foreign = isinstance(config.get("model_type"), str) and config["model_type"] != "chatglm"
        return ModelFolderState(path, "foreign" if foreign else "unclear", str(error), size)
    from glmcore.models.checkpoint import inspect_model_folder

    try:
        folder = inspect_model_folder(path, family.name)
    except GlmError as error:
        return ModelFolderState(path, "unreadable", str(error), size, family)
    if not folder.complete:
        return ModelFolderState(
            path,
            "incomplete",
            f"{family.title} ({why}), but it lacks {', '.join(folder.missing)}: finish its download "
            "(`glmtui download`) or copy the missing files",
            size,
            family,
            tuple(folder.missing),
        )
    return ModelFolderState(path, "ready", f"{family.title}: {why}", size, family)


def family_title_of(model_dir: Path, family: str | None = None) -> str | None:
    """The model family of a folder as users read it ("ChatGLM3-6B"), or None when it cannot be told; `family`
    is a run's `family` setting, which wins."""
    try:
        found, _ = family_for(model_dir, family)
    except GlmError:
        return None
    return found.title


def list_model_folders(workspace: Workspace) -> list[ModelFolderState]:
    """Every model folder of the workspace (`Workspace.model_folders`) with its state, sorted by path; a folder
    that cannot be read is listed as unreadable, never hiding the others."""
    folders = []
    for path in workspace.model_folders():
        try:
            folders.append(describe_model_folder(path))
        except OSError as error:
            folders.append(ModelFolderState(path, "unreadable", f"{path} cannot be read ({error})", 0))
    return folders


def choose_family(workspace: Workspace, model_dir: Path, name: str) -> ModelFolderState:
    """Remember `name` (a family's name or alias) as the family of `model_dir` in the workspace, or forget the
    choice with "auto"; returns the folder's state under the new choice.

    Model folders may be shared and read-only, so the choice is the workspace's (`Workspace.choose_family`).
    A name glmtui does not know, or a folder without a readable config.json, is refused before anything is
    written.
    """
    model_dir = Path(model_dir).expanduser().absolute()
    chosen = None if name.strip().lower() == AUTOMATIC else family_named(name).name
    read_config_json(model_dir)
    workspace.choose_family(model_dir, chosen)
    return describe_model_folder(model_dir)
