"""`glmtui gpus`: the GPUs here as the Training view shows them, or a recording of them for replay.

The same renderer as the app's GPU panel (``glmtui.text.gpus``), so what the CLI prints over SSH is what the
panel shows, this machine's CPU and memory where there is no NVIDIA driver. ``--record`` writes raw NVML
samples (the format the tests replay); ``--replay`` prints them.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from glmcore.gpu import DEFAULT_INTERVAL_S, RecordedGpuBackend, read_gpus, record_samples
from glmcore.gpu.host import measure_host_usage
from glmtui.text.gpus import gpu_report


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gpus", help="show the GPUs and their processes (as the Training view does), or record them"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--record", metavar="FILE", help="record raw NVML samples to FILE for replay")
    source.add_argument("--replay", metavar="FILE", help="show a recorded samples FILE instead of NVML")
    parser.add_argument("--samples", type=int, default=1, help="how many samples to record (default 1)")
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds between recorded samples"
    )
    parser.add_argument("--width", type=int, help="characters per line (default: the terminal's width)")
    parser.set_defaults(func=show_gpus)


def show_gpus(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    if args.record:
        written = record_samples(args.record, count=max(1, args.samples), interval=args.interval)
        console.print(f"Recorded {max(1, args.samples)} sample(s) to {written}.")
        return 0
    snapshot = read_gpus(RecordedGpuBackend(args.replay) if args.replay else None)
    host = measure_host_usage() if not snapshot.available and not args.replay else None
    width = args.width or console.width
    console.print(gpu_report(snapshot, width, host), width=max(width, 1), crop=False)
    return 0 if snapshot.available else 1
