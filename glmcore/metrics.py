"""BLEU-4 and Rouge-1/2/L computed exactly as ChatGLM-6B's ptuning/main.py reports them.

The published P-tuning v2 table (AdvertiseGen: BLEU-4 8.10, Rouge-1 31.12, ...) comes from a specific recipe:
per example, Rouge F-scores from ``rouge_chinese`` over jieba-segmented text and BLEU-4 from nltk's
``sentence_bleu`` over characters with ``SmoothingFunction().method3``, each ×100 and rounded to 4 places, then
the plain mean over examples. Any other tokenisation or smoothing gives numbers that do not compare, so this
module reproduces the recipe step by step. The one deliberate difference: an empty (or whitespace-only)
prediction or label scores 0 on every metric, where the published code crashes with "Hypothesis is empty.".

jieba and nltk are imported on first use: jieba builds its dictionary cache then (about a second), and
nothing that merely imports glmcore should pay for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np

from glmcore.errors import GlmError

METRIC_NAMES: tuple[str, ...] = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
"""Metric keys, in the published order; results files write them after a ``predict_`` prefix."""

_DECIMALS = 4

_jieba_lock = threading.Lock()
_jieba_ready = False


class NoExamplesToScoreError(GlmError):
    """Raised when an evaluation produced no prediction/label pairs, so there is no mean to report."""


def _segment(text: str) -> str:
    """Segment ``text`` with jieba and join the words with spaces, the form rouge_chinese expects."""
    global _jieba_ready
    import jieba

    if not _jieba_ready:
        with _jieba_lock:
            if not _jieba_ready:
                # jieba logs a "Building prefix dict..." banner at DEBUG level on its first cut.
                jieba.setLogLevel(logging.WARNING)
                jieba.initialize()
                _jieba_ready = True
    return " ".join(jieba.cut(text))


def _is_blank(segmented: str) -> bool:
    """Whether rouge_chinese would find no sentence in this segmented text (it raises on those)."""
    return not segmented.strip()


def zero_scores() -> dict[str, float]:
    """The scores given to a pair with an empty side: 0 on every metric."""
    return dict.fromkeys(METRIC_NAMES, 0.0)


def score_example(prediction: str, label: str) -> dict[str, float]:
    """Score one prediction against its label, ×100 and rounded to 4 decimals as the published code does."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    hypothesis = _segment(prediction)
    reference = _segment(label)
    if _is_blank(hypothesis) or _is_blank(reference):
        return zero_scores()
    rouge = Rouge().get_scores(hypothesis, reference)[0]
    scores = {name: round(rouge[name]["f"] * 100, _DECIMALS) for name in ("rouge-1", "rouge-2", "rouge-l")}
    bleu = sentence_bleu([list(label)], list(prediction), smoothing_function=SmoothingFunction().method3)
    scores["bleu-4"] = float(round(bleu * 100, _DECIMALS))  # nltk returns int 0 when nothing matches
    return scores


def mean_scores(per_example: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average per-example scores metric by metric (numpy's mean, as the published code takes it)."""
    if not per_example:
        raise NoExamplesToScoreError(
            "There is nothing to score: the evaluation produced no predictions. "
            "Check that the evaluation data file has rows with a non-empty prompt and response."
        )
    return {name: float(np.mean([scores[name] for scores in per_example])) for name in METRIC_NAMES}


def score_all(
    predictions: Sequence[str],
    labels: Sequence[str],
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Score every prediction against its label; return the per-example scores and their means.

    ``on_progress(done, total)`` is called after each example, because scoring a few thousand long
    Chinese texts takes seconds and an evaluation screen wants to show it.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"Got {len(predictions)} predictions but {len(labels)} labels; they must pair up.")
    per_example = []
    for done, (prediction, label) in enumerate(zip(predictions, labels, strict=True), start=1):
        per_example.append(score_example(prediction, label))
        if on_progress is not None:
            on_progress(done, len(predictions))
    return per_example, mean_scores(per_example)


def prefixed(scores: dict[str, float], prefix: str = "predict_") -> dict[str, float]:
    """Name the metrics as the published results JSON does (``predict_bleu-4``, ``predict_rouge-1``, ...)."""
    return {f"{prefix}{name}": value for name, value in scores.items()}
