"""ChatGLM2-6B and ChatGLM3-6B through the app, as ChatGLM-6B in test_app_training.py: a P-tuning run started
from the editor, an evaluation of its checkpoint against the base model, and a chat with its prefix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.app import make_app, make_workspace, settle, tiny_config, write_run
from support.waiting import wait_until_in_app
from textual.widgets import DataTable, Input, Static

from glmcore.models import family_named
from glmcore.sample_data import write_sample_dataset
from glmtui.screens.chat import ChatScreen
from glmtui.screens.config import ConfigScreen
from glmtui.screens.evaluate import EvaluateScreen
from glmtui.screens.training import TrainingScreen

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["chatglm2-6b", "chatglm3-6b"])
async def test_a_ptuning_run_an_evaluation_and_a_chat_for_the_family(tmp_path: Path, family: str) -> None:
    workspace = make_workspace(tmp_path / "ws", with_model=False)
    model_dir = workspace.models_dir / f"tiny-{family}"
    family_named(family).implementation().write_tiny_checkpoint(
        model_dir, init_std=0.3, seed=1, seq_length=2048
    )
    write_sample_dataset(workspace.data_dir / "sample", train_count=24, dev_count=3)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        editor = app.screen
        assert isinstance(editor, ConfigScreen)
        editor.load(tiny_config(workspace, model_path=model_dir, max_steps=4, save_steps=2))
        await settle(pilot)
        await wait_until_in_app(
            pilot, lambda: editor.family == family_named(family).title, "the family named"
        )
        # The estimate beside the form is for the family's published model, not ChatGLM-6B's.
        estimate = str(editor.query_one("#config-estimate", Static).render())
        assert f"this model {family_named(family).title}" in estimate
        await pilot.press("ctrl+g")
        await wait_until_in_app(pilot, lambda: isinstance(app.screen, TrainingScreen), "the training view")
        training = app.screen
        await wait_until_in_app(
            pilot, lambda: training.status is not None and training.status.state == "finished", "finished"
        )
        assert training.run.latest_checkpoint().step == 4
        assert len(training.loss_points()) == 4

        await pilot.press("e")
        evaluate = app.screen
        assert isinstance(evaluate, EvaluateScreen)
        await pilot.pause()
        await pilot.press("ctrl+g")
        await wait_until_in_app(pilot, lambda: evaluate.comparison is not None, "the comparison")
        metrics = evaluate.query_one("#evaluate-metrics", DataTable)
        assert [str(column.label) for column in metrics.columns.values()][1:] == ["base", "checkpoint-4"]
        assert evaluate.query_one("#evaluate-examples", DataTable).row_count == 3

        await pilot.press("f5", "c")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        await wait_until_in_app(pilot, lambda: chat.session is not None, "the chat model loaded")
        assert chat.session.family_title == family_named(family).title
        status = str(chat.query_one("#chat-status", Static).render())
        model = training.run.config.model_path.name
        assert status == f"Chatting with {model} ({family_named(family).title}), checkpoint-4."
        assert chat.session.prefix is not None and chat.session.prefix.name == "checkpoint-4"
        chat.query_one("#chat-input", Input).focus()
        await pilot.press(*"类型#裙", "enter")
        await wait_until_in_app(
            pilot, lambda: not chat.session.answering and chat.session.history, "an answer"
        )
        assert "类型#裙" in str(chat.query_one("#chat-transcript", Static).render())


async def test_the_models_screen_names_each_local_models_family(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    family_named("chatglm3-6b").implementation().write_tiny_checkpoint(
        workspace.models_dir / "tiny-chatglm3", num_shards=1
    )
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("f2")
        table = app.screen.query_one("#models-local", DataTable)
        await wait_until_in_app(pilot, lambda: table.row_count == 2, "both local models")
        assert [table.get_row_at(row)[:2] for row in range(2)] == [
            ["tiny-chatglm", "ChatGLM-6B"],
            ["tiny-chatglm3", "ChatGLM3-6B"],
        ]


async def test_the_chat_screen_offers_a_system_prompt_for_chatglm3_only(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    chatglm3 = (
        family_named("chatglm3-6b")
        .implementation()
        .write_tiny_checkpoint(workspace.models_dir / "tiny-chatglm3", num_shards=1, seq_length=2048)
    )
    write_run(
        workspace, "20260501-100000-v1", tiny_config(workspace), state="finished", step=30, losses=[2.0]
    )
    write_run(
        workspace,
        "20260501-110000-v3",
        tiny_config(workspace, model_path=chatglm3),
        state="finished",
        step=30,
        losses=[2.0],
    )
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "c")  # the older run: ChatGLM-6B, whose chat has no system role
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        await wait_until_in_app(pilot, lambda: chat.session is not None, "the ChatGLM-6B model loaded")
        assert not chat.query_one("#chat-system-row").display

        await pilot.press("f5")
        await settle(pilot)
        await pilot.press("up", "c")
        await wait_until_in_app(
            pilot, lambda: chat.session is not None and chat.session.system_role, "ChatGLM3 loaded"
        )
        assert chat.query_one("#chat-system-row").display
        chat.query_one("#chat-system", Input).focus()
        await pilot.press(*"Answer in one word.", "enter")  # enter moves on to the message
        assert chat.query_one("#chat-input", Input).has_focus
        await pilot.press(*"你好", "enter")
        await wait_until_in_app(
            pilot, lambda: not chat.session.answering and chat.session.history, "an answer"
        )
        assert chat.session.system == "Answer in one word."
        assert chat.session.history[0][0] == "你好"


async def test_welcome_offers_a_demo_per_family_and_its_key_opens_that_familys_demo(tmp_path: Path) -> None:
    """3 makes ChatGLM3-6B's demo workspace and opens the editor on it. Building its model takes tens of seconds
    (tests/test_demo.py builds one), so here the model is put in place as a built demo once Welcome shows; the
    key still writes the sample data and the family's configs."""
    from conftest import GOLDEN

    from glmcore import demo
    from glmtui.screens.welcome import WelcomeScreen

    workspace = make_workspace(tmp_path / "ws", with_model=False)
    paths = demo.demo_paths(workspace, "chatglm3-6b")
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, WelcomeScreen)
        text = str(app.screen.query_one("#welcome-text", Static).render())
        for family in ("ChatGLM-6B", "ChatGLM2-6B", "ChatGLM3-6B"):
            assert f"{family} demo" in text
        shutil.copytree(GOLDEN / "chatglm3" / "tiny-chatglm3", paths.model_dir)
        (paths.model_dir / demo.DEMO_MARKER).write_text("{}", encoding="utf-8")
        await pilot.press("3")
        await wait_until_in_app(pilot, lambda: isinstance(app.screen, ConfigScreen), "the config editor")
        editor = app.screen
        await wait_until_in_app(pilot, lambda: editor.family == "ChatGLM3-6B", "the family named")
        assert editor.query_one("#model_path", Input).value == str(paths.model_dir)
        assert editor.query_one("#name", Input).value == "demo-chatglm3-ptuning"
    assert paths.train_file.is_file() and not demo.demo_ready(workspace)
