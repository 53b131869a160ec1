"""`glmtui compare RUN|SWEEP …`: runs side by side, best first, with the settings that differ between them."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table
from rich.text import Text

from glmcore.compare import METRICS, compare_runs
from glmtui.commands.runs import PIPED_WIDTH, store_from_workspace
from glmtui.text.compare import comparison_columns, comparison_heading, comparison_rows, setting_rows
from glmtui.text.metrics import comparison_modes_line


def show_comparison(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:
        console.width = PIPED_WIDTH
    comparison = compare_runs(store_from_workspace(), args.runs, args.by)
    console.print(Text(comparison_heading(comparison), style="bold"))
    table = Table(box=None, header_style="bold", collapse_padding=True, pad_edge=False)
    for column in comparison_columns(comparison):
        table.add_column(column.upper(), justify="left" if column in ("Run", "State") else "right")
    for row in comparison_rows(comparison):
        table.add_row(*row)
    console.print(table)
    if modes := comparison_modes_line(comparison):
        console.print(Text(modes))
    console.print()
    rows = setting_rows(comparison)
    if not rows:
        console.print("No setting differs between these runs.")
        return 0
    console.print(Text("Settings that differ", style="bold"))
    settings = Table(box=None, header_style="bold", collapse_padding=True, pad_edge=False)
    settings.add_column("SETTING")
    for number in range(1, len(comparison.runs) + 1):
        settings.add_column(f"#{number}", justify="right")
    for row in rows:
        settings.add_row(*(Text(cell) for cell in row))
    console.print(settings)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare runs or a whole sweep: losses, speed, memory, metrics and the settings that differ",
        description="Show RUNs side by side, best first: final and best training loss, best eval loss, "
        "tokens/s, peak GPU memory, training time and the evaluation metrics where the runs have them, then "
        "the settings whose values differ. A sweep id brings in every run of the sweep.",
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN|SWEEP", help="run ids, names or prefixes, or sweep ids"
    )
    parser.add_argument(
        "--by",
        choices=METRICS,
        metavar="METRIC",
        help="what makes a run best (default: eval_loss when a run has one, else final_loss); one of "
        + ", ".join(METRICS),
    )
    parser.set_defaults(func=show_comparison)
