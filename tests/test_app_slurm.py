"""A P-tuning run sent to a real local Slurm from the config editor, followed in the Training view to its end."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.app import make_app, make_workspace, settle, tiny_config
from support.waiting import wait_until_in_app
from textual.widgets import Select

from glmcore.slurm.gpus import RECORDED_SAMPLES_VARIABLE
from glmtui.screens.config import ConfigScreen
from glmtui.screens.training import TrainingScreen
from glmtui.widgets.gpu_panel import GpuPanel

FIXTURES = Path(__file__).parent / "fixtures"


async def test_a_run_sent_to_slurm_from_the_editor_finishes_with_its_nodes_gpus_shown(
    slurm_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.environment["SLURM_CONF"])
    # The job's nodes have no GPU: their launchers append recorded NVML readings instead (the job inherits this).
    monkeypatch.setenv(RECORDED_SAMPLES_VARIABLE, str(FIXTURES / "gpus-2.json"))
    workspace = make_workspace(tmp_path / "ws")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        editor = app.screen
        assert isinstance(editor, ConfigScreen)
        editor.load(tiny_config(workspace, max_steps=8, save_steps=4, logging_steps=1))
        await wait_until_in_app(pilot, lambda: editor.query_one("#row-where").display, "the Where row")
        choices = editor.query_one("#slurm_partition", Select).query_one("SelectOverlay")
        prompts = [str(choices.get_option_at_index(index).prompt) for index in range(choices.option_count)]
        assert prompts[1:] == ["debug (default): 2/2 nodes up, no GPUs"]  # after the blank choice
        assert not editor.query_one("#row-slurm_nodes").display
        editor.query_one("#where", Select).focus()
        await pilot.press("enter", "down", "enter")  # open the choice, pick Slurm
        await wait_until_in_app(pilot, lambda: editor.on_slurm, "Slurm chosen")
        assert editor.query_one("#row-slurm_nodes").display and not editor.query_one("#row-gpus").display
        await settle(pilot)
        await pilot.press("ctrl+g")
        await wait_until_in_app(pilot, lambda: isinstance(app.screen, TrainingScreen), "the training view")
        training = app.screen
        run = training.run
        job = run.stored_status().slurm_job
        assert job is not None and (run.path / "slurm-job.sh").is_file()
        await wait_until_in_app(
            pilot,
            lambda: training.status is not None and training.status.state == "running",
            "the run running on Slurm",
            timeout=150,
        )
        assert slurm_cluster.squeue(job) == "RUNNING"
        await wait_until_in_app(
            pilot, lambda: training.status.state == "finished", "the run finished", timeout=150
        )
        title = str(training.query_one("#training-title").render())
        assert "finished" in title
        await wait_until_in_app(pilot, lambda: training.node_gpus, "the node's GPU readings")
        panel = training.query_one("#training-gpus", GpuPanel)
        assert panel.border_title.startswith("GPUs on n1 (") and "s ago)" in panel.border_title
        assert [gpu.name.split()[0] for gpu in panel.snapshot.gpus] == ["n1", "n1"]
    assert [checkpoint.step for checkpoint in run.checkpoints()] == [4, 8]
    assert run.status().nodes == ["n1"] and (run.path / "gpus" / "n1.jsonl").is_file()
