"""A run's settings: one typed ``RunConfig`` saved as config.toml, and the checks that run before anything starts.

config.toml holds everything needed to repeat a run, so a run folder can be re-run or compared years later. The
defaults are ChatGLM-6B's published P-tuning v2 recipe (ptuning/train.sh): 4-bit, prefix length 128, learning
rate 2e-2, batch 1 x accumulation 16, 3000 steps, a checkpoint every 1000; a new run starts from the defaults
for the machine it trains on (``defaults_for``): without a GPU, 16-bit and 200 steps. TOML has no null, so a
setting whose value is None (meaning "none" or "automatic") is left out of the file and read back as None.

``validate`` reports every problem of the values at once, one sentence each, so a user fixes the file in one go
instead of meeting the problems one launch at a time. What lies outside the config (the model folder, the data
files, the disk, the GPUs, installed packages) is checked by ``glmcore.preflight``; this module reads no file but
the config itself and probes no hardware.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import shlex
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from glmcore.errors import GlmError
from glmcore.text import control_character
from glmcore.workspace import atomic_write_text

METHODS = ("ptuning-v2", "lora", "full")
QUANTIZATION_BITS = (4, 8, 16)
DTYPES = ("float16", "bfloat16", "float32")
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial", "inverse_sqrt")
DEEPSPEED_PRESETS = {"zero2": 2, "zero3": 3}
DEEPSPEED_INSTALL_HINT = "pip install 'glmtui[deepspeed]'"
GENERATION_METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
"""The published metrics (glmcore.metrics.METRIC_NAMES), as ``best_metric`` may name them."""
BEST_METRICS = ("eval_loss", *GENERATION_METRICS)
REPORT_TO = ("tensorboard",)
SEED_MAX = 2**32 - 1
"""The largest seed the Trainer's generators take (numpy's limit); a larger one fails the run once it starts."""


CPU_RECIPE = {"gpus": [], "quantization_bit": 16, "max_steps": 200, "save_steps": 100, "logging_steps": 5}
"""What a new run starts from on a machine without a GPU: 16-bit (bitsandbytes' 4-bit dequantizes every weight at
each use, about 4x slower on a CPU) and a run short enough to finish there."""


class ConfigError(GlmError):
    """A config file or dict that cannot be read as a RunConfig."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: the setting it concerns and a sentence saying what to change."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(kw_only=True)
