"""How runs, events and durations read, in one place for the CLI and the app.

Everything here turns engine records (a `RunStatus`, an events.jsonl record) into text; both front ends
print or show what these return, so a state has one colour and an event one sentence wherever it appears.
Rich `Text` is returned where a value carries style, so no user-controlled string is ever parsed as markup.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text

from glmcore.runs import RunStatus

if TYPE_CHECKING:
    from glmcore.compare import RunComparison
    from glmcore.model_folders import ModelFolderState
    from glmcore.notify import Ending

STATE_STYLES = {
    "created": "dim",
    "queued": "blue",
    "running": "bold green",
    "stopping": "yellow",
    "stopped": "yellow",
    "finished": "cyan",
    "failed": "bold red",
    "crashed": "bold red",
}
"""One style per run state; a state this version does not know is shown as it is, unstyled."""

MISSING = "—"


def family_title(model_dir: Path, family: str | None = None) -> str:
    """The model family of a folder as users read it ("ChatGLM3-6B"), or — when it cannot be told; `family` is a
    run's `family` setting, which wins."""
    from glmcore.errors import GlmError
    from glmcore.models import family_for

    try:
        found, _ = family_for(model_dir, family)
    except GlmError:
        return MISSING
    return found.title


MODEL_STATE_TEXT = {
    "ready": "complete",
    "building": "building",
    "downloading": "downloading",
    "foreign": "not a GLM model",
    "unclear": "family unclear: set it",
    "unreadable": "unreadable",
}
"""A model folder's state (`glmcore.model_folders.STATES`) as the Models screen and `glmtui models` show it;
an incomplete folder reads "missing N"."""
MODEL_STATE_STYLES = {
    "ready": "green",
    "building": "yellow",
    "downloading": "yellow",
    "unclear": "bold yellow",
}
MODEL_COLUMNS = ("Model", "Family", "Size", "State")


def model_state_text(folder: ModelFolderState) -> Text:
    """A model folder's state in a few words (an incomplete folder: "missing N"), styled."""
    if folder.state == "incomplete":
        words = f"missing {len(folder.missing)}"
    else:
        words = MODEL_STATE_TEXT.get(folder.state, folder.state)
    return Text(words, style=MODEL_STATE_STYLES.get(folder.state, ""))


def model_cells(folder: ModelFolderState, models_dir: Path) -> tuple[str, str, str, Text]:
    """A model folder's row: its path under models/, family, size and state (a `Text`: never markup)."""
    from glmcore.units import format_bytes

    inside = folder.path.is_relative_to(models_dir)
    name = str(folder.path.relative_to(models_dir)) if inside else str(folder.path)
    family = folder.family.title if folder.family is not None else MISSING
    return name, family, format_bytes(folder.size_bytes), model_state_text(folder)


def model_detail(folder: ModelFolderState) -> Text:
    """The detail of a model folder: its state and path, then why it is in that state."""
    text = model_state_text(folder)
    text.append(f" · {folder.path}\n", style="bold")
    text.append(folder.reason)
    return text


def format_duration(seconds: float | None) -> str:
    """A short human duration: 45s, 12m 03s, 3h 07m, 2d 04h; an em dash when unknown (or not a number)."""
    if not _is_number(seconds) or not math.isfinite(seconds):
        return MISSING
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_age(timestamp: str | None, now: datetime) -> str:
    """How long ago an ISO timestamp was, as `format_duration` writes it."""
    try:
        return format_duration((now - datetime.fromisoformat(timestamp)).total_seconds())
    except (TypeError, ValueError):  # absent, or not a time with its offset (a hand-edited status.json)
        return MISSING


def format_loss(loss: float | None) -> str:
    return f"{loss:.4f}" if _is_number(loss) else MISSING


def format_speed(tokens_per_s: float | None) -> str:
    return f"{tokens_per_s:,.0f}" if _is_number(tokens_per_s) else MISSING


