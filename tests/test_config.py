"""RunConfig: the published defaults, config.toml round trips, clear errors, and validation of every rule."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from glmcore import preflight
from glmcore.config import ConfigError, Problem, RunConfig, validate

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
"""The published checkpoints' config.json files, one folder per family."""


def make_config(tmp_path: Path, **changes: object) -> RunConfig:
    return RunConfig(
        name="adgen", model_path=tmp_path / "model", train_file=tmp_path / "train.json", **changes
    )


def fields_of(problems: list[Problem]) -> list[str]:
    return [problem.field for problem in problems]


@pytest.fixture
def ready(tmp_path: Path, tiny_model_dir: Path) -> RunConfig:
    """A config whose model folder and data file exist, so only what a test changes can be wrong."""
    train_file = tmp_path / "train.json"
    train_file.write_text('{"content": "a", "summary": "b"}\n')
    return RunConfig(name="adgen", model_path=tiny_model_dir, train_file=train_file, gpus=[])


def test_defaults_are_the_published_ptuning_recipe(tmp_path: Path) -> None:
    config = make_config(tmp_path, gpus=[0])
    assert (config.method, config.quantization_bit, config.pre_seq_len, config.learning_rate) == (
        "ptuning-v2",
        4,
        128,
        2e-2,
    )
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (1, 16)
    assert (config.max_steps, config.save_steps, config.logging_steps) == (3000, 1000, 10)
    assert (config.max_source_length, config.max_target_length) == (64, 64)
    assert (config.prompt_column, config.response_column, config.history_column) == (
        "content",
        "summary",
        None,
    )
    assert config.effective_batch_size == 16
    assert make_config(tmp_path, gpus=[0, 1], per_device_train_batch_size=2).effective_batch_size == 64


def test_save_and_load_round_trip_with_relative_paths_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "configs" / "run.toml"
    path.parent.mkdir()
    path.write_text(
        'name = "adgen"\nmodel_path = "../models/chatglm-6b"\ntrain_file = "data/train.json"\n'
        "gpus = [0, 1]\nlearning_rate = 1\nsave_total_limit = 2\n"
    )

    config = RunConfig.load(path)

    assert config.model_path == tmp_path / "configs" / ".." / "models" / "chatglm-6b"
    assert config.train_file == tmp_path / "configs" / "data" / "train.json"
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert (config.gpus, config.save_total_limit, config.validation_file) == ([0, 1], 2, None)

    copy = tmp_path / "copy.toml"
    config.save(copy)
    assert RunConfig.load(copy) == config
    text = copy.read_text()
    assert "validation_file" not in text and "deepspeed" not in text  # None is left out
    assert config.train_command(copy) == f"glmtui train {copy}"
    assert config.train_command(Path("my runs/a.toml")) == "glmtui train 'my runs/a.toml'"


def test_unknown_and_mistyped_settings_are_named(tmp_path: Path) -> None:
    data = {"name": "x", "model_path": "m", "train_file": "t", "learning_rat": 0.1, "colour": "red"}
    with pytest.raises(
        ConfigError, match="unknown setting 'learning_rat' \\(did you mean 'learning_rate'\\?\\)"
    ):
        RunConfig.from_dict(data)
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        RunConfig.from_dict(data)

    with pytest.raises(ConfigError) as raised:
        RunConfig.from_dict(
            {"name": "x", "model_path": "m", "max_steps": "lots", "gpus": [0, "1"], "prefix_projection": 1}
        )
    message = str(raised.value)
    assert "max_steps must be a whole number, got 'lots'" in message
    assert "gpus must be a list of whole numbers" in message
    assert "prefix_projection must be true or false" in message
    assert "train_file is required" in message


