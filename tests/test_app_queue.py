"""The queue and sweeps in the app: queued runs on the Runs screen with position and reason, the keys that
reorder, start and cancel them; the config editor's list-of-values fields. Pilot, and snapshots at 80x24."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.app import make_app, make_workspace, settle, tiny_config, write_run
from support.snapshot_root import fixed_root, module_on_a_clean_root
from support.waiting import wait_until, wait_until_in_app
from textual.widgets import DataTable, Input

from glmcore.queue import Queue
from glmcore.runs import Run, stop
from glmcore.sweep import sweep_of
from glmcore.workspace import Workspace
from glmtui.screens.config import ConfigScreen
from glmtui.screens.runs import RunsScreen

SNAPSHOT_ROOT = fixed_root("glmtui-queue-snapshot-workspace")

clean_snapshot_root = module_on_a_clean_root(SNAPSHOT_ROOT)


def queued_run(
    workspace: Workspace, run_id: str, gpus: list[int], sweep: str | None = None, index: int = 1
) -> Run:
    run = write_run(workspace, run_id, tiny_config(workspace, gpus=gpus), state="queued", step=0, losses=[])
    run.write_status(gpus=gpus, queued="2026-05-01T11:00:00+00:00", started=None)
    if sweep:
        values = {"pre_seq_len": int(run_id.rsplit("psl", 1)[1])}
        (run.path / "sweep.json").write_text(
            json.dumps({"sweep": sweep, "index": index, "size": 2, "values": values})
        )
    return run


def workspace_with_a_queue(root: Path) -> tuple[Workspace, list[Run]]:
    """A finished run, then three queued on the recorded two H100s: one fits, one waits its turn, one asks for a
    GPU that is not there."""
    workspace = make_workspace(root)
    write_run(
        workspace, "20260501-103000-baseline", tiny_config(workspace), state="finished", step=30, losses=[2.0]
    )
    runs = [
        queued_run(workspace, "20260501-110000-tiny-psl4", [0], sweep="20260501-110000-tiny-1a2b"),
        queued_run(workspace, "20260501-110000-tiny-psl8", [0], sweep="20260501-110000-tiny-1a2b", index=2),
        queued_run(workspace, "20260501-110500-far-gpu", [5]),
    ]
    (workspace.root / "queue").mkdir()
    (workspace.root / "queue" / "order.json").write_text(json.dumps({"runs": [run.id for run in runs]}))
    return workspace, runs


@pytest.fixture
def live_worker() -> Iterator[Callable[[Workspace], None]]:
    """Hold a workspace's worker.lock as a live worker does, until the test ends, so the app starts no worker:
    these tests look at the queue before any worker acts on it."""
    held = []

    def hold(workspace: Workspace) -> None:
        queue = Queue(workspace)
        queue.folder.mkdir(exist_ok=True)
        lock = open(queue.worker_lock_path, "a")  # noqa: SIM115 (held until the test ends)
        fcntl.flock(lock, fcntl.LOCK_SH)
        held.append(lock)

    yield hold
    for lock in held:
        lock.close()


async def settle_with_gpus(pilot) -> None:
    """Settle once the app's first GPU reading is in: why a queued GPU run waits depends on it."""
    await wait_until_in_app(pilot, lambda: pilot.app.gpu_snapshot is not None, "the first GPU reading")
    await settle(pilot)
    # The Runs screen reads the folders again on that first reading; a read started before it may land first.

    def read_with_a_gpu_reading() -> bool:
        panels = pilot.app.screen.query("#runs-queue")
        return not panels or "no GPU reading yet" not in str(panels.first().render())

    await wait_until_in_app(pilot, read_with_a_gpu_reading, "the queue read with the first GPU reading")
    await settle(pilot)


def queue_lines(screen: RunsScreen) -> list[str]:
    return str(screen.query_one("#runs-queue").render()).splitlines()


