"""glmcore.metrics against golden values produced by ChatGLM-6B's published compute_metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from glmcore import metrics
from glmcore.errors import GlmError

GOLDEN = json.loads((Path(__file__).parent / "golden" / "metrics.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("example", GOLDEN["examples"], ids=lambda example: example["prediction"][:12])
def test_score_example_matches_published_scores(example: dict) -> None:
    assert metrics.score_example(example["prediction"], example["label"]) == example["expected"]


def test_score_all_gives_per_example_scores_and_published_means() -> None:
    predictions = [example["prediction"] for example in GOLDEN["examples"]]
    labels = [example["label"] for example in GOLDEN["examples"]]

    per_example, means = metrics.score_all(predictions, labels)

    assert per_example == [example["expected"] for example in GOLDEN["examples"]]
    assert list(means) == list(metrics.METRIC_NAMES)
    for name, expected in GOLDEN["expected_mean"].items():
        assert round(means[name], 4) == round(expected, 4)


@pytest.mark.parametrize("example", GOLDEN["empty_examples"], ids=lambda example: repr(example["prediction"]))
def test_empty_side_scores_zero_where_the_published_code_crashes(example: dict) -> None:
    assert metrics.score_example(example["prediction"], example["label"]) == example["expected"]


def test_empty_pairs_pull_the_mean_down_instead_of_crashing() -> None:
    golden = GOLDEN["examples"][0]

    _, means = metrics.score_all([golden["prediction"], ""], [golden["label"], golden["label"]])

    assert means == {name: golden["expected"][name] / 2 for name in metrics.METRIC_NAMES}


def test_scores_are_floats_even_when_nltk_returns_an_int_zero() -> None:
    scores = metrics.score_example("你好", "再见")

    assert all(type(value) is float for value in scores.values())


def test_progress_is_reported_after_each_example() -> None:
    seen: list[tuple[int, int]] = []

    metrics.score_all(
        ["好", "a", "b"], ["好", "a", "c"], on_progress=lambda done, total: seen.append((done, total))
    )

    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_no_examples_is_a_user_error_with_advice() -> None:
    with pytest.raises(GlmError, match="no predictions"):
        metrics.score_all([], [])


def test_unpaired_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        metrics.score_all(["a", "b"], ["a"])


def test_prefixed_names_match_the_published_results_json() -> None:
    named = metrics.prefixed({"rouge-1": 1.0, "bleu-4": 2.0})

    assert named == {"predict_rouge-1": 1.0, "predict_bleu-4": 2.0}


def test_scoring_is_quiet_and_importing_is_lazy() -> None:
    """jieba's banner must not reach the terminal, and importing the module must not load jieba or nltk."""
    script = (
        "import sys\n"
        "import glmcore.metrics as m\n"
        "assert 'jieba' not in sys.modules and 'nltk' not in sys.modules\n"
        "print(m.score_example('白色的牛仔外套', '白色牛仔外套')['rouge-1'])\n"
    )
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    assert finished.stderr == ""
    assert float(finished.stdout) > 0
