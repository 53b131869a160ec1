"""Evaluation while training, on the tiny model in a real training process: eval loss and BLEU/Rouge on the first
rows in events.jsonl, early stopping once the eval loss stops improving, the best checkpoint marked (and standing
for the run), TensorBoard's event files in the run folder, and the workspace's notification command run once."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from support.waiting import wait_until
from test_train import make_config

from glmcore.config import GENERATION_METRICS, validate
from glmcore.metrics import METRIC_NAMES
from glmcore.runs import RunStore, launch, wait_for_end

pytestmark = pytest.mark.slow

# Training teaches one answer per prompt; validation asks the same prompts for other answers, so the eval loss
# rises once the prefix has learnt the training answers.
TRAIN_ROWS = [
    {"content": "类型#上衣*颜色#白色", "summary": "白色上衣简约百搭"},
    {"content": "类型#裙*材质#牛仔布", "summary": "牛仔裙时尚个性"},
]
VALIDATION_ROWS = [
    {"content": "类型#上衣*颜色#白色", "summary": "hello world again"},
    {"content": "类型#裙*材质#牛仔布", "summary": "a test of nothing"},
]

RECORDER = """
import json, os, sys
with open(sys.argv[1], "a", encoding="utf-8") as out:
    out.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith("GLMTUI_")}) + "\\n")
"""


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows * 4), encoding="utf-8")
    return path


def configure_recorder(workspace: Path, tmp_path: Path) -> Path:
    """notify.toml naming a script that appends its GLMTUI_* environment to a file, one line per call."""
    script = tmp_path / "record.py"
    script.write_text(RECORDER, encoding="utf-8")
    calls = tmp_path / "calls.jsonl"
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "notify.toml").write_text(
        f"command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, {json.dumps(str(calls))}]\n",
        encoding="utf-8",
    )
    return calls


def read_calls(calls: Path, count: int) -> list[dict]:
    """The notification command's calls once there are `count`, and a moment more for an extra one to land."""
    wait_until(
        lambda: calls.exists() and len(calls.read_text(encoding="utf-8").splitlines()) >= count,
        f"{count} calls of the notification command",
    )
    time.sleep(0.5)
    return [json.loads(line) for line in calls.read_text(encoding="utf-8").splitlines()]


def test_the_published_metric_names_are_the_ones_a_config_may_name():
    assert GENERATION_METRICS == METRIC_NAMES


def test_early_stopping_and_its_settings_are_checked_before_a_run_starts(tiny_model_dir, tmp_path):
    train = write_rows(tmp_path / "train.json", TRAIN_ROWS)
    config = make_config(
        tiny_model_dir, train, early_stopping_patience=2, best_metric="bleu-4", report_to=["wandb"]
    )
    fields = {problem.field for problem in validate(config)}
    assert {"early_stopping_patience", "best_metric", "report_to"} <= fields
    config = make_config(
        tiny_model_dir, train, validation_file=train, eval_steps=3, save_steps=2, early_stopping_patience=1
    )
    assert [problem.field for problem in validate(config)] == ["save_steps"]


def test_a_run_whose_eval_loss_stops_improving_stops_early_marks_its_best_checkpoint_and_notifies_once(
    tiny_model_dir, tmp_path
):
    workspace = tmp_path / "ws"
    calls = configure_recorder(workspace, tmp_path)
    store = RunStore(workspace / "runs")
    config = make_config(
        tiny_model_dir,
        write_rows(tmp_path / "train.json", TRAIN_ROWS),
        validation_file=write_rows(tmp_path / "validation.json", VALIDATION_ROWS),
        learning_rate=0.3,
        max_steps=200,
        eval_steps=2,
        save_steps=2,
        save_total_limit=2,
        logging_steps=2,
        early_stopping_patience=2,
        eval_metric_rows=2,
        report_to=["tensorboard"],
    )
    assert validate(config) == []
    run = store.create(config)
    launch(run, detach=True)
    status = wait_for_end(run, timeout=240)

    assert status.state == "finished", status.reason
    assert status.step < config.max_steps
    evaluations = [event for event in run.events() if event["kind"] == "eval"]
    losses = [event["eval_loss"] for event in evaluations]
    best = min(range(len(losses)), key=losses.__getitem__)
    # It stopped after exactly `patience` evaluations without a new best.
    assert len(losses) - 1 - best == config.early_stopping_patience, losses
    assert "stopped early" in status.reason and "eval_loss" in status.reason
    for event in evaluations:
        assert {f"eval_{name}" for name in METRIC_NAMES} <= event.keys()
        assert (run.path / "evaluations" / "training" / f"step-{event['step']}" / "results.json").is_file()

    mark = json.loads(run.best_checkpoint_path.read_text(encoding="utf-8"))
    assert mark["step"] == evaluations[best]["step"]
    assert mark["metric"] == "eval_loss" and mark["value"] == pytest.approx(losses[best])
    assert run.default_checkpoint().step == mark["step"] < run.latest_checkpoint().step
    # save_total_limit = 2 keeps the newest checkpoint, and the best beside it however old it is.
    assert [checkpoint.step for checkpoint in run.checkpoints()] == [
        mark["step"],
        run.latest_checkpoint().step,
    ]

    assert list(run.tensorboard_dir.glob("events.out.tfevents.*")), "TensorBoard wrote no event file"

    [call] = read_calls(calls, 1)
    assert call["GLMTUI_EVENT"] == "finished" and call["GLMTUI_RUN_ID"] == run.id
    assert call["GLMTUI_STEP"] == str(status.step)
    assert "stopped early" in call["GLMTUI_REASON"]
    assert len(list((run.path / "notifications").iterdir())) == 1


def test_a_run_stands_for_its_marked_best_checkpoint_while_it_is_whole_else_its_latest(
    tiny_model_dir, tmp_path
):
    store = RunStore(tmp_path / "runs")
    run = store.create(make_config(tiny_model_dir, write_rows(tmp_path / "train.json", TRAIN_ROWS)))
    for step in (10, 20, 30):
        folder = run.checkpoints_dir / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}", encoding="utf-8")
    assert run.default_checkpoint().step == 30
    run.mark_best_checkpoint(20, "eval_loss", 1.5, greater_is_better=False)
    assert run.default_checkpoint().step == 20
    assert store.resolve_checkpoint(run.id) == run.checkpoints_dir / "checkpoint-20"
    (run.checkpoints_dir / "checkpoint-20" / "trainer_state.json").write_text("", encoding="utf-8")  # damaged
    assert run.default_checkpoint().step == 30
    run.mark_best_checkpoint(40, "eval_loss", 1.2, greater_is_better=False)  # a step never saved
    assert run.default_checkpoint().step == 30
