"""The checks a run passes before its folder is created: the config's values, then everything outside it.

``check`` is what the CLI (`glmtui train`) and the app's config editor call; it returns every problem at once,
one sentence each (with file:line for a data file), so nothing is created for a run that could not start:
the model folder (complete, a family glmtui loads, detected as the loader detects it, and a tokenizer whose ids
the model's embedding holds), whether the prefix and the examples fit in that model's positions, every row of the
data files, installed packages, the GPUs present, and free disk for the checkpoints the run will keep.

Reading a 114k-row data file takes seconds, and the editor checks on every keystroke, so each file's verdict is
kept for as long as the file's size and modification time stay the same; concurrent checks of one file wait for
the first instead of reading it again. The model folder's tokenizer is read once per version of its files too
(`tokenizer_problem`).
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
from pathlib import Path

from glmcore.config import (
    DEEPSPEED_INSTALL_HINT,
    DEEPSPEED_PRESETS,
    MachineDefaults,
    Problem,
    RunConfig,
    defaults_for,
    validate,
)
from glmcore.data import Columns, DataError, load_examples
from glmcore.errors import GlmError
from glmcore.models.checkpoint import model_folder_problems
from glmcore.units import GIB
from glmcore.workspace import MODEL_CONFIG_NAME, Workspace

CHECKPOINT_SETTINGS = frozenset({"max_steps", "save_steps", "save_total_limit", "eval_steps"})
"""The settings the disk check counts checkpoints from: it waits until their values are valid (save_steps = 0
would divide by zero)."""
_data_verdicts: dict[str, tuple[tuple, str | None]] = {}
"""Per data file: the (size, mtime, columns) it was checked at, and its problem (None when it is fine)."""
_data_locks: dict[str, threading.Lock] = {}
_data_locks_guard = threading.Lock()


def check(config: RunConfig, *, runs_dir: Path | None = None) -> list[Problem]:
    """Every problem that would stop ``config`` from training, one sentence each; empty when it can start.

    ``runs_dir`` is where the run's checkpoints will go (by default the workspace's runs/), for the disk check.
    """
    problems = validate(config)
    problems += model_problems(config.model_path, config.family)
    problems += data_problems(config)
    problems += package_problems(config)
    problems += gpu_problems(config)
    if not any(problem.field == "model_path" for problem in problems):
        problems += length_problems(config)
        if not any(problem.field in CHECKPOINT_SETTINGS for problem in problems):
            problems += disk_problems(config, runs_dir or Workspace.from_env().runs_dir)
    return problems


def model_problems(model_path: Path, family: str | None = None) -> list[Problem]:
    """What is missing from the model folder, or why glmtui cannot load the model it holds (a family it does not
    know, a tokenizer that is not the model's: `glmcore.models.loading.tokenizer_problem`)."""
    advice = "download the model with `glmtui download` or point model_path at a complete folder"
    problems = [
        Problem("model_path", f"{problem}; {advice}") for problem in model_folder_problems(model_path)
    ]
    if (model_path / MODEL_CONFIG_NAME).is_file():
        from glmcore.models import family_for
        from glmcore.models.loading import tokenizer_problem

        try:
            family_for(model_path, family)
            if not problems and (problem := tokenizer_problem(model_path, family)):
                problems.append(Problem("model_path", problem))
        except GlmError as error:
            problems.append(Problem("model_path", str(error).rstrip(".")))
    return problems


def length_problems(config: RunConfig) -> list[Problem]:
    """Whether the prefix and the longest example fit in the positions of the model (its config.json's)."""
    from glmcore.models import family_for
    from glmcore.models.family import ModelShape

    try:
        family, _ = family_for(config.model_path, config.family)
        positions = ModelShape.from_model_dir(config.model_path, config.family).positions
    except GlmError:
        return []  # model_problems says why the folder cannot be read
    prefix = config.pre_seq_len if config.method == "ptuning-v2" else 0
    if prefix >= positions:
        return [
            Problem(
                "pre_seq_len",
                f"a {prefix}-token prefix leaves no room for the text in {family.title}'s {positions} positions; "
                "use a shorter prefix (128 is usual)",
            )
        ]
    if config.sequence_length <= positions - prefix:
        return []
    after_prefix = f" after a {prefix}-token prefix" if prefix else ""
    return [
        Problem(
            "max_source_length",
            f"max_source_length + max_target_length = {config.sequence_length} exceeds the "
            f"{positions - prefix} tokens {family.title} has room for{after_prefix}; shorten them",
        )
    ]


def _data_files(config: RunConfig) -> list[tuple[str, Path]]:
    return [(name, path) for name in ("train_file", "validation_file") if (path := getattr(config, name))]


def _columns(config: RunConfig) -> Columns:
    return Columns(config.prompt_column, config.response_column, config.history_column)


def _model_family(config: RunConfig):
    """The model folder's family, which decides what a conversation may hold; None while it cannot be told."""
    from glmcore.models import family_for

    try:
        return family_for(config.model_path, config.family)[0]
    except GlmError:
        return None


def _version(path: Path, columns: Columns, family=None) -> tuple:
    stat = path.stat()
    return (stat.st_size, stat.st_mtime_ns, columns, family)


def data_checked(config: RunConfig) -> bool:
    """Whether ``data_problems`` would answer at once (every data file missing or already read as it is now)."""
    columns, family = _columns(config), _model_family(config)
    for _, path in _data_files(config):
        checked = _data_verdicts.get(str(path.absolute()))
        if path.is_file() and (checked is None or checked[0] != _version(path, columns, family)):
            return False
    return True


def data_problems(config: RunConfig) -> list[Problem]:
    """The first thing wrong with each data file (file:line), as the training process would meet it with the
    model's family."""
    columns, family = _columns(config), _model_family(config)
    problems = []
    for name, path in _data_files(config):
        verdict = data_file_problem(path, columns, family)
        if verdict is not None:
            problems.append(Problem(name, verdict))
    return problems


def data_file_problem(path: Path, columns: Columns, family=None) -> str | None:
    """Why ``path`` cannot be trained on with ``columns`` (by a model of ``family``, a ModelFamily, when given),
    or None; remembered while the file is unchanged."""
    if not path.is_file():
        return f"the data file {path} does not exist"
    name = str(path.absolute())
    with _data_locks_guard:
        lock = _data_locks.setdefault(name, threading.Lock())
    with lock:
        version = _version(path, columns, family)
        checked = _data_verdicts.get(name)
        if checked is not None and checked[0] == version:
            return checked[1]
        try:
            load_examples(path, columns, family=family)
            verdict = None
        except DataError as error:
            verdict = str(error).rstrip(".")
        _data_verdicts[name] = (version, verdict)
        return verdict


def package_problems(config: RunConfig) -> list[Problem]:
    if config.deepspeed is None:
        return []
    problems = []
    if importlib.util.find_spec("deepspeed") is None:
        problems.append(Problem("deepspeed", f"DeepSpeed is not installed; run `{DEEPSPEED_INSTALL_HINT}`"))
    if config.deepspeed not in DEEPSPEED_PRESETS and not Path(config.deepspeed).is_file():
        problems.append(
            Problem(
                "deepspeed",
                f"{config.deepspeed!r} is neither zero2, zero3 nor an existing DeepSpeed JSON file",
            )
        )
    return problems


def visible_gpu_count() -> int:
    """How many GPUs the NVIDIA driver reports here; 0 without a driver (read through NVML, not torch, so
    that a config form does not wait for torch to import)."""
    from glmcore.gpu import read_gpus

    snapshot = read_gpus()
    return len(snapshot.gpus) if snapshot.available else 0


def machine_defaults() -> MachineDefaults:
    """What a new run starts from on this machine (the GPUs the driver reports), and why."""
    return defaults_for(visible_gpu_count())


def gpu_problems(config: RunConfig) -> list[Problem]:
    if not config.gpus:
        return []
    present = visible_gpu_count()
    absent = [gpu for gpu in config.gpus if gpu >= present]
    if not absent:
        return []
    have = f"GPUs 0-{present - 1}" if present else "no GPU"
    advice = "; list GPUs that are here, or set gpus = [] to train on the CPU"
    return [
        Problem("gpus", f"GPU {', '.join(map(str, absent))} is not here (this machine has {have}){advice}")
    ]


def disk_problems(config: RunConfig, runs_dir: Path) -> list[Problem]:
    """Whether the checkpoints the run keeps fit on the disk that will hold them."""
    from glmcore.estimate import ModelShape, estimate_checkpoint_bytes, kept_checkpoint_count

    try:
        shape = ModelShape.from_model_dir(config.model_path, config.family)
    except GlmError as error:
        return [Problem("model_path", str(error))]
    kept = kept_checkpoint_count(config)
    needed = kept * estimate_checkpoint_bytes(shape, config)
    existing = runs_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed <= free:
        return []
    return [
        Problem(
            "save_total_limit",
            f"the run will keep {kept} checkpoints of about {needed / kept / GIB:.1f} GiB "
            f"({needed / GIB:.1f} GiB) but {existing} has {free / GIB:.1f} GiB free; "
            "free disk space, set a lower save_total_limit or save less often",
        )
    ]
