"""The app driven by keys under Pilot: each screen's main path, on real workspaces and run folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.app import make_app, make_workspace, settle, tiny_config, write_run
from support.waiting import wait_until_in_app
from textual.widgets import Checkbox, DataTable, Input, Select, Static

from glmcore.config import RunConfig
from glmtui.screens.config import ConfigScreen
from glmtui.screens.runs import RunsScreen
from glmtui.screens.training import TrainingScreen
from glmtui.screens.welcome import WelcomeScreen


def test_constructing_the_app_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from glmtui.app import GlmApp\n"
        "GlmApp()\n"
        "heavy = [name for name in ('torch', 'transformers', 'datasets') if name in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "GLMTUI_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "heavy: []" in result.stdout


async def test_an_empty_workspace_offers_the_demo_and_every_screen_opens_by_key(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", with_model=False))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, WelcomeScreen)
        for key, name in (
            ("f2", "models"),
            ("f3", "data"),
            ("f4", "config"),
            ("f5", "runs"),
            ("f6", "training"),
            ("f7", "evaluate"),
            ("f8", "chat"),
        ):
            await pilot.press(key)
            await pilot.pause()
            assert name == app.screen.NAME


async def palette_offers_first(pilot, title: str) -> None:
    """Wait until the command palette's search (a worker) has put ``title`` first and highlighted it."""
    options = pilot.app.screen.query_one("CommandList")
    await wait_until_in_app(
        pilot,
        lambda: options.highlighted == 0 and options.get_option_at_index(0).hit.text == title,
        f"{title!r} first in the command palette",
    )


async def test_the_command_palette_reaches_screens_and_their_actions(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"go to runs")
        await palette_offers_first(pilot, "Go to Runs")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("ctrl+p")
        await pilot.press(*"new")
        await palette_offers_first(pilot, "Runs: New")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfigScreen)


async def test_config_editor_checks_live_and_saves_the_toml(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ConfigScreen)  # a model and no runs: the editor is the home screen
        screen.load(tiny_config(workspace))
        await settle(pilot)
        assert screen.problems == []
        assert "Ready to start" in str(screen.query_one("#config-problems", Static).render())

        screen.query_one("#gradient_accumulation_steps", Input).focus()
        await pilot.press("ctrl+a", "ctrl+k", "4")  # clear the field by keys, then type 4
        await pilot.pause()
        assert "8 = 2 × 4" in str(screen.query_one("#effective-batch", Static).render())

        screen.query_one("#learning_rate", Input).focus()
        await pilot.press("ctrl+a", "ctrl+k", *"fast")
        await pilot.pause()
        assert [problem.field for problem in screen.problems] == ["learning_rate"]
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not (workspace.root / "configs" / "tiny-ptuning.toml").exists()

        await pilot.press("ctrl+a", "ctrl+k", *"0.005")
        await settle(pilot)
        assert screen.problems == []
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = RunConfig.load(workspace.root / "configs" / "tiny-ptuning.toml")
        assert (saved.learning_rate, saved.gradient_accumulation_steps) == (0.005, 4)
        assert saved.model_path == workspace.models_dir / "tiny-chatglm"


async def test_config_editor_sets_evaluation_while_training_early_stopping_and_tensorboard(
    tmp_path: Path,
) -> None:
    workspace = make_workspace(tmp_path / "ws")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        screen.load(tiny_config(workspace))
        await settle(pilot)

        async def type_into(field: str, text: str) -> None:
            screen.query_one(f"#{field}", Input).focus()
            await pilot.press("ctrl+a", "ctrl+k", *text)

        await type_into("eval_steps", "4")
        await type_into("early_stopping_patience", "2")
        await settle(pilot)
        # Early stopping keeps the best evaluated checkpoint: every evaluation needs one.
        assert [problem.field for problem in screen.problems] == ["save_steps"]

        await type_into("save_steps", "2")
        await type_into("eval_metric_rows", "3")
        screen.query_one("#best_metric", Select).value = "rouge-l"
        screen.query_one("#report_to", Checkbox).value = True
        await settle(pilot)
        assert screen.problems == []
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = RunConfig.load(workspace.root / "configs" / "tiny-ptuning.toml")
        assert (saved.eval_steps, saved.eval_metric_rows, saved.early_stopping_patience) == (4, 3, 2)
        assert (saved.best_metric, saved.report_to) == ("rouge-l", ["tensorboard"])


async def test_config_editor_shows_the_chosen_methods_fields_and_the_real_6b_estimate(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, ConfigScreen)
        screen.load(tiny_config(workspace))
        await settle(pilot)

        def shown(name: str) -> bool:
            return screen.query_one(f"#row-{name}").display

        assert shown("pre_seq_len") and shown("prefix_projection") and not shown("lora_rank")
        toggle = screen.query_one("#prefix_projection")
        assert str(toggle.render()).strip() == "▐ ▌ off"
        toggle.focus()
        await pilot.press("space")
        await settle(pilot)
        assert str(toggle.render()).strip() == "▐X▌ on"
        estimate = str(screen.query_one("#config-estimate", Static).render())
        assert "this model ChatGLM-6B" in estimate and "total" in estimate

        screen.query_one("#method").focus()
        await pilot.press("enter", "down", "enter")  # ptuning-v2 -> lora
        await settle(pilot)
        assert [shown(name) for name in ("lora_rank", "lora_alpha", "lora_dropout")] == [True] * 3
        assert not shown("pre_seq_len") and not shown("prefix_projection")
        screen.query_one("#lora_rank", Input).focus()
        await pilot.press("ctrl+a", "ctrl+k", "1", "6")
        await settle(pilot)
        assert screen.current_config().lora_rank == 16 and screen.problems == []

        screen.query_one("#per_device_train_batch_size", Input).focus()
        await pilot.press("ctrl+a", "ctrl+k")
        await settle(pilot)
        estimate = str(screen.query_one("#config-estimate", Static).render())
        assert estimate == "VRAM estimate waits for Batch per GPU: fill this in"


