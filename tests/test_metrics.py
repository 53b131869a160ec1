"""glmcore.metrics against golden values produced by each published compute_metrics (tests/golden/metrics/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from support.app import make_workspace, tiny_config, write_run

from glmcore import metrics
from glmcore.compare import compare_runs
from glmcore.config import RunConfig, validate
from glmcore.data import Example
from glmcore.errors import GlmError
from glmcore.evaluate import (
    EXAMPLES_FILE,
    PREDICTIONS_FILE,
    RESULTS_FILE,
    CheckpointComparison,
    EvalResult,
    EvalSettings,
    ExampleResult,
    evaluate,
    read_evaluation,
    read_predictions,
    write_evaluation,
)
from glmcore.reasoning import prompt_opens_reasoning, split_reasoning
from glmcore.runs import RunStore
from glmcore.train_eval import TRAINING_EVALUATIONS
from glmtui.commands.eval import metrics_table
from glmtui.text.compare import comparison_columns, comparison_rows
from glmtui.text.metrics import comparison_modes_line

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


ADS = [
    Example(query="类型#上衣*颜色#白色", response="白色的上衣简约百搭。"),
    Example(query="类型#裙*材质#雪纺", response="雪纺裙子轻盈飘逸，适合夏天。"),
]


@pytest.mark.parametrize(
    ("asked", "expected"), [(None, metrics.FINETUNE_DEMO), ("ptuning", metrics.PTUNING)], ids=["default", "asked"]
)
def test_an_evaluation_scores_in_the_familys_published_mode_unless_asked_and_says_which(
    glm4_model, glm4_tokenizer, tmp_path, asked, expected
) -> None:
    """GLM-4's published fine-tuning scores the finetune_demo way; a setting picks the other; the files say so."""
    settings = EvalSettings(max_source_length=24, max_target_length=4, batch_size=2, metric_mode=asked)

    result = evaluate(glm4_model, glm4_tokenizer, ADS, settings, output_dir=tmp_path)

    results = json.loads((tmp_path / RESULTS_FILE).read_text(encoding="utf-8"))
    assert results["metric_mode"] == results["settings"]["metric_mode"] == expected.name
    _, means = metrics.score_all(
        [example.prediction for example in result.examples],
        [example.label for example in result.examples],
        mode=expected,
    )
    assert result.metrics == means
    assert read_evaluation(tmp_path).metric_mode is expected


def test_an_evaluation_written_before_the_modes_reads_back_as_the_ptuning_way(tmp_path) -> None:
    write_evaluation(
        EvalResult("base", tmp_path, metrics.zero_scores(), [], 1.0, 1.0, 0, EvalSettings(metric_mode="ptuning"))
    )
    results = json.loads((tmp_path / RESULTS_FILE).read_text(encoding="utf-8"))
    del results["metric_mode"], results["settings"]["metric_mode"]
    (tmp_path / RESULTS_FILE).write_text(json.dumps(results), encoding="utf-8")

    assert read_evaluation(tmp_path).metric_mode is metrics.PTUNING


def test_a_wrong_metric_mode_is_refused_in_a_run_config_and_an_evaluation_before_anything_runs() -> None:
    config = RunConfig(name="r", model_path=Path("m"), train_file=Path("t.json"), metric_mode="bleu")

    assert [problem.field for problem in validate(config)] == ["metric_mode"]
    with pytest.raises(GlmError, match="'bleu' is not a way glmtui scores; use one of ptuning, finetune-demo"):
        EvalSettings(metric_mode="bleu")


@pytest.mark.parametrize(
    ("output", "opened", "reasoning", "answer"),
    [
        ("<think>先看颜色。</think>\n白色上衣。", False, "先看颜色。", "白色上衣。"),
        ("先看颜色。\n</think>\n\n白色上衣。", True, "先看颜色。", "白色上衣。"),
        ("<think>a</think>b</think> 答案", True, "a</think>b", "答案"),
        ("先看颜色，再看", True, "先看颜色，再看", ""),
        ("<think>先看颜色，再看", False, "先看颜色，再看", ""),
        (" 白色上衣。", False, None, " 白色上衣。"),
    ],
    ids=["both-markers", "opened-by-prompt", "last-close-wins", "cut-off-opened", "cut-off-written", "no-thinking"],
)
def test_a_thinking_models_output_parts_into_reasoning_and_the_answer_after_it(
    output: str, opened: bool, reasoning: str | None, answer: str
) -> None:
    reply = split_reasoning(output, opened=opened)

    assert (reply.reasoning, reply.answer) == (reasoning, answer)


