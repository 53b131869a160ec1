"""Which models a server offers: the base model, and the P-tuning prefixes and LoRA adapters of the workspace's
runs made on it.

A model id is the base model folder's name for the base alone, `<run id>` for the checkpoint the run stands for
(`Run.default_checkpoint`, docs/runs.md's rule), or `<run id>/checkpoint-N` for one of its checkpoints; each
model has a kind, "base", "prefix" or "lora". Ids are looked up in the registry only, never turned into paths,
so no request reaches a file the registry did not list. `refresh()` reads the run folders again (a run that
finished since appears); a full fine-tuning run is never served, and a request for one is told to export it; a
run made on another base is told to be served with its own. A checkpoint whose files are damaged (cut short, or
a crafted header) is left out, and so is a run folder that cannot be read: a request for either is told why,
and the others are served as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.runs import Run, RunError, RunStore, checkpoint_problem

log = logging.getLogger("glmcore.serve")


class UnknownModel(GlmError):
    """A request names a model this server does not offer."""


KINDS = {"ptuning-v2": "prefix", "lora": "lora"}
"""The kind of model a run's method makes."""


@dataclass(frozen=True)
class ServedModel:
    id: str
    checkpoint: Path | None
    """The prefix or adapter checkpoint folder; None for the base model."""
    run: str | None = None
    created: int = 0
    """When the checkpoint was written (seconds since the epoch): OpenAI's `created`."""
    kind: str = "prefix"
    """"base", "prefix" (a P-tuning v2 checkpoint) or "lora" (a LoRA adapter)."""

    @property
    def prefix(self) -> Path | None:
        return self.checkpoint if self.kind == "prefix" else None

    @property
    def adapter(self) -> Path | None:
        return self.checkpoint if self.kind == "lora" else None


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
    """Why a run cannot be served over a base, or None for a P-tuning or LoRA run."""
    method = run.config.method
    if method in KINDS:
        return None
    return (
        f"run {run.id} trained {method}, neither a prefix nor an adapter: export it (glmtui export {run.id}) and "
        "serve the exported folder with glmtui serve --model"
    )


def _kind_of_checkpoint(path: Path, run: Run | None) -> str:
    if run is not None:
        return KINDS.get(run.config.method, "prefix")
    from glmcore.adapters import is_adapter_checkpoint

    return "lora" if is_adapter_checkpoint(path) else "prefix"


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def damage(checkpoint: Path) -> str | None:
    """Why a checkpoint's files cannot be served, or None when they look whole. A file crafted to break the
    check itself is damaged too: one bad checkpoint never takes the listing down."""
    try:
        problem = checkpoint_problem(checkpoint)
    except GlmError as error:
        return str(error)
    except Exception as error:
        log.warning("checking %s failed: %r", checkpoint, error)
        return f"its files cannot be read ({type(error).__name__}); save or copy {checkpoint.name} again"
    return f"{checkpoint.name} is damaged: {problem}" if problem else None


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
        self.base = ServedModel(self.base_dir.name, None, created=_created(self.base_dir), kind="base")
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
            path = self.store.resolve_checkpoint(name, run)
            owner = path.parent.parent
            if (owner / "config.toml").is_file() and (problem := refused_method(Run(owner))):
                raise GlmError(problem)
            if problem := damage(path):
                raise GlmError(f"{path} cannot be served ({problem}); name another checkpoint")

    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    def refresh(self) -> list[ServedModel]:
        models = {self.base.id: self.base}
        refused: dict[str, str] = {}  # why a model id (or a run id, for all its models) is not served
        if self.selection.checkpoints:
            run = self.store.resolve(self.selection.runs[0]) if self.selection.runs else None
            for name in self.selection.checkpoints:
                served = self._checkpoint_named(name, run)
                if problem := damage(served.checkpoint):
                    refused[served.id] = problem
                else:
                    models[served.id] = served
        else:
            runs = (
                [self.store.resolve(name) for name in self.selection.runs]
                if self.selection.runs
                else self.store.list()
            )
            for run in runs:
                try:
                    models.update((served.id, served) for served in self._run_models(run, refused))
                except GlmError as error:
                    refused[run.id] = str(error)
                except Exception as error:  # a run folder crafted to break reading it: the others are served
                    log.warning("reading run %s failed: %r", run.id, error)
                    refused[run.id] = f"its folder cannot be read ({type(error).__name__})"
        changed = list(models) != list(self._models)
        self._models, self._refused = models, refused
        if changed and self.on_change is not None:
            self.on_change(self.models())
        return self.models()

    def _run_models(self, run: Run, refused: dict[str, str]) -> list[ServedModel]:
        """`<run>` (its default checkpoint) and each whole `<run>/checkpoint-N`, the damaged ones put in `refused`
        with why; nothing of a run on another model, or before its first save."""
        if not _same_folder(run.config.model_path, self.base_dir):
            refused[run.id] = (
                f"run {run.id} was made on {run.config.model_path}, not on this server's base {self.base_dir}; "
                f"serve it with its own model (glmtui serve --run {run.id})"
            )
            return []
        if problem := refused_method(run):
            refused[run.id] = problem
            return []
        kind = KINDS[run.config.method]
        served = []
        for checkpoint in run.checkpoints():
            name = f"{run.id}/{checkpoint.path.name}"
            if problem := damage(checkpoint.path):
                refused[name] = problem
            else:
                served.append(ServedModel(name, checkpoint.path, run.id, _created(checkpoint.path), kind))
        try:
            default = run.default_checkpoint()
        except RunError as error:
            refused[run.id] = str(error)
            return served
        except Exception as error:  # its choice broken by a crafted file: its whole checkpoints are still served
            log.warning("choosing the checkpoint of run %s failed: %r", run.id, error)
            refused[run.id] = f"the checkpoint it stands for cannot be chosen ({type(error).__name__})"
            return served
        return [ServedModel(run.id, default.path, run.id, _created(default.path), kind), *served]

    def _checkpoint_named(self, name: str, run: Run | None) -> ServedModel:
        path = self.store.resolve_checkpoint(name, run)
        owner = path.parent.parent
        if path.parent.name != "checkpoints" or not (owner / "config.toml").is_file():
            return ServedModel(path.name, path, None, _created(path), _kind_of_checkpoint(path, None))
        names_a_run = not Path(name).expanduser().is_dir() and not (
            run is not None and (name.startswith("checkpoint-") or name.isdigit())
        )
        served_id = owner.name if names_a_run else f"{owner.name}/{path.name}"
        return ServedModel(served_id, path, owner.name, _created(path), _kind_of_checkpoint(path, Run(owner)))

    def find(self, model_id: str) -> ServedModel:
        """The model a request names; the run folders are read again for an id not known yet."""
        if model_id not in self._models:
            self.refresh()
        if model_id in self._models:
            return self._models[model_id]
        why = self._refused.get(model_id) or self._refused.get(model_id.split("/", 1)[0])
        if why is not None:
            raise UnknownModel(f"The model {model_id!r} cannot be served: {why}.")
        known = ", ".join(list(self._models)[:6])
        raise UnknownModel(
            f"The model {model_id!r} does not exist on this server; GET /v1/models lists them ({known})."
        )
