"""The app reads the run folders in one watcher thread and never waits for Slurm on the UI thread: quitting
uses what is already known, so a Slurm controller that does not answer cannot hold the app open."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.app import make_app, make_workspace, message_recorder, settle, tiny_config, write_run
from support.waiting import wait_until_in_app
from textual.widgets import Static

SILENT_SQUEUE = """#!/bin/sh
echo $$ >> "{pids}"
while [ -e "{hold}" ]; do sleep 0.1; done
"""
"""A squeue that does not answer while the hold file exists (as from a hung slurmctld); it notes its pid."""


def squeue_pids(pids: Path) -> list[int]:
    return [int(line) for line in pids.read_text().split()] if pids.exists() else []


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_quitting_never_waits_for_a_silent_squeue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands, pids, hold = tmp_path / "bin", tmp_path / "squeue-pids", tmp_path / "hold"
    commands.mkdir()
    hold.touch()
    (commands / "squeue").write_text(SILENT_SQUEUE.format(pids=pids, hold=hold))
    (commands / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{commands}{os.pathsep}{os.environ['PATH']}")
    workspace = make_workspace(tmp_path / "ws", with_model=False)
    run = write_run(
        workspace, "20260501-110000-on-slurm", tiny_config(workspace), state="running", step=3, losses=[2.0]
    )
    status = json.loads(run.status_path.read_text())
    run.status_path.write_text(json.dumps({**status, "slurm_job": 4711}))
    app = make_app(workspace)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until_in_app(pilot, lambda: squeue_pids(pids), "squeue asked about the Slurm run")
            await pilot.press("q")
            await wait_until_in_app(pilot, lambda: app.screen.query("#confirm-question"), "the quit question")
            question = str(app.screen.query_one("#confirm-question", Static).render())
            assert question.startswith("1 run is still training (20260501-110000-on-slurm).")
            await pilot.press("y")
        assert [left.id for left in app.left_running] == [run.id]
        assert all(is_alive(pid) for pid in squeue_pids(pids)), "the app waited for squeue to give up"
    finally:
        hold.unlink()  # every squeue answers (nothing) now, and the watcher's threads end


def test_one_look_hands_every_run_and_what_the_followed_run_gained(tmp_path: Path) -> None:
    from glmcore.runs import RunStore
    from glmcore.runs_watcher import RunsWatcher

    workspace = make_workspace(tmp_path / "ws", with_model=False)
    config = tiny_config(workspace)
    live = write_run(workspace, "20260501-110000-live", config, state="running", step=2, losses=[3.0, 2.5])
    done = write_run(workspace, "20260501-100000-done", config, state="finished", step=30, losses=[1.0])
    broken = write_run(workspace, "20260501-090000-broken", config, state="running", step=1, losses=[])
    broken.status_path.write_text("{cut short")
    watcher = RunsWatcher(RunStore(workspace.runs_dir))
    looks = []
    watcher.subscribe(looks.append)

    watcher.follow(live)
    first = watcher.look()
    assert looks == [first] and watcher.latest is first
    assert {run.id: status.state for run, status in first.statuses.items()} == {
        live.id: "running",
        done.id: "finished",
    }
    assert list(first.unreadable) == [broken] and "status.json cannot be read" in first.unreadable[broken]
    assert first.last_logs[live]["loss"] == 2.5 and first.last_logs[done]["loss"] == 1.0
    assert first.followed.run == live and [event["kind"] for event in first.followed.events] == [
        "start",
        "log",
        "log",
    ]
    assert first.followed.log_lines == ["loading the model", "training"]

    live.append_event("log", step=3, loss=2.0)
    second = watcher.look()
    assert second.last_logs[live]["loss"] == 2.0
    assert [event["step"] for event in second.followed.events] == [3] and second.followed.log_lines == []
    assert watcher.look(every_run=False) is None  # the followed run gained nothing: nothing handed on
    assert looks == [first, second]


async def test_a_look_that_finds_nothing_new_redraws_nothing_and_a_change_is_drawn(tmp_path: Path) -> None:
    """The watcher reads every run each second: an idle Runs screen keeps what it shows (a redraw per read is
    sent over SSH each time, and a snapshot could catch one half done); what changed is drawn."""
    from glmtui.screens.runs import RunsRead, RunsScreen

    workspace = make_workspace(tmp_path / "ws")
    config = tiny_config(workspace)
    run = write_run(workspace, "20260501-110000-live", config, state="running", step=2, losses=[3.0])
    reads, note_reads = message_recorder(RunsRead)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40), message_hook=note_reads) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs-table")
        await wait_until_in_app(pilot, lambda: table.row_count == 1, "the run listed")
        await settle(pilot)
        summary, state = screen.query_one("#runs-summary", Static).content, table.get_cell_at((0, 1))
        read = len(reads)
        await wait_until_in_app(pilot, lambda: len(reads) >= read + 2, "two more reads of the folders")
        await settle(pilot)
        assert screen.query_one("#runs-summary", Static).content is summary
        assert table.get_cell_at((0, 1)) is state

        run.write_status(state="failed", reason="CUDA out of memory")
        await wait_until_in_app(pilot, lambda: str(table.get_cell_at((0, 1))) == "failed", "the failure")
        assert "0 active" in str(screen.query_one("#runs-summary", Static).content)
