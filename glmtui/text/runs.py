"""Runs as text: a state's colour, a run's row, Slurm's wait, events, how a run ended; for `glmtui runs`, `logs`,
`train`, `stop` and the Runs screen, Training view and notifier alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from rich.text import Text

from glmcore.runs import RunStatus, Started
from glmcore.slurm.script import SCRIPT_FILE
from glmtui.text.figures import (
    METRIC_TITLES,
    MISSING,
    eta_figure,
    format_age,
    format_duration,
    format_loss,
    format_speed,
    loss_figure,
    speed_figure,
)
from glmtui.text.queue import started_now_sentence

if TYPE_CHECKING:
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


def state_text(state: str, detail: str = "") -> Text:
    """The state in its style (plain for an unknown one), with an optional unstyled detail after it."""
    text = Text(state, style=STATE_STYLES.get(state, ""))
    if detail:
        text.append(detail)
    return text


def slurm_wait(status: RunStatus) -> str | None:
    """Why a run queued in Slurm has not started training: squeue's reason, the nodes it is starting on, or that
    it was just submitted, after its job number; None for any other run."""
    if not status.waits_in_slurm:
        return None
    why = status.pending_reason or (f"starting on {','.join(status.nodes)}" if status.nodes else "submitted")
    return f"Slurm {status.slurm_job}: {why}"


def slurm_detail(status: RunStatus) -> str:
    """After a Slurm run's state: why its job waits (`slurm_wait`) or the nodes it runs on; "" otherwise."""
    if (wait := slurm_wait(status)) is not None:
        return f" ({wait})"
    if status.slurm_job is not None and status.is_active:
        return f" on {','.join(status.nodes)}" if status.nodes else f" (Slurm {status.slurm_job})"
    return ""


def run_cells(status: RunStatus, last_log: dict | None, now: datetime, family: str) -> dict[str, Text]:
    """The figures a run's row shows, by column name, as both the `glmtui runs` table and the Runs screen
    show them: the model family (`glmcore.model_folders.family_title_of` its model folder), the ETA only while the run is active,
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
    parts = [loss_figure(log["loss"])] if log.get("loss") is not None else []
    if log.get("tokens_per_s") is not None:
        parts.append(speed_figure(log["tokens_per_s"]))
    parts.append(eta_figure(log.get("eta_s")))
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
        fields = [loss_figure(record.get("loss"))]
        if record.get("learning_rate") is not None:
            fields.append(f"lr {record['learning_rate']:.2e}")
        if record.get("grad_norm") is not None:
            fields.append(f"grad {record['grad_norm']:.3f}")
        if record.get("tokens_per_s") is not None:
            fields.append(speed_figure(record["tokens_per_s"]))
        if record.get("gpu_memory_gib"):
            fields.append("mem " + "/".join(f"{gib:.1f}" for gib in record["gpu_memory_gib"]) + " GiB")
        fields.append(eta_figure(record.get("eta_s")))
        return head + "  ".join(fields)
    details = {key: value for key, value in record.items() if key not in ("kind", "step", "time")}
    return head + "  ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in details.items()
    )


def started_sentence(run_id: str, started: int, *, slurm: bool) -> str:
    """What `glmtui train --detach` and the config editor say once a run is launched: its pid, or its Slurm job."""
    if slurm:
        return f"Submitted run {run_id} to Slurm as job {started} ({SCRIPT_FILE} in its folder)."
    return f"Started run {run_id} in the background (pid {started})."


def start_or_resume_sentence(run_id: str, started: Started) -> str:
    """What `glmtui resume` and the r key say once `start_or_resume` is under way."""
    if started.how == "ahead of the queue":
        return started_now_sentence(run_id, started.pid)
    if started.how == "resumed":
        return started.resumed
    return started_sentence(run_id, started.pid, slurm=started.slurm)


def run_end_sentence(run_id: str, status: RunStatus, detail: str | None = None) -> str:
    """How a run ended, in one sentence: its state at its step, then ``detail`` (by default ": " and its reason)."""
    if detail is None:
        detail = f": {status.reason}" if status.reason else ""
    return f"Run {run_id} {status.state} at step {status.step}/{status.total}{detail}."


def ending_sentence(ending: Ending) -> str:
    """What the app says when a run or a sweep ends."""
    if ending.event == "sweep-ended":
        states = ", ".join(f"{count} {state}" for state, count in ending.sweep_states)
        return f"Sweep {ending.sweep} ended: {states}."
    return run_end_sentence(ending.run.id, ending.status)


def skipped_checkpoint_line(entry) -> str:
    """How an evaluation tells of a checkpoint it skipped (a `glmcore.evaluate.SkippedCheckpoint`)."""
    return f"{entry.label} was skipped: {entry.reason}"
