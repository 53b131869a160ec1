"""The Training view as the GPU server's dashboard: recorded samples of 1, 2, 4 and 8 GPUs, reached by keys.

Each test opens the running run from the Runs screen with enter, as a user does, and snapshots the screen at
80x24 and 120x40; the zoom keys (g GPUs, p plot, l log, escape back) are pressed the same way. Beside the
snapshot, every GPU's row is checked on the screen's text: its index, memory, utilisation and power whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.app import FIXED_NOW, make_workspace, paste, settle, tiny_config, write_run
from support.waiting import wait_until_in_app

from glmcore.gpu import NO_DRIVER_REASON, GpuSnapshot, RecordedGpuBackend, host
from glmtui.app import GlmApp
from glmtui.preferences import Preferences
from glmtui.screens.training import TrainingScreen
from glmtui.text.gpus import SHOWING_HOST

FIXTURES = Path(__file__).parent / "fixtures"
SIZES = [(80, 24), (120, 40)]
GPU_COUNTS = [1, 2, 4, 8]
RUN_ID = "20260501-110000-longer-prefix"


class NoDriverBackend:
    """NVML as a machine without an NVIDIA driver answers it (the one stand-in: NVML)."""

    def read(self) -> GpuSnapshot:
        return GpuSnapshot.unavailable(NO_DRIVER_REASON)

    def close(self) -> None:
        pass


def dashboard_app(root: Path, backend) -> GlmApp:
    """A workspace holding one running run, the app on it with ``backend``'s GPUs and a fixed clock."""
    workspace = make_workspace(root, with_model=False)
    config = tiny_config(workspace, max_steps=200, logging_steps=10)
    losses = [3.2, 2.9, 2.5, 2.3, 2.0, 1.9, 1.7, 1.65]
    write_run(workspace, RUN_ID, config, state="running", step=80, losses=losses)
    return GlmApp(workspace, gpu_backend=backend, gpu_interval=3600, clock=lambda: FIXED_NOW)


def recorded_app(root: Path, count: int) -> GlmApp:
    return dashboard_app(root, RecordedGpuBackend(FIXTURES / f"gpus-{count}.json"))


