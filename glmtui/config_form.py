"""The config editor's mapping between a `RunConfig` and the values of its form, without any widget.

`form_values` is what each field shows for a config; `read_form` turns what the fields hold back into a config's
settings over the one the form started from, with a sentence for each field that cannot be read and the sweep's
axes (the fields given several values). The screen (glmtui/screens/config.py) only moves these values in and out
of its widgets, so the mapping is tested without an app.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from glmcore.config import ConfigError, Problem, RunConfig
from glmcore.models import family_named

PATH_FIELDS = ("name", "model_path", "train_file", "validation_file")
METHOD_FIELDS = {
    "ptuning-v2": ("pre_seq_len", "prefix_projection"),
    "lora": ("lora_rank", "lora_alpha", "lora_dropout"),
    "full": (),
}
"""The fields each method uses; the form shows only the chosen method's."""
INTEGER_FIELDS = (
    "pre_seq_len",
    "lora_rank",
    "lora_alpha",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "save_steps",
    "logging_steps",
    "max_source_length",
    "max_target_length",
    "eval_steps",
    "eval_metric_rows",
    "early_stopping_patience",
)
TEXT_FIELDS = PATH_FIELDS
NUMBER_FIELDS = ("learning_rate", "lora_dropout")
NUMBER_EXAMPLES = {"learning_rate": "2e-2", "lora_dropout": "0.1"}
SWEEP_FIELDS = {"pre_seq_len": int, "learning_rate": float}
"""Fields that take a list of values (the published recipe's two knobs): several values make a sweep."""
CHOICE_FIELDS = ("method", "quantization_bit", "best_metric", "family")
"""Fields picked from a list; `family` holds None when left to detection."""
TICK_FIELDS = ("prefix_projection", "report_to")
"""Fields ticked or not; `report_to` is whether TensorBoard is among the run's report targets."""


def parse_gpus(text: str) -> list[int]:
    """ "0,1" or "0 1" -> [0, 1]; empty means the CPU."""
    return [int(part) for part in re.split(r"[,\s]+", text.strip()) if part]


def form_values(config: RunConfig) -> dict[str, object]:
    """What each field of the form shows for `config`, by field id."""
    values: dict[str, object] = {}
    for name in TEXT_FIELDS + INTEGER_FIELDS + NUMBER_FIELDS:
        value = getattr(config, name)
        values[name] = "" if value in (None, Path("")) else str(value)
    values["gpus"] = ",".join(map(str, config.gpus))
    values["method"] = config.method
    values["quantization_bit"] = config.quantization_bit
    values["best_metric"] = config.best_metric
    values["family"] = family_named(config.family).name if config.family else None
    values["prefix_projection"] = config.prefix_projection
    values["report_to"] = "tensorboard" in config.report_to
    return values


@dataclass
class FormReading:
    """What the form's fields say: the config's settings, the problems that stop them from being a config, and
    the sweep's axes."""

    data: dict[str, object]
    problems: list[Problem] = field(default_factory=list)
    axes: dict[str, list[object]] = field(default_factory=dict)

    def config(self) -> tuple[RunConfig | None, list[Problem]]:
        """The config the form describes, or the problems that stop it from being one."""
        if self.problems:
            return None, self.problems
        try:
            return RunConfig.from_dict(self.data), []
        except ConfigError as error:
            return None, [Problem("config", str(error))]

    def sketch(self) -> RunConfig | None:
        """The config with empty paths left empty: enough to estimate memory while only paths are missing (None
        while a number is wrong)."""
        if any(problem.field not in PATH_FIELDS for problem in self.problems):
            return None
        try:
            return RunConfig.from_dict(
                {**self.data, **{name: self.data.get(name, "") for name in PATH_FIELDS[:3]}}
            )
        except ConfigError:
            return None


def sweep_field_values(name: str, text: str, kind: type) -> tuple[list[object], Problem | None]:
    """The value or values (comma-separated) of a sweep field, or the problem with them."""
    texts = [part.strip() for part in text.split(",")]
    example = "a whole number" if kind is int else "a number (e.g. 2e-2)"
    try:
        values = [kind(text) for text in texts]
    except ValueError:
        shown = ", ".join(repr(text) for text in texts)
        return [], Problem(name, f"{shown}: give {example}, or several separated by commas for a sweep")
    if len(set(values)) != len(values):
        return [], Problem(name, "a value is listed twice; list each value once")
    return values, None


def read_form(base: RunConfig, values: Mapping[str, object], *, on_slurm: bool = False) -> FormReading:
    """The form's `values` (by field id, as `form_values` gives them) over the config it started from. The
    fields of the methods not chosen keep `base`'s values; on Slurm the GPUs are the job's, so the GPUs field
    (this machine's) is not read."""
    data = base.to_dict()
    reading = FormReading(data)
    method = values["method"]
    unused = {name for fields in METHOD_FIELDS.values() for name in fields} - set(
        METHOD_FIELDS.get(str(method), ())
    )
    for name in TEXT_FIELDS:
        value = str(values[name]).strip()
        if value:
            data[name] = value
        else:
            data.pop(name, None)
            if name != "validation_file":
                reading.problems.append(Problem(name, "fill this in"))
    for name in INTEGER_FIELDS + NUMBER_FIELDS:
        if name in unused:
            continue
        text = str(values[name]).strip()
        if name in SWEEP_FIELDS:
            several, problem = sweep_field_values(name, text, SWEEP_FIELDS[name])
            if problem:
                reading.problems.append(problem)
            elif several:
                data[name] = several[0]
                if len(several) > 1:
                    reading.axes[name] = several
            continue
        whole = name in INTEGER_FIELDS
        try:
            data[name] = int(text) if whole else float(text)
        except ValueError:
            kind = "a whole number" if whole else f"a number (e.g. {NUMBER_EXAMPLES[name]})"
            reading.problems.append(Problem(name, f"{text!r} is not {kind}" if text else "fill this in"))
    try:
        data["gpus"] = [] if on_slurm else parse_gpus(str(values["gpus"]))
    except ValueError:
        reading.problems.append(
            Problem("gpus", "list GPU numbers separated by commas, e.g. 0,1; empty trains on the CPU")
        )
    data["method"] = method
    data["quantization_bit"] = values["quantization_bit"]
    if "prefix_projection" not in unused:
        data["prefix_projection"] = values["prefix_projection"]
    data["best_metric"] = values["best_metric"]
    if values["family"] is not None:
        data["family"] = values["family"]
    else:
        data.pop("family", None)
    others = [target for target in data.get("report_to", []) if target != "tensorboard"]
    data["report_to"] = others + (["tensorboard"] if values["report_to"] else [])
    return reading
