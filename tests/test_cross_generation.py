"""One table across generations: a sweep over `model_path` trains the tiny models of every family on one data
set, and compare (engine, `glmtui compare`) lists them side by side with each family's published size."""

from __future__ import annotations

import os

import pytest

from glmcore.compare import compare_runs
from glmcore.config import RunConfig
from glmcore.models import FAMILIES
from glmcore.runs import RunStore
from glmcore.sample_data import write_sample_dataset
from glmcore.sweep import create, expand, parse_sets, problems


@pytest.fixture(scope="module")
def sweep_over_families(tiny_family_dir, tmp_path_factory: pytest.TempPathFactory):
    """Each family's tiny model trained 2 P-tuning steps on the same sample, as one sweep, in this process."""
    from glmcore.train import train

    root = tmp_path_factory.mktemp("generations")
    train_file, _ = write_sample_dataset(root / "data", train_count=8, dev_count=2)
    models = [tiny_family_dir(family) for family in FAMILIES]
    base = RunConfig(
        name="adgen",
        model_path=models[0],
        train_file=train_file,
        quantization_bit=16,
        pre_seq_len=4,
        learning_rate=2e-2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=2,
        save_steps=2,
        logging_steps=1,
        max_source_length=64,
        max_target_length=32,
        gpus=[],
        dtype="float32",
    )
    store = RunStore(root / "runs")
    points = expand(base, parse_sets([f"model_path={','.join(str(model) for model in models)}"]))
    assert problems(points, runs_dir=store.runs_dir) == []
    sweep = create(store, base, points)
    for run in sweep.runs:
        run.mark_running(os.getpid())
        run.finish(train(run, resume=False))
    return store, sweep, models


def test_a_sweep_over_model_path_names_each_run_after_its_model_folder(sweep_over_families):
    _, sweep, models = sweep_over_families
    assert [run.config.name for run in sweep.runs] == [f"adgen {model.name}" for model in models]
    assert [run.config.model_path for run in sweep.runs] == models


def test_compare_lists_every_generation_side_by_side_with_its_published_size(
    sweep_over_families, capsys, monkeypatch
):
    from glmtui.cli import main
    from glmtui.text.compare import comparison_columns, comparison_rows

    store, sweep, _ = sweep_over_families
    comparison = compare_runs(store, [sweep.id])
    assert comparison.across_families and comparison.differing == ["model_path"]
    by_family = {summary.family: summary for summary in comparison.runs}
    assert set(by_family) == {family.title for family in FAMILIES}
    for family in FAMILIES:
        summary = by_family[family.title]
        assert summary.status.state == "finished" and len(summary.losses) == 2
        assert summary.final_loss > 1, "the answer is in the row: every family learns from it"
        assert summary.published_parameters == family.published_shape().parameters
    assert by_family["GLM-4-9B"].published_parameters > 9e9 > by_family["ChatGLM3-6B"].published_parameters

    columns = comparison_columns(comparison)
    assert columns[:4] == ["#", "Run", "Family", "Size"]
    sizes = {str(row[2]): row[3] for row in comparison_rows(comparison)}
    assert set(sizes) == {family.title for family in FAMILIES}
    named = {"ChatGLM-6B": "6.2B", "ChatGLM2-6B": "6.2B", "ChatGLM3-6B": "6.2B", "GLM-4-9B": "9.4B"}
    assert {title: sizes[title] for title in named} == named

    monkeypatch.setenv("GLMTUI_HOME", str(store.runs_dir.parent))
    assert main(["compare", sweep.id]) == 0
    shown = capsys.readouterr().out
    assert "FAMILY" in shown and all(f"{title} {size}" in shown for title, size in sizes.items())


def test_runs_of_one_family_show_no_family_columns(sweep_over_families):
    from glmtui.text.compare import comparison_columns

    store, sweep, _ = sweep_over_families
    comparison = compare_runs(store, [run.id for run in sweep.runs[2:3]])
    assert comparison.runs[0].family == FAMILIES[2].title
    assert not comparison.across_families and "Family" not in comparison_columns(comparison)