async def test_runs_screen_shows_the_queue_and_its_keys_move_and_cancel(tmp_path: Path, live_worker) -> None:
    workspace, (first, second, far) = workspace_with_a_queue(tmp_path / "ws")
    live_worker(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle_with_gpus(pilot)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs-table", DataTable)
        states = {str(table.get_row_at(index)[0]): str(table.get_row_at(index)[1]) for index in range(3)}
        assert states == {first.id: "queued 1", second.id: "queued 2", far.id: "queued 3"}
        assert queue_lines(screen)[1:] == [
            f"1 {first.id}: starts at the worker's next look",
            f"2 {second.id}: GPU 0: 1 running, at most 1 at once",
            f"3 {far.id}: GPU 5 is not on this machine (it has 2 GPUs)",
        ]
        # The sweep's two runs stand together, in sweep order, though the other run is newer.
        assert [str(table.get_row_at(index)[0]) for index in range(4)] == [
            far.id,
            first.id,
            second.id,
            "20260501-103000-baseline",
        ]

        table.move_cursor(row=2)  # the second of the sweep
        await pilot.press("plus")
        await settle(pilot)
        assert Queue(workspace).runs() == [second, first, far]
        assert queue_lines(screen)[1] == f"1 {second.id}: starts at the worker's next look"
        await pilot.press("minus", "minus")
        await settle(pilot)
        assert Queue(workspace).runs() == [first, far, second]

        table.move_cursor(row=0)
        await pilot.press("x")
        await settle(pilot)
        assert far.status().state == "created" and Queue(workspace).runs() == [first, second]
        await pilot.press("x")  # no longer queued: said, nothing done
        await settle(pilot)
        assert far.status().state == "created"

        (workspace.root / "queue" / "settings.toml").write_text("max_runs_per_gpu = 0\n")
        await settle(pilot)
        screen.refresh_runs()
        await settle(pilot)
        assert queue_lines(screen) == [
            f"{workspace.root}/queue/settings.toml: max_runs_per_gpu must be at least 1, not 0"
        ]
        assert table.row_count == 4  # the runs still show
        (workspace.root / "queue" / "settings.toml").unlink()
        screen.refresh_runs()
        await settle(pilot)

        table.move_cursor(row=1)
        await pilot.press("g")  # start now, through the run's claim, whatever the queue says
        await settle(pilot)
        try:
            assert first.stored_status().state != "queued" and first.log_path.read_text().count("\n=== ") == 1
            assert Queue(workspace).runs() == [second]
        finally:
            if first.status().is_active:
                stop(first, force=True, grace=1.0)


async def test_the_config_editor_turns_fields_into_values_and_counts_the_runs(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        app.action_show("config")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ConfigScreen)
        screen.load(tiny_config(workspace, name="tiny"))
        await settle(pilot)
        screen.query_one("#pre_seq_len", Input).value = "4,8"
        screen.query_one("#learning_rate", Input).value = "1e-2, 2e-2"
        await settle(pilot)

        sweep = str(screen.query_one("#config-sweep").render())
        assert "Sweep: 4 runs (pre_seq_len × learning_rate)" in sweep
        assert "psl4 lr0.01: " in sweep and "psl8 lr0.02: " in sweep
        assert sweep.count(" GiB") == 4
        command = " ".join(str(screen.query_one("#config-command").render()).split())
        assert "for `glmtui sweep`" in command  # the command is shown once the file it names exists
        await pilot.press("ctrl+s")
        await settle(pilot)
        command = " ".join(str(screen.query_one("#config-command").render()).split())
        assert command.endswith("--set pre_seq_len=4,8 --set learning_rate=0.01,0.02")
        assert "glmtui sweep" in command

        screen.query_one("#pre_seq_len", Input).value = "4,4"
        await settle(pilot)
        assert "a value is listed twice" in str(screen.query_one("#config-problems").render())
        assert not list(workspace.runs_dir.iterdir())


async def test_the_config_editor_queues_a_sweep_with_ctrl_g(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    queue = Queue(workspace)
    queue.folder.mkdir()
    # Hold the only CPU slot, so the worker ctrl+g starts admits nothing while the test looks.
    busy = write_run(
        workspace, "20260501-100000-busy", tiny_config(workspace), state="running", step=1, losses=[]
    )
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    busy.mark_running(sleeper.pid)
    app = make_app(workspace)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            app.action_show("config")
            await settle(pilot)
            screen = app.screen
            screen.load(tiny_config(workspace, name="tiny", pre_seq_len=4))
            await settle(pilot)
            screen.query_one("#pre_seq_len", Input).value = "4,8"
            await settle(pilot)
            await pilot.press("ctrl+g")
            await settle(pilot)
            assert isinstance(app.screen, RunsScreen)
        queued = queue.runs()
        assert [run.config.pre_seq_len for run in queued] == [4, 8]
        assert len({sweep_of(run)["sweep"] for run in queued}) == 1
    finally:
        for run in queue.runs():
            queue.cancel(run)
        sleeper.kill()
        sleeper.wait()


def test_runs_screen_with_a_queue_snapshot(snap_compare, live_worker) -> None:
    workspace, _ = workspace_with_a_queue(SNAPSHOT_ROOT)
    live_worker(workspace)
    assert snap_compare(make_app(workspace), terminal_size=(80, 24), run_before=settle_with_gpus)


async def test_the_app_starts_a_worker_for_queued_runs_when_none_is_alive(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    waiting = queued_run(workspace, "20260501-110500-far-gpu", [5])  # a GPU not here: it waits, never starts
    queue = Queue(workspace)
    queue.folder.mkdir()
    (queue.folder / "settings.toml").write_text("poll_s = 0.2\n")
    assert not queue.worker_alive()
    app = make_app(workspace)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            await wait_until_in_app(pilot, queue.worker_alive, "a queue worker started")
            assert waiting.status().state == "queued"
    finally:
        queue.cancel(waiting)
    wait_until(lambda: not queue.worker_alive(), "the worker to exit with nothing queued")
    assert "the queue is empty; the worker exits" in queue.worker_log_path.read_text()


def test_config_editor_sweep_snapshot(snap_compare) -> None:
    workspace = make_workspace(SNAPSHOT_ROOT)
    app = make_app(workspace)

    async def fill(pilot) -> None:
        pilot.app.screen.load(tiny_config(workspace))
        await settle(pilot)
        pilot.app.screen.query_one("#pre_seq_len", Input).value = "4,8"
        pilot.app.screen.query_one("#learning_rate", Input).value = "1e-2,2e-2"
        for field in pilot.app.screen.query(Input):
            field.cursor_blink = False  # a snapshot must not depend on the moment it is taken
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=fill)
