"""Runs side by side as text, for `glmtui compare` and the Compare screen: columns, rows best first, the
settings that differ. Runs of several families add each one's family and published size."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text

from glmtui.text.figures import METRIC_TITLES, MISSING, format_duration, format_loss, format_speed
from glmtui.text.runs import state_text

if TYPE_CHECKING:
    from glmcore.compare import RunComparison


COMPARE_COLUMNS = ("#", "Run", "State", "Final", "Best", "Eval", "Tok/s", "GiB", "Time")
"""The comparison table's columns before the published metrics: rank, name, state, final / best training loss,
best eval loss, mean tokens/s, peak GPU memory, training time."""


def comparison_heading(comparison: RunComparison) -> str:
    runs = len(comparison.runs)
    return f"{runs} run{'s' if runs != 1 else ''}, best first by {METRIC_TITLES.get(comparison.metric, comparison.metric)}"


METRIC_COLUMNS = {"bleu-4": "BLEU4", "rouge-1": "R-1", "rouge-2": "R-2", "rouge-l": "R-L"}
"""The published metrics' column headers: no wider than their values ("12.34"), so a narrow terminal never
cuts two of them into the same "ROUGE…"."""


SCORED_COLUMN = "Scored"
"""The column naming each run's metric mode, shown when the runs were scored in different ways."""
FAMILY_COLUMNS = ("Family", "Size")
"""Beside the run's name when the runs span families: its family's title and published parameters."""


def _modes_differ(comparison: RunComparison) -> bool:
    return len(comparison.metric_modes) > 1


def format_parameters(parameters: int | None) -> str:
    """A published size as models are named: 6173286400 → "6.2B"."""
    return MISSING if parameters is None else f"{parameters / 1e9:.1f}B"


def comparison_columns(comparison: RunComparison) -> list[str]:
    number, name, *figures = COMPARE_COLUMNS
    return [
        number,
        name,
        *(FAMILY_COLUMNS if comparison.across_families else ()),
        *figures,
        *(METRIC_COLUMNS[name] for name in comparison.metric_names),
        *([SCORED_COLUMN] if _modes_differ(comparison) else []),
    ]


def comparison_rows(comparison: RunComparison) -> list[list[str | Text]]:
    """One row per run, best first, under ``comparison_columns``."""
    rows = []
    modes_differ = _modes_differ(comparison)
    for number, summary in enumerate(comparison.runs, start=1):
        memory = summary.peak_gpu_memory_gib
        mode = summary.metric_mode.name if summary.metrics and summary.metric_mode else MISSING
        family = (
            [Text(summary.family or MISSING), format_parameters(summary.published_parameters)]
            if comparison.across_families
            else []
        )
        rows.append(
            [
                str(number),
                Text(summary.name),
                *family,
                state_text(summary.status.state, f": {summary.problem}" if summary.problem else ""),
                format_loss(summary.final_loss),
                format_loss(summary.best_loss),
                format_loss(summary.eval_loss),
                format_speed(summary.tokens_per_s),
                MISSING if memory is None else f"{memory:.1f}",
                format_duration(summary.duration_s),
                *(
                    MISSING if (value := summary.metrics.get(name)) is None else f"{value:.2f}"
                    for name in comparison.metric_names
                ),
                *([mode] if modes_differ else []),
            ]
        )
    return rows


def format_setting(value: object) -> str:
    """A setting's value, short: a path by its last part, a number as written in a config, left out as —."""
    if value is None:
        return MISSING
    if isinstance(value, str) and "/" in value:
        return Path(value).name
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "[]"
    return str(value)


def setting_rows(comparison: RunComparison) -> list[list[str]]:
    """Per differing setting: its name, then its value in each run (in the table's order)."""
    return [
        [name, *(format_setting(summary.settings.get(name)) for summary in comparison.runs)]
        for name in comparison.differing
    ]
