"""Evaluation: batched generation, published scoring, prediction files, comparisons, cancellation, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import glmcore
from glmcore.config import RunConfig
from glmcore.data import Example, evaluation_prompt_ids, load_examples, reference_text
from glmcore.evaluate import (
    COMPARISON_EXAMPLES_FILE,
    COMPARISON_FILE,
    EXAMPLES_FILE,
    PREDICTIONS_FILE,
    RESULTS_FILE,
    EvalError,
    EvalSettings,
    EvaluationCancelled,
    compare_checkpoints,
    evaluate,
    overall_score,
    read_evaluation,
    read_predictions,
)
from glmcore.metrics import METRIC_NAMES, score_all
from glmcore.prefix import save_prefix_checkpoint
from glmcore.runs import CHECKPOINT_COMPLETE_MARKER, RunStore
from glmcore.sample_data import write_sample_dataset

SETTINGS = EvalSettings(max_source_length=48, max_target_length=10, batch_size=4)
OPENED: list[str] = []
"""Files opened while a test records them (an audit hook, since hooks cannot be removed once added)."""
RECORDING = threading.Event()


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and RECORDING.is_set() and isinstance(args[0], str):
        OPENED.append(args[0])


sys.addaudithook(_record_open)


@pytest.fixture(scope="module")
def dev_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, dev = write_sample_dataset(tmp_path_factory.mktemp("data"), train_count=1, dev_count=9, seed=3)
    return dev


@pytest.fixture(scope="module")
def examples(dev_file: Path) -> list[Example]:
    return load_examples(dev_file).examples


@pytest.fixture(scope="module")
def prefix_checkpoints(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two prefix checkpoints whose prefixes are large enough to change what the tiny model says."""
    folder = tmp_path_factory.mktemp("prefixes")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = glmcore.load_model(tiny_model_dir, pre_seq_len=3)
        with torch.no_grad():
            model.transformer.prefix_encoder.embedding.weight.mul_(4)
        paths.append(save_prefix_checkpoint(model, folder / f"checkpoint-{seed}"))
    return paths


def test_scores_equal_the_published_metrics_on_the_written_predictions(
    tiny_model, tiny_tokenizer, examples, tmp_path
):
    result = evaluate(tiny_model, tiny_tokenizer, examples, SETTINGS, output_dir=tmp_path / "eval")

    pairs = read_predictions(tmp_path / "eval" / PREDICTIONS_FILE)
    labels = [label for label, _ in pairs]
    predictions = [prediction for _, prediction in pairs]
    assert labels == [reference_text(tiny_tokenizer, example.response, 10) for example in examples]
    per_example, means = score_all(predictions, labels)
    results = json.loads((tmp_path / "eval" / RESULTS_FILE).read_text(encoding="utf-8"))
    assert {name: results[f"predict_{name}"] for name in METRIC_NAMES} == means
    assert results["predict_samples"] == len(examples)
    assert results["predict_runtime"] > 0 and results["predict_samples_per_second"] > 0
    assert results["predict_tokens_per_second"] > 0
    assert results["settings"]["max_target_length"] == 10 and results["settings"]["batch_size"] == 4
    rows = [json.loads(line) for line in (tmp_path / "eval" / EXAMPLES_FILE).read_text("utf-8").splitlines()]
    assert [row["scores"] for row in rows] == per_example
    assert [row["input"] for row in rows] == [example.prompt for example in examples]
    assert [row["prediction"] for row in rows] == predictions
    assert result.metrics == means
    assert read_evaluation(tmp_path / "eval").examples == result.examples
    assert [example.overall for example in result.worst(3)] == sorted(overall_score(s) for s in per_example)[
        :3
    ]


