"""One way to name a run and a checkpoint across commands, and `eval --limit` (docs/runs.md, "Naming runs and
checkpoints"): a run stands for its latest complete checkpoint wherever one checkpoint is meant."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import glmcore
from glmcore.chat import ChatSession, ChatSettings
from glmcore.config import RunConfig
from glmcore.evaluate import COMPARISON_FILE
from glmcore.prefix import save_prefix_checkpoint
from glmcore.runs import CHECKPOINT_COMPLETE_MARKER, Run, RunError, RunStore
from glmcore.sample_data import write_sample_dataset


@pytest.fixture(scope="module")
def workspace_with_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    """A workspace holding one P-tuning run with complete checkpoints at steps 10 and 20 (distinct prefixes)."""
    workspace = tmp_path_factory.mktemp("ws")
    write_sample_dataset(workspace / "data", train_count=8, dev_count=5)
    run = RunStore(workspace / "runs").create(
        RunConfig(
            name="named",
            model_path=tiny_model_dir,
            train_file=workspace / "data" / "train.json",
            validation_file=workspace / "data" / "dev.json",
            quantization_bit=16,
            max_source_length=32,
            max_target_length=6,
            gpus=[],
        )
    )
    for step, seed in ((10, 1), (20, 2)):
        torch.manual_seed(seed)
        model = glmcore.load_model(tiny_model_dir, pre_seq_len=3)
        with torch.no_grad():
            model.transformer.prefix_encoder.embedding.weight.mul_(4)
        folder = save_prefix_checkpoint(model, run.checkpoints_dir / f"checkpoint-{step}")
        (folder / CHECKPOINT_COMPLETE_MARKER).write_text("{}")
    return workspace, run


def glmtui(workspace: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "glmtui.cli", "--workspace", str(workspace), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
    )


def test_a_run_stands_for_its_latest_checkpoint_and_names_its_own(workspace_with_run) -> None:
    workspace, run = workspace_with_run
    store = RunStore(workspace / "runs")
    latest = run.checkpoints_dir / "checkpoint-20"
    assert run.default_checkpoint().path == latest
    assert store.resolve_checkpoint("checkpoint-10", run) == run.checkpoints_dir / "checkpoint-10"
    assert store.resolve_checkpoint("10", run) == run.checkpoints_dir / "checkpoint-10"
    assert store.resolve_checkpoint("named") == latest
    assert store.resolve_checkpoint(str(run.path)) == latest
    assert store.resolve_checkpoint(str(latest)) == latest
    with pytest.raises(RunError, match="a checkpoint-N of a run needs --run RUN"):
        store.resolve_checkpoint("checkpoint-10")
    with pytest.raises(
        RunError, match=r"no checkpoint '30' \(complete checkpoints: checkpoint-10, checkpoint-20\)"
    ):
        store.resolve_checkpoint("30", run)


@pytest.mark.slow
def test_chat_with_a_run_answers_with_its_latest_prefix(workspace_with_run, tiny_model_dir, tiny_tokenizer):
    workspace, run = workspace_with_run
    session = ChatSession(glmcore.load_model(tiny_model_dir), tiny_tokenizer)
    settings = ChatSettings(max_new_tokens=10, sampling=False)
    answers = {}
    for name in ("checkpoint-10", "checkpoint-20"):
        session.use_prefix(run.checkpoints_dir / name)
        answers[name] = session.ask("你好", settings).response
        session.clear()
    assert answers["checkpoint-10"] != answers["checkpoint-20"]
    options = ("--greedy", "--max-new-tokens", "10")
    by_run = glmtui(workspace, "chat", "--run", "named", *options, stdin="你好\n")
    assert by_run.returncode == 0, by_run.stderr
    assert by_run.stdout == answers["checkpoint-20"] + "\n"
    named = glmtui(
        workspace, "chat", "--run", run.id, "--checkpoint", "checkpoint-10", *options, stdin="你好\n"
    )
    assert named.stdout == answers["checkpoint-10"] + "\n"


@pytest.mark.slow
def test_eval_limit_takes_the_first_rows_and_a_run_as_checkpoint_means_its_latest(workspace_with_run) -> None:
    workspace, run = workspace_with_run
    out = workspace / "limited"
    done = glmtui(
        workspace,
        "eval",
        "--run",
        "named",
        "--checkpoint",
        "10",
        "--checkpoint",
        "named",
        "--limit",
        "2",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "(its first 2 examples)" in " ".join(done.stderr.split())  # rich wraps long paths
    summary = json.loads((out / COMPARISON_FILE).read_text(encoding="utf-8"))
    assert (summary["limit"], summary["data_examples"]) == (2, 5)
    assert [entry["label"] for entry in summary["evaluations"]] == ["checkpoint-10", "checkpoint-20"]
    assert [entry["predict_samples"] for entry in summary["evaluations"]] == [2, 2]
    assert len((out / "checkpoint-20" / "generated_predictions.txt").read_text().splitlines()) == 2
    refused = glmtui(workspace, "eval", "--run", "named", "--limit", "0")
    assert refused.returncode == 1 and "The limit must be 1 or more" in refused.stderr


def test_export_of_a_p_tuning_run_explains_before_announcing_anything(workspace_with_run) -> None:
    workspace, run = workspace_with_run
    done = glmtui(workspace, "export", "named")
    assert done.returncode == 1
    assert "Exporting" not in done.stdout + done.stderr
    assert f"use its checkpoints directly (glmtui chat --run {run.id}" in done.stderr