def _is_number(value: object) -> bool:
    """Whether a figure read from a run folder is one to format (not None, text or true/false)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def state_text(state: str, detail: str = "") -> Text:
    """The state in its style (plain for an unknown one), with an optional unstyled detail after it."""
    text = Text(state, style=STATE_STYLES.get(state, ""))
    if detail:
        text.append(detail)
    return text


def slurm_detail(status: RunStatus) -> str:
    """After a Slurm run's state: why its job waits (squeue's reason) or the nodes it runs on; "" otherwise."""
    if status.slurm_job is None:
        return ""
    if status.state == "queued":
        waits = status.pending_reason or (
            f"starting on {','.join(status.nodes)}" if status.nodes else "submitted"
        )
        return f" (Slurm {status.slurm_job}: {waits})"
    if status.is_active:
        return f" on {','.join(status.nodes)}" if status.nodes else f" (Slurm {status.slurm_job})"
    return ""


def run_cells(status: RunStatus, last_log: dict | None, now: datetime, family: str) -> dict[str, Text]:
    """The figures a run's row shows, by column name, as both the `glmtui runs` table and the Runs screen
    show them: the model family (`family_title` of its model folder), the ETA only while the run is active,
    the age since it was created. Text, as everything read from a run folder: never parsed as markup."""
    log = last_log or {}
    cells = {
        "Family": family,
        "Step": f"{status.step}/{status.total}",
        "Loss": format_loss(log.get("loss")),
        "Tok/s": format_speed(log.get("tokens_per_s")),
        "ETA": format_duration(log.get("eta_s")) if status.is_active else MISSING,
        "GPUs": ",".join(map(str, status.gpus)) or "cpu",
        "Age": format_age(status.created or status.started, now),
    }
    return {column: Text(value) for column, value in cells.items()}


RUN_COLUMN_DROP_ORDER = ("Age", "GPUs", "Tok/s", "Family", "Loss", "Step")
"""Least important first: the columns of a table of runs left out, in this order, while it is wider than the
terminal (the Runs screen's line under the table still shows them). Run, State and ETA always stay, unless every
row's ETA is empty (finished runs): a column with nothing to say goes first."""
KEPT_RUN_COLUMNS = ("Run", "State")


def fit_run_columns(
    widths: dict[str, int], width: int, padding: int, empty: Iterable[str] = ()
) -> dict[str, int]:
    """``widths`` (cells by column) less, while the columns, each with ``padding`` cells beside it, are wider
    than ``width``: first the ``empty`` columns (no row shown has a value there), then RUN_COLUMN_DROP_ORDER's."""
    fitted = dict(widths)
    blank = [column for column in empty if column not in KEPT_RUN_COLUMNS]
    for column in [*blank, *RUN_COLUMN_DROP_ORDER]:
        if sum(cells + padding for cells in fitted.values()) <= width:
            break
        fitted.pop(column, None)
    return fitted


def progress_summary(log: dict | None) -> str:
    """The newest training record in one line: loss · tokens/s · ETA."""
    if log is None:
        return "starting…"
    parts = [f"loss {log['loss']:.4f}"] if log.get("loss") is not None else []
    if log.get("tokens_per_s") is not None:
        parts.append(f"{log['tokens_per_s']:,.0f} tok/s")
    parts.append(f"ETA {format_duration(log.get('eta_s'))}")
    return " · ".join(parts)


def event_sentence(record: dict) -> str | None:
    """A sentence for an event other than the per-step ``log`` records (which curves and tables show)."""
    kind, step = record.get("kind"), record.get("step")
    if kind == "log":
        return None
    if kind == "start":
        return f"» started at step {step} of {record.get('total')}"
    if kind == "checkpoint":
        return f"» checkpoint saved at step {step}"
    if kind == "resumed":
        return f"» resumed from step {step}"
    if kind == "eval":
        loss = record.get("eval_loss")
        scores = "".join(
            f", {METRIC_TITLES[name]} {record[f'eval_{name}']:.2f}"
            for name in ("bleu-4", "rouge-l")
            if isinstance(record.get(f"eval_{name}"), float | int)
        )
        return f"» evaluation at step {step}" + ("" if loss is None else f": eval loss {loss:.4f}") + scores
    if kind == "end":
        return f"» {'stopped' if record.get('stopped') else 'finished'} at step {step}"
    if kind == "failed":
        return f"» failed at step {step}: {record.get('reason')}"
    return f"» {kind} at step {step}"


def event_line(record: dict) -> str:
    """One line per event for `glmtui logs --events`: time, step, kind, then its figures."""
    kind, step = record.get("kind", "?"), record.get("step")
    head = f"{record.get('time', '')} step {step if step is not None else MISSING:>6} {kind:<10} "
    if kind == "log":
        fields = [f"loss {format_loss(record.get('loss'))}"]
        if record.get("learning_rate") is not None:
            fields.append(f"lr {record['learning_rate']:.2e}")
        if record.get("grad_norm") is not None:
            fields.append(f"grad {record['grad_norm']:.3f}")
        if record.get("tokens_per_s") is not None:
            fields.append(f"{record['tokens_per_s']:,.0f} tok/s")
        if record.get("gpu_memory_gib"):
            fields.append("mem " + "/".join(f"{gib:.1f}" for gib in record["gpu_memory_gib"]) + " GiB")
        fields.append(f"ETA {format_duration(record.get('eta_s'))}")
        return head + "  ".join(fields)
    details = {key: value for key, value in record.items() if key not in ("kind", "step", "time")}
    return head + "  ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in details.items()
    )


