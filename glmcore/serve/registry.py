"""Which models a server offers: the base model, and P-tuning prefixes of the workspace's runs made on it.

A model id is the base model folder's name for no prefix, `<run id>` for the checkpoint the run stands for
(`Run.default_checkpoint`, docs/runs.md's rule), or `<run id>/checkpoint-N` for one of its checkpoints. Ids are
looked up in the registry only, never turned into paths, so no request reaches a file the registry did not
list. `refresh()` reads the run folders again (a run that finished since appears); a LoRA or full fine-tuning
run is never served, and a request for one is told to export it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.runs import Run, RunError, RunStore


class UnknownModel(GlmError):
    """A request names a model this server does not offer."""


@dataclass(frozen=True)
class ServedModel:
    id: str
    checkpoint: Path | None
    """The prefix checkpoint folder; None for the base model."""
    run: str | None = None
    created: int = 0
    """When the checkpoint was written (seconds since the epoch): OpenAI's `created`."""


@dataclass(frozen=True)
class Selection:
    """What `--run` / `--checkpoint` narrowed the server to; empty offers every P-tuning run on the model."""

    runs: tuple[str, ...] = ()
    checkpoints: tuple[str, ...] = ()
    """Checkpoint names as `glmtui chat --checkpoint` takes them (of `runs[0]` when it is given)."""

    @property
    def narrowed(self) -> bool:
        return bool(self.runs or self.checkpoints)


def refused_method(run: Run) -> str | None:
    """Why a run cannot be served as a prefix, or None for a P-tuning run."""
    method = run.config.method
    if method == "ptuning-v2":
        return None
    return (
        f"run {run.id} trained {method}, not a prefix: export it (glmtui export {run.id}) and serve the "
        "exported folder with glmtui serve --model"
    )


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def _created(path: Path) -> int:
    try:
        return int(path.stat().st_mtime)
    except OSError:
        return 0


class ModelRegistry:
    """The base model and the prefixes offered over it, read again from the run folders on `refresh()`."""

    def __init__(
        self,
        base_dir: Path,
        store: RunStore,
        selection: Selection = Selection(),
        on_change: Callable[[list[ServedModel]], None] | None = None,
    ) -> None:
        self.on_change = on_change
        """Called with the models after a refresh that changed them (the server keeps status.json true)."""
        self.base_dir = Path(base_dir).expanduser().absolute()
        self.store = store
        self.selection = selection
        self.base = ServedModel(self.base_dir.name, None, created=_created(self.base_dir))
        self._models: dict[str, ServedModel] = {}
        self._refused: dict[str, str] = {}
        self.refresh()

    def check(self) -> None:
        """Refuse, by name, what the selection asks for that cannot be served (before the model loads)."""
        for name in self.selection.runs:
            run = self.store.resolve(name)
            if problem := refused_method(run):
                raise GlmError(problem)
            if not _same_folder(run.config.model_path, self.base_dir):
                raise GlmError(
                    f"run {run.id} was made on {run.config.model_path}, not on {self.base_dir}; serve it "
                    "with its own model (glmtui serve --run alone)"
                )
        run = self.store.resolve(self.selection.runs[0]) if self.selection.runs else None
        for name in self.selection.checkpoints:
            owner = self.store.resolve_checkpoint(name, run).parent.parent
            if (owner / "config.toml").is_file() and (problem := refused_method(Run(owner))):
                raise GlmError(problem)

    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    def refresh(self) -> list[ServedModel]:
        models = {self.base.id: self.base}
        refused: dict[str, str] = {}
        if self.selection.checkpoints:
            run = self.store.resolve(self.selection.runs[0]) if self.selection.runs else None
            for name in self.selection.checkpoints:
                served = self._checkpoint_named(name, run)
                models[served.id] = served
        else:
            runs = (
                [self.store.resolve(name) for name in self.selection.runs]
                if self.selection.runs
                else self.store.list()
            )
            for run in runs:
                if not _same_folder(run.config.model_path, self.base_dir):
                    continue
                if problem := refused_method(run):
                    refused[run.id] = problem
                    continue
                models.update((served.id, served) for served in self._run_models(run))
        changed = list(models) != list(self._models)
        self._models, self._refused = models, refused
        if changed and self.on_change is not None:
            self.on_change(self.models())
        return self.models()

    def _run_models(self, run: Run) -> list[ServedModel]:
        """`<run>` (its default checkpoint) and each `<run>/checkpoint-N`; nothing before its first save."""
        try:
            default = run.default_checkpoint()
        except RunError:
            return []
        served = [ServedModel(run.id, default.path, run.id, _created(default.path))]
        for checkpoint in run.checkpoints():
            if checkpoint.path.is_dir():
                name = f"{run.id}/{checkpoint.path.name}"
                served.append(ServedModel(name, checkpoint.path, run.id, _created(checkpoint.path)))
        return served

    def _checkpoint_named(self, name: str, run: Run | None) -> ServedModel:
        path = self.store.resolve_checkpoint(name, run)
        owner = path.parent.parent
        if path.parent.name != "checkpoints" or not (owner / "config.toml").is_file():
            return ServedModel(path.name, path, None, _created(path))
        names_a_run = not Path(name).expanduser().is_dir() and not (
            run is not None and (name.startswith("checkpoint-") or name.isdigit())
        )
        served_id = owner.name if names_a_run else f"{owner.name}/{path.name}"
        return ServedModel(served_id, path, owner.name, _created(path))

    def find(self, model_id: str) -> ServedModel:
        """The model a request names; the run folders are read again for an id not known yet."""
        if model_id not in self._models:
            self.refresh()
        if model_id in self._models:
            return self._models[model_id]
        run_id = model_id.split("/", 1)[0]
        if run_id in self._refused:
            raise UnknownModel(f"The model {model_id!r} cannot be served: {self._refused[run_id]}.")
        known = ", ".join(list(self._models)[:6])
        raise UnknownModel(
            f"The model {model_id!r} does not exist on this server; GET /v1/models lists them ({known})."
        )
