"""Training through the Trainer on the tiny model: each method learns, accumulation is exact, and runs outlive
their launcher, stop with a loadable checkpoint, resume without gaps and are recognised as crashed when killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.profiling import READS_BACK
from support.waiting import wait_until

import glmcore
from glmcore.config import RunConfig
from glmcore.data import Example, TrainingCollator, training_dataset
from glmcore.runs import Run, RunStore, launch, resume, stop
from glmcore.train import prepare_model, trainer_class, training_arguments

# Few distinct rows, seen many times: every method can fit them quickly.
ROWS = [
    {"content": "类型#上衣*颜色#白色", "summary": "白色上衣简约百搭"},
    {"content": "类型#裙*材质#牛仔布", "summary": "牛仔裙时尚个性"},
    {"content": "类型#裤*风格#休闲", "summary": "休闲裤舒适"},
    {"content": "Hello", "summary": "world, this is a test"},
]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(
        "\n".join(json.dumps(row, ensure_ascii=False) for row in ROWS * 4) + "\n", encoding="utf-8"
    )
    return path


def make_config(model_dir: Path, train_file: Path, **overrides) -> RunConfig:
    settings = dict(
        name="test",
        model_path=model_dir,
        train_file=train_file,
        quantization_bit=16,
        pre_seq_len=4,
        learning_rate=2e-2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=12,
        save_steps=6,
        logging_steps=1,
        max_source_length=16,
        max_target_length=16,
        gpus=[],
        dtype="float32",
    )
    return RunConfig(**{**settings, **overrides})


def logged_losses(run: Run) -> list[float]:
    return [event["loss"] for event in run.events() if event["kind"] == "log"]


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        # A random model gives a prefix little to steer: a large rate shows the descent within 20 steps.
        ("ptuning-v2", {"learning_rate": 0.3, "max_steps": 20, "save_steps": 10}),
        ("lora", {"learning_rate": 2e-2, "lora_rank": 4}),
        ("full", {"learning_rate": 2e-3}),
    ],
)
def test_each_method_lowers_the_training_loss(tiny_model_dir, train_file, tmp_path, method, overrides):
    from glmcore.train import train

    store = RunStore(tmp_path / "runs")
    config = make_config(tiny_model_dir, train_file, method=method, **overrides)
    run = store.create(config)
    run.mark_running(os.getpid())
    assert train(run, resume=False) == "finished"
    losses = logged_losses(run)
    assert len(losses) == config.max_steps
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses
    assert run.latest_checkpoint().step == config.max_steps


def _one_step_prefix_gradient(model_dir: Path, train_file: Path, output: Path, batch: int, accumulation: int):
    """Loss and prefix gradient of one optimizer step through the real Trainer, dropout off."""
    from transformers import TrainerCallback

    config = make_config(
        model_dir,
        train_file,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
    )
    tokenizer = glmcore.load_tokenizer(model_dir)
    torch.manual_seed(0)  # the same initial prefix for both splits
    model = prepare_model(config)
    model.transformer.prefix_dropout.p = 0.0
    captured = {}

    class CaptureGradient(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            captured["gradient"] = model.transformer.prefix_encoder.embedding.weight.grad.clone()

    # Two rows of different lengths, so averaging per micro-batch and per token would differ.
    examples = [
        Example("类型#上衣*颜色#白色*风格#简约", "白色上衣简约百搭，很好看"),
        Example("Hello", "world"),
    ]
    args = training_arguments(config, output, gradient_checkpointing=False)
    args.max_grad_norm = 0.0
    trainer = trainer_class(config.method)(
        model=model,
        args=args,
        train_dataset=training_dataset(tokenizer, examples, 16, 16),
        data_collator=TrainingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[CaptureGradient()],
    )
    trainer.train()
    loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    return loss, captured["gradient"]


def test_batch_two_equals_batch_one_with_accumulation_two(tiny_model_dir, train_file, tmp_path):
    loss_2x1, gradient_2x1 = _one_step_prefix_gradient(tiny_model_dir, train_file, tmp_path / "a", 2, 1)
    loss_1x2, gradient_1x2 = _one_step_prefix_gradient(tiny_model_dir, train_file, tmp_path / "b", 1, 2)
    assert loss_1x2 == pytest.approx(loss_2x1, rel=1e-4)
    assert gradient_2x1.abs().sum() > 0
    torch.testing.assert_close(gradient_1x2, gradient_2x1, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["ptuning-v2", "lora", "full"])
def test_a_trainer_step_reads_nothing_back_and_the_token_count_is_the_trainers(
    tiny_model_dir, train_file, tmp_path, method
):
    """The real Trainer setup of a run of each method: a step's forward and backward passes (two micro-batches)
    read nothing back from the device (issue 36: each read is a wait for the GPU), and the input-token count the
    Trainer kept per micro-batch, now read only when logged or saved, is the same number in the log and in
    every checkpoint's trainer_state.json."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    config = make_config(
        tiny_model_dir,
        train_file,
        method=method,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=3,
        save_steps=1,
        logging_steps=2,
    )
    run = RunStore(tmp_path / "runs").create(config)
    tokenizer = glmcore.load_tokenizer(tiny_model_dir)
    examples = [Example(row["content"], row["summary"]) for row in ROWS] * 2  # one optimizer step per epoch
    dataset = training_dataset(tokenizer, examples, 16, 16)
    epoch_tokens = sum(token != tokenizer.pad_token_id for row in dataset for token in row["input_ids"])
    names: set[str] = set()

    class ProfileSecondStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.profiled = profile(activities=[ProfilerActivity.CPU])
                self.profiled.__enter__()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.profiled.__exit__(None, None, None)
                names.update(event.name for event in self.profiled.events())

    trainer = trainer_class(config.method)(
        model=prepare_model(config),
        args=training_arguments(config, run.checkpoints_dir, gradient_checkpointing=False),
        train_dataset=dataset,
        data_collator=TrainingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[ProfileSecondStep()],
    )
    trainer.train()

    assert "aten::nonzero_static" in names  # the loss's selection ran inside the window
    assert not READS_BACK & names
    logged = [entry for entry in trainer.state.log_history if "num_input_tokens_seen" in entry]
    assert [(entry["step"], entry["num_input_tokens_seen"]) for entry in logged] == [
        (2, 2 * epoch_tokens),
        (3, 3 * epoch_tokens),
    ]
    for step in (1, 2, 3):
        state = json.loads((run.checkpoints_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert state["num_input_tokens_seen"] == step * epoch_tokens


# --- the run lifecycle with real processes ----------------------------------------------------------


def long_run(store: RunStore, model_dir: Path, train_file: Path) -> Run:
    """A run long enough to be interrupted: thousands of tiny steps, a checkpoint every 20."""
    return store.create(make_config(model_dir, train_file, max_steps=3000, save_steps=20, logging_steps=5))


def assert_history_is_whole(run: Run) -> None:
    steps = [event["step"] for event in run.events() if event["kind"] == "log"]
    assert steps == sorted(set(steps)), "a step was logged twice"
    assert steps == list(range(steps[0], steps[-1] + 1, 5)), "a step is missing"


@pytest.mark.slow
def test_detached_run_outlives_its_launcher_stops_with_a_checkpoint_and_resumes(
    tiny_model_dir, train_file, tmp_path
):
    store = RunStore(tmp_path / "runs")
    run = long_run(store, tiny_model_dir, train_file)
    launcher = f"from glmcore.runs import Run, launch; print(launch(Run({str(run.path)!r}), detach=True))"
    pid = int(
        subprocess.run([sys.executable, "-c", launcher], check=True, capture_output=True, text=True).stdout
    )
    assert os.getsid(pid) != os.getsid(os.getpid()), "a detached run gets its own session"
    wait_until(lambda: run.status().step >= 25, "25 steps")  # the launcher has exited long since
    status = stop(run, timeout=120)
    assert status.state == "stopped"
    checkpoint = run.latest_checkpoint()
    assert checkpoint.step == status.step
    tuned = glmcore.load_model(tiny_model_dir, prefix_checkpoint=checkpoint.path)
    assert tuned.config.pre_seq_len == 4

    process = resume(run, detach=False)
    wait_until(lambda: run.status().step >= checkpoint.step + 10, "10 steps after the checkpoint")
    stop(run, timeout=120)
    process.wait(timeout=60)
    events = run.events()
    resumed = [event for event in events if event["kind"] == "resumed"]
    assert resumed[-1]["step"] == checkpoint.step
    assert_history_is_whole(run)
    assert run.status().step > checkpoint.step


@pytest.mark.slow
def test_a_killed_run_is_reported_crashed_and_resumes_from_its_last_checkpoint(
    tiny_model_dir, train_file, tmp_path
):
    store = RunStore(tmp_path / "runs")
    run = long_run(store, tiny_model_dir, train_file)
    pid = launch(run, detach=True)
    wait_until(lambda: run.latest_checkpoint() and run.latest_checkpoint().step >= 20, "checkpoint 20")
    os.kill(pid, signal.SIGKILL)
    status = wait_until(lambda: run.status() if run.status().state == "crashed" else None, "the crash")
    assert "gone" in status.reason
    checkpoint = run.latest_checkpoint()

    resume(run, detach=True)
    wait_until(lambda: run.status().step >= checkpoint.step + 10, "10 steps after the checkpoint")
    assert stop(run, timeout=120).state == "stopped"
    assert_history_is_whole(run)
