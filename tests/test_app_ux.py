"""Day-one dead ends of the app (issue 30): what waits instead of refusing, what the keyboard finds, what a
narrow terminal shows whole. Each test presses real keys in the real app."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from support.app import make_app, make_workspace, settle, tiny_config, write_run
from support.waiting import wait_until_in_app
from textual.widgets import Input, Static

from glmcore.runs import Run
from glmtui.screens.chat import AnswerGrew, ChatScreen
from glmtui.text.chat import Exchange


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
        assert not app.notifications, [n.message for n in app.notifications]
        held_model_load.set()
        await wait_until_in_app(pilot, lambda: screen.transcript and screen.transcript[-1].answer, "an answer")
        assert screen.transcript[0].sent == "hello"
        assert screen.waiting is None
        assert screen.query_one("#chat-input", Input).value == ""
        assert str(status.render()).startswith("Chatting with tiny-chatglm (ChatGLM-6B), ")


async def test_evaluate_says_which_model_loads_and_for_how_long(
    tmp_path: Path, held_model_load: threading.Event
) -> None:
    from glmtui.screens.evaluate import EvaluateScreen

    workspace = make_workspace(tmp_path / "ws")
    write_run(
        workspace, "20260501-110000-done", tiny_config(workspace), state="finished", step=30, losses=[2.0]
    )
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("e")
        await wait_until_in_app(pilot, lambda: isinstance(app.screen, EvaluateScreen), "the Evaluate screen")
        await pilot.press("ctrl+g")
        status = app.screen.query_one("#evaluate-status", Static)
        await wait_until_in_app(pilot, lambda: "Loading" in str(status.render()), "the load's line")
        assert re.fullmatch(r"Loading tiny-chatglm \(\d+s\); the examples follow\.", str(status.render()))
        await pilot.press("ctrl+x")
        held_model_load.set()
        await settle(pilot)


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


async def open_palette(pilot) -> None:
    await pilot.press("ctrl+p")
    await wait_until_in_app(pilot, lambda: type(pilot.app.focused).__name__ == "CommandInput", "the palette")


async def palette_titles(pilot, query: str, *, typed: bool = True) -> list[str]:
    """The entries the open command palette offers for ``query``, typed into it (or, to save the time of a
    search per key, put in at once) in place of what was there."""
    if typed:
        await pilot.press(*["backspace"] * len(pilot.app.focused.value), *query)
    else:
        pilot.app.focused.value = query
    await settle(pilot)
    options = pilot.app.screen.query_one("CommandList")
    return [str(options.get_option_at_index(n).prompt).splitlines()[0] for n in range(options.option_count)]


async def test_the_palette_finds_each_action_by_its_name(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", with_model=False))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await open_palette(pilot)
        for query, entry in (
            ("queue", "Runs: Unqueue"),
            ("serve", "Go to Serve"),
            ("compare", "Runs: Compare"),
        ):
            assert entry in await palette_titles(pilot, query, typed=False), query
        titles = await palette_titles(pilot, "sweep")
        await pilot.press(*["down"] * titles.index("Sweep: train several values of a setting"), "enter")
        await settle(pilot)
        assert app.screen.NAME == "config"  # the editor, and how a sweep is typed there
        assert any("1e-2,2e-2" in notification.message for notification in app.notifications)
        await open_palette(pilot)
        titles = await palette_titles(pilot, "help")
        await pilot.press(*["down"] * titles.index("Help: every key of every screen"), "enter")
        await settle(pilot)
        assert type(app.screen).__name__ == "HelpScreen"


async def test_f6_and_f7_act_on_the_run_in_view(tmp_path: Path) -> None:
    from glmtui.screens.evaluate import EvaluateScreen

    workspace = make_workspace(tmp_path / "ws", with_model=False)
    config = tiny_config(workspace)
    write_run(workspace, "20260501-110000-first", config, state="finished", step=30, losses=[2.0])
    write_run(workspace, "20260501-120000-second", config, state="finished", step=30, losses=[2.0])
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "enter")  # the Training view of the second row: the older run
        await wait_until_in_app(pilot, lambda: app.screen.NAME == "training", "the Training view")
        await pilot.press("f7")
        await settle(pilot)
        assert isinstance(app.screen, EvaluateScreen)
        assert app.screen.run is not None and app.screen.run.id == "20260501-110000-first"
        title = str(app.screen.query_one("#evaluate-title", Static).render())
        assert title.startswith("20260501-110000-first")
        await pilot.press("f5", "up", "e")  # the newer run, on the Evaluate screen; F6 from there watches it
        await wait_until_in_app(pilot, lambda: app.screen.run.id == "20260501-120000-second", "the other run")
        await pilot.press("f6")
        await settle(pilot)
        assert app.screen.NAME == "training" and app.screen.run.id == "20260501-120000-second"


async def test_the_demo_builds_progress_shows_on_every_screen_and_in_the_palette(tmp_path: Path) -> None:
    from glmtui.screens.welcome import DemoProgressed

    app = make_app(make_workspace(tmp_path / "ws", with_model=False))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        welcome = app.screen
        await pilot.press("f5")
        await settle(pilot)
        app.set_demo_build(0.0)  # what d does, without the minute of CPU the build itself takes
        welcome.post_message(DemoProgressed(0.45, "pretraining the tiny model: step 90/200"))
        nav = app.screen.query_one("#nav", Static)
        await wait_until_in_app(pilot, lambda: "demo 45%" in str(nav.render()), "the build's progress")
        assert str(nav.render()).startswith("F2 Models F3 Data F4 Config F5 Runs")
        assert "F9 Serve" in str(nav.render())
        await open_palette(pilot)
        titles = await palette_titles(pilot, "demo")
        assert "Demo build: show its progress" in titles
        await pilot.press(*["down"] * titles.index("Demo build: show its progress"), "enter")
        await settle(pilot)
        assert app.screen is welcome
        assert "step 90/200" in str(welcome.query_one("#demo-status", Static).render())


def test_the_nav_bar_names_every_screen_in_80_columns() -> None:
    from rich.cells import cell_len

    from glmtui.screens.base import NAVIGATION, SHORT_TITLES, nav_text

    for width, building in ((80, None), (80, 0.5), (120, None)):
        text = nav_text("runs", width, building)
        assert cell_len(text.plain) <= width
        for key, _, title in NAVIGATION:
            assert (
                f"{key.upper()} {SHORT_TITLES.get(title, title)}" in text.plain
                or f"{key.upper()} {title}" in text.plain
            )
        assert ("demo 50%" in text.plain) == (building is not None)
    assert "  F3 Data " in nav_text("runs", 120).plain  # roomier when there is room


async def test_the_quit_dialog_counts_only_runs_still_training(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws", with_model=False)
    config = tiny_config(workspace)
    for state in ("running", "stopping", "stopped", "finished"):
        write_run(workspace, f"20260501-110000-{state}", config, state=state, step=3, losses=[2.0])
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("q")
        await settle(pilot)
        question = str(app.screen.query_one("#confirm-question", Static).render())
        assert question.startswith("1 run is still training (20260501-110000-running).")


async def test_a_sweeps_endings_share_one_notification(tmp_path: Path) -> None:
    import json

    workspace = make_workspace(tmp_path / "ws", with_model=False)
    runs = []
    for index, rate in enumerate(("1e-2", "2e-2", "3e-2")):
        run = write_run(
            workspace,
            f"20260501-11000{index}-sweep",
            tiny_config(workspace),
            state="running",
            step=3,
            losses=[2.0],
        )
        values = {"learning_rate": rate}
        (run.path / "sweep.json").write_text(
            json.dumps({"sweep": "s1", "index": index, "size": 3, "values": values})
        )
        runs.append(run)
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await wait_until_in_app(pilot, lambda: app.judged_look is not None, "the first look at the runs")

        def finish(run: Run) -> None:
            status = json.loads(run.status_path.read_text())
            run.status_path.write_text(json.dumps({**status, "state": "finished", "step": 30}))

        finish(runs[0])  # the runs of a sweep end one after another
        await wait_until_in_app(pilot, lambda: app.notifications_on_screen, "the first run's end")
        assert [n.message for n in app.notifications_on_screen] == [
            "Run 20260501-110000-sweep finished at step 30/30."
        ]
        for run in runs[1:]:
            finish(run)
        await wait_until_in_app(
            pilot,
            lambda: any("Sweep s1 ended" in n.message for n in app.notifications_on_screen),
            "the sweep's end",
        )
        await settle(pilot)
        assert [n.message for n in app.notifications_on_screen] == ["Sweep s1 ended: 3 finished."]


async def test_without_nvidia_the_gpu_panel_shows_this_machines_cpu_and_memory(tmp_path: Path) -> None:
    from glmcore.gpu import GpuSnapshot
    from glmcore.gpu.snapshot import NO_DRIVER_REASON
    from glmtui.text.gpus import SHOWING_HOST
    from glmtui.widgets.gpu_panel import GpuPanel

    app = make_app(make_workspace(tmp_path / "ws", with_model=False))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f6")
        await settle(pilot)
        panel = app.screen.query_one(GpuPanel)
        panel.show(GpuSnapshot.unavailable(NO_DRIVER_REASON))  # what the sampler hands it on a CPU machine
        await settle(pilot)
        lines = str(panel.render()).splitlines()
        stat = Path("/proc/stat").read_text().splitlines()
        cores = sum(line[:3] == "cpu" and line[3:4].isdigit() for line in stat)
        assert lines[0] == SHOWING_HOST
        assert lines[1].startswith(" CPU ") and lines[1].endswith(f"of {cores} core" + "s" * (cores != 1))
        total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024 / 2**30
        assert lines[2].startswith(" RAM ") and lines[2].endswith(f"/{total:.1f} GiB")


async def test_a_ticked_box_looks_ticked_and_the_focused_field_stands_out(tmp_path: Path) -> None:
    from textual.widgets import Checkbox

    app = make_app(make_workspace(tmp_path / "ws"))  # opens on the config editor, the Name field focused
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        name, model = app.screen.query_one("#name", Input), app.screen.query_one("#model_path", Input)
        assert app.focused is name
        focused, unfocused = name.styles.background, model.styles.background
        assert abs(focused.brightness - unfocused.brightness) > 0.05 or focused.hsl.h != unfocused.hsl.h
        box = app.screen.query_one("#prefix_projection", Checkbox)
        unticked = box.get_component_rich_style("toggle--button")
        assert unticked.color == unticked.bgcolor  # an empty box
        box.focus()
        await pilot.press("space")
        await settle(pilot)
        assert box.value
        ticked = box.get_component_rich_style("toggle--button")
        assert ticked.color != ticked.bgcolor and ticked.bold


async def test_the_training_view_marks_cut_lines_and_keeps_its_header_and_quit_key_on_one_line(
    tmp_path: Path,
) -> None:
    from glmtui.screens.training import TrainingScreen

    workspace = make_workspace(tmp_path / "ws", with_model=False)
    run = write_run(
        workspace, "20260501-110000-long", tiny_config(workspace), state="stopped", step=53, losses=[2.0] * 3
    )
    with run.log_path.open("a") as log:
        log.write(
            "step 53/200  loss 1.2345  lr 0.02  then a stop request arrived and it stopped at step 53\n"
        )
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, TrainingScreen)
        log = screen.query_one("#training-log")
        await wait_until_in_app(pilot, lambda: len(log.lines) >= 3, "the run's log")
        await settle(pilot)
        cut = [log.render_line(y).text for y in range(log.size.height)]
        long = next(line for line in cut if line.startswith("step 53/200"))
        assert long.endswith("…") and len(long) == log.size.width
        assert screen.query_one("#training-stats").size.height == 1  # the header does not wrap
        for zoom in ("l", "p", "g"):
            await pilot.press(zoom)
            await settle(pilot)
            keys = [key.key for key in app.screen.query("FooterKey") if key.region.right <= 80]
            assert "ctrl+q" in keys, (zoom, keys)
            await pilot.press(zoom)


async def test_runs_with_no_eta_keep_their_loss_column_at_80_columns(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws", with_model=False)
    for rate in ("1e-2", "2e-2", "5e-2"):
        config = tiny_config(workspace, name=f"demo-ptuning-learning_rate={rate}")
        write_run(
            workspace,
            f"20260501-110000-demo-ptuning-learning_rate-{rate}",
            config,
            state="finished",
            step=30,
            losses=[2.0],
        )
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        shown = list(app.screen.shown_columns)
        assert "Loss" in shown and "ETA" not in shown, shown


def test_plot_axes_step_in_whole_steps() -> None:
    from glmtui.screens.training import whole_steps

    assert whole_steps([10, 80]) == [20, 40, 60, 80]
    assert whole_steps([1, 30]) == [10, 20, 30]
    assert whole_steps([5]) == [5]
    assert whole_steps([0, 3000]) == [0, 1000, 2000, 3000]


async def test_a_chat_answer_that_looks_like_markup_is_shown_as_it_is(tmp_path: Path) -> None:
    """A tiny model's answer once held '[=\\ufffd\\n': the transcript shows any text as text, never as markup."""
    app = make_app(make_workspace(tmp_path / "ws"))
    answer = "[=\ufffd\n[/] [b]not bold[/b] [link=x]"
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f8")
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        screen.transcript = [Exchange("[red]question")]
        screen.post_message(AnswerGrew(answer, done=True))
        transcript = screen.query_one("#chat-transcript", Static)
        await wait_until_in_app(pilot, lambda: "not bold" in str(transcript.render()), "the answer drawn")
        assert str(transcript.render()) == f"you [red]question\nglm {answer}\n"