def test_the_prediction_file_is_chatglm_6b_form(tiny_model, tiny_tokenizer, examples, tmp_path):
    evaluate(tiny_model, tiny_tokenizer, examples[:3], SETTINGS, output_dir=tmp_path)
    text = (tmp_path / PREDICTIONS_FILE).read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) == 3 and text.endswith("\n")
    for line in lines:
        assert list(json.loads(line)) == ["labels", "predict"]
    assert not re.search(r"\\u[4-9][0-9a-f]{3}", text), "Chinese is written as is, not ASCII-escaped"
    assert any("\u4e00" <= character <= "\u9fff" for character in text)


def test_batched_generation_gives_the_predictions_of_batch_size_one(
    tiny_model, tiny_tokenizer, examples, tmp_path
):
    lengths = {len(evaluation_prompt_ids(tiny_tokenizer, example, 48)) for example in examples}
    assert len(lengths) > 2, "the prompts must differ in length for padding to matter"
    one = evaluate(
        tiny_model, tiny_tokenizer, examples, EvalSettings(48, 10, batch_size=1), output_dir=tmp_path / "one"
    )
    batched = evaluate(
        tiny_model, tiny_tokenizer, examples, EvalSettings(48, 10, batch_size=4), output_dir=tmp_path / "four"
    )
    assert [example.prediction for example in batched.examples] == [
        example.prediction for example in one.examples
    ]
    # Padding does not eat into the budget: every example gets the new tokens it gets alone.
    assert [example.generated_tokens for example in batched.examples] == [
        example.generated_tokens for example in one.examples
    ]
    assert max(example.generated_tokens for example in one.examples) == 10


def test_empty_predictions_score_zero(tiny_model_dir, tiny_tokenizer, examples, tmp_path):
    """A model that answers <eop> at once: every prediction is empty and scores 0 instead of crashing."""
    model = glmcore.load_model(tiny_model_dir)
    with torch.no_grad():
        norm = model.transformer.final_layernorm
        norm.weight.zero_()
        norm.bias.copy_(model.lm_head.weight[tiny_tokenizer.eos_token_id] * 100)
    result = evaluate(model, tiny_tokenizer, examples[:4], SETTINGS, output_dir=tmp_path)
    assert [example.prediction for example in result.examples] == [""] * 4
    assert [example.generated_tokens for example in result.examples] == [1] * 4, "generation stops at <eop>"
    assert result.metrics == dict.fromkeys(METRIC_NAMES, 0.0)
    assert read_predictions(tmp_path / PREDICTIONS_FILE)[0][1] == ""


def test_sampling_repeats_with_its_seed(tiny_model, tiny_tokenizer, examples, tmp_path):
    settings = EvalSettings.published_sampling(
        max_source_length=48, max_target_length=10, batch_size=4, seed=7
    )
    assert (settings.sampling, settings.top_p, settings.temperature) == (True, 0.7, 0.95)
    first = evaluate(tiny_model, tiny_tokenizer, examples, settings, output_dir=tmp_path / "a")
    second = evaluate(tiny_model, tiny_tokenizer, examples, settings, output_dir=tmp_path / "b")
    assert [e.prediction for e in first.examples] == [e.prediction for e in second.examples]


def test_a_cancelled_evaluation_writes_nothing(tiny_model, tiny_tokenizer, examples, tmp_path):
    cancel = threading.Event()

    def cancel_after_first_batch(snapshot) -> None:
        if snapshot.done:
            cancel.set()

    with pytest.raises(EvaluationCancelled):
        evaluate(
            tiny_model,
            tiny_tokenizer,
            examples,
            SETTINGS,
            output_dir=tmp_path / "eval",
            progress=cancel_after_first_batch,
            cancel=cancel,
        )
    assert not (tmp_path / "eval").exists()


def test_settings_refuse_what_cannot_work():
    with pytest.raises(EvalError, match="max_source_length 2 leaves no room"):
        EvalSettings(max_source_length=2)
    with pytest.raises(EvalError, match="batch size must be 1 or more"):
        EvalSettings(batch_size=0)


