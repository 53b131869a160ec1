"""The Compare screen under Pilot: v on a run of a sweep compares the whole sweep, best first; space marks runs
to compare any of them; b orders by the next metric. With an 80x24 snapshot of the sweep compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.app import make_app, make_workspace, settle, tiny_config, write_run
from support.waiting import wait_until_in_app
from test_snapshots import assert_whole, press

from glmcore.workspace import Workspace
from glmtui.screens.compare import CompareScreen

SWEEP = "20260501-100000-tiny-3fa2"
# learning rate → (training losses every 10 steps, eval losses at steps 40 and 80)
SWEEP_RUNS = {
    0.01: ([3.2, 3.0, 2.8, 2.7, 2.6, 2.5, 2.45, 2.4], [2.9, 2.6]),
    0.02: ([3.2, 2.9, 2.5, 2.3, 2.0, 1.9, 1.7, 1.65], [2.4, 2.1]),
    0.05: ([3.2, 2.6, 2.0, 1.6, 1.3, 1.1, 0.9, 0.8], [2.2, 2.5]),
}
LONE_RUN = "20260501-090000-tiny-lone"


def sweep_run_id(rate: float) -> str:
    return f"20260501-10000{list(SWEEP_RUNS).index(rate)}-tiny-lr{rate}".replace(".", "-")


def workspace_with_a_sweep(root: Path) -> Workspace:
    """A finished sweep of three learning rates, evaluated while training, and one run outside it. No path of
    the workspace shows on the Compare screen, so ``root`` can be any (each test's own)."""
    workspace = make_workspace(root)
    for index, (rate, (losses, eval_losses)) in enumerate(SWEEP_RUNS.items(), start=1):
        config = tiny_config(
            workspace, name=f"tiny lr{rate}", learning_rate=rate, max_steps=80, logging_steps=10
        )
        run = write_run(workspace, sweep_run_id(rate), config, state="finished", step=80, losses=losses)
        with open(run.events_path, "a", encoding="utf-8") as events:
            for step, loss in zip((40, 80), eval_losses, strict=True):
                events.write(json.dumps({"kind": "eval", "step": step, "eval_loss": loss}) + "\n")
        record = {"sweep": SWEEP, "index": index, "size": len(SWEEP_RUNS), "values": {"learning_rate": rate}}
        (run.path / "sweep.json").write_text(json.dumps(record))
    lone = tiny_config(
        workspace, name="tiny lone", learning_rate=0.02, pre_seq_len=8, max_steps=80, logging_steps=10
    )
    write_run(workspace, LONE_RUN, lone, state="stopped", step=30, losses=[3.2, 3.1, 3.05])
    return workspace


async def select(pilot, run_id: str) -> None:
    table = pilot.app.screen.query_one("#runs-table")
    await wait_until_in_app(pilot, lambda: table.row_count == len(SWEEP_RUNS) + 1, "the sweep's rows")
    target = [key.value for key in table.rows].index(run_id)
    await press(pilot, *["up"] * table.row_count, *["down"] * target)


async def open_sweep_comparison(pilot) -> CompareScreen:
    await select(pilot, sweep_run_id(0.02))
    await press(pilot, "v")
    screen = pilot.app.screen
    assert isinstance(screen, CompareScreen)
    await wait_until_in_app(pilot, lambda: screen.comparison is not None, "the comparison")
    await settle(pilot)
    return screen


def table_column(screen, selector: str, column: int) -> list[str]:
    table = screen.query_one(selector)
    return [str(table.get_row_at(row)[column]) for row in range(table.row_count)]


async def test_a_sweep_compares_as_a_whole_best_first_and_b_orders_by_the_next_metric(tmp_path) -> None:
    app = make_app(workspace_with_a_sweep(tmp_path / "ws"))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_sweep_comparison(pilot)
        assert screen.comparison.metric == "eval_loss"
        # Best eval loss: 0.02 reached 2.1, 0.05 2.2 (then rose), 0.01 2.6.
        assert table_column(screen, "#compare-table", 1) == ["tiny lr0.02", "tiny lr0.05", "tiny lr0.01"]
        assert table_column(screen, "#compare-settings", 0) == ["learning_rate"]
        assert [str(cell) for cell in screen.query_one("#compare-settings").get_row_at(0)] == [
            "learning_rate",
            "0.02",
            "0.05",
            "0.01",
        ]
        await press(pilot, "b")  # eval_loss → final_loss
        assert screen.comparison.metric == "final_loss"
        assert table_column(screen, "#compare-table", 1) == ["tiny lr0.05", "tiny lr0.02", "tiny lr0.01"]

        await press(pilot, "escape")
        await select(pilot, LONE_RUN)
        await press(pilot, "space")
        await select(pilot, sweep_run_id(0.01))
        await press(pilot, "space")
        assert "2 marked" in str(app.screen.query_one("#runs-summary").render())
        await press(pilot, "v")
        await wait_until_in_app(pilot, lambda: len(screen.comparison.runs) == 2, "two runs compared")
        await settle(pilot)
        assert table_column(screen, "#compare-table", 1) == ["tiny lr0.01", "tiny lone"]
        assert table_column(screen, "#compare-settings", 0) == ["pre_seq_len", "learning_rate"]


async def test_the_app_rings_and_says_so_when_a_run_it_shows_ends(tmp_path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    config = tiny_config(workspace, max_steps=80, logging_steps=10)
    run = write_run(
        workspace, "20260501-110000-tiny", config, state="running", step=30, losses=[3.2, 3.1, 3.0]
    )
    app = make_app(workspace)
    rings = []
    app.bell = lambda: rings.append(True)  # the terminal's bell, counted
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)  # the app's first look only notes what each run is doing
        # A second look at the same running run, which must not say that it ended: waited for until the app has
        # judged it, so the check below is about that look and cannot pass before it arrives.
        second = await app.look_at_runs().wait()
        assert second is not None and second.statuses is not None
        await wait_until_in_app(
            pilot, lambda: app.judged_look is second, "the app's judgement of the second look"
        )
        assert not app.notifications
        run.write_status(state="failed", reason="CUDA out of memory", step=40)
        await wait_until_in_app(
            pilot,
            lambda: any("failed" in note.message for note in app.notifications),
            "the failure's notification",
        )
        [note] = app.notifications
        assert note.message == f"Run {run.id} failed at step 40/80: CUDA out of memory."
        assert note.severity == "error" and rings == [True]


def test_compare_screen_snapshot(snap_compare, tmp_path: Path) -> None:
    app = make_app(workspace_with_a_sweep(tmp_path / "ws"))

    async def compare(pilot) -> None:
        await open_sweep_comparison(pilot)
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=compare)


pytestmark = pytest.mark.slow