class RunConfig:
    """Everything needed to repeat a training run; defaults are the published P-tuning v2 recipe."""

    name: str
    model_path: Path
    family: str | None = None
    """The model's family (chatglm-6b, chatglm2-6b, chatglm3-6b or an alias) when its config.json cannot tell;
    None: found from config.json, or as chosen for the folder (`glmtui models --family`)."""
    train_file: Path
    method: str = "ptuning-v2"
    """"ptuning-v2" (a trained prefix), "lora" (PEFT on query_key_value) or "full" (every parameter)."""
    quantization_bit: int = 4
    """4 (NF4), 8 (LLM.int8) or 16 (no quantization) for the frozen base weights."""
    pre_seq_len: int = 128
    prefix_projection: bool = False
    lora_rank: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    learning_rate: float = 2e-2
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 16
    max_steps: int = 3000
    save_steps: int = 1000
    logging_steps: int = 10
    eval_steps: int = 0
    """0 means no evaluation during training."""
    save_total_limit: int | None = None
    """How many checkpoints to keep (oldest pruned); None keeps all."""
    max_source_length: int = 64
    max_target_length: int = 64
    validation_file: Path | None = None
    prompt_column: str = "content"
    response_column: str = "summary"
    history_column: str | None = None
    gpus: list[int] = field(default_factory=lambda: [0])
    """GPU indices as nvidia-smi numbers them; empty trains on the CPU. GPU 0 by default, as the published
    train.sh (CUDA_VISIBLE_DEVICES=0); a machine without it is told to set [] (glmcore.preflight)."""
    seed: int = 42
    gradient_checkpointing: bool | None = None
    """None lets glmtui decide (see glmcore.estimate.resolve_gradient_checkpointing)."""
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    deepspeed: str | None = None
    """None, "zero2", "zero3", or the path of a DeepSpeed JSON config."""
    dtype: str | None = None
    """Compute dtype of the unquantized parts: None picks bfloat16 where the GPU supports it, else float16."""
    stop_on_nan: bool = True
    """End the run as failed when the logged loss becomes NaN or infinite; false trains on."""
    eval_metric_rows: int = 0
    """With eval_steps: also generate for the first this many validation rows at each evaluation and score
    BLEU-4 and Rouge as `glmtui eval` does (0: the eval loss only)."""
    best_metric: str = "eval_loss"
    """What makes an evaluated checkpoint the run's best: eval_loss (lower is better) or, with
    eval_metric_rows, one of bleu-4, rouge-1, rouge-2, rouge-l (higher is better)."""
    metric_mode: str | None = None
    """How its evaluations score BLEU-4 and Rouge: "ptuning" (ChatGLM-6B's ptuning/main.py) or "finetune-demo"
    (ChatGLM3's and GLM-4's finetune_demo); None: the family's published way (glmcore.metrics)."""
    early_stopping_patience: int = 0
    """End the run after this many evaluations in a row that do not improve best_metric (0: never early)."""
    report_to: list[str] = field(default_factory=list)
    """Logging integrations of the Trainer: "tensorboard" writes event files under <run>/tensorboard/."""

    @property
    def effective_batch_size(self) -> int:
        """Examples per optimizer step over all GPUs."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * max(1, len(self.gpus))

    @property
    def sequence_length(self) -> int:
        """Tokens per example: every example is padded to source + target length."""
        return self.max_source_length + self.max_target_length

    @property
    def zero_stage(self) -> int:
        """DeepSpeed ZeRO stage (0 without DeepSpeed); a JSON config without a readable stage counts as 0."""
        if self.deepspeed is None:
            return 0
        if self.deepspeed in DEEPSPEED_PRESETS:
            return DEEPSPEED_PRESETS[self.deepspeed]
        try:
            stage = json.loads(Path(self.deepspeed).read_text(encoding="utf-8"))["zero_optimization"]["stage"]
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        return stage if isinstance(stage, int) else 0

    def to_dict(self) -> dict[str, object]:
        """Plain values in field order, paths as strings, None values left out (TOML has no null)."""
        data: dict[str, object] = {}
        for config_field in dataclasses.fields(self):
            value = getattr(self, config_field.name)
            if value is None:
                continue
            data[config_field.name] = str(value) if isinstance(value, Path) else value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object], *, base_dir: Path | None = None) -> RunConfig:
        """Build a config from plain values, checking names and types; relative paths are taken from ``base_dir``.

        Raises ConfigError naming every unknown setting and every value of the wrong type.
        """
        hints = typing.get_type_hints(cls)
        known = [config_field.name for config_field in dataclasses.fields(cls)]
        errors: list[str] = []
        unknown = [key for key in data if key not in hints]
        for key in unknown:
            if key == "four_bit":  # the inference commands' option, which training refuses
                errors.append(
                    "four_bit is not a training setting: training's 4-bit weights are always NF4 (int4 is for "
                    "chat, eval and serve, as --four-bit int4)"
                )
                continue
            close = difflib.get_close_matches(key, known, n=1)
            errors.append(f"unknown setting {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        values: dict[str, object] = {}
        for key, value in data.items():
            if key not in hints:
                continue
            try:
                values[key] = _coerce(value, hints[key], base_dir)
            except TypeError as error:
                errors.append(f"{key} {error}, got {value!r}")
        missing = [
            config_field.name
            for config_field in dataclasses.fields(cls)
            if config_field.default is dataclasses.MISSING
            and config_field.default_factory is dataclasses.MISSING
            and config_field.name not in data
        ]
        errors.extend(f"{key} is required" for key in missing)
        if errors:
            raise ConfigError("the run config has problems: " + "; ".join(errors) + ".")
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        """Read a config.toml; relative paths in it are relative to the file's folder."""
        return cls._from_file(path, _read_toml(path))

    @classmethod
    def load_over(cls, path: Path, defaults: MachineDefaults) -> tuple[RunConfig, list[str]]:
        """Read a config.toml as ``load`` does, the settings it leaves out taken from ``defaults`` (this
        machine's, not the GPU recipe's); also returns the names of those settings."""
        data = _read_toml(path)
        filled = [name for name in defaults.values if name not in data]
        return cls._from_file(path, {**defaults.values, **data}), filled

    @classmethod
    def _from_file(cls, path: Path, data: dict[str, object]) -> RunConfig:
        try:
            return cls.from_dict(data, base_dir=Path(path).absolute().parent)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    def save(self, path: Path) -> None:
        """Write config.toml atomically (a reader never sees half a file)."""
        atomic_write_text(path, tomli_w.dumps(self.to_dict()))

    def train_command(self, config_path: Path) -> str:
        """The shell command that starts this run again from its saved config."""
        return f"glmtui train {shlex.quote(str(config_path))}"


