"""A real P-tuning run on the tiny model, driven through the app: start, watch, stop, resume, evaluate, chat."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.app import make_app, make_workspace, settle, tiny_config
from support.waiting import wait_until_in_app
from textual.widgets import DataTable, Input, Static

from glmcore import runs as run_control
from glmtui.screens.chat import ChatScreen
from glmtui.screens.config import ConfigScreen
from glmtui.screens.evaluate import EvaluateScreen
from glmtui.screens.training import TrainingScreen

pytestmark = pytest.mark.slow


def composed(screen, selector: str) -> bool:
    """Whether ``screen`` has built the widget ``selector`` (keys reach a screen's actions before that)."""
    return bool(screen.query(selector))


async def test_a_ptuning_run_started_from_the_editor_is_watched_stopped_resumed_and_evaluated(
    tmp_path: Path,
) -> None:
    workspace = make_workspace(tmp_path / "ws")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        editor = app.screen
        assert isinstance(editor, ConfigScreen)
        editor.load(tiny_config(workspace, max_steps=100_000, save_steps=4))
        await settle(pilot)
        await pilot.press("ctrl+g")
        await wait_until_in_app(pilot, lambda: isinstance(app.screen, TrainingScreen), "the training view")
        training = app.screen
        run = training.run
        await wait_until_in_app(
            pilot, lambda: training.status is not None and training.status.state == "running", "running"
        )
        await wait_until_in_app(
            pilot, lambda: len(training.loss_points()) >= 3, "three points on the loss curve"
        )
        await wait_until_in_app(pilot, lambda: run.checkpoints(), "a checkpoint")
        log_lines = "\n".join(training.query_one("#training-log").lines)
        assert "started at step 0" in log_lines

        await pilot.press("s")
        await wait_until_in_app(pilot, lambda: training.status.state == "stopped", "the run stopped")
        stopped_at = training.status.step
        assert run.latest_checkpoint().step == stopped_at

        await pilot.press("r")
        await wait_until_in_app(pilot, lambda: training.status.state == "running", "the run running again")
        await wait_until_in_app(
            pilot, lambda: training.loss_points()[-1][0] > stopped_at, "loss points past the resumed step"
        )
        assert "resumed from step" in "\n".join(training.query_one("#training-log").lines)
        steps = [step for step, _ in training.loss_points()]
        assert steps == sorted(set(steps))
        run_control.stop(run, timeout=60)
        await wait_until_in_app(pilot, lambda: training.status.state == "stopped", "the run stopped again")

        await pilot.press("e")
        evaluate = app.screen
        assert isinstance(evaluate, EvaluateScreen)
        await wait_until_in_app(
            pilot, lambda: composed(evaluate, "#evaluate-metrics"), "the evaluation screen built"
        )
        await pilot.press("ctrl+g")
        await wait_until_in_app(pilot, lambda: evaluate.comparison is not None, "the comparison")
        metrics = evaluate.query_one("#evaluate-metrics", DataTable)
        labels = [str(column.label) for column in metrics.columns.values()]
        assert labels[0] == "ptuning" and labels[1] == "base" and labels[2].startswith("checkpoint-")
        assert evaluate.query_one("#evaluate-examples", DataTable).row_count == 4

        await pilot.press("f5")
        runs = app.screen
        # A busy machine builds a screen later than Pilot's idle check assumes: act once the row is there.
        await wait_until_in_app(
            pilot, lambda: composed(runs, "#runs-table") and runs.selected_run() == run, "the run in the list"
        )
        await pilot.press("c")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        await wait_until_in_app(pilot, lambda: chat.session is not None, "the chat model loaded")
        chat.query_one("#chat-input", Input).focus()
        await pilot.press(*"类型#裙", "enter")
        await wait_until_in_app(
            pilot, lambda: not chat.session.answering and chat.session.history, "an answer"
        )
        assert "类型#裙" in str(chat.query_one("#chat-transcript", Static).render())
