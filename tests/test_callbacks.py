"""RunEventsCallback inside a real transformers.Trainer training a tiny model on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from glmcore.callbacks import RunEventsCallback, TrainingDiverged
from glmcore.config import RunConfig
from glmcore.runs import Run, RunStore

SEQUENCE = 6
REAL_TOKENS = 3
PAD = 0


class TinyRegressor(nn.Module):
    """A 2-layer MLP over mean token embeddings; forward(labels=...) returns the loss the Trainer needs."""

    main_input_name = "input_ids"

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(16, 8)
        self.layers = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> dict:
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1)
        prediction = self.layers(pooled).squeeze(-1)
        return {"loss": nn.functional.mse_loss(prediction, labels), "logits": prediction}


def examples(count: int) -> list[dict]:
    """Rows of REAL_TOKENS tokens padded to SEQUENCE, so counting only real tokens is visible."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(count):
        length = REAL_TOKENS
        ids = torch.randint(1, 16, (length,), generator=generator).tolist()
        rows.append(
            {
                "input_ids": ids + [PAD] * (SEQUENCE - length),
                "attention_mask": [1] * length + [0] * (SEQUENCE - length),
                "labels": float(sum(ids) % 5),
            }
        )
    return rows


class StopAtStep(TrainerCallback):
    """Stands in for a user running `glmtui stop` while training reaches ``step``."""

    def __init__(self, run: Run, step: int) -> None:
        self.run, self.step = run, step

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.global_step == self.step:
            self.run.request_stop()


@pytest.fixture
def run(tmp_path: Path) -> Run:
    config = RunConfig(
        name="tiny", model_path=tmp_path / "model", train_file=tmp_path / "train.json", gpus=[]
    )
    return RunStore(tmp_path / "runs").create(config)


def train(
    run: Run, *, max_steps: int, extra: list[TrainerCallback], resume: Path | None = None, **settings: object
):
    """Train the regressor with the callback; ``settings`` override the TrainingArguments below."""
    defaults: dict[str, object] = dict(
        output_dir=str(run.checkpoints_dir),
        max_steps=max_steps,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        logging_steps=2,
        save_steps=4,
        eval_strategy="steps",
        eval_steps=4,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        seed=0,
    )
    arguments = TrainingArguments(**{**defaults, **settings})
    callback = RunEventsCallback(run)
    trainer = Trainer(
        model=TinyRegressor(),
        args=arguments,
        train_dataset=examples(64),
        eval_dataset=examples(8),
        callbacks=[*extra, callback],
    )
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return callback