def test_load_reports_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.load(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        RunConfig.load(broken)


def test_a_complete_setup_has_no_problems(ready: RunConfig, tmp_path: Path) -> None:
    assert preflight.check(ready, runs_dir=tmp_path / "runs") == []


def test_value_rules_each_give_one_problem(tmp_path: Path) -> None:
    cases = {
        "quantization_bit": {"quantization_bit": 3},
        "per_device_train_batch_size": {"per_device_train_batch_size": 0},
        "gradient_accumulation_steps": {"gradient_accumulation_steps": 0},
        "max_steps": {"max_steps": 0},
        "save_steps": {"save_steps": 0},
        "logging_steps": {"logging_steps": -1},
        "max_target_length": {"max_target_length": 0},
        "pre_seq_len": {"pre_seq_len": 0},
        "learning_rate": {"learning_rate": 0.0},
        "method": {"method": "qlora"},
        "lr_scheduler": {"lr_scheduler": "cyclic"},
        "dtype": {"dtype": "fp8"},
        "gpus": {"gpus": [0, 0]},
        "save_total_limit": {"save_total_limit": 0},
        "validation_file": {"eval_steps": 100},
        "lora_rank": {"method": "lora", "lora_rank": 0},
    }
    for field_name, changes in cases.items():
        problems = validate(make_config(tmp_path, **changes))
        assert fields_of(problems) == [field_name], (changes, problems)
        assert problems[0].message


def test_full_fine_tuning_needs_16_bit(tmp_path: Path) -> None:
    (problem,) = validate(make_config(tmp_path, method="full", quantization_bit=4, gpus=[]))
    assert problem == Problem(
        "quantization_bit",
        "full fine-tuning updates every weight, so it needs quantization_bit = 16; "
        "use ptuning-v2 or lora to train on a 4- or 8-bit model",
    )
    assert validate(make_config(tmp_path, method="full", quantization_bit=16, gpus=[])) == []


@pytest.mark.parametrize(
    ("family", "title", "positions"),
    [
        ("chatglm-6b", "ChatGLM-6B", 2048),
        ("chatglm2-6b", "ChatGLM2-6B", 32768),
        ("chatglm3-6b", "ChatGLM3-6B", 8192),
    ],
)
def test_lengths_share_the_models_own_positions_with_the_prefix(
    tmp_path: Path, family: str, title: str, positions: int
) -> None:
    """The published config.json of each family gives its positions; a 128-token prefix takes its share."""
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(REFERENCE / family / "config.json", model / "config.json")
    room = positions - 128
    fits = make_config(tmp_path, max_source_length=room // 2, max_target_length=room - room // 2)
    assert preflight.length_problems(fits) == []
    (problem,) = preflight.length_problems(dataclasses.replace(fits, max_target_length=room - room // 2 + 1))
    assert problem == Problem(
        "max_source_length",
        f"max_source_length + max_target_length = {room + 1} exceeds the {room} tokens {title} has room for "
        "after a 128-token prefix; shorten them",
    )
    lora = dataclasses.replace(fits, method="lora", max_target_length=positions - room // 2)
    assert preflight.length_problems(lora) == []
    (problem,) = preflight.length_problems(dataclasses.replace(fits, pre_seq_len=positions))
    assert problem.field == "pre_seq_len" and f"{title}'s {positions} positions" in problem.message


def test_deepspeed_only_for_full_or_several_gpus(tmp_path: Path) -> None:
    (problem,) = validate(make_config(tmp_path, deepspeed="zero2", gpus=[0]))
    assert problem.field == "deepspeed" and "only for full fine-tuning or several GPUs" in problem.message
    full = make_config(tmp_path, method="full", quantization_bit=16, deepspeed="zero3", gpus=[0])
    assert validate(full) == []
    assert full.zero_stage == 3

    deepspeed_json = tmp_path / "ds.json"
    deepspeed_json.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert make_config(tmp_path, deepspeed=str(deepspeed_json)).zero_stage == 2
    assert make_config(tmp_path).zero_stage == 0


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="DeepSpeed is installed here")
def test_missing_deepspeed_says_how_to_install_it(ready: RunConfig, tmp_path: Path) -> None:
    ready.method, ready.quantization_bit, ready.deepspeed = "full", 16, "zero2"
    problems = preflight.check(ready, runs_dir=tmp_path / "runs")
    assert (
        Problem("deepspeed", "DeepSpeed is not installed; run `pip install 'glmtui[deepspeed]'`") in problems
    )


def test_an_incomplete_model_folder_and_missing_data_are_reported(
    ready: RunConfig, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    shard = sorted(model.glob("pytorch_model-*.bin"))[0]
    shard.unlink()
    ready.model_path = model
    ready.validation_file = tmp_path / "dev.json"

    problems = preflight.check(ready, runs_dir=tmp_path / "runs")

    assert fields_of(problems) == ["model_path", "validation_file"]
    assert shard.name in problems[0].message and "glmtui download" in problems[0].message
    assert problems[1].message == f"the data file {tmp_path / 'dev.json'} does not exist"


def test_gpus_that_are_not_here_are_reported(ready: RunConfig, tmp_path: Path) -> None:
    ready.gpus = [64]
    (problem,) = preflight.check(ready, runs_dir=tmp_path / "runs")
    assert problem.field == "gpus" and problem.message.startswith("GPU 64 is not here")


def test_not_enough_disk_for_the_checkpoints_it_keeps(ready: RunConfig, tmp_path: Path) -> None:
    ready.method, ready.quantization_bit = "full", 16
    ready.max_steps, ready.save_steps = 10**12, 1

    (problem,) = preflight.check(ready, runs_dir=tmp_path / "runs")

    assert problem.field == "save_total_limit"
    assert "free; free disk space, set a lower save_total_limit or save less often" in problem.message
    ready.save_total_limit = 2
    assert preflight.check(ready, runs_dir=tmp_path / "runs") == []
