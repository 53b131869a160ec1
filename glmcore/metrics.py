"""BLEU-4 and Rouge-1/2/L, computed exactly as the published fine-tuning scripts report them, in two modes.

The numbers only compare with published ones when the recipe is the same, and THUDM published two:

- ``ptuning`` — ChatGLM-6B's ptuning/main.py (also ChatGLM2-6B's): per example, Rouge F-scores from
  ``rouge_chinese`` over jieba-segmented text and BLEU-4 from nltk's ``sentence_bleu`` over *characters* with
  ``SmoothingFunction().method3``, each ×100 and rounded to 4 places (the published P-tuning v2 table: BLEU-4 8.10,
  Rouge-1 31.12, ...).
- ``finetune-demo`` — ChatGLM3's finetune_demo/finetune_hf.py and GLM-4's finetune_demo/finetune.py: both texts
  stripped, Rouge as above (×100, 4 places), BLEU-4 over the same jieba *words* with method3, left on nltk's
  0–1 scale and unrounded.

Either way the result is the plain (numpy) mean over examples. A family's default is its own published script
(``ModelFamily.metric_mode``); a run's or an evaluation's ``metric_mode`` setting chooses explicitly, and every
results file records the mode, since a BLEU-4 of 8.1 in one is not comparable with 0.08 in the other. The one
deliberate difference from both scripts: an empty (or whitespace-only) prediction or label scores 0 on every
metric, where the published code crashes with "Hypothesis is empty.".

jieba, nltk and numpy are imported on first use: jieba builds its dictionary cache then (about a second), and
nothing that merely imports glmcore should pay for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from glmcore.errors import GlmError

METRIC_NAMES: tuple[str, ...] = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
"""Metric keys, in the published order; results files write them after a ``predict_`` prefix."""

_DECIMALS = 4

_jieba_lock = threading.Lock()
_jieba_ready = False


class NoExamplesToScoreError(GlmError):
    """Raised when an evaluation produced no prediction/label pairs, so there is no mean to report."""


class MetricModeError(GlmError):
    """A ``metric_mode`` setting names no mode glmtui scores with."""


@dataclass(frozen=True)
class MetricMode:
    """One published way of scoring: its setting value, and how users are told which it was."""

    name: str
    """The value of the ``metric_mode`` setting and of results files' ``metric_mode``."""
    title: str
    """Where the recipe comes from, as a label: "ChatGLM-6B ptuning/main.py"."""
    bleu: str
    """What its BLEU-4 is, in a few words: the unit and the scale a reader must know to read the figure."""
    bleu_scale: str
    """The scale of its BLEU-4 alone ("×100", "0–1"), where a table has room for no more."""

    @property
    def label(self) -> str:
        """The one-line label shown beside scores: "ChatGLM-6B ptuning/main.py (character BLEU-4 ×100)"."""
        return f"{self.title} ({self.bleu})"


PTUNING = MetricMode(
    name="ptuning", title="ChatGLM-6B ptuning/main.py", bleu="character BLEU-4 ×100", bleu_scale="×100"
)
FINETUNE_DEMO = MetricMode(
    name="finetune-demo",
    title="ChatGLM3/GLM-4 finetune_demo",
    bleu="word BLEU-4 on a 0–1 scale",
    bleu_scale="0–1",
)
METRIC_MODES: dict[str, MetricMode] = {mode.name: mode for mode in (PTUNING, FINETUNE_DEMO)}
UNRECORDED_MODE = PTUNING
"""The mode of a results file that names none: glmtui scored only this way before the modes existed."""


def metric_mode(name: str) -> MetricMode:
    """The mode a ``metric_mode`` setting names; a sentence naming the choices otherwise."""
    try:
        return METRIC_MODES[name]
    except (KeyError, TypeError):
        raise MetricModeError(
            f"metric_mode {name!r} is not a way glmtui scores; use one of {', '.join(METRIC_MODES)} "
            "(or leave it out for the family's published way)."
        ) from None


def _words(text: str) -> list[str]:
    """``text`` cut into words by jieba (spaces come back as words of their own, as the published code sees)."""
    global _jieba_ready
    import jieba

    if not _jieba_ready:
        with _jieba_lock:
            if not _jieba_ready:
                # jieba logs a "Building prefix dict..." banner at DEBUG level on its first cut.
                jieba.setLogLevel(logging.WARNING)
                jieba.initialize()
                _jieba_ready = True
    return list(jieba.cut(text))


def _is_blank(segmented: str) -> bool:
    """Whether rouge_chinese would find no sentence in this segmented text (it raises on those)."""
    return not segmented.strip()


def zero_scores() -> dict[str, float]:
    """The scores given to a pair with an empty side: 0 on every metric."""
    return dict.fromkeys(METRIC_NAMES, 0.0)


def score_example(prediction: str, label: str, mode: MetricMode = PTUNING) -> dict[str, float]:
    """Score one prediction against its label the way ``mode``'s published script does."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    if mode is FINETUNE_DEMO:  # the demos strip both decoded texts first
        prediction, label = prediction.strip(), label.strip()
    hypothesis_words, reference_words = _words(prediction), _words(label)
    hypothesis, reference = " ".join(hypothesis_words), " ".join(reference_words)
    if _is_blank(hypothesis) or _is_blank(reference):
        return zero_scores()
    rouge = Rouge().get_scores(hypothesis, reference)[0]
    scores = {name: round(rouge[name]["f"] * 100, _DECIMALS) for name in ("rouge-1", "rouge-2", "rouge-l")}
    smoothing = SmoothingFunction().method3
    if mode is FINETUNE_DEMO:
        bleu = sentence_bleu([reference_words], hypothesis_words, smoothing_function=smoothing)
        scores["bleu-4"] = float(bleu)  # nltk returns int 0 when nothing matches
    else:
        bleu = sentence_bleu([list(label)], list(prediction), smoothing_function=smoothing)
        scores["bleu-4"] = float(round(bleu * 100, _DECIMALS))
    return scores


def mean_scores(per_example: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average per-example scores metric by metric (numpy's mean, as the published code takes it)."""
    import numpy as np

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
    mode: MetricMode = PTUNING,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Score every prediction against its label (as ``mode`` does); return the per-example scores and their means.

    ``on_progress(done, total)`` is called after each example, because scoring a few thousand long
    Chinese texts takes seconds and an evaluation screen wants to show it.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"Got {len(predictions)} predictions but {len(labels)} labels; they must pair up.")
    per_example = []
    for done, (prediction, label) in enumerate(zip(predictions, labels, strict=True), start=1):
        per_example.append(score_example(prediction, label, mode))
        if on_progress is not None:
            on_progress(done, len(predictions))
    return per_example, mean_scores(per_example)


def prefixed(scores: dict[str, float], prefix: str = "predict_") -> dict[str, float]:
    """Name the metrics as the published results JSON does (``predict_bleu-4``, ``predict_rouge-1``, ...)."""
    return {f"{prefix}{name}": value for name, value in scores.items()}