def screen_text(app: GlmApp) -> list[str]:
    """The screen as the terminal shows it, one string per row."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


async def open_the_run(pilot, *keys: str) -> None:
    """From the Runs screen, enter the running run, wait until its curve, log and GPUs are in, press ``keys``."""
    await pilot.pause()
    await pilot.press("enter")
    screen = pilot.app.screen
    assert isinstance(screen, TrainingScreen)
    await wait_until_in_app(
        pilot,
        lambda: (
            len(screen.loss_points()) >= 8
            and len(screen.query_one("#training-log").lines) >= 3
            and pilot.app.gpu_snapshot is not None
        ),
        "the run's curve, its log and the first GPU reading",
    )
    for key in keys:
        await pilot.press(key)
    await pilot.pause()


def assert_every_gpu_row_is_whole(app: GlmApp) -> None:
    rows = screen_text(app)
    for gpu in app.gpu_snapshot.gpus:
        memory = f"{gpu.memory_used / 2**30:.1f}/{gpu.memory_total / 2**30:.1f} GiB"
        power = (
            f"{gpu.power_draw:.0f}/{gpu.power_limit:.0f}W",
            f"{gpu.power_draw:.0f}W / {gpu.power_limit:.0f}W",
        )
        whole = [row for row in rows if memory in row and f"{gpu.utilization_gpu}%" in row]
        assert whole, f"GPU {gpu.index}'s memory and utilisation are not on one row"
        titled = [row for row in rows if any(text in row for text in power)]
        assert any(row.lstrip().startswith((f"{gpu.index} ", f"GPU {gpu.index} ")) for row in whole + titled)
        assert titled, f"GPU {gpu.index}'s power is not on the screen"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("count", GPU_COUNTS)
def test_every_gpu_beside_the_curve_and_log(snap_compare, tmp_path: Path, count: int, size) -> None:
    app = recorded_app(tmp_path / "ws", count)

    async def run_before(pilot) -> None:
        await open_the_run(pilot)
        assert_every_gpu_row_is_whole(pilot.app)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("count", GPU_COUNTS)
def test_g_gives_the_gpus_the_screen(snap_compare, tmp_path: Path, count: int, size) -> None:
    app = recorded_app(tmp_path / "ws", count)

    async def run_before(pilot) -> None:
        await open_the_run(pilot, "g")
        assert_every_gpu_row_is_whole(pilot.app)
        assert not pilot.app.screen.query_one("#training-top").display
        assert pilot.app.screen.focused is pilot.app.screen.query_one("#training-gpus")

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("key", ["p", "l"])
def test_p_and_l_give_the_plot_or_the_log_the_screen(snap_compare, tmp_path: Path, key: str) -> None:
    app = recorded_app(tmp_path / "ws", 2)

    async def run_before(pilot) -> None:
        await open_the_run(pilot, key)
        assert not pilot.app.screen.query_one("#training-gpus").display

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


async def test_zoom_keys_toggle_back_and_the_choice_is_remembered(tmp_path: Path) -> None:
    app = recorded_app(tmp_path / "ws", 4)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_the_run(pilot, "g")
        screen = app.screen
        assert screen.zoom == "gpus"
        await pilot.press("g")
        assert screen.zoom is None and screen.query_one("#training-top").display
        await pilot.press("l", "escape")
        assert screen.zoom is None and screen.query_one("#training-gpus").display
        await pilot.press("p")
        assert not screen.query_one("#training-gpus").display
    assert Preferences.of(app.workspace).get("training.zoom") == "plots"

    again = GlmApp(app.workspace, gpu_backend=RecordedGpuBackend(FIXTURES / "gpus-4.json"), gpu_interval=3600)
    async with again.run_test(size=(80, 24)) as pilot:
        await open_the_run(pilot)
        assert again.screen.zoom == "plots"
        assert not again.screen.query_one("#training-log-box").display


async def test_processes_scroll_with_the_arrow_keys_when_the_panel_has_the_screen(tmp_path: Path) -> None:
    app = recorded_app(tmp_path / "ws", 8)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_the_run(pilot, "g")
        before = app.screen.query_one("#training-gpus").view()
        assert before.first_process == 0 and before.shown_processes < before.total_processes
        await pilot.press("end")
        after = app.screen.query_one("#training-gpus").view()
        assert after.first_process + after.shown_processes == after.total_processes
        assert any(
            row.rstrip().endswith(f"{after.total_processes} of {after.total_processes} ↑↓")
            for row in screen_text(app)
        )


def test_without_a_driver_the_panel_shows_the_cpu_and_memory(
    snap_compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host, "PROC", FIXTURES / "proc")  # a fixed /proc, so the snapshot repeats
    app = dashboard_app(tmp_path / "ws", NoDriverBackend())

    async def run_before(pilot) -> None:
        await open_the_run(pilot)
        text = screen_text(pilot.app)
        assert SHOWING_HOST in text[-4]
        assert text[-3].split()[:1] == ["CPU"] and text[-3].rstrip().endswith("of 2 cores")
        assert text[-2].split()[:1] == ["RAM"] and text[-2].rstrip().endswith("4.4/23.5 GiB")

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


async def test_the_config_editor_shows_every_gpu_beside_its_free_memory_check(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    backend = RecordedGpuBackend(FIXTURES / "gpus-4.json")
    app = GlmApp(workspace, gpu_backend=backend, gpu_interval=3600, clock=lambda: FIXED_NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.click("#train_file")
        await paste(pilot, str(workspace.data_dir / "sample" / "train.json"))
        await pilot.click("#gpus")
        await pilot.press("0", "comma", "1")
        await settle(pilot)
        # The side panel scrolls at 80x24 (the estimate table comes first): read the estimate's own text.
        side = [row.strip() for row in str(app.screen.query_one("#config-estimate").render()).splitlines()]
        for gpu in app.gpu_snapshot.gpus:
            memory = f"{gpu.memory_used / 2**30:.1f}/{gpu.memory_total / 2**30:.1f} GiB"
            assert any(row.startswith(f"{gpu.index} ") and memory in row for row in side), side
        assert any(row.startswith("GPU 1: ") and "the run fits" in row for row in side), side
