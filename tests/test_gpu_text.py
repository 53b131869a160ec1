"""glmtui.text.gpus, the one GPU renderer, on recorded samples of 1, 2, 4 and 8 GPUs; and `glmtui gpus`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from glmcore.gpu import NO_DRIVER_REASON, SAMPLES_FORMAT, GpuSnapshot, RecordedGpuBackend, read_gpus
from glmtui.text.gpus import SHOWING_HOST, compact_gpu_rows, gpu_text, gpu_view

FIXTURES = Path(__file__).parent / "fixtures"
GPU_COUNTS = (1, 2, 4, 8)
NVML_PRESENT = read_gpus().available


def recorded(count: int) -> GpuSnapshot:
    return RecordedGpuBackend(FIXTURES / f"gpus-{count}.json").read()


def memory_text(gpu) -> str:
    return f"{gpu.memory_used / 2**30:.1f}/{gpu.memory_total / 2**30:.1f} GiB"


@pytest.mark.parametrize("count", GPU_COUNTS)
@pytest.mark.parametrize("width", [30, 38, 60, 78, 118])
def test_every_gpu_row_is_whole_at_any_width(count: int, width: int) -> None:
    snapshot = recorded(count)
    rows = [row.plain for row in compact_gpu_rows(snapshot.gpus, width)]

    assert len(rows) == count
    for row, gpu in zip(rows, snapshot.gpus, strict=True):
        assert len(row) <= width
        assert row.split()[0] == str(gpu.index)
        assert memory_text(gpu) in row and f"{gpu.utilization_gpu}%" in row
        if width >= 60:
            assert f"{gpu.temperature}°C" in row
            assert f"{gpu.power_draw:.0f}/{gpu.power_limit:.0f}W" in row
        if width >= 78:
            assert gpu.name.removeprefix("NVIDIA ") in row
    assert len({len(row) for row in rows}) == 1  # aligned columns


def test_the_fuller_view_has_two_rows_per_gpu_with_nvidia_smi_figures() -> None:
    view = gpu_view(recorded(4), 78, height=24)
    lines = [line.plain for line in view.lines]

    assert view.full
    assert lines[0].startswith("GPU 0  NVIDIA RTX A6000") and lines[0].endswith(
        "fan 62%   78°C   284W / 300W"
    )
    assert (
        lines[7].startswith("    MEM ")
        and "15.6/48.0 GiB" in lines[7]
        and lines[7].endswith("UTIL " + "░" * 22 + "   0%")
    )
    assert all(len(line) <= 78 for line in lines)


def test_processes_show_user_memory_and_our_ranks_with_their_run() -> None:
    lines = gpu_text(recorded(2), width=100).splitlines()

    assert lines[0] == "2 GPUs · driver 550.54.15 · CUDA 12.4"
    table = lines[lines.index(next(line for line in lines if line.startswith("GPU     PID"))) + 1 :]
    assert [row.split()[:4] for row in table] == [
        ["0", "62001", "ada", "31.7"],
        ["0", "2214", "?", "N/A"],
        ["0", "1875", "root", "0.1"],
        ["1", "62002", "ada", "31.5"],
        ["1", "48830", "bob", "22.8"],
    ]
    assert "◆ 20260501-110000-longer-prefix rank 1  python -u -m glmcore.trai…" in table[3]
    assert table[1].endswith("(not visible from here)")
    assert table[4].endswith("python train.py --config configs/llama-7b-lora.yaml --output_dir …")
    assert all(len(row) <= 100 for row in lines)


def test_a_single_process_run_is_marked_without_a_rank() -> None:
    row = gpu_text(recorded(1), width=78).splitlines()[4]

    assert row.split()[:3] == ["0", "51207", "ada"] and "◆ 20260501-110000-longer-prefix  python" in row


def test_processes_scroll_below_whole_gpu_rows_when_the_space_is_short() -> None:
    snapshot = recorded(8)
    view = gpu_view(snapshot, 78, height=14, first=4)
    lines = [line.plain for line in view.lines]

    assert not view.full and len(lines) == 14
    assert [line.split()[0] for line in lines[:8]] == [str(index) for index in range(8)]
    assert lines[8].endswith("5-9 of 12 ↑↓")
    assert [line.split()[1] for line in lines[9:]] == ["81003", "1402", "81004", "81005", "81006"]
    last = gpu_view(snapshot, 78, height=14, first=100)
    assert (last.first_process, last.shown_processes) == (7, 5)  # clamped: the last rows fill the space


def test_a_multi_line_command_stays_on_one_row(tmp_path: Path) -> None:
    process = {"pid": 7, "usedGpuMemory": 2**20, "command": "python -c import torch\nprint(torch.ones(1))"}
    sample = {"timestamp": 0.0, "devices": [{"index": 0, "compute_processes": [process]}]}
    path = tmp_path / "samples.json"
    path.write_text(json.dumps({"format": SAMPLES_FORMAT, "samples": [sample]}), encoding="utf-8")

    lines = gpu_text(RecordedGpuBackend(path).read(), width=100).splitlines()

    assert lines[-1].endswith("python -c import torch print(torch.ones(1))")
    assert "N/A" in lines[1]  # a GPU NVML told nothing about still gets its row


def test_without_a_driver_the_panel_is_one_line_that_fits_80_columns() -> None:
    lines = gpu_view(GpuSnapshot.unavailable(NO_DRIVER_REASON), 78, height=10).lines

    assert [line.plain for line in lines] == [NO_DRIVER_REASON]
    assert len(NO_DRIVER_REASON) <= 78


def test_glmtui_gpus_prints_a_recording() -> None:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "glmtui.cli",
            "gpus",
            "--replay",
            str(FIXTURES / "gpus-8.json"),
            "--width",
            "80",
        ],
        capture_output=True,
        text=True,
        check=True,
    )

    assert finished.stdout.count("NVIDIA H100 80GB HBM3") == 8
    assert finished.stdout.count("◆ 20260501-110000-longer-prefix rank") == 8


@pytest.mark.skipif(NVML_PRESENT, reason="this machine has an NVIDIA driver")
def test_glmtui_gpus_without_a_driver_shows_the_cpu_and_memory_and_exits_nonzero() -> None:
    finished = subprocess.run([sys.executable, "-m", "glmtui.cli", "gpus"], capture_output=True, text=True)

    assert finished.returncode == 1
    heading, cpu, memory = finished.stdout.strip().splitlines()
    assert heading == SHOWING_HOST
    assert cpu.split()[0] == "CPU" and "% of " in cpu
    assert memory.split()[0] == "RAM" and memory.endswith(" GiB")
    assert "Traceback" not in finished.stderr
