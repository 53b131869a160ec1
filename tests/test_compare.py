"""`glmtui compare` over a sweep of real training runs on the tiny model (trained in this process: the training
process's own behaviour is tests/test_train.py's): the settings that differ, and the runs best first by the metric
asked for, from the engine and from the `glmtui compare` command."""

from __future__ import annotations

import os

import pytest
from test_runs_hardening import glmtui
from test_train import make_config
from test_train_eval import TRAIN_ROWS, VALIDATION_ROWS, write_rows

from glmcore.compare import compare_runs
from glmcore.config import GENERATION_METRICS
from glmcore.errors import GlmError
from glmcore.runs import RunStore
from glmcore.sweep import create as create_sweep
from glmcore.sweep import expand
from glmcore.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_sweep(tiny_model_dir, tmp_path_factory):
    """A finished sweep of two learning rates (one that learns, one too small to move), evaluated while training."""
    root = tmp_path_factory.mktemp("compare")
    workspace = root / "ws"
    store = RunStore(workspace / "runs")
    base = make_config(
        tiny_model_dir,
        write_rows(root / "train.json", TRAIN_ROWS),
        name="cmp",
        validation_file=write_rows(root / "validation.json", VALIDATION_ROWS),
        max_steps=8,
        save_steps=4,
        eval_steps=4,
        eval_metric_rows=1,
        best_metric="rouge-l",
    )
    sweep = create_sweep(store, base, expand(base, {"learning_rate": [1e-5, 0.3]}))
    for run in sweep.runs:
        run.mark_running(os.getpid())
        assert train(run, resume=False) == "finished"
        run.finish("finished")
    return workspace, store, sweep


def test_a_sweep_compares_best_first_by_the_chosen_metric_naming_exactly_what_differs(trained_sweep):
    workspace, store, sweep = trained_sweep
    slow, fast = sweep.runs
    by_loss = compare_runs(store, [sweep.id], "final_loss")
    assert by_loss.differing == ["learning_rate"]
    assert [summary.run for summary in by_loss.runs] == [fast, slow]
    assert by_loss.runs[0].final_loss < by_loss.runs[1].final_loss
    # Highest first for a metric that rises; the order follows the figures whichever way they fall.
    by_speed = compare_runs(store, [sweep.id], "tokens_per_s")
    speeds = [summary.tokens_per_s for summary in by_speed.runs]
    assert speeds == sorted(speeds, reverse=True)
    default = compare_runs(store, [slow.id, fast.id])
    assert default.metric == "eval_loss"
    for summary in default.runs:
        assert len(summary.losses) == 8 and [step for step, _ in summary.eval_losses] == [4, 8]
        assert summary.metrics_source == "training" and set(summary.metrics) == set(GENERATION_METRICS)
        assert summary.duration_s > 0 and summary.tokens_per_s > 0
        assert summary.peak_gpu_memory_gib is None  # trained on the CPU
    # The best checkpoint by a metric that rises: the first evaluation with the highest Rouge-L.
    for run in sweep.runs:
        scores = [(event["step"], event["eval_rouge-l"]) for event in run.events() if event["kind"] == "eval"]
        best_step = next(step for step, score in scores if score == max(score for _, score in scores))
        assert run.best_mark()["metric"] == "rouge-l" and run.best_mark()["greater_is_better"] is True
        assert run.default_checkpoint().step == best_step
    # A run compared with itself and its sweep is counted once.
    assert len(compare_runs(store, [fast.id, sweep.id]).runs) == 2


def test_glmtui_compare_prints_the_ranking_and_the_differing_settings(trained_sweep):
    workspace, store, sweep = trained_sweep
    slow, fast = sweep.runs
    command = glmtui(workspace, "compare", sweep.id, "--by", "best_loss")
    output, errors = command.communicate(timeout=60)
    assert command.returncode == 0, errors
    lines = output.splitlines()
    assert lines[0] == "2 runs, best first by best loss"
    header = lines[1].split()
    assert header[:9] == ["#", "RUN", "STATE", "FINAL", "BEST", "EVAL", "TOK/S", "GIB", "TIME"]
    assert header[9:] == ["R-1", "R-2", "R-L", "BLEU4"]  # distinct and never wider than their values
    first, second = lines[2], lines[3]
    assert first.split()[:2] == ["1", fast.config.name.split()[0]] and fast.config.name in first
    assert slow.config.name in second
    settings = lines[lines.index("Settings that differ") + 1 :]
    assert settings[0].split() == ["SETTING", "#1", "#2"]
    assert [line.split() for line in settings[1:]] == [["learning_rate", "0.3", "1e-05"]]


def test_a_name_that_is_neither_a_run_nor_a_sweep_is_refused_in_one_sentence(trained_sweep):
    workspace, store, _ = trained_sweep
    with pytest.raises(GlmError, match="nor is 'nothing-like-this' a sweep id"):
        compare_runs(store, ["nothing-like-this"])
    command = glmtui(workspace, "compare", "nothing-like-this")
    _, errors = command.communicate(timeout=60)
    assert command.returncode == 1 and errors.startswith("glmtui: ") and "Traceback" not in errors
