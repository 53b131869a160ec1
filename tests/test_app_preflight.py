"""The config editor checks data files in a worker: bad rows shown with file:line, nothing started, and the app
answering keys while it reads an AdvertiseGen-size (114k rows) train file."""

from __future__ import annotations

import json
from pathlib import Path

from support.app import make_app, make_workspace, settle, tiny_config
from textual.widgets import Input, Static

from glmcore import preflight
from glmcore.sample_data import generate_examples
from glmtui.screens.config import ConfigScreen
from glmtui.screens.runs import RunsScreen

ADVERTISEGEN_TRAIN_ROWS = 114_599


async def test_a_bad_row_is_shown_with_its_line_and_the_run_is_not_created(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    train = workspace.data_dir / "bad.jsonl"
    train.write_text(
        '{"content": "类型#裙", "summary": "裙子"}\n{"content": 123, "summary": "数字"}\n', encoding="utf-8"
    )
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        editor = app.screen
        assert isinstance(editor, ConfigScreen)
        editor.load(tiny_config(workspace, train_file=train, validation_file=None))
        await settle(pilot)

        sentence = (
            f"{train}:2: 'content' holds a number (123), not text; write it as a JSON string (in quotes)"
        )
        assert [(problem.field, problem.message) for problem in editor.problems] == [("train_file", sentence)]
        shown = str(editor.query_one("#config-problems", Static).render())
        assert "Train file: " in shown and "holds a number (123)" in shown
        await pilot.press("ctrl+g")
        await settle(pilot)
        assert not any(workspace.runs_dir.iterdir())
        assert isinstance(app.screen, ConfigScreen)


async def test_the_editor_answers_keys_while_it_reads_a_114k_row_train_file(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    train = workspace.data_dir / "advertisegen" / "train.json"
    train.parent.mkdir(parents=True)
    rows = [json.dumps(row, ensure_ascii=False) + "\n" for row in generate_examples(1000, seed=3)]
    with train.open("w", encoding="utf-8") as handle:
        for index in range(ADVERTISEGEN_TRAIN_ROWS):
            handle.write(rows[index % len(rows)])
    config = tiny_config(workspace, train_file=train)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        editor = app.screen
        assert isinstance(editor, ConfigScreen)
        editor.load(config)
        # Asked before the app runs again, so the check's worker cannot have answered yet (after a pause it may
        # have, on a fast machine or a slow one where the pause waits out the worker).
        assert "Checking the data files" in str(editor.query_one("#config-problems", Static).render())
        await pilot.pause()

        editor.query_one("#max_steps", Input).focus()
        await pilot.press("ctrl+a", "ctrl+k", *"5")
        assert editor.query_one("#max_steps", Input).value == "5"
        await pilot.press("f5")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press(
            "f4"
        )  # back to the editor: every key above was answered while the check ran in its worker

        await settle(pilot)
        assert preflight.data_checked(config)
        assert editor.problems == []
        assert "Ready to start" in str(editor.query_one("#config-problems", Static).render())