def test_compare_checkpoints_loads_the_base_once_and_writes_results_side_by_side(
    tiny_model_dir, tiny_model, tiny_tokenizer, examples, dev_file, prefix_checkpoints, tmp_path
):
    shard = str(tiny_model_dir / "pytorch_model-00001-of-00008.bin")
    OPENED.clear()
    RECORDING.set()
    try:
        glmcore.load_model(tiny_model_dir)
        opens_per_load = OPENED.count(shard)
        OPENED.clear()
        snapshots = []
        first, second = prefix_checkpoints
        comparison = compare_checkpoints(
            tiny_model_dir,
            [first, "base", second],
            dev_file,
            SETTINGS,
            tmp_path / "cmp",
            progress=snapshots.append,
        )
        assert opens_per_load > 0 and OPENED.count(shard) == opens_per_load, "the base model is loaded once"
    finally:
        RECORDING.clear()

    assert comparison.complete
    assert [evaluation.label for evaluation in comparison.evaluations] == [
        "checkpoint-1",
        "base",
        "checkpoint-2",
    ]
    # Swapping prefixes in place gives what a freshly loaded model with that prefix (or none) gives.
    for checkpoint, evaluation in zip([first, None, second], comparison.evaluations, strict=True):
        model = glmcore.load_model(tiny_model_dir, prefix_checkpoint=checkpoint) if checkpoint else tiny_model
        alone = evaluate(
            model, tiny_tokenizer, examples, SETTINGS, output_dir=tmp_path / "alone" / evaluation.label
        )
        assert [e.prediction for e in evaluation.examples] == [e.prediction for e in alone.examples]
    predictions = {e.label: [x.prediction for x in e.examples] for e in comparison.evaluations}
    assert predictions["checkpoint-1"] != predictions["base"] != predictions["checkpoint-2"]

    summary = json.loads((tmp_path / "cmp" / COMPARISON_FILE).read_text(encoding="utf-8"))
    assert summary["complete"] is True
    for label in ("base", "checkpoint-1", "checkpoint-2"):
        results = json.loads((tmp_path / "cmp" / label / RESULTS_FILE).read_text(encoding="utf-8"))
        assert summary["metrics"][label] == {
            f"predict_{name}": results[f"predict_{name}"] for name in METRIC_NAMES
        }
    rows = [
        json.loads(line)
        for line in (tmp_path / "cmp" / COMPARISON_EXAMPLES_FILE).read_text(encoding="utf-8").splitlines()
    ]
    assert sorted(row["index"] for row in rows) == list(range(len(examples)))
    for row in rows:
        assert row["input"] == examples[row["index"]].prompt
        assert row["before"] == predictions["base"][row["index"]]
        assert row["after"] == {
            label: predictions[label][row["index"]] for label in ("checkpoint-1", "checkpoint-2")
        }
    ranked = [overall_score(row["after_scores"]["checkpoint-2"]) for row in rows]
    assert ranked == sorted(ranked), "worst first by the last checkpoint's score"
    assert {(s.evaluation, s.evaluations) for s in snapshots} == {(1, 3), (2, 3), (3, 3)}


def test_a_cancelled_comparison_keeps_finished_evaluations_marked_incomplete(
    tiny_model_dir, dev_file, prefix_checkpoints, tmp_path
):
    cancel = threading.Event()

    def cancel_in_second(snapshot) -> None:
        if snapshot.evaluation == 2 and snapshot.done:
            cancel.set()

    comparison = compare_checkpoints(
        tiny_model_dir,
        ["base", *prefix_checkpoints],
        dev_file,
        SETTINGS,
        tmp_path / "cmp",
        progress=cancel_in_second,
        cancel=cancel,
    )
    assert not comparison.complete and [e.label for e in comparison.evaluations] == ["base"]
    assert json.loads((tmp_path / "cmp" / COMPARISON_FILE).read_text(encoding="utf-8"))["complete"] is False
    assert sorted(path.name for path in (tmp_path / "cmp").iterdir()) == [
        "base",
        COMPARISON_FILE,
        COMPARISON_EXAMPLES_FILE,
    ]

    cancel.set()
    with pytest.raises(EvaluationCancelled):
        compare_checkpoints(
            tiny_model_dir, ["base"], dev_file, SETTINGS, tmp_path / "new" / "cmp", cancel=cancel
        )
    assert not (tmp_path / "new").exists()