@dataclass(frozen=True)
class MachineDefaults:
    """The settings a new run starts from on a machine (over RunConfig's defaults), and the sentence why."""

    values: dict[str, object]
    reason: str
    machine: str
    """What decided them: "no NVIDIA GPU", "2 GPUs"."""


def defaults_for(gpu_count: int) -> MachineDefaults:
    """A new run's defaults on a machine with ``gpu_count`` NVIDIA GPUs: the published recipe on GPU 0, or on a
    machine without one, the CPU recipe (``CPU_RECIPE``)."""
    if gpu_count > 0:
        machine = f"{gpu_count} GPU{'s' if gpu_count > 1 else ''}"
        return MachineDefaults(
            {"gpus": [0]},
            f"Defaults for this machine ({machine}): the published 4-bit, 3,000-step recipe on GPU 0.",
            machine,
        )
    machine = "no NVIDIA GPU"
    return MachineDefaults(
        dict(CPU_RECIPE),
        f"Defaults for this machine ({machine}): 16-bit, as 4-bit is about 4× slower on a CPU, and 200 steps "
        "instead of the published 3,000.",
        machine,
    )


def cautions(config: RunConfig) -> list[Problem]:
    """Settings that will train but likely not as the user wants, one sentence each: said, never refused."""
    if config.quantization_bit == 4 and not config.gpus:
        return [
            Problem(
                "quantization_bit",
                "4-bit on the CPU trains about 4× slower than 16-bit; use quantization_bit = 16 unless the "
                "16-bit model does not fit in memory",
            )
        ]
    return []