METRIC_TITLES = {
    "final_loss": "final loss",
    "best_loss": "best loss",
    "eval_loss": "eval loss",
    "tokens_per_s": "tokens/s",
    "peak_gpu_memory_gib": "peak GPU memory",
    "duration_s": "duration",
    "bleu-4": "BLEU-4",
    "rouge-1": "Rouge-1",
    "rouge-2": "Rouge-2",
    "rouge-l": "Rouge-L",
}
COMPARE_COLUMNS = ("#", "Run", "State", "Final", "Best", "Eval", "Tok/s", "GiB", "Time")
"""The comparison table's columns before the published metrics: rank, name, state, final / best training loss,
best eval loss, mean tokens/s, peak GPU memory, training time."""


def comparison_heading(comparison: RunComparison) -> str:
    runs = len(comparison.runs)
    return f"{runs} run{'s' if runs != 1 else ''}, best first by {METRIC_TITLES.get(comparison.metric, comparison.metric)}"


METRIC_COLUMNS = {"bleu-4": "BLEU4", "rouge-1": "R-1", "rouge-2": "R-2", "rouge-l": "R-L"}
"""The published metrics' column headers: no wider than their values ("12.34"), so a narrow terminal never
cuts two of them into the same "ROUGE…"."""


def comparison_columns(comparison: RunComparison) -> list[str]:
    return [*COMPARE_COLUMNS, *(METRIC_COLUMNS[name] for name in comparison.metric_names)]


def comparison_rows(comparison: RunComparison) -> list[list[str | Text]]:
    """One row per run, best first, under ``comparison_columns``."""
    rows = []
    for number, summary in enumerate(comparison.runs, start=1):
        memory = summary.peak_gpu_memory_gib
        rows.append(
            [
                str(number),
                Text(summary.name),
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


def ending_sentence(ending: Ending) -> str:
    """What the app says when a run or a sweep ends."""
    status = ending.status
    if ending.event == "sweep-ended":
        states = ", ".join(f"{count} {state}" for state, count in ending.sweep_states)
        return f"Sweep {ending.sweep} ended: {states}."
    reason = f": {status.reason}" if status.reason else ""
    return f"Run {ending.run.id} {status.state} at step {status.step}/{status.total}{reason}."


def skipped_checkpoint_line(entry) -> str:
    """How an evaluation tells of a checkpoint it skipped (a `glmcore.evaluate.SkippedCheckpoint`)."""
    return f"{entry.label} was skipped: {entry.reason}"