async def test_config_editor_reports_a_missing_model_folder(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, ConfigScreen)
        screen.load(tiny_config(workspace, model_path=workspace.models_dir / "absent"))
        await settle(pilot)
        assert [problem.field for problem in screen.problems] == ["model_path"]
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert workspace.runs_dir.exists() and not any(workspace.runs_dir.iterdir())


async def test_runs_screen_lists_runs_from_their_folders_and_deletes_after_confirming(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    config = tiny_config(workspace, max_steps=100)
    write_run(workspace, "20260501-103000-older", config, state="finished", step=100, losses=[2.0, 1.5])
    write_run(workspace, "20260501-110000-newer", config, state="running", step=40, losses=[3.0, 2.5, 2.25])
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs-table", DataTable)
        rows = [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]
        assert rows[0][0] == "20260501-110000-newer"
        assert rows[0][2:] == ["ChatGLM-6B", "40/100", "2.2500", "1,234", "10m 00s", "0", "1h 30m"]
        assert rows[1][2:5] == ["ChatGLM-6B", "100/100", "1.5000"]

        await pilot.press("down", "d")
        await pilot.pause()
        await pilot.press("n")  # the modal's no keeps the run
        await pilot.pause()
        assert (workspace.runs_dir / "20260501-103000-older").is_dir()
        await pilot.press("d")
        await pilot.pause()
        await pilot.press("y")
        await settle(pilot)
        assert not (workspace.runs_dir / "20260501-103000-older").exists()
        assert table.row_count == 1

        await pilot.press("k")
        await pilot.pause()
        assert isinstance(app.screen, ConfigScreen)
        assert app.screen.query_one("#name", Input).value == "tiny-ptuning-copy"


async def test_a_failing_action_shows_the_engine_message(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    write_run(
        workspace, "20260501-103000-done", tiny_config(workspace), state="finished", step=30, losses=[1.0]
    )
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await settle(pilot)
        messages = [notification.message for notification in app.notifications]
        assert any(
            "is not running (it is finished); there is nothing to stop" in message for message in messages
        )


async def test_training_view_follows_events_appended_to_the_run(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    run = write_run(
        workspace, "20260501-110000-live", tiny_config(workspace), state="running", step=2, losses=[3.0, 2.0]
    )
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, TrainingScreen)
        await wait_until_in_app(pilot, lambda: len(screen.loss_points()) >= 2, "the run's two losses")
        assert screen.loss_points() == [(1, 3.0), (2, 2.0)]
        run.append_event("log", step=3, loss=1.5, learning_rate=0.01)
        run.append_event("checkpoint", step=3, path="checkpoints/checkpoint-3")
        await wait_until_in_app(pilot, lambda: len(screen.loss_points()) >= 3, "the appended loss")
        assert screen.loss_points()[-1] == (3, 1.5)
        await wait_until_in_app(
            pilot,
            lambda: "checkpoint saved at step 3" in "\n".join(screen.query_one("#training-log").lines),
            "the appended checkpoint in the log",
        )
        assert "loading the model" in screen.query_one("#training-log").lines


async def test_models_screen_lists_the_local_model_as_complete(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f2")
        await settle(pilot)
        table = app.screen.query_one("#models-local", DataTable)
        assert [str(cell) for cell in table.get_row_at(0)][:1] == ["tiny-chatglm"]
        assert str(table.get_row_at(0)[1]) == "ChatGLM-6B" and str(table.get_row_at(0)[3]) == "complete"
        catalog = app.screen.query_one("#models-catalog", DataTable)
        assert catalog.row_count >= 1


async def test_data_screen_previews_rows_with_special_tokens_and_lengths(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f3")
        await pilot.pause()
        await pilot.press("ctrl+g")
        await settle(pilot)
        stats = app.screen.query_one("#data-stats", DataTable)
        assert [str(stats.get_row_at(index)[0]) for index in range(stats.row_count)] == ["prompt", "response"]
        preview = str(app.screen.query_one("#data-preview-text", Static).render())
        assert "48 examples" in preview and "[gMASK]" in preview and "<sop>" in preview


async def test_quitting_with_an_active_run_asks_and_says_it_goes_on(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    config = tiny_config(workspace)
    write_run(workspace, "20260501-110000-live", config, state="running", step=2, losses=[3.0])
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("q")
        await pilot.pause()
        question = str(app.screen.query_one("#confirm-question", Static).render())
        assert "1 run is still training (20260501-110000-live). It goes on after glmtui closes" in question
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("ctrl+q", "y")
        await pilot.pause()
    assert [run.id for run in app.left_running] == ["20260501-110000-live"]


async def test_chat_settings_fields_keep_and_show_what_is_typed(tmp_path: Path) -> None:
    from support.app import cut_text

    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f8")
        await pilot.pause()
        for field_id, typed in (("#chat-temperature", "0.8"), ("#chat-top-p", "0.75")):
            field = app.screen.query_one(field_id, Input)
            field.focus()
            await pilot.press("ctrl+a", "ctrl+k", *typed, "tab")
            await pilot.pause()
            assert field.value == typed
        assert [cut for cut in cut_text(app.screen) if "chat" in cut] == []
        assert app.screen.chat_settings().temperature == 0.8
