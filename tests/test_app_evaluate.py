"""The Evaluate screen's fields: a bad one is named in one sentence before anything runs."""

from __future__ import annotations

from pathlib import Path

from support.app import make_app, make_workspace, settle, tiny_config, write_run
from textual.widgets import Input, Static

from glmtui.screens.evaluate import EvaluateScreen


async def test_an_empty_data_field_is_named_before_anything_runs(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    run = write_run(
        workspace, "20260501-103000-done", tiny_config(workspace), state="finished", step=10, losses=[2.0]
    )
    app = make_app(workspace)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        evaluate = app.workbench_screen("evaluate")
        evaluate.select_run(run)
        app.action_show("evaluate")
        await settle(pilot)
        assert isinstance(app.screen, EvaluateScreen)
        data_field = evaluate.query_one("#evaluate-data", Input)
        data_field.focus()
        data_field.value = "   "
        await pilot.press("ctrl+g")
        await settle(pilot)
        shown = [str(toast.render()) for toast in app.screen.query("Toast")]
        status = str(evaluate.query_one("#evaluate-status", Static).render())
        assert not [worker for worker in app.workers if worker.group == "evaluate"]
    assert shown == [
        "The Data file field is empty: type the path of a .json, .jsonl or .csv file with the run's columns."
    ]
    assert "Stopped" not in status
    assert not list(run.path.glob("evaluations*"))
