"""`glmtui bench`: the performance figures of docs/benchmarks.md (see glmcore.bench)."""

from __future__ import annotations

import argparse

from glmcore.bench import FIGURES
from glmcore.models import DEFAULT_FAMILY, FAMILIES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure training, decoding and evaluation speed at a model family's real shape",
        description=(
            "The figures of docs/benchmarks.md on a random checkpoint of a family's shape (ChatGLM-6B's by "
            "default; written once to --workdir, 12 GB), one JSON object per line on stdout. Needs a GPU for "
            "meaningful numbers; --tiny checks the suite on any machine."
        ),
    )
    parser.add_argument(
        "--family",
        choices=[family.name for family in FAMILIES],
        default=DEFAULT_FAMILY.name,
        help=f"the family whose real shape is measured (default {DEFAULT_FAMILY.name})",
    )
    parser.add_argument("--tiny", action="store_true", help="a toy shape that checks the suite runs")
    parser.add_argument(
        "--only",
        metavar="FIGURES",
        help=f"comma-separated figures out of {', '.join(FIGURES)} (default: all)",
    )
    parser.add_argument("--workdir", help="where the random 6B checkpoint is written (12 GB)")
    parser.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from glmcore.bench import main

    argv = ["--tiny"] if args.tiny else []
    argv += ["--family", args.family]
    if args.only:
        argv += ["--only", args.only]
    if args.workdir:
        argv += ["--workdir", args.workdir]
    return main(argv)