def test_compare_checkpoints_refuses_a_missing_checkpoint_or_a_used_folder(
    tiny_model_dir, dev_file, tmp_path
):
    with pytest.raises(EvalError, match="checkpoint .*nowhere does not exist"):
        compare_checkpoints(
            tiny_model_dir, ["base", tmp_path / "nowhere"], dev_file, SETTINGS, tmp_path / "out"
        )
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(EvalError, match="already holds files"):
        compare_checkpoints(tiny_model_dir, ["base"], dev_file, SETTINGS, tmp_path / "used")


# --- the command line ----------------------------------------------------------------------------------


def _glmtui(*args: str, workspace: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "glmtui.cli", "--workspace", str(workspace), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
    )


@pytest.mark.slow
def test_eval_command_compares_named_checkpoints(tiny_model_dir, dev_file, prefix_checkpoints, tmp_path):
    out = tmp_path / "out"
    done = _glmtui(
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(dev_file),
        "--checkpoint",
        "base",
        "--checkpoint",
        str(prefix_checkpoints[0]),
        "--max-target-length",
        "8",
        "--batch-size",
        "3",
        "--out",
        str(out),
        workspace=tmp_path / "ws",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out)
    assert "BLEU-4" in done.stdout and "checkpoint-1" in done.stdout
    summary = json.loads((out / COMPARISON_FILE).read_text(encoding="utf-8"))
    assert [entry["label"] for entry in summary["evaluations"]] == ["base", "checkpoint-1"]
    assert summary["settings"]["max_target_length"] == 8 and summary["settings"]["batch_size"] == 3


@pytest.mark.slow
def test_eval_command_with_a_run_evaluates_its_checkpoints_into_the_run(
    tiny_model_dir, dev_file, prefix_checkpoints, tmp_path
):
    workspace = tmp_path / "ws"
    run = RunStore(workspace / "runs").create(
        RunConfig(
            name="tiny",
            model_path=tiny_model_dir,
            train_file=dev_file,
            validation_file=dev_file,
            quantization_bit=16,
            max_source_length=40,
            max_target_length=6,
            gpus=[],
        )
    )
    for step, checkpoint in zip((10, 20), prefix_checkpoints, strict=True):
        target = run.checkpoints_dir / f"checkpoint-{step}"
        target.mkdir()
        for file in checkpoint.iterdir():
            (target / file.name).write_bytes(file.read_bytes())
        (target / CHECKPOINT_COMPLETE_MARKER).write_text("{}")
    done = _glmtui("eval", "--run", run.id, workspace=workspace)
    assert done.returncode == 0, done.stderr
    (evaluation,) = (run.path / "evaluations").iterdir()
    assert done.stdout.strip().splitlines()[-1] == str(evaluation)
    assert sorted(path.name for path in evaluation.iterdir()) == [
        "base",
        "checkpoint-10",
        "checkpoint-20",
        COMPARISON_FILE,
        COMPARISON_EXAMPLES_FILE,
    ]
    settings = json.loads((evaluation / COMPARISON_FILE).read_text(encoding="utf-8"))["settings"]
    assert (settings["max_source_length"], settings["max_target_length"]) == (40, 6)

    missing = _glmtui("eval", "--run", run.id, "--checkpoint", "30", workspace=workspace)
    assert missing.returncode == 1 and "has no checkpoint '30'" in missing.stderr
