"""Every run state displays in the app and the CLI: one that never launched (with its reason), and one a later
version of glmtui may write, shown as it is (Hardening I: a `created` run made the app exit with a MarkupError)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.app import make_app, make_workspace, settle, tiny_config, write_run
from textual.widgets import DataTable, Static

from glmcore.runs import Run
from glmtui.screens.runs import RunsScreen
from glmtui.screens.training import TrainingScreen

STATES = {"20260501-100000-never": "created", "20260501-110000-future": "paused-by-v9 [/]"}


def write_runs(workspace) -> None:
    config = tiny_config(workspace)
    for run_id, state in STATES.items():
        write_run(workspace, run_id, config, state=state, step=0, losses=[])
    never = Run(workspace.runs_dir / "20260501-100000-never")
    status = json.loads(never.status_path.read_text())
    status.update(pid=None, host=None, reason="never launched: torchrun is not installed")
    never.status_path.write_text(json.dumps(status))


async def test_a_never_launched_run_and_an_unknown_state_display(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws", with_model=False)
    write_runs(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs-table", DataTable)
        shown = {str(table.get_row_at(index)[0]): str(table.get_row_at(index)[1]) for index in range(2)}
        assert shown == {"20260501-110000-future": "paused-by-v9 [/]", "20260501-100000-never": "created"}

        await pilot.press("down", "enter")
        await settle(pilot)
        assert isinstance(app.screen, TrainingScreen)
        title = str(app.screen.query_one("#training-title", Static).render())
        assert "created — never launched: torchrun is not installed" in title


def test_the_runs_command_shows_every_state(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws", with_model=False)
    write_runs(workspace)

    listed = subprocess.run(
        [sys.executable, "-m", "glmtui.cli", "--workspace", str(workspace.root), "runs"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert " created " in rows["20260501-100000-never"]
    assert " paused-by-v9 [/] " in rows["20260501-110000-future"]


async def test_resuming_from_the_app_says_which_checkpoint_was_passed_over(tmp_path: Path) -> None:
    from test_runs_hardening import cut_short, whole_checkpoint

    from glmcore.runs import stop

    workspace = make_workspace(tmp_path / "ws", with_model=False)
    run = write_run(
        workspace, "20260501-100000-damaged", tiny_config(workspace), state="stopped", step=40, losses=[]
    )
    run.write_status(host=None, pid=None)
    whole_checkpoint(run, 20)
    cut_short(whole_checkpoint(run, 40) / "optimizer.pt")
    app = make_app(workspace)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("r")
            await settle(pilot)
            messages = " ".join(notification.message for notification in app.notifications)
        assert (
            f"Resuming run {run.id} from checkpoint-20. checkpoint-40 cannot be loaded (optimizer.pt is cut"
            in (" ".join(messages.split()))
        )
    finally:
        if run.status().is_active:
            stop(run, force=True, grace=5)


def test_the_runs_command_names_each_runs_family_and_fits_80_columns(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws", with_model=False)
    golden = Path(__file__).parent / "golden"
    models = {
        "20260501-100000-v1": (golden / "tiny-chatglm6b", "ChatGLM-6B"),
        "20260501-110000-v2": (golden / "chatglm2" / "tiny-chatglm2", "ChatGLM2-6B"),
        "20260501-120000-v3": (golden / "chatglm3" / "tiny-chatglm3", "ChatGLM3-6B"),
        "20260501-130000-gone": (tmp_path / "deleted-model", "—"),
    }
    for run_id, (model, _) in models.items():
        write_run(
            workspace,
            run_id,
            tiny_config(workspace, model_path=model),
            state="finished",
            step=30,
            losses=[2.0],
        )
    command = [sys.executable, "-m", "glmtui.cli", "--workspace", str(workspace.root), "runs"]

    piped = subprocess.run(command, capture_output=True, text=True, timeout=60)
    on_a_terminal = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "80", "TERM": "dumb"},
    )

    assert piped.returncode == 0 == on_a_terminal.returncode, piped.stderr + on_a_terminal.stderr
    for output in (piped.stdout, on_a_terminal.stdout):
        header, *lines = output.splitlines()
        assert header.split()[:3] == ["RUN", "STATE", "FAMILY"]
        rows = {line.split()[0]: line.split() for line in lines}
        assert {run_id: row[2] for run_id, row in rows.items()} == {
            run_id: title for run_id, (_, title) in models.items()
        }
    assert max(len(line) for line in on_a_terminal.stdout.splitlines()) <= 80