def find_config_file(path: Path, workspace_root: Path) -> Path:
    """The config file ``path`` names: as given when it exists, else a relative path found in the workspace,
    where `glmtui demo` and the editor write ``configs/*.toml`` (so the README's ``configs/demo-ptuning.toml``
    works from any folder). ConfigError says where it looked."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    places = [workspace_root / path, workspace_root / "configs" / path]
    found = next((place for place in places if place.is_file()), None)
    if found is None:
        raise ConfigError(
            f"the config file {path} is neither in {Path.cwd()} nor in the workspace ({places[0]}); give its "
            f"path, or make one with `glmtui demo` or the app's editor (ctrl+s), which save into "
            f"{workspace_root / 'configs'}"
        )
    return found


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"the config file {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"cannot read the config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None


def _coerce(value: object, hint: object, base_dir: Path | None) -> object:
    """``value`` converted to the field type ``hint``, or TypeError saying what was expected."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], base_dir)
    if hint is Path:
        if not isinstance(value, str | Path):
            raise TypeError("must be a path (a string)")
        path = Path(value).expanduser()
        return path if path.is_absolute() or base_dir is None else base_dir / path
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError("must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("must be a whole number")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError("must be a string")
        return value
    if hint == list[str]:
        if not isinstance(value, list) or any(not isinstance(item, str) for item in value):
            raise TypeError("must be a list of strings")
        return list(value)
    if typing.get_origin(hint) is list:
        if not isinstance(value, list) or any(
            isinstance(item, bool) or not isinstance(item, int) for item in value
        ):
            raise TypeError("must be a list of whole numbers")
        return list(value)
    raise AssertionError(f"RunConfig field type {hint!r} has no conversion")


def validate(config: RunConfig) -> list[Problem]:
    """Every problem with the values of ``config``, one sentence each; empty when they make a run.

    ``glmcore.preflight.check`` adds what lies outside the config (files, disk, GPUs, packages).
    """
    problems = [
        Problem(number_field.name, f"must be a finite number, not {value}")
        for number_field in dataclasses.fields(config)
        if isinstance(value := getattr(config, number_field.name), float) and not math.isfinite(value)
    ]
    not_finite = {problem.field for problem in problems}

    def need(condition: bool, field_name: str, message: str) -> None:
        if not condition and field_name not in not_finite:
            problems.append(Problem(field_name, message))

    need(bool(config.name.strip()), "name", "give the run a name")
    control = control_character(config.name)
    need(
        control is None,
        "name",
        f"holds the control character {control}; use letters, digits, spaces and punctuation",
    )
    family_problem = _family_problem(config.family)
    need(family_problem is None, "family", family_problem or "")
    need(
        config.method in METHODS,
        "method",
        f"{config.method!r} is not a method glmtui knows; use one of {', '.join(METHODS)}",
    )
    need(
        config.quantization_bit in QUANTIZATION_BITS,
        "quantization_bit",
        f"{config.quantization_bit} is not supported; use 4, 8 or 16 (16 means no quantization)",
    )
    need(
        config.quantization_bit != 8 or bool(config.gpus),
        "quantization_bit",
        "8-bit (LLM.int8) needs a CUDA GPU and this run trains on the CPU (gpus = []); "
        "use quantization_bit = 4 or 16 on the CPU, or list a GPU in gpus",
    )
    need(
        config.method != "full" or config.quantization_bit == 16,
        "quantization_bit",
        "full fine-tuning updates every weight, so it needs quantization_bit = 16; "
        "use ptuning-v2 or lora to train on a 4- or 8-bit model",
    )
    for name in (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "max_steps",
        "save_steps",
        "logging_steps",
    ):
        need(getattr(config, name) >= 1, name, f"must be at least 1, not {getattr(config, name)}")
    need(config.eval_steps >= 0, "eval_steps", f"must be 0 (no evaluation) or more, not {config.eval_steps}")
    need(
        config.eval_steps == 0 or config.validation_file is not None,
        "validation_file",
        f"evaluation every {config.eval_steps} steps needs a validation_file; set one or set eval_steps = 0",
    )
    _evaluation_problems(config, need)
    need(
        config.save_total_limit is None or config.save_total_limit >= 1,
        "save_total_limit",
        f"must be at least 1 (or left out to keep every checkpoint), not {config.save_total_limit}",
    )
    for name in ("max_source_length", "max_target_length"):
        need(getattr(config, name) > 0, name, f"must be more than 0, not {getattr(config, name)}")
    if config.method == "ptuning-v2":
        need(
            config.pre_seq_len >= 1,
            "pre_seq_len",
            "P-tuning v2 needs a prefix of at least 1 token (128 is usual)",
        )
    if config.method == "lora":
        need(config.lora_rank >= 1, "lora_rank", f"must be at least 1, not {config.lora_rank}")
        need(config.lora_alpha > 0, "lora_alpha", f"must be more than 0, not {config.lora_alpha}")
        need(0 <= config.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), not {config.lora_dropout}")
    need(config.learning_rate > 0, "learning_rate", f"must be more than 0, not {config.learning_rate}")
    need(
        0 <= config.seed <= SEED_MAX,
        "seed",
        f"must be between 0 and {SEED_MAX} (2^32 - 1), not {config.seed}",
    )
    need(config.warmup_steps >= 0, "warmup_steps", f"must be 0 or more, not {config.warmup_steps}")
    need(config.weight_decay >= 0, "weight_decay", f"must be 0 or more, not {config.weight_decay}")
    need(
        config.lr_scheduler in LR_SCHEDULERS,
        "lr_scheduler",
        f"{config.lr_scheduler!r} is not supported; use one of {', '.join(LR_SCHEDULERS)}",
    )
    need(
        config.dtype is None or config.dtype in DTYPES,
        "dtype",
        f"{config.dtype!r} is not supported; use one of {', '.join(DTYPES)} or leave it out (automatic)",
    )
    need(
        all(gpu >= 0 for gpu in config.gpus) and len(set(config.gpus)) == len(config.gpus),
        "gpus",
        f"{config.gpus} must list distinct GPU numbers from 0 up, as nvidia-smi shows them",
    )
    need(bool(config.prompt_column), "prompt_column", "name the column holding the prompts")
    need(bool(config.response_column), "response_column", "name the column holding the responses")
    if config.deepspeed is not None:
        need(
            config.method == "full" or len(config.gpus) > 1,
            "deepspeed",
            "DeepSpeed pays off only for full fine-tuning or several GPUs; leave it out for this run",
        )
    return problems


def _family_problem(name: str | None) -> str | None:
    """Why `family = name` names no family glmtui knows, or None when it is left out or known."""
    from glmcore.models import family_named, family_names

    if name is None:
        return None
    try:
        family_named(name)
    except GlmError:
        return f"{name!r} is not a model family glmtui knows; use one of {family_names()}, or leave it out"
    return None


def _evaluation_problems(config: RunConfig, need: typing.Callable[[bool, str, str], None]) -> None:
    """The settings of evaluation during training: metrics on some rows, the best checkpoint, early stopping."""
    from glmcore.metrics import METRIC_MODES

    evaluating = config.eval_steps > 0
    need(
        config.metric_mode is None or config.metric_mode in METRIC_MODES,
        "metric_mode",
        f"{config.metric_mode!r} is not a way glmtui scores; use one of {', '.join(METRIC_MODES)}, or leave it "
        "out for the family's published way",
    )
    need(
        config.eval_metric_rows >= 0, "eval_metric_rows", f"must be 0 or more, not {config.eval_metric_rows}"
    )
    need(
        config.eval_metric_rows <= 0 or evaluating,
        "eval_metric_rows",
        "scoring rows during training needs an evaluation: set eval_steps (and a validation_file)",
    )
    need(
        config.best_metric in BEST_METRICS,
        "best_metric",
        f"{config.best_metric!r} is not a metric glmtui tracks; use one of {', '.join(BEST_METRICS)}",
    )
    need(
        config.best_metric not in GENERATION_METRICS or config.eval_metric_rows > 0,
        "best_metric",
        f"{config.best_metric} is scored only with eval_metric_rows; set it (e.g. 50) or use eval_loss",
    )
    need(
        config.early_stopping_patience >= 0,
        "early_stopping_patience",
        f"must be 0 (never stop early) or more, not {config.early_stopping_patience}",
    )
    if config.early_stopping_patience > 0:
        need(
            evaluating,
            "early_stopping_patience",
            "early stopping watches the evaluations: set eval_steps (and a validation_file)",
        )
        need(
            not evaluating or config.save_steps < 1 or config.eval_steps % config.save_steps == 0,
            "save_steps",
            f"early stopping keeps the best evaluated checkpoint, so every evaluation needs a checkpoint: make "
            f"eval_steps ({config.eval_steps}) a multiple of save_steps ({config.save_steps})",
        )
    unknown = [name for name in config.report_to if name not in REPORT_TO]
    need(
        not unknown,
        "report_to",
        f"{', '.join(map(repr, unknown))} cannot be reported to; use {', '.join(map(repr, REPORT_TO))} or []",
    )
