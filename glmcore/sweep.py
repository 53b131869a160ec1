"""Sweeps: one run per combination of a few settings' values (a grid), all tagged with one sweep id.

The published P-tuning v2 recipe names PRE_SEQ_LEN and LR as the knobs to tune; a sweep turns
``--set pre_seq_len=64,128 --set learning_rate=1e-2,2e-2`` into four ordinary run folders whose names say their
values (a model folder by its name: ``--set model_path=A,B`` compares generations on one data set). Every
combination is checked with the same ``preflight.check`` as ``glmtui train`` before any folder is
created, so a sweep either starts whole or not at all. Each run folder holds ``sweep.json`` (the sweep id, the
run's place in it and its own values), which is how ``glmtui runs`` and the Runs screen group them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import secrets
import shutil
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from glmcore import preflight
from glmcore.config import ConfigError, Problem, RunConfig
from glmcore.errors import GlmError
from glmcore.runs import Run, RunStore, launch
from glmcore.slurm.script import SlurmOptions, write_options
from glmcore.workspace import atomic_write_text

SWEEP_FILE = "sweep.json"
UNSWEEPABLE = ("name",)
"""Settings a sweep may not vary: each run's name is made from its values."""
SHORT_NAMES = {
    "pre_seq_len": "psl",
    "learning_rate": "lr",
    "lora_rank": "rank",
    "lora_alpha": "alpha",
    "per_device_train_batch_size": "bs",
    "gradient_accumulation_steps": "accum",
    "quantization_bit": "bit",
    "max_steps": "steps",
    "max_source_length": "src",
    "max_target_length": "tgt",
    "weight_decay": "wd",
    "warmup_steps": "warmup",
    "model_path": "",
}
"""How a run name abbreviates the settings swept most, so its id (40 name characters) keeps every value; a model
folder goes by its name alone."""
PATH_SETTINGS = ("model_path", "train_file", "validation_file")
"""Settings whose values are paths: a run name keeps their last part."""
NAME_LENGTH = 40
"""Run ids keep this many characters of the name (glmcore.runs); the values must fit in them."""


class SweepError(GlmError):
    """A --set that cannot be read as a setting and a list of values."""


@dataclass(frozen=True)
class SweepPoint:
    """One combination of the grid: the values it sets and the whole config of its run."""

    values: dict[str, object]
    config: RunConfig

    @property
    def label(self) -> str:
        return " ".join(f"{key}={format_value(value)}" for key, value in self.values.items())

    @property
    def short_label(self) -> str:
        """The values as the run's name gives them: ``psl64 lr0.02``."""
        return short_label(self.values)


@dataclass(frozen=True)
class Sweep:
    id: str
    runs: list[Run]


def format_value(value: object) -> str:
    """A value as a user typed it: 0.02 rather than 0.020000000000000004, lists as [0, 1]."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def split_values(text: str) -> list[str]:
    """``V1,V2,…`` split at the commas outside brackets, so ``gpus=[0],[0,1]`` gives two lists."""
    values, depth, current = [], 0, ""
    for character in text:
        if character == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        depth += {"[": 1, "]": -1}.get(character, 0)
        current += character
    values.append(current.strip())
    return values


def parse_value(text: str) -> object:
    """A TOML value (``2e-2``, ``true``, ``[0, 1]``, ``"a b"``), or the text itself (a bare path or word)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(texts: list[str]) -> dict[str, list[object]]:
    """``["KEY=V1,V2", …]`` as ``{KEY: [V1, V2]}`` in the order given; SweepError names a bad one."""
    known = [config_field.name for config_field in dataclasses.fields(RunConfig)]
    axes: dict[str, list[object]] = {}
    for text in texts:
        key, equals, values = text.partition("=")
        key = key.strip()
        if not equals or not key or not values.strip():
            raise SweepError(f"--set {text!r} is not KEY=V1,V2,…; write it as --set learning_rate=1e-2,2e-2")
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SweepError(f"--set {key}: {key!r} is not a run setting{hint}")
        if key in UNSWEEPABLE:
            raise SweepError(
                f"--set {key}: a sweep names each run after its values; leave {key} to the config"
            )
        if key in axes:
            raise SweepError(f"--set {key} is given twice; list all its values in one --set {key}=V1,V2")
        parsed = [parse_value(value) for value in split_values(values)]
        if any(value == "" for value in parsed) or len(set(map(repr, parsed))) != len(parsed):
            raise SweepError(f"--set {text!r} has an empty or repeated value; list each value once")
        axes[key] = parsed
    return axes


