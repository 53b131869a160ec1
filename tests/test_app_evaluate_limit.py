"""The Evaluate screen's limit field: only the first N examples are evaluated, and comparison.json says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.app import make_app, make_workspace, settle, tiny_config, write_run
from support.waiting import wait_until_in_app
from textual.widgets import DataTable, Input

import glmcore
from glmcore.evaluate import COMPARISON_FILE
from glmcore.prefix import save_prefix_checkpoint
from glmcore.runs import CHECKPOINT_COMPLETE_MARKER
from glmtui.screens.evaluate import EvaluateScreen

pytestmark = pytest.mark.slow


async def test_the_limit_field_evaluates_the_first_rows_only(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    config = tiny_config(workspace, max_target_length=4)
    run = write_run(workspace, "20260501-103000-limited", config, state="finished", step=10, losses=[2.0])
    model = glmcore.load_model(config.model_path, pre_seq_len=config.pre_seq_len)
    checkpoint = save_prefix_checkpoint(model, run.checkpoints_dir / "checkpoint-10")
    (checkpoint / CHECKPOINT_COMPLETE_MARKER).write_text("{}")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        evaluate = app.workbench_screen("evaluate")
        evaluate.select_run(run)
        app.action_show("evaluate")
        await settle(pilot)
        assert isinstance(app.screen, EvaluateScreen)
        evaluate.query_one("#evaluate-limit", Input).focus()
        await pilot.press("2", "ctrl+g")
        await wait_until_in_app(pilot, lambda: evaluate.comparison is not None, "the comparison")
        await settle(pilot)
        assert evaluate.query_one("#evaluate-examples", DataTable).row_count == 2
    summary = json.loads((evaluate.comparison.output_dir / COMPARISON_FILE).read_text(encoding="utf-8"))
    assert (summary["limit"], summary["data_examples"]) == (2, 4)
