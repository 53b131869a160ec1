"""Issue 16 on a GPU machine: the real app's Training view, read through NVML, beside nvidia-smi at that moment.

    python tools/gpu_dashboard_check.py OUTDIR [--no-training]

Needs the repo on PYTHONPATH and the app's imports: textual, textual-plotext, rich, nvidia-ml-py, tomli-w,
httpx2 and huggingface_hub. The real training run also needs torch, transformers, accelerate, datasets,
sentencepiece and safetensors; without them the check opens a stand-in run folder instead (the GPU figures
stay real either way) and says so in summary.json.

1. In OUTDIR/workspace, a tiny ChatGLM-6B checkpoint in the published layout trains on GPU 0 as a real
   detached run (`glmcore.runs.launch`), so the panel has one of glmtui's own ranks to mark.
2. The app (GlmApp with the real NVML backend, sampling every 0.5 s) runs headless through Textual's test
   harness at 80x24 and 120x40; keys open the run (enter on the Runs screen) and zoom the GPUs (g).
3. At each capture: the screen's text (``screen-<size>[-gpus].txt``) and SVG, the raw NVML sample the panel
   drew (``nvml-<size>[-gpus].json``, replayable with ``glmtui gpus --replay``), then at once ``nvidia-smi``
   and its CSV queries (``nvidia-smi-<size>[-gpus].txt``), with both times in ``summary.json``.
4. The run is stopped by force; ``report.md`` gathers the texts for docs/benchmarks.md.

Exits 1 when NVML cannot be read (the captures are still written: they show the one-line message).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from textual.widgets import DataTable

from glmcore.config import RunConfig
from glmcore.gpu import (
    SAMPLES_FORMAT,
    GpuSnapshot,
    GpuUnavailableError,
    NvmlBackend,
    RawSample,
    snapshot_from_raw,
)
from glmcore.runs import Run, RunStore
from glmcore.workspace import Workspace
from glmtui.app import GlmApp
from glmtui.preferences import Preferences
from glmtui.screens.runs import RunsScreen
from glmtui.screens.training import ZOOM_PREFERENCE, TrainingScreen

SIZES = ((80, 24), (120, 40))
SAMPLE_INTERVAL_S = 0.5
NVIDIA_SMI_QUERIES = (
    ["nvidia-smi"],
    [
        "nvidia-smi",
        "--query-gpu=index,name,memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw,power.limit",
        "--format=csv",
    ],
    ["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,used_memory,process_name", "--format=csv"],
)


class RememberingNvml(NvmlBackend):
    """The real NVML backend, keeping the raw sample behind the latest snapshot so a capture can save it."""

    def __init__(self) -> None:
        super().__init__()
        self.last_raw: RawSample | None = None

    def read(self) -> GpuSnapshot:
        try:
            raw = self.read_raw()
        except GpuUnavailableError as error:
            return GpuSnapshot.unavailable(str(error))
        self.last_raw = raw
        return snapshot_from_raw(raw)


def start_training(workspace: Workspace, log: list[str]) -> Run | None:
    """A real detached P-tuning run of a tiny model on GPU 0, once it has logged steps; None if it cannot."""
    try:
        import torch

        if not torch.cuda.is_available():
            log.append("torch sees no CUDA device: no training run")
            return None
        from glmcore.models.chatglm6b.tiny import write_tiny_checkpoint
        from glmcore.runs import launch
        from glmcore.sample_data import write_sample_dataset
    except ImportError as error:
        log.append(f"the engine's training stack is missing ({error}): no training run")
        return None
    model = write_tiny_checkpoint(workspace.models_dir / "tiny-chatglm", seed=1)
    train_file, _ = write_sample_dataset(workspace.data_dir / "sample", train_count=256, dev_count=4)
    config = RunConfig(
        name="dashboard-check",
        model_path=model,
        train_file=train_file,
        quantization_bit=16,
        pre_seq_len=8,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        max_steps=1_000_000,
        save_steps=1_000_000,
        logging_steps=5,
        max_source_length=64,
        max_target_length=64,
        gpus=[0],
    )
    run = RunStore(workspace.runs_dir).create(config)
    launch(run, detach=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run.status()
        if not status.is_active:
            log.append(f"the training run ended {status.state}: {status.reason}; see {run.log_path}")
            return None
        if status.step >= 20:
            log.append(f"training run {run.id} is at step {status.step} on GPU 0")
            return run
        time.sleep(1)
    log.append("the training run did not reach step 20 in 10 minutes")
    stop_training(run)
    return None


def write_stand_in_run(workspace: Workspace) -> Run:
    """A run folder as a run on another host leaves it: the Training view has something to open."""
    config = RunConfig(
        name="stand-in", model_path=workspace.models_dir / "none", train_file=workspace.data_dir / "none"
    )
    run = RunStore(workspace.runs_dir).create(config)
    run.write_status(state="running", pid=1, host="stand-in-host", step=0, total=config.max_steps)
    return run


def stop_training(run: Run) -> None:
    from glmcore.runs import stop

    if run.status().is_active:
        stop(run, force=True, grace=10.0)


def screen_text(app: GlmApp) -> str:
    """The screen as the terminal shows it (Textual's compositor, as its screenshots use it)."""
    return "\n".join(strip.text.rstrip() for strip in app.screen._compositor.render_strips()) + "\n"


def nvidia_smi() -> str:
    """nvidia-smi's table and CSV queries, one after the other, as fast as they run."""
    parts = []
    for command in NVIDIA_SMI_QUERIES:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
            parts.append(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
        except (OSError, subprocess.TimeoutExpired) as error:
            parts.append(f"$ {' '.join(command)}\n({error})\n")
    return "\n".join(parts)


async def capture(app: GlmApp, backend: RememberingNvml, out: Path, name: str, summary: dict) -> None:
    """Save the screen, the NVML sample it drew and nvidia-smi's view, nvidia-smi last and at once."""
    snapshot = app.gpu_snapshot
    raw = backend.last_raw
    text = screen_text(app)
    svg = app.export_screenshot(title=f"glmtui {name}")
    smi_started = time.time()
    smi = nvidia_smi()
    (out / f"screen-{name}.txt").write_text(text, encoding="utf-8")
    (out / f"screen-{name}.svg").write_text(svg, encoding="utf-8")
    (out / f"nvidia-smi-{name}.txt").write_text(smi, encoding="utf-8")
    if raw is not None:
        sample = {"format": SAMPLES_FORMAT, "samples": [raw]}
        (out / f"nvml-{name}.json").write_text(json.dumps(sample, indent=1) + "\n", encoding="utf-8")
    summary["captures"][name] = {
        "panel_sampled_at": snapshot.timestamp if snapshot else None,
        "nvidia_smi_started_at": smi_started,
        "seconds_between": round(smi_started - snapshot.timestamp, 3) if snapshot else None,
        "gpus_available": bool(snapshot and snapshot.available),
    }


def runs_listed(app: GlmApp) -> bool:
    """Whether the Runs screen is up with its run in the table (a loaded machine starts the app slowly)."""
    return (
        len(app.screen_stack) > 0
        and isinstance(app.screen, RunsScreen)
        and app.screen.query_one("#runs-table", DataTable).row_count > 0
    )


async def check_size(workspace: Workspace, size: tuple[int, int], out: Path, summary: dict) -> None:
    """One app at ``size``: open the run, capture; zoom the GPUs (g), capture."""
    Preferences.of(workspace).set(
        ZOOM_PREFERENCE, None
    )  # the previous size's g is remembered: start unzoomed
    backend = RememberingNvml()
    app = GlmApp(workspace, gpu_backend=backend, gpu_interval=SAMPLE_INTERVAL_S)
    async with app.run_test(size=size) as pilot:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not runs_listed(app):
            await pilot.pause(0.2)
        await pilot.press("enter")  # the Runs screen opens the selected (only) run
        screen = app.screen
        if not isinstance(screen, TrainingScreen):
            raise SystemExit(
                f"enter on the Runs screen opened {type(screen).__name__}, not the Training view"
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and app.gpu_snapshot is None:
            await pilot.pause(0.2)
        await pilot.pause(2.0)  # the run's curve and log followed, a fresh GPU sample drawn
        label = f"{size[0]}x{size[1]}"
        await capture(app, backend, out, label, summary)
        await pilot.press("g")
        await pilot.pause(SAMPLE_INTERVAL_S * 3)
        await capture(app, backend, out, f"{label}-gpus", summary)


def write_report(out: Path, summary: dict) -> None:
    lines = ["# GPU dashboard check", "", "```json", json.dumps(summary, indent=2), "```", ""]
    for name in summary["captures"]:
        lines += [f"## {name}", "", "The app:", "", "```"]
        lines.append((out / f"screen-{name}.txt").read_text(encoding="utf-8").rstrip())
        lines += ["```", "", "nvidia-smi right after:", "", "```"]
        lines.append((out / f"nvidia-smi-{name}.txt").read_text(encoding="utf-8").rstrip())
        lines += ["```", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "outdir", type=Path, help="where the captures go (created; its workspace/ is replaced)"
    )
    parser.add_argument("--no-training", action="store_true", help="open a stand-in run instead of training")
    args = parser.parse_args(argv)
    out = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "workspace", ignore_errors=True)
    workspace = Workspace(out / "workspace").ensure()
    log: list[str] = []
    summary: dict = {"python": sys.version.split()[0], "log": log, "captures": {}}
    run = None if args.no_training else start_training(workspace, log)
    summary["training_run"] = run is not None
    try:
        if run is None:
            write_stand_in_run(workspace)
        for size in SIZES:
            asyncio.run(check_size(workspace, size, out, summary))
    finally:
        if run is not None:
            stop_training(run)
            log.append(f"training run stopped: {run.status().state}")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_report(out, summary)
    print(f"Wrote {out}/report.md and the captures beside it.")
    return 0 if all(capture["gpus_available"] for capture in summary["captures"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
