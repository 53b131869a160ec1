"""The runs/ folder of a workspace: creating, listing and finding runs by name."""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

from glmcore.config import RunConfig
from glmcore.errors import GlmError, RunError
from glmcore.runs.folder import CHECKPOINT_PATTERN, Run, now_iso
from glmcore.workspace import new_numbered_folder


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or "run"


def _given_name(run: Run) -> str | None:
    """The name the run was given (config.toml's ``name``), None when its config cannot be read."""
    try:
        return run.config.name
    except GlmError:
        return None


class RunStore:
    """The runs/ folder of a workspace."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir).absolute()

    def create(self, config: RunConfig) -> Run:
        """A new run folder holding the config, a ``created`` status and an empty events file."""
        base = f"{datetime.now():%Y%m%d-%H%M%S}-{_slug(config.name)}"
        path = new_numbered_folder(self.runs_dir, base)
        if path is None:
            raise RunError(f"cannot find a free run folder name for {base} in {self.runs_dir}")
        run = Run(path)
        config.save(run.config_path)
        run.checkpoints_dir.mkdir()
        run.events_path.touch()
        run.write_status(state="created", created=now_iso(), total=config.max_steps, gpus=list(config.gpus))
        return run

    def list(self) -> list[Run]:
        """Every run folder (one holding config.toml), newest first (the id starts with the creation time)."""
        if not self.runs_dir.is_dir():
            return []
        runs = [Run(folder) for folder in self.runs_dir.iterdir() if (folder / "config.toml").is_file()]
        return sorted(runs, key=lambda run: run.id, reverse=True)

    def resolve(self, name_or_path: str | Path) -> Run:
        """The run named by an exact id, a unique id prefix, the name it was given, or a path to its folder."""
        text = str(name_or_path)
        if os.sep in text or text in (".", ".."):
            path = Path(text).expanduser()
            if not (path / "config.toml").is_file():
                raise RunError(f"{path} is not a run folder (it holds no config.toml)")
            return Run(path)
        runs = self.list()
        exact = [run for run in runs if run.id == text]
        if exact:
            return exact[0]
        matches = [run for run in runs if run.id.startswith(text)] or [
            run for run in runs if run.id[len("yyyymmdd-hhmmss-") :].startswith(_slug(text))
        ]
        # A name given to exactly one run wins over the longer names it begins (a sweep over it, say).
        named = [run for run in matches if _given_name(run) == text] if len(matches) > 1 else []
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise RunError(
                f"{len(named)} runs are named {text!r} ({', '.join(run.id for run in named)}); give the id"
            )
        if len(matches) == 1:
            return matches[0]
        if matches:
            listed = ", ".join(run.id for run in matches[:10]) + (" ..." if len(matches) > 10 else "")
            raise RunError(f"{text!r} names {len(matches)} runs ({listed}); give more of the id")
        known = ", ".join(run.id for run in runs[:5]) or "there are none yet"
        raise RunError(
            f"no run named {text!r} in {self.runs_dir} (latest: {known}); `glmtui runs` lists them all"
        )

    def resolve_checkpoint(self, name: str, run: Run | None = None) -> Path:
        """The checkpoint folder ``name`` means (docs/runs.md, "Naming runs and checkpoints"): with ``run``,
        its ``checkpoint-N`` or ``N``; else a checkpoint folder's path; else a run (by any name ``resolve``
        takes), which stands for its default checkpoint."""
        if run is not None and (CHECKPOINT_PATTERN.fullmatch(name) or name.isdigit()):
            return run.find_checkpoint(name).path
        path = Path(name).expanduser()
        if path.is_dir() and not (path / "config.toml").is_file():
            return path
        try:
            return self.resolve(name).default_checkpoint().path
        except RunError as error:
            if os.sep in name or name.startswith("checkpoint-"):
                raise RunError(
                    f"{name} is neither a checkpoint folder nor a run"
                    + (" (a checkpoint-N of a run needs --run RUN)" if run is None else "")
                ) from None
            raise error from None
