"""The config editor's mapping between a config and its form's values (glmtui.config_form), without an app."""

from __future__ import annotations

from pathlib import Path

from glmcore.config import Problem, RunConfig
from glmtui.config_form import form_values, read_form

BASE = RunConfig(
    name="adgen",
    model_path=Path("/models/chatglm-6b"),
    train_file=Path("/data/train.json"),
    validation_file=Path("/data/dev.json"),
    gpus=[0, 1],
    report_to=["wandb", "tensorboard"],
)


def test_a_config_read_back_from_the_values_it_shows_is_the_same_config() -> None:
    for config in (BASE, RunConfig(**{**BASE.__dict__, "method": "lora", "family": "chatglm2-6b", "gpus": []})):
        assert read_form(config, form_values(config)).config() == (config, [])


def test_several_values_make_a_sweep_and_the_other_methods_fields_keep_the_config_s() -> None:
    values = {**form_values(BASE), "pre_seq_len": "64, 128", "learning_rate": "2e-2"}
    reading = read_form(BASE, values)
    assert reading.axes == {"pre_seq_len": [64, 128]}
    config, problems = reading.config()
    assert problems == [] and config.pre_seq_len == 64

    lora = read_form(BASE, {**form_values(BASE), "method": "lora", "pre_seq_len": "oops"}).config()[0]
    assert lora.method == "lora" and lora.pre_seq_len == BASE.pre_seq_len


def test_each_field_that_cannot_be_read_gets_one_sentence_and_slurm_ignores_this_machine_s_gpus() -> None:
    values = {
        **form_values(BASE),
        "name": " ",
        "max_steps": "many",
        "learning_rate": "2e-2,2e-2",
        "gpus": "0;1",
    }
    reading = read_form(BASE, values)
    assert reading.problems == [
        Problem("name", "fill this in"),
        Problem("max_steps", "'many' is not a whole number"),
        Problem("learning_rate", "a value is listed twice; list each value once"),
        Problem("gpus", "list GPU numbers separated by commas, e.g. 0,1; empty trains on the CPU"),
    ]
    assert reading.config() == (None, reading.problems)
    assert reading.sketch() is None  # a number is wrong: nothing to estimate

    only_paths = read_form(BASE, {**form_values(BASE), "model_path": ""})
    assert only_paths.sketch() is not None
    assert read_form(BASE, {**form_values(BASE), "gpus": "0;1"}, on_slurm=True).config()[0].gpus == []
