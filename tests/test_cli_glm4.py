"""The GLM-4 demo through the CLI, as a user with only GLM-4 meets it: `glmtui demo --family glm-4-9b` on a built
demo, `glmtui train` its P-tuning config (cut short), `glmtui eval`, `glmtui chat` with a system prompt, `glmtui
serve` of the run's prefix to the `openai` client, `glmtui compare`."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from test_naming import glmtui

import glmcore
from glmcore.chat import ChatSession, ChatSettings
from glmcore.config import RunConfig
from glmcore.runs import RunStore
from glmcore.serve.servers import Server

pytestmark = pytest.mark.slow

QUESTION = "类型#裙*颜色#红色"
SYSTEM = "你是一个广告文案助手。"


def shortened(config: RunConfig) -> RunConfig:
    """The demo's P-tuning config cut to two steps of two rows (the app's walk trains the same)."""
    return dataclasses.replace(
        config,
        max_steps=2,
        save_steps=2,
        logging_steps=1,
        per_device_train_batch_size=2,
        pre_seq_len=4,
        max_source_length=32,
        max_target_length=32,
    )


def short_demo_run(workspace: Path) -> Path:
    """The demo's P-tuning config as `glmtui demo` wrote it, cut to two steps of two rows."""
    path = workspace / "configs" / "demo-glm4-ptuning.toml"
    shortened(RunConfig.load(path)).save(path)
    return path


def test_the_glm4_demo_through_train_eval_chat_serve_and_compare(tmp_path: Path, glm4_demo_root: Path) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(glm4_demo_root, workspace)

    built = glmtui(workspace, "demo", "--family", "glm-4-9b")
    assert built.returncode == 0, built.stderr
    config_path = workspace / "configs" / "demo-glm4-ptuning.toml"
    assert f"Wrote {config_path}" in built.stdout.replace("\n", "")
    assert RunConfig.load(config_path).model_path == workspace / "models" / "demo-glm4-tiny"

    trained = glmtui(workspace, "train", str(short_demo_run(workspace)))
    assert trained.returncode == 0, trained.stderr[-2000:]
    (run,) = RunStore(workspace / "runs").list()
    assert run.status().state == "finished" and run.latest_checkpoint().step == 2

    evaluated = glmtui(
        workspace, "eval", "--run", run.id, "--limit", "3", "--max-target-length", "8", "--batch-size", "3"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "BLEU-4" in evaluated.stdout and "checkpoint-2" in evaluated.stdout

    chat = glmtui(
        workspace,
        "chat",
        "--run",
        run.id,
        "--system",
        SYSTEM,
        "--greedy",
        "--max-new-tokens",
        "6",
        stdin=f"{QUESTION}\n/quit\n",
    )
    assert chat.returncode == 0, chat.stderr[-2000:]
    model_dir = run.config.model_path
    session = ChatSession(glmcore.load_model(model_dir), glmcore.load_tokenizer(model_dir), system=SYSTEM)
    session.use_prefix(run.latest_checkpoint().path)
    greedy = ChatSettings(max_new_tokens=6, sampling=False)
    assert chat.stdout == f"{session.ask(QUESTION, greedy).response}\n"

    session.clear()
    session.use_system(None)
    served_answer = serve_and_ask(workspace, model_dir, run.id)
    assert served_answer == session.ask(QUESTION, greedy).response

    compared = glmtui(workspace, "compare", run.id)
    assert compared.returncode == 0, compared.stderr
    assert compared.stdout.startswith("1 run, best first") and "BLEU4" in compared.stdout  # the eval, scored


def serve_and_ask(workspace: Path, model_dir: Path, run_id: str) -> str:
    """`glmtui serve --detach` of the base with the run's prefix, asked once by the openai client (greedy),
    then `glmtui serve --stop`."""
    started = subprocess.run(
        [sys.executable, "-m", "glmtui.cli", "serve", "--model", str(model_dir), "--port", "0", "--detach"],
        env={**os.environ, "GLMTUI_HOME": str(workspace)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert started.returncode == 0, started.stderr + started.stdout
    server = Server(workspace / "servers" / started.stdout.split("Server ", 1)[1].split()[0])
    try:
        status = server.status()
        assert run_id in status.models
        client = openai.OpenAI(base_url=status.url, api_key="none", max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model=run_id, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=6
        )
        return reply.choices[0].message.content
    finally:
        stopped = glmtui(workspace, "serve", "--stop", server.id)
        assert stopped.returncode == 0, stopped.stderr


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_every_family_option_takes_glm4s_names_and_aliases(command: str) -> None:
    """`bench --family glm-4-9b` was refused: its choices were the registry names only."""
    from glmtui.cli import build_parser

    for name in ("glm-4-9b-chat", "glm-4-9b", "GLM-4-9B-Chat-1M"):
        assert build_parser().parse_args([command, "--family", name]).family == "glm-4-9b-chat"


def test_convert_of_a_glm4_folder_says_it_already_has_safetensors(glm4_model_dir: Path, capsys) -> None:
    """GLM-4 ships safetensors: `glmtui convert` said it wrote an index and that .bin shards may be deleted."""
    from glmtui.cli import main

    before = sorted(path.name for path in glm4_model_dir.iterdir())
    assert main(["convert", str(glm4_model_dir)]) == 0
    said = capsys.readouterr().out
    assert said == (
        f"{glm4_model_dir} already has safetensors weights, which glmtui reads: there is nothing to convert.\n"
    )
    assert sorted(path.name for path in glm4_model_dir.iterdir()) == before
