"""The workspace folder (models/, data/, runs/) and the safe-write helper everything inside it uses.

One folder holds everything glmtui keeps, so a user can find, copy or delete it as a whole: the root comes from
the caller, else ``$GLMTUI_HOME``, else ``~/glmtui``. Files other processes read while they change (a run's
status, its config) are written with ``atomic_write_text``: a reader sees the old content or the new, never half.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from glmcore.errors import GlmError

HOME_ENV = "GLMTUI_HOME"
DEFAULT_ROOT = Path("~/glmtui")

MODEL_CONFIG_NAME = "config.json"
LAST_CONFIG_NAME = "last-config"
"""In configs/: the path of the config last saved, loaded or made by the demo, so the editor reopens it."""
MODEL_FAMILIES_NAME = "model-families.toml"
"""At the workspace root: the family chosen by hand for a model folder, by its absolute path. It lives here,
not in the model folder, because model folders may be shared and read-only."""
BUILDING_SUFFIXES = (".building", ".exporting")
"""A folder being built (the demo model, an export) is named so until it is renamed into place."""
PART_SUFFIX = ".part"
"""A file a download is filling is named so until it is whole (glmcore.download.transfer)."""


class WorkspaceError(GlmError):
    """The workspace folder cannot be used (not creatable, not a folder)."""


def new_numbered_folder(parent: Path, base: str) -> Path | None:
    """A new, empty folder ``parent/base`` (or ``base-2``, ``base-3``, ...: the first name free), made here so
    that two processes never get the same one; None when a thousand names are taken."""
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        path = parent / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    return None


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers never see a partial file, even across a power cut.

    Writes a temporary file beside it, fsyncs it, renames it over the target, then fsyncs the folder so the
    rename itself is durable.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def folder_in_progress(path: Path) -> str | None:
    """ "building" or "downloading" for a model folder still being written, else None: such a folder is listed
    but never offered as a model."""
    if path.name.endswith(BUILDING_SUFFIXES):
        return "building"
    if any(
        part.is_file() for pattern in (f"*{PART_SUFFIX}", f"*/*{PART_SUFFIX}") for part in path.glob(pattern)
    ):
        return "downloading"
    return None


def _family_key(model_dir: Path) -> str:
    return str(Path(model_dir).expanduser().resolve())


def remembered_family(model_dir: Path) -> tuple[str, Path] | None:
    """The family chosen by hand for `model_dir` and the file that holds the choice, or None.

    Asked of the workspace of ``$GLMTUI_HOME`` (where the CLI writes), then of the workspace the folder lies in
    (``<root>/models/...``, where the app writes for its own workspace).
    """
    model_dir = Path(model_dir).expanduser().absolute()
    enclosing = [Workspace(parent.parent) for parent in model_dir.parents[:2] if parent.name == "models"]
    for workspace in [Workspace.from_env(), *enclosing]:
        name = workspace.chosen_family(model_dir)
        if name is not None:
            return name, workspace.model_families_path
    return None


@dataclass(frozen=True)
class Workspace:
    """The folder holding ``models/``, ``data/`` and ``runs/``."""

    root: Path

    @classmethod
    def from_env(cls, root: Path | None = None) -> Workspace:
        """The workspace at ``root``, else at ``$GLMTUI_HOME``, else at ``~/glmtui``."""
        chosen = root if root is not None else Path(os.environ.get(HOME_ENV) or DEFAULT_ROOT)
        return cls(Path(chosen).expanduser().absolute())

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def configs_dir(self) -> Path:
        return self.root / "configs"

    @property
    def model_families_path(self) -> Path:
        return self.root / MODEL_FAMILIES_NAME

    def chosen_families(self) -> dict[str, str]:
        """Each model folder's family chosen by hand (absolute path → family name); empty without the file."""
        path = self.model_families_path
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise WorkspaceError(
                f"{path} cannot be read ({error}); fix it or delete it and set the families again"
            ) from None
        return {str(folder): name for folder, name in data.items() if isinstance(name, str)}

    def chosen_family(self, model_dir: Path) -> str | None:
        """The family chosen by hand for `model_dir` in this workspace, or None."""
        return self.chosen_families().get(_family_key(model_dir))

    def choose_family(self, model_dir: Path, name: str | None) -> None:
        """Remember `name` as the family of `model_dir` (a registry name, already checked), or forget the
        choice with None, so detection decides again."""
        chosen = self.chosen_families()
        key = _family_key(model_dir)
        if name is None:
            if chosen.pop(key, None) is None:
                return
        else:
            chosen[key] = name
        self.root.mkdir(parents=True, exist_ok=True)
        heading = "# The model family chosen for each folder (glmtui models --family NAME|auto MODEL_DIR).\n"
        atomic_write_text(self.model_families_path, heading + tomli_w.dumps(dict(sorted(chosen.items()))))

    def remember_config(self, path: Path) -> None:
        """Record ``path`` as the config last worked on (see ``last_config``)."""
        self.configs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.configs_dir / LAST_CONFIG_NAME, str(Path(path).absolute()) + "\n")

    def last_config(self) -> Path | None:
        """The config last saved, loaded or made by the demo, while that file still exists."""
        try:
            recorded = (self.configs_dir / LAST_CONFIG_NAME).read_text(encoding="utf-8").strip()
        except OSError:
            return None
        path = Path(recorded)
        return path if recorded and path.is_file() else None

    def ensure(self) -> Workspace:
        """Create the workspace folders that do not exist yet; returns self for chaining."""
        for folder in (self.models_dir, self.data_dir, self.runs_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise WorkspaceError(
                    f"{folder} exists but is not a folder: move it away or choose another workspace "
                    f"with --workspace or ${HOME_ENV}"
                ) from None
            except PermissionError:
                raise WorkspaceError(
                    f"cannot create {folder}: permission denied; choose a workspace you can write to "
                    f"with --workspace or ${HOME_ENV}"
                ) from None
        return self

    def model_folders(self) -> list[Path]:
        """Every folder under models/ that holds or will hold a model, sorted by path: one holding config.json
        or a download's ``.part`` files, one or two levels deep (``models/chatglm-6b``,
        ``models/THUDM/chatglm-6b``), and a ``*.building`` folder. A folder inside another is not one."""
        if not self.models_dir.is_dir():
            return []
        patterns = (
            f"*/{MODEL_CONFIG_NAME}",
            f"*/*/{MODEL_CONFIG_NAME}",
            f"*/*{PART_SUFFIX}",
            f"*/*/*{PART_SUFFIX}",
        )
        found = {
            file.parent for pattern in patterns for file in self.models_dir.glob(pattern) if file.is_file()
        }
        found.update(
            folder
            for folder in self.models_dir.iterdir()
            if folder.is_dir() and folder.name.endswith(BUILDING_SUFFIXES)
        )
        return sorted(folder for folder in found if not any(parent in found for parent in folder.parents))

    def find_models(self) -> list[Path]:
        """The model folders that can be offered as models: `model_folders` less those being built or
        downloaded (`folder_in_progress`)."""
        return [folder for folder in self.model_folders() if folder_in_progress(folder) is None]
