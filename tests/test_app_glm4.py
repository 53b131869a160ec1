"""The GLM-4 demo through the app, as a user with only GLM-4 meets it: Welcome's key 4 opens the editor on the
demo, whose estimate is GLM-4-9B's; a P-tuning run started there and watched to its end; its checkpoint
evaluated against the base; a chat with a system prompt; a server of its prefix started and stopped on the Serve
screen. The steps whose screens do not change from one run to the next are snapshotted at 120x40 and 80x24 (where
nothing may be cut), as the user sees them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.app import SIZES, make_app, make_workspace, settle, snapshot_at_both_sizes
from support.snapshot_root import fixed_root, module_on_a_clean_root
from support.waiting import wait_until_in_app
from test_cli_glm4 import shortened
from textual.widgets import DataTable, Input, Static

from glmcore.demo import demo_paths
from glmtui.screens.chat import ChatScreen
from glmtui.screens.config import ConfigScreen
from glmtui.screens.evaluate import EvaluateScreen
from glmtui.screens.training import TrainingScreen
from glmtui.screens.welcome import WelcomeScreen

pytestmark = pytest.mark.slow

FAMILY = "glm-4-9b-chat"
# The editor and the chat show the workspace's paths, so it lives at the same place on every run.
SNAPSHOT_ROOT = fixed_root("glmtui-glm4")

clean_snapshot_root = module_on_a_clean_root(SNAPSHOT_ROOT)


async def test_the_glm4_demo_from_welcome_to_training_evaluation_chat_and_serving(
    snapshot, glm4_demo_root: Path
) -> None:
    workspace = make_workspace(SNAPSHOT_ROOT, with_model=False)
    paths = demo_paths(workspace, FAMILY)
    app = make_app(workspace)
    async with app.run_test(size=SIZES[0]) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, WelcomeScreen)
        welcome = str(app.screen.query_one("#welcome-text", Static).render())
        assert "4   GLM-4-9B demo" in welcome and "glmtui demo --family glm-4-9b)" in welcome
        # The demo as a build leaves it (built once per session, its pretraining cut short).
        built = demo_paths(type(workspace)(glm4_demo_root), FAMILY)
        shutil.copytree(built.model_dir, paths.model_dir)
        shutil.copytree(built.train_file.parent, paths.train_file.parent)

        await pilot.press("4")
        await wait_until_in_app(pilot, lambda: isinstance(app.screen, ConfigScreen), "the config editor")
        editor = app.screen
        await wait_until_in_app(pilot, lambda: editor.family == "GLM-4-9B", "the family named")
        await wait_until_in_app(pilot, lambda: editor.estimates is not None, "the estimate")
        assert editor.query_one("#name", Input).value == "demo-glm4-ptuning"
        # Beside this model's estimate, the same settings on the published GLM-4-9B, not on ChatGLM-6B.
        assert editor.estimates.reference_name == "GLM-4-9B"
        estimate = str(editor.query_one("#config-estimate", Static).render())
        assert "17.5 GiB" in estimate  # GLM-4-9B's 9.4 B weights in 16-bit (ChatGLM-6B's: 11.5 GiB)
        await snapshot_at_both_sizes(pilot, snapshot, "config")

        editor.load(shortened(editor.current_config()))
        await settle(pilot)
        await pilot.press("ctrl+g")
        await wait_until_in_app(pilot, lambda: isinstance(app.screen, TrainingScreen), "the training view")
        training = app.screen
        await wait_until_in_app(
            pilot, lambda: training.status is not None and training.status.state == "finished", "finished"
        )
        assert training.run.latest_checkpoint().step == 2 and len(training.loss_points()) == 2

        await pilot.press("e")
        evaluate = app.screen
        assert isinstance(evaluate, EvaluateScreen)
        await settle(pilot)
        evaluate.query_one("#evaluate-limit", Input).value = "2"
        await pilot.press("ctrl+g")
        await wait_until_in_app(pilot, lambda: evaluate.comparison is not None, "the comparison")
        metrics = evaluate.query_one("#evaluate-metrics", DataTable)
        assert [str(column.label) for column in metrics.columns.values()][1:] == ["base", "checkpoint-2"]

        await pilot.press("f5", "c")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        await wait_until_in_app(pilot, lambda: chat.session is not None, "the chat model loaded")
        status = str(chat.query_one("#chat-status", Static).render())
        assert status == "Chatting with demo-glm4-tiny (GLM-4-9B), checkpoint-2."
        assert chat.query_one("#chat-system-row").display, "GLM-4's chat format has a system role"
        await snapshot_at_both_sizes(pilot, snapshot, "chat")
        chat.query_one("#chat-system", Input).focus()
        await pilot.press(*"广告", "enter", *"类型#裙", "enter")
        await wait_until_in_app(
            pilot, lambda: not chat.session.answering and chat.session.history, "an answer"
        )
        assert chat.session.system == "广告" and chat.session.history[0][0] == "类型#裙"

        await pilot.press("f9")
        serve = app.screen
        serve.query_one("#serve-port", Input).value = "0"
        await pilot.press("s")
        await wait_until_in_app(pilot, lambda: serve.selected_id() is not None, "the server listed")
        await wait_until_in_app(
            pilot, lambda: serve.rows[serve.selected_id()].status.state == "ready", "the server ready"
        )
        started = serve.rows[serve.selected_id()]
        assert training.run.id in started.status.models
        await pilot.press("x")
        await wait_until_in_app(pilot, lambda: not started.server.status().is_active, "the server stopped")
        await settle(pilot)
