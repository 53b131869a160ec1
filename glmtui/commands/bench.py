"""`glmtui bench`: the performance figures of docs/benchmarks.md (see glmcore.bench)."""

from __future__ import annotations

import argparse

from glmcore.bench import FIGURES
from glmcore.models import DEFAULT_FAMILY, family_names
from glmtui.commands.family_option import family_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure training, decoding and evaluation speed at a model family's real shape",
        description=(
            "The figures of docs/benchmarks.md on a random checkpoint of a family's shape (ChatGLM-6B's by "
            "default; written once to --workdir in 16-bit: 12 GB for ChatGLM-6B, 19 GB for GLM-4-9B), one JSON "
            "object per line on stdout. Needs a GPU for meaningful numbers; --tiny checks the suite on any machine."
        ),
    )
    parser.add_argument(
        "--family",
        type=family_name,
        default=DEFAULT_FAMILY.name,
        metavar="NAME",
        help=f"the family whose real shape is measured: {family_names()}; {DEFAULT_FAMILY.name} by default",
    )
    parser.add_argument("--tiny", action="store_true", help="a toy shape that checks the suite runs")
    parser.add_argument(
        "--only",
        metavar="FIGURES",
        help=f"comma-separated figures out of {', '.join(FIGURES)} (default: all; decode4i and serve4i only "
        "where torchao is installed: pip install 'glmtui[int4]')",
    )
    parser.add_argument("--workdir", help="where the random checkpoint of the family's real shape is written")
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