@pytest.mark.parametrize(
    ("prompt_end", "opened"),
    [("<|user|>\n你好<|assistant|>\n<think>", True), ("<|assistant|>\n<think>\n", True), ("<|assistant|>", False)],
)
def test_a_prompt_ending_in_think_leaves_the_model_inside_its_reasoning(prompt_end: str, opened: bool) -> None:
    assert prompt_opens_reasoning(prompt_end) is opened


def test_reasoning_is_kept_beside_the_scored_answer_in_the_evaluation_files(tmp_path) -> None:
    reply = split_reasoning("颜色是白色。</think>白色的上衣简约百搭。", opened=True)
    scores = metrics.score_example(reply.answer, ADS[0].response, metrics.FINETUNE_DEMO)
    example = ExampleResult(0, ADS[0].prompt, ADS[0].response, reply.answer, scores, 5, False, 9, reply.reasoning)
    settings = EvalSettings(metric_mode="finetune-demo")

    write_evaluation(EvalResult("z1", tmp_path, scores, [example], 1.0, 1.0, 9, settings))

    assert scores["rouge-1"] == 100.0
    assert read_evaluation(tmp_path).examples == [example]
    assert read_predictions(tmp_path / PREDICTIONS_FILE) == [(ADS[0].response, "白色的上衣简约百搭。")]
    row = json.loads((tmp_path / EXAMPLES_FILE).read_text(encoding="utf-8"))
    assert (row["prediction"], row["reasoning"]) == ("白色的上衣简约百搭。", "颜色是白色。")


def scored_run(workspace, name: str, mode: str, bleu: float):
    """A finished run whose scored evaluation while training gave ``bleu`` on every metric, in ``mode``."""
    config = tiny_config(workspace, name=name, metric_mode=mode)
    run = write_run(workspace, f"20260501-100000-{name}", config, state="finished", step=30, losses=[3.0, 2.0])
    scores = dict.fromkeys(metrics.METRIC_NAMES, bleu)
    with open(run.events_path, "a", encoding="utf-8") as events:
        events.write(json.dumps({"kind": "eval", "step": 30, **metrics.prefixed(scores, "eval_")}) + "\n")
    folder = run.path / TRAINING_EVALUATIONS / "step-30"
    write_evaluation(EvalResult("step-30", folder, scores, [], 1.0, 1.0, 0, EvalSettings(metric_mode=mode)))
    return run


def test_runs_scored_in_different_modes_are_ranked_only_within_each_and_compare_says_so(tmp_path) -> None:
    workspace = make_workspace(tmp_path, with_model=False)
    scored_run(workspace, "demo", "finetune-demo", 0.3)
    scored_run(workspace, "weak", "ptuning", 0.5)
    scored_run(workspace, "strong", "ptuning", 9.0)
    store = RunStore(workspace.runs_dir)

    mixed = compare_runs(store, ["demo", "weak", "strong"], "bleu-4")
    alike = compare_runs(store, ["weak", "strong"], "bleu-4")

    assert [summary.name for summary in mixed.runs] == ["demo", "strong", "weak"]
    assert mixed.metric_modes == [metrics.FINETUNE_DEMO, metrics.PTUNING]
    assert "scored in different ways" in comparison_modes_line(mixed)
    assert comparison_columns(mixed)[-1] == "Scored"
    assert [row[-1] for row in comparison_rows(mixed)] == ["finetune-demo", "ptuning", "ptuning"]
    assert [summary.name for summary in alike.runs] == ["strong", "weak"]
    assert comparison_modes_line(alike) == (
        "Every run's metrics were scored as ChatGLM-6B ptuning/main.py does: character BLEU-4 ×100, Rouge ×100."
    )
    assert "Scored" not in comparison_columns(alike)


def test_glmtui_eval_table_says_how_its_scores_were_computed(tmp_path) -> None:
    scores = dict.fromkeys(metrics.METRIC_NAMES, 0.25)
    evaluation = EvalResult("base", tmp_path, scores, [], 1.0, 1.0, 0, EvalSettings(metric_mode="finetune-demo"))
    console = Console(record=True, width=120)

    console.print(metrics_table(CheckpointComparison(tmp_path, [evaluation], complete=True)))

    words = " ".join(console.export_text().split())  # the caption wraps to the table's width
    assert (
        "Scored as ChatGLM3/GLM-4 finetune_demo does: word BLEU-4 on a 0–1 scale, Rouge ×100, mean over examples."
        in words
    )