def short_label(values: dict[str, object]) -> str:
    return " ".join(
        f"{SHORT_NAMES.get(key, key)}{Path(str(value)).name if key in PATH_SETTINGS else format_value(value)}"
        for key, value in values.items()
    )


def run_name(base: str, values: dict[str, object]) -> str:
    """The base name cut short where needed so that every value fits in the run id: ``adgen psl64 lr0.02``."""
    label = short_label(values)
    room = max(0, NAME_LENGTH - len(label) - 1)
    return f"{base[:room].strip()} {label}".strip()


def expand(base: RunConfig, axes: dict[str, list[object]]) -> list[SweepPoint]:
    """Every combination of ``axes`` over ``base``, first axis slowest; ConfigError names a value of the wrong type."""
    data = base.to_dict()
    points = []
    for combination in itertools.product(*axes.values()):
        values = dict(zip(axes, combination, strict=True))
        try:
            config = RunConfig.from_dict({**data, **values, "name": run_name(base.name, values)})
        except ConfigError as error:
            shown = ", ".join(f"{key}={format_value(value)}" for key, value in values.items())
            raise ConfigError(f"--set {shown}: {error}") from None
        points.append(SweepPoint(values, config))
    return points


def problems(points: list[SweepPoint], *, runs_dir: Path) -> list[tuple[SweepPoint, Problem]]:
    """Every problem of every combination (the checks of ``glmtui train``); empty when all can start."""
    return [
        (point, problem) for point in points for problem in preflight.check(point.config, runs_dir=runs_dir)
    ]


def new_sweep_id(base: RunConfig) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", base.name.lower()).strip("-")[:24].strip("-") or "sweep"
    return f"{datetime.now():%Y%m%d-%H%M%S}-{slug}-{secrets.token_hex(2)}"


def create(store: RunStore, base: RunConfig, points: list[SweepPoint]) -> Sweep:
    """A run folder per point, each with sweep.json; the caller has checked ``problems`` first.

    All or none: if one folder cannot be written (a full disk), the ones already made are removed.
    """
    sweep_id = new_sweep_id(base)
    runs: list[Run] = []
    try:
        for index, point in enumerate(points, start=1):
            run = store.create(point.config)
            runs.append(run)
            record = {"sweep": sweep_id, "index": index, "size": len(points), "values": point.values}
            atomic_write_text(run.path / SWEEP_FILE, json.dumps(record, indent=2) + "\n")
    except BaseException:
        for run in runs:
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    return Sweep(sweep_id, runs)


def submit_to_slurm(sweep: Sweep, options: SlurmOptions) -> list[int]:
    """Each run of the sweep as its own Slurm job (Slurm is then the queue; glmtui's is not used); the job ids.

    Submitted in sweep order; if one submission fails, the runs not yet submitted stay ``created`` with the
    reason, to be started with ``glmtui resume``.
    """
    jobs = []
    for run in sweep.runs:
        write_options(run.path, options)
        job = launch(run, detach=True)
        assert isinstance(job, int)
        jobs.append(job)
    return jobs


def sweep_of(run: Run) -> dict | None:
    """The run's sweep.json (``sweep`` id, ``index``, ``size``, ``values``), or None outside a sweep."""
    try:
        record = json.loads((run.path / SWEEP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("sweep"), str) else None


def group_runs(runs: list[Run]) -> list[tuple[Run, str | None]]:
    """The runs newest first, those of one sweep together (in sweep order) where its newest run stands; each
    sweep's first run comes with the sweep id, for a heading."""
    records = {run: sweep_of(run) for run in runs}
    members: dict[str, list[Run]] = {}
    for run, record in records.items():
        if record is not None:
            members.setdefault(record["sweep"], []).append(run)
    ordered: list[tuple[Run, str | None]] = []
    for run, record in records.items():
        if record is None:
            ordered.append((run, None))
        elif record["sweep"] in members:
            group = sorted(members.pop(record["sweep"]), key=lambda member: records[member].get("index", 0))
            ordered += [
                (member, record["sweep"] if number == 0 else None) for number, member in enumerate(group)
            ]
    return ordered