def test_events_record_every_logging_step_evaluation_and_checkpoint(run: Run) -> None:
    callback = train(run, max_steps=8, extra=[])

    events = run.events()
    kinds = [event["kind"] for event in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    logs = [event for event in events if event["kind"] == "log"]
    assert [event["step"] for event in logs] == [2, 4, 6, 8]
    for event in logs:
        assert event["loss"] > 0 and event["learning_rate"] > 0 and event["grad_norm"] is not None
        assert event["tokens_per_s"] > 0 and event["samples_per_s"] > 0
        assert event["gpu_memory_gib"] is None  # no CUDA here
        assert event["eta_s"] >= 0 and event["elapsed_s"] > 0 and event["time"]
    assert logs[-1]["eta_s"] == 0
    assert [event["step"] for event in events if event["kind"] == "eval"] == [4, 8]
    assert all("eval_loss" in event for event in events if event["kind"] == "eval")
    saved = [event for event in events if event["kind"] == "checkpoint"]
    assert [event["step"] for event in saved] == [4, 8]
    assert Path(saved[0]["path"]) == run.checkpoints_dir / "checkpoint-4"
    assert events[-1]["stopped"] is False and "train_loss" in events[-1]
    assert not callback.stopped_by_request
    assert [checkpoint.step for checkpoint in run.checkpoints()] == [4, 8]
    status = run.stored_status()
    assert (status.step, status.total) == (8, 8)


def test_tokens_per_second_counts_only_real_tokens(run: Run) -> None:
    train(run, max_steps=2, extra=[])

    log = next(event for event in run.events() if event["kind"] == "log")
    # The first logging interval is the whole session: 2 steps x accumulation 2 x batch 2 rows.
    assert log["tokens_per_s"] * log["elapsed_s"] == pytest.approx(8 * REAL_TOKENS)


def test_stop_request_ends_training_with_a_checkpoint_at_that_step(run: Run) -> None:
    callback = train(run, max_steps=20, extra=[StopAtStep(run, 3)])

    assert callback.stopped_by_request
    assert [checkpoint.step for checkpoint in run.checkpoints()] == [3]
    events = run.events()
    assert events[-1]["kind"] == "end" and events[-1]["step"] == 3 and events[-1]["stopped"] is True
    assert run.stored_status().step == 3


def test_resumed_training_continues_the_events_without_duplicates(run: Run) -> None:
    train(run, max_steps=20, extra=[StopAtStep(run, 5)])
    run.stop_request_path.unlink()
    run.append_event("resumed", step=5)

    train(run, max_steps=8, extra=[], resume=run.checkpoints_dir / "checkpoint-5")

    events = run.events()
    starts = [event["step"] for event in events if event["kind"] == "start"]
    assert starts == [0, 5]
    log_steps = [event["step"] for event in events if event["kind"] == "log"]
    assert log_steps == sorted(set(log_steps)) and log_steps[-1] == 8
    assert run.latest_checkpoint().step == 8


def strict_events(run: Run) -> list[dict]:
    """events.jsonl read as strict JSON: NaN or Infinity in it fails the test."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"events.jsonl holds {constant}, which is not JSON")

    lines = run.events_path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line, parse_constant=refuse) for line in lines]


DIVERGING = {
    "learning_rate": 1e30,
    "logging_steps": 1,
    "eval_strategy": "no",
    "logging_nan_inf_filter": False,
}


def test_a_diverged_loss_ends_the_run_with_its_step_and_null_in_the_events(run: Run) -> None:
    with pytest.raises(
        TrainingDiverged, match=r"^loss became NaN at step (\d+); lower the learning_rate"
    ) as raised:
        train(run, max_steps=20, extra=[], **DIVERGING)

    logs = [event for event in strict_events(run) if event["kind"] == "log"]
    step = int(raised.value.args[0].split("step ")[1].split(";")[0])
    assert logs[-1]["step"] == step < 20 and logs[-1]["loss"] is None and logs[-1]["grad_norm"] is None
    assert all(event["loss"] is not None for event in logs[:-1])


def test_with_stop_on_nan_off_training_goes_on_and_writes_null(tmp_path: Path) -> None:
    config = RunConfig(
        name="on",
        model_path=tmp_path / "model",
        train_file=tmp_path / "train.json",
        gpus=[],
        stop_on_nan=False,
    )
    run = RunStore(tmp_path / "runs").create(config)

    train(run, max_steps=6, extra=[], **DIVERGING)

    logs = [event for event in strict_events(run) if event["kind"] == "log"]
    assert [event["step"] for event in logs] == [1, 2, 3, 4, 5, 6]
    assert logs[-1]["loss"] is None and logs[-1]["learning_rate"] is not None


def test_glmtui_train_reports_the_diverged_run_as_failed(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The real CLI and training process: a learning rate of 1e30 diverges within a few steps."""
    from test_train import make_config

    from glmtui.cli import main

    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("COLUMNS", "400")
    data = tmp_path / "train.jsonl"
    data.write_text('{"content": "类型#裙*颜色#红色", "summary": "红色的裙子"}\n' * 8, encoding="utf-8")
    config = make_config(tiny_model_dir, data, name="diverges", learning_rate=1e30, max_steps=8)
    config.save(tmp_path / "diverges.toml")

    code = main(["train", str(tmp_path / "diverges.toml")])

    printed = capsys.readouterr().out
    (run_dir,) = (tmp_path / "ws" / "runs").iterdir()
    run = Run(run_dir)
    status = run.stored_status()
    assert code == 1 and status.state == "failed"
    assert status.reason == (
        f"loss became NaN at step {status.step}; lower the learning_rate (or set stop_on_nan = false to train on)"
    )
    assert f"Run {run.id} failed at step {status.step}/8" in printed and status.reason in printed
    events = strict_events(run)
    assert events[-1] == {**events[-1], "kind": "failed", "reason": status.reason}
    assert [event["loss"] for event in events if event["kind"] == "log"][-1] is None
