"""Where a P-tuning step's time and memory go: one Trainer step under torch.profiler, and the tensors alive at
the step's memory peak grouped by the line that allocated them. ChatGLM-6B's shape, random weights.

    python tools/perf/profile_steps.py --workdir /tmp/bench [16:16:1 16:1:1 4:1:16 ...]   (bits:batch:accumulation)

Prints, per setting: wall time of the profiled step, GPU kernel time inside it, the top kernels, the top
CPU-side operators, and the peak's composition. The random checkpoint is the one `glmcore.bench` writes.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
from transformers import TrainerCallback

from glmcore import bench


def peak_composition(snapshot: dict, top: int = 14) -> list[tuple[str, float]]:
    """Replay the allocator trace; group what is alive at the highest point by its innermost glmcore/torch line."""
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for event in snapshot["device_traces"][0]:
        action, address, size = event["action"], event["addr"], event["size"]
        if action == "alloc":
            frames = event.get("frames") or []
            where = next(
                (
                    f"{Path(f['filename']).name}:{f['line']} {f['name']}"
                    for f in frames
                    if "glmcore" in f["filename"]
                ),
                next((f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in frames), "?"),
            )
            live[address] = (size, where)
            total += size
            if total > peak:
                peak, at_peak = total, dict(live)
        elif action in ("free_completed",) and address in live:
            total -= live.pop(address)[0]
    groups: collections.Counter = collections.Counter()
    for size, where in at_peak.values():
        groups[where] += size
    return [("TOTAL traced live at peak", peak / 2**30)] + [
        (w, s / 2**30) for w, s in groups.most_common(top)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("settings", nargs="*", default=["16:16:1", "16:1:1", "4:1:16"])
    args = parser.parse_args()
    model_dir = args.workdir / "chatglm-6b-random"
    if not model_dir.is_dir():
        bench.write_random_checkpoint(model_dir, bench.CHATGLM_6B)
    for setting in args.settings:
        bits, batch, accumulation = map(int, setting.split(":"))
        report: dict = {}

        class Profile(TrainerCallback):
            def __init__(self, report: dict) -> None:
                self.report = report

            def on_step_begin(self, a, state, control, **kwargs):
                if state.global_step == 3:
                    torch.cuda.synchronize()
                    torch.cuda.memory._record_memory_history(max_entries=200000)
                    self.profiler = torch.profiler.profile(
                        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                    )
                    self.profiler.__enter__()
                    self.start = torch.cuda.Event(enable_timing=True)
                    self.end = torch.cuda.Event(enable_timing=True)
                    self.start.record()

            def on_step_end(self, a, state, control, **kwargs):
                if state.global_step == 4:
                    self.end.record()
                    torch.cuda.synchronize()
                    self.profiler.__exit__(None, None, None)
                    self.report["wall_ms"] = self.start.elapsed_time(self.end)
                    self.report["snapshot"] = torch.cuda.memory._snapshot()
                    torch.cuda.memory._record_memory_history(enabled=None)
                    self.report["profiler"] = self.profiler

        figures = bench.ptuning_steps(
            model_dir, bench.CHATGLM_6B, bits, batch, accumulation, 4, None, [Profile(report)]
        )
        profiler = report["profiler"]
        events = profiler.key_averages()
        kernel_us = sum(
            e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA
        )
        print(f"=== {setting}: {figures}")
        print(f"profiled step wall {report['wall_ms']:.1f} ms; GPU kernels {kernel_us / 1000:.1f} ms")
        print(events.table(sort_by="self_cuda_time_total", row_limit=22, max_name_column_width=60))
        print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
        for where, gib in peak_composition(report["snapshot"]):
            print(f"  {gib:7.3f} GiB  {where}")


if __name__ == "__main__":
    main()
