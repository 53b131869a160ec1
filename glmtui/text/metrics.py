"""How scores say the way they were computed (glmcore.metrics' modes), for `glmtui eval`, `glmtui compare`, and
the Evaluate and Compare screens: one wording everywhere."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glmcore.compare import RunComparison
    from glmcore.metrics import MetricMode


def _how(mode: MetricMode) -> str:
    return f"as {mode.title} does: {mode.bleu}, Rouge ×100"


def scored_line(mode: MetricMode) -> str:
    """ "Scored as ChatGLM-6B ptuning/main.py does: character BLEU-4 ×100, Rouge ×100, mean over examples." """
    return f"Scored {_how(mode)}, mean over examples."


def metric_row_label(name: str, mode: MetricMode) -> str:
    """A metric's name where a table lists them, BLEU-4 with its scale ("predict_bleu-4 ×100", "bleu-4 0–1")."""
    return f"{name} {mode.bleu_scale}" if name.endswith("bleu-4") else name


def comparison_modes_line(comparison: RunComparison) -> str | None:
    """What the runs' metrics mean: the one way they were all scored, or that they were scored in different ways
    and so are ranked within each way; None when no run has metrics."""
    modes = comparison.metric_modes
    if not modes:
        return None
    if len(modes) == 1:
        return f"Every run's metrics were scored {_how(modes[0])}."
    ways = "; ".join(f"{mode.name}: {mode.label}" for mode in modes)
    return (
        f"These runs' metrics were scored in different ways ({ways}), which do not compare: runs are ranked "
        "by them only within each way, and the Scored column says which."
    )
