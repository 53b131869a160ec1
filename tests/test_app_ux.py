"""Day-one dead ends of the app (issue 30): what waits instead of refusing, what the keyboard finds, what a
narrow terminal shows whole. Each test presses real keys in the real app."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from support.app import make_app, make_workspace, settle, tiny_config, write_run
from support.waiting import wait_until_in_app
from textual.widgets import Input, Static

from glmtui.screens.chat import ChatScreen


@pytest.fixture
def held_model_load(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """transformers' from_pretrained waits (in the app's worker thread) until the test sets the event: a load
    as slow as real weights, without the weights. The load itself is real."""
    from glmcore.models.chatglm6b.modeling import ChatGLMForConditionalGeneration

    release = threading.Event()
    load = ChatGLMForConditionalGeneration.from_pretrained.__func__

    def held(cls, *args, **kwargs):
        release.wait(60)
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(ChatGLMForConditionalGeneration, "from_pretrained", classmethod(held))
    return release


async def test_a_message_sent_while_the_model_loads_waits_and_goes_out(
    tmp_path: Path, held_model_load: threading.Event
) -> None:
    workspace = make_workspace(tmp_path / "ws")
    write_run(
        workspace, "20260501-110000-done", tiny_config(workspace), state="finished", step=30, losses=[2.0]
    )
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("c", *"hello", "enter")
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        status = screen.query_one("#chat-status", Static)
        await wait_until_in_app(pilot, lambda: "the weights" in str(status.render()), "the load's step")
        assert screen.session is None and screen.waiting == "hello"
        assert str(status.render()).startswith("Loading tiny-chatglm (the weights, ")
        assert str(status.render()).endswith("your message goes out once it is ready")
        assert not app._notifications, [n.message for n in app._notifications]
        held_model_load.set()
        await wait_until_in_app(pilot, lambda: screen.transcript and screen.transcript[-1][1], "an answer")
        assert screen.transcript[0][0] == "hello"
        assert screen.waiting is None
        assert screen.query_one("#chat-input", Input).value == ""
        assert str(status.render()).startswith("Chatting with tiny-chatglm (ChatGLM-6B), ")


async def test_f1_and_question_mark_list_every_key_of_every_screen(tmp_path: Path) -> None:
    from glmtui.app import GlmApp, _screen_classes
    from glmtui.screens.help import HelpScreen
    from glmtui.screens.welcome import WelcomeScreen

    workspace = make_workspace(tmp_path / "ws")
    write_run(
        workspace, "20260501-110000-done", tiny_config(workspace), state="finished", step=30, losses=[2.0]
    )
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("f1")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        shown = str(app.screen.query_one("#help-text", Static).render())
        for screen in [GlmApp, WelcomeScreen, *_screen_classes().values()]:
            for binding in screen.BINDINGS:
                if binding.description:
                    assert f"  {binding.description}" in shown, (screen.__name__, binding.description)
        assert "Runs\n" in shown and "Compare: Compare the marked runs" in shown
        await pilot.press("escape")
        await pilot.press("?")  # on the Runs screen; in a text field ? is typed
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await settle(pilot)
        assert not isinstance(app.screen, HelpScreen)


async def palette_titles(pilot, query: str) -> list[str]:
    """The entries the command palette offers for ``query`` typed into it (the palette is left open)."""
    await pilot.press("ctrl+p")
    await wait_until_in_app(pilot, lambda: type(pilot.app.focused).__name__ == "CommandInput", "the palette")
    await pilot.press(*query)
    await settle(pilot)
    options = pilot.app.screen.query_one("CommandList")
    return [str(options.get_option_at_index(n).prompt).splitlines()[0] for n in range(options.option_count)]


PALETTE_NAMES = {
    "sweep": "Sweep: train several values of a setting",
    "queue": "Runs: Unqueue",
    "serve": "Go to Serve",
    "compare": "Runs: Compare",
    "help": "Help: every key of every screen",
}


async def test_the_palette_finds_each_action_by_its_name(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", with_model=False))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for query, entry in PALETTE_NAMES.items():
            titles = await palette_titles(pilot, query)
            assert entry in titles, (query, titles)
            if query not in ("sweep", "help"):
                await pilot.press("escape")
                continue
            await pilot.press(*["down"] * titles.index(entry), "enter")
            await settle(pilot)
            if query == "sweep":  # the editor, and how a sweep is typed there
                assert app.screen.NAME == "config"
                assert any("1e-2,2e-2" in notification.message for notification in app._notifications)
        assert type(app.screen).__name__ == "HelpScreen"
