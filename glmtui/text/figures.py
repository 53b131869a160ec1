"""Figures as text: durations, losses, speeds and metric names, written one way everywhere; — where a figure
is unknown (or not a number: run folders are hand-editable).
"""

from __future__ import annotations

import math
from datetime import datetime

MISSING = "—"


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


def loss_figure(loss: float | None) -> str:
    return f"loss {format_loss(loss)}"


def speed_figure(tokens_per_s: float | None) -> str:
    return f"{format_speed(tokens_per_s)} tok/s"


def eta_figure(eta_s: float | None) -> str:
    return f"ETA {format_duration(eta_s)}"


def speed_and_eta(tokens_per_s: float | None, eta_s: float | None) -> str:
    """How fast generation goes and when it ends: "1,234 tok/s · ETA 3m 05s" (no ETA when ``eta_s`` is None)."""
    speed = speed_figure(tokens_per_s)
    return speed if eta_s is None else f"{speed} · {eta_figure(eta_s)}"


def _is_number(value: object) -> bool:
    """Whether a figure read from a run folder is one to format (not None, text or true/false)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


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
