"""Snapshots of the main screens at 80x24 and 120x40, on a fixed workspace, recorded GPUs and a fixed clock."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from test_app_support import make_app, make_workspace, settle, tiny_config, write_run

from glmtui.screens.training import TrainingScreen

SIZES = [(80, 24), (120, 40)]
# Paths are shown on screen, so the workspace lives at the same place on every run.
SNAPSHOT_ROOT = Path(tempfile.gettempdir()) / "glmtui-snapshot-workspace"


def workspace_with_runs():
    workspace = make_workspace(SNAPSHOT_ROOT)
    config = tiny_config(workspace, max_steps=200, logging_steps=10)
    write_run(
        workspace, "20260501-103000-baseline", config, state="finished", step=200, losses=[3.1, 2.4, 2.0]
    )
    losses = [3.2, 2.9, 2.5, 2.3, 2.0, 1.9, 1.7, 1.65]
    write_run(workspace, "20260501-110000-longer-prefix", config, state="running", step=80, losses=losses)
    return workspace


@pytest.mark.parametrize("size", SIZES)
def test_welcome_offers_the_demo(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(make_workspace(SNAPSHOT_ROOT, with_model=False))
    assert snap_compare(app, terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES)
def test_runs_screen(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(workspace_with_runs())
    assert snap_compare(app, terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES)
def test_training_view(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(workspace_with_runs())

    async def open_the_running_run(pilot) -> None:
        await settle(pilot)
        await pilot.press("enter")
        screen = pilot.app.screen
        assert isinstance(screen, TrainingScreen)
        while len(screen.loss_points()) < 8 or len(screen.query_one("#training-log").lines) < 3:
            await pilot.pause(0.05)
        screen.workers.cancel_group(screen, "follow")
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=open_the_running_run)


@pytest.mark.parametrize("size", SIZES)
def test_config_editor(snap_compare, size: tuple[int, int]) -> None:
    workspace = make_workspace(SNAPSHOT_ROOT)
    app = make_app(workspace)

    async def fill(pilot) -> None:
        pilot.app.screen.load(tiny_config(workspace))
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=fill)
