"""ChatGLM2-6B and ChatGLM3-6B through the CLI, as a user runs them: `glmtui train` a P-tuning run on the tiny
model, `glmtui eval --run` its checkpoint against the base model, `glmtui chat` with its prefix."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_naming import glmtui

import glmcore
from glmcore.chat import ChatSession, ChatSettings
from glmcore.config import RunConfig
from glmcore.models import family_named
from glmcore.runs import RunStore
from glmcore.sample_data import write_sample_dataset

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["chatglm2-6b", "chatglm3-6b"])
def test_train_eval_and_chat_commands_for_the_family(tmp_path: Path, family: str) -> None:
    workspace = tmp_path / "ws"
    model_dir = (
        family_named(family)
        .implementation()
        .write_tiny_checkpoint(tmp_path / family, init_std=0.3, seed=1, seq_length=2048)
    )
    write_sample_dataset(tmp_path / "data", train_count=16, dev_count=3)
    config = RunConfig(
        name=f"cli-{family}",
        model_path=model_dir,
        train_file=tmp_path / "data" / "train.json",
        validation_file=tmp_path / "data" / "dev.json",
        quantization_bit=16,
        pre_seq_len=4,
        learning_rate=1e-2,
        per_device_train_batch_size=2,
        max_steps=2,
        save_steps=2,
        logging_steps=1,
        # Long enough that every ChatGLM3 row (cut to source + target + 1) keeps answer tokens to learn from.
        max_source_length=48,
        max_target_length=24,
        gpus=[],
    )
    config.save(tmp_path / "run.toml")

    trained = glmtui(workspace, "train", str(tmp_path / "run.toml"))
    assert trained.returncode == 0, trained.stderr[-2000:]
    (run,) = RunStore(workspace / "runs").list()
    assert run.status().state == "finished" and run.latest_checkpoint().step == 2

    evaluated = glmtui(workspace, "eval", "--run", run.id, "--max-target-length", "8", "--batch-size", "3")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "BLEU-4" in evaluated.stdout and "checkpoint-2" in evaluated.stdout

    script = "类型#裙\n/quit\n"
    chat = glmtui(
        workspace,
        "chat",
        "--model",
        str(model_dir),
        "--checkpoint",
        str(run.latest_checkpoint().path),
        "--greedy",
        "--max-new-tokens",
        "6",
        stdin=script,
    )
    assert chat.returncode == 0, chat.stderr[-2000:]
    session = ChatSession(glmcore.load_model(model_dir), glmcore.load_tokenizer(model_dir))
    session.use_prefix(run.latest_checkpoint().path)
    expected = session.ask("类型#裙", ChatSettings(max_new_tokens=6, sampling=False)).response
    assert chat.stdout == f"{expected}\n"
