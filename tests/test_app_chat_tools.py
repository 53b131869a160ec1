"""The Chat screen with tools and with a thinking model, under Pilot, snapshotted at 120x40 and 80x24 (where
nothing may be cut): a GLM-4 run's chat given a tools file, whose answer shows as a call and whose next message
goes back as its result; a GLM-4-0414 run's chat whose reasoning shows in its own block before the answer.

The models are support.tool_models' trained tiny ones (once per session), copied into the fixed workspace.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from support.app import (
    SIZES,
    make_app,
    make_workspace,
    paste,
    settle,
    snapshot_at_both_sizes,
    tiny_config,
    write_run,
)
from support.snapshot_root import fixed_root, module_on_a_clean_root
from support.tool_models import ANSWER, QUESTION, RESULT, WEATHER, Z1_ANSWER, Z1_QUESTION, Z1_REASONING
from support.waiting import wait_until_in_app
from textual.widgets import Input, Static

from glmcore.tool_calls import ToolCall
from glmcore.workspace import Workspace
from glmtui.screens.chat import ChatScreen

# The Tools field shows the file's path, so the workspace lives at the same place on every run.
SNAPSHOT_ROOT = fixed_root("glmtui-chat-tools")

clean_snapshot_root = module_on_a_clean_root(SNAPSHOT_ROOT)


def workspace_with_a_run_of(model: Path) -> Workspace:
    """The fixed workspace holding a copy of `model` and a finished run on it (no checkpoint: the base model)."""
    workspace = make_workspace(SNAPSHOT_ROOT, with_model=False)
    folder = shutil.copytree(model, workspace.models_dir / model.name)
    config = tiny_config(workspace, model_path=folder)
    write_run(workspace, "20260501-110000-chat", config, state="finished", step=30, losses=[2.0])
    return workspace


async def open_chat(pilot) -> ChatScreen:
    await settle(pilot)
    await pilot.press("c")
    chat = pilot.app.screen
    assert isinstance(chat, ChatScreen)
    await wait_until_in_app(pilot, lambda: chat.session is not None, "the chat model loaded")
    chat.query_one("#chat-temperature", Input).value = "0.01"  # the trained answer, whatever the sampling
    return chat


async def send(pilot, chat: ChatScreen, message: str) -> None:
    """Send `message` and wait for the whole answer to be recorded and drawn."""
    recorded = len(chat.session.messages)
    chat.query_one("#chat-input", Input).focus()
    await pilot.pause()
    await paste(pilot, message)
    await pilot.press("enter")
    await wait_until_in_app(pilot, lambda: len(chat.session.messages) > recorded, "the answer")
    await settle(pilot)


def transcript(chat: ChatScreen) -> str:
    return str(chat.query_one("#chat-transcript", Static).render())


async def test_a_tool_call_shows_as_a_call_and_the_next_message_is_its_result(snapshot, tool_call_model):
    tools = SNAPSHOT_ROOT / "tools.json"
    workspace = workspace_with_a_run_of(tool_call_model("glm-4-9b-chat"))
    tools.write_text(json.dumps([WEATHER]))
    app = make_app(workspace)
    async with app.run_test(size=SIZES[0]) as pilot:
        chat = await open_chat(pilot)
        assert chat.query_one("#chat-tools-row").display, "GLM-4's chat format has tools"
        chat.query_one("#chat-tools", Input).focus()
        await pilot.pause()
        await paste(pilot, str(tools))
        await pilot.press("enter")  # on to the message
        await send(pilot, chat, QUESTION)
        assert chat.session.pending_call == ToolCall("get_weather", '{"city": "Paris"}')
        assert 'tool call get_weather {"city": "Paris"}' in transcript(chat)
        assert chat.query_one("#chat-input", Input).placeholder == "Type get_weather's result and press enter"
        await snapshot_at_both_sizes(pilot, snapshot, "tool-call")

        await send(pilot, chat, RESULT)
        assert f"tool {RESULT}\nglm {ANSWER}" in transcript(chat)
        assert chat.session.history == [(QUESTION, ANSWER)]


async def test_a_bad_tools_file_is_refused_in_one_sentence_and_the_message_stays(tmp_path, tool_call_model):
    """The Tools field's file is read when a message goes out: a bad one is named, the message stays in its
    field and nothing is asked."""
    (tmp_path / "tools.json").write_text("[{]")
    app = make_app(workspace_with_a_run_of(tool_call_model("glm-4-9b-chat")))
    async with app.run_test(size=SIZES[0]) as pilot:
        chat = await open_chat(pilot)
        chat.query_one("#chat-tools", Input).value = str(tmp_path / "tools.json")
        chat.query_one("#chat-input", Input).focus()
        await pilot.press(*"hi", "enter")
        await settle(pilot)
        assert [note.message for note in app.notifications][-1].startswith(
            f"{tmp_path}/tools.json:1: not valid"
        )
        assert chat.query_one("#chat-input", Input).value == "hi" and chat.session.history == []


async def test_a_thinking_models_reasoning_shows_apart_from_its_answer(snapshot, z1_model):
    app = make_app(workspace_with_a_run_of(z1_model))
    async with app.run_test(size=SIZES[0]) as pilot:
        chat = await open_chat(pilot)
        assert chat.query_one("#chat-tools-row").display, "GLM-4-0414's chat format has tools now"
        await send(pilot, chat, Z1_QUESTION)
        assert f"thinking {Z1_REASONING}\nglm {Z1_ANSWER}" in transcript(chat)
        assert chat.session.history == [(Z1_QUESTION, Z1_ANSWER)]
        await snapshot_at_both_sizes(pilot, snapshot, "reasoning")
