"""glmcore.metrics against golden values produced by each published compute_metrics (tests/golden/metrics/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from glmcore import metrics
from glmcore.errors import GlmError

GOLDEN_DIR = Path(__file__).parent / "golden" / "metrics"
PUBLISHED = {
    "chatglm6b-ptuning-main": metrics.PTUNING,
    "chatglm3-finetune-hf": metrics.FINETUNE_DEMO,
    "glm4-finetune-demo": metrics.FINETUNE_DEMO,
}
"""Each golden file (the values one published script gave) and the mode that must reproduce it."""
GOLDENS = {
    script: json.loads((GOLDEN_DIR / f"{script}.json").read_text(encoding="utf-8")) for script in PUBLISHED
}


@pytest.mark.parametrize("script", PUBLISHED)
def test_each_mode_gives_its_published_scripts_scores_example_by_example_and_on_average(script: str) -> None:
    golden, mode = GOLDENS[script], PUBLISHED[script]
    predictions = [example["prediction"] for example in golden["examples"]]
    labels = [example["label"] for example in golden["examples"]]

    per_example, means = metrics.score_all(predictions, labels, mode=mode)

    assert per_example == [example["expected"] for example in golden["examples"]]
    assert list(means) == list(metrics.METRIC_NAMES)
    assert means == pytest.approx(golden["expected_mean"], rel=1e-12)


@pytest.mark.parametrize("script", PUBLISHED)
def test_an_empty_side_scores_zero_where_the_published_script_crashes(script: str) -> None:
    crashes = GOLDENS[script]["crashes"]

    assert {crash["published_error"] for crash in crashes} == {
        "ValueError: Hypothesis is empty.",
        "ValueError: Reference is empty.",
    }
    for crash in crashes:
        assert metrics.score_example(crash["prediction"], crash["label"], PUBLISHED[script]) == (
            metrics.zero_scores()
        )


def test_the_two_modes_differ_where_the_scripts_do_bleu_by_characters_x100_or_by_words_0_to_1() -> None:
    ptuning = GOLDENS["chatglm6b-ptuning-main"]["examples"][0]
    demo = GOLDENS["glm4-finetune-demo"]["examples"][0]

    assert ptuning["prediction"] == demo["prediction"]
    assert ptuning["expected"]["bleu-4"] > 1 > demo["expected"]["bleu-4"] > 0
    assert metrics.score_example(ptuning["prediction"], ptuning["label"]) == ptuning["expected"]


def test_empty_pairs_pull_the_mean_down_instead_of_crashing() -> None:
    golden = GOLDENS["chatglm6b-ptuning-main"]["examples"][0]

    _, means = metrics.score_all([golden["prediction"], ""], [golden["label"], golden["label"]])

    assert means == {name: golden["expected"][name] / 2 for name in metrics.METRIC_NAMES}


def test_a_mode_is_named_by_its_setting_and_a_wrong_name_is_one_sentence_with_the_choices() -> None:
    assert metrics.metric_mode("finetune-demo") is metrics.FINETUNE_DEMO
    assert metrics.PTUNING.label == "ChatGLM-6B ptuning/main.py (character BLEU-4 ×100)"
    with pytest.raises(GlmError, match="use one of ptuning, finetune-demo"):
        metrics.metric_mode("sacrebleu")


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
