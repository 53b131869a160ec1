"""`glmtui demo` on a built demo workspace: it answers without loading torch and writes the two run configs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import glmcore.demo as demo
from glmcore.config import RunConfig, validate
from glmcore.demo import DEMO_MARKER, demo_paths, demo_ready
from glmcore.models import family_for, family_named
from glmcore.models.chatglm6b.tiny import write_tiny_checkpoint
from glmcore.quiet import LIBRARY_LOG_NAME
from glmcore.runs import RunStore
from glmcore.sample_data import write_sample_dataset
from glmcore.workspace import Workspace

NO_TORCH_DEMO = (
    "import sys\n"
    "from glmtui.cli import main\n"
    "code = main(['demo'])\n"
    "print('torch imported:', 'torch' in sys.modules)\n"
    "sys.exit(code)\n"
)


def built_demo_workspace(root: Path) -> Workspace:
    """A workspace laid out as a finished demo build leaves it (with the small test model in the demo's place)."""
    workspace = Workspace(root).ensure()
    paths = demo_paths(workspace)
    write_tiny_checkpoint(paths.model_dir, seed=1)
    (paths.model_dir / DEMO_MARKER).write_text(json.dumps({"steps": 0}))
    write_sample_dataset(paths.train_file.parent, train_count=16, dev_count=4)
    return workspace


def glmtui_demo(workspace: Workspace) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH_DEMO],
        env={**os.environ, "GLMTUI_HOME": str(workspace.root), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_on_a_built_workspace_writes_both_configs_without_loading_torch(tmp_path: Path) -> None:
    workspace = built_demo_workspace(tmp_path / "ws")
    assert demo_ready(workspace)
    result = glmtui_demo(workspace)
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout
    for name, method in (("demo-ptuning", "ptuning-v2"), ("demo-lora", "lora")):
        path = workspace.configs_dir / f"{name}.toml"
        assert f"Wrote {path}" in result.stdout
        config = RunConfig.load(path)
        assert config.method == method
        assert config.model_path == demo_paths(workspace).model_dir
        assert validate(config) == []
    assert f"glmtui train {workspace.configs_dir / 'demo-ptuning.toml'}" in result.stdout
    assert workspace.last_config() == workspace.configs_dir / "demo-ptuning.toml"


def test_demo_keeps_a_config_the_user_edited(tmp_path: Path) -> None:
    workspace = built_demo_workspace(tmp_path / "ws")
    assert glmtui_demo(workspace).returncode == 0
    edited = workspace.configs_dir / "demo-lora.toml"
    edited.write_text(edited.read_text().replace("max_steps = 200", "max_steps = 7"))
    result = glmtui_demo(workspace)
    assert f"Kept {edited}" in result.stdout
    assert RunConfig.load(edited).max_steps == 7


def test_a_demo_run_keeps_library_chatter_out_of_train_log_and_the_cli(tmp_path: Path) -> None:
    workspace = built_demo_workspace(tmp_path / "ws")
    assert glmtui_demo(workspace).returncode == 0
    config_path = workspace.configs_dir / "demo-ptuning.toml"
    config = RunConfig.load(config_path)
    dataclasses.replace(config, max_steps=2, save_steps=2, logging_steps=1).save(config_path)
    result = subprocess.run(
        [sys.executable, "-m", "glmtui.cli", "train", str(config_path)],
        env={**os.environ, "GLMTUI_HOME": str(workspace.root), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    (run,) = RunStore(workspace.runs_dir).list()
    assert run.status().state == "finished"
    ours = ("=== ", "glmtui: ", "step ")
    log_lines = [line for line in run.log_path.read_text().splitlines() if line.strip()]
    assert [line for line in log_lines if not line.startswith(ours)] == []
    assert any(line.startswith("step 2/2  loss ") for line in log_lines)
    for chatter in ("Warning", "warnings.warn", "kernels", "Loading weights", "it/s]"):
        assert chatter not in result.stdout + result.stderr
    library_log = (run.path / LIBRARY_LOG_NAME).read_text()
    assert "FutureWarning: `gradient_checkpointing` is deprecated" in library_log


@pytest.mark.parametrize("family", ["chatglm2-6b", "chatglm3-6b"])
def test_the_familys_demo_model_is_built_pretrained_and_ready_to_tune(
    tmp_path: Path, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`glmtui demo --family`: the family's demo model in its published layout, pretrained (cut to 3 steps here;
    the real demo's 400 take minutes), and its run config valid."""
    monkeypatch.setattr(demo, "PRETRAIN_STEPS", 3)
    monkeypatch.setattr(demo, "PRETRAIN_TEXTS", 40)
    monkeypatch.setattr(demo, "PRETRAIN_BATCH", 4)
    workspace = Workspace(tmp_path / "ws")
    messages: list[str] = []
    paths = demo.ensure_demo_workspace(workspace, lambda fraction, message: messages.append(message), family)

    assert demo_ready(workspace, family) and not demo_ready(workspace)
    assert family_for(paths.model_dir)[0] is family_named(family)
    assert json.loads((paths.model_dir / "config.json").read_text())["seq_length"] == 2048
    assert "pretraining the demo model: step 3/3" in " ".join(messages)
    assert not list(workspace.models_dir.glob("*.building"))
    (ptuning, _), (lora, _) = demo.write_demo_configs(workspace, family)
    assert ptuning.name == f"demo-{family.removesuffix('-6b')}-ptuning.toml"
    assert lora.name == f"demo-{family.removesuffix('-6b')}-lora.toml"
    config = demo.demo_run_config(workspace, family)
    assert config.model_path == paths.model_dir and validate(config) == []


def test_the_demo_pretrains_on_whole_rows_so_glm4_learns_the_newline_after_its_assistant_token(
    glm4_tokenizer,
) -> None:
    """GLM-4's published rows leave out the newline after `<|assistant|>`; a demo pretrained on them began every
    answer with a stray byte. The demo's rows learn every token up to the answer's end, padding still ignored."""
    from glmcore.data import Example, training_features
    from glmcore.examples import IGNORE_INDEX

    features = training_features(glm4_tokenizer, Example("", "红色的裙子"), 1, 20)
    row = demo.language_model_row(features)
    after_assistant = features["input_ids"].index(glm4_tokenizer.get_command("<|assistant|>")) + 1
    assert features["labels"][after_assistant] == IGNORE_INDEX
    assert row["labels"][after_assistant] == row["input_ids"][after_assistant]
    learned = [index for index, label in enumerate(features["labels"]) if label != IGNORE_INDEX]
    assert row["labels"][: learned[-1] + 1] == row["input_ids"][: learned[-1] + 1]
    assert row["labels"][learned[-1] + 1 :] == features["labels"][learned[-1] + 1 :]
    assert set(row["labels"][learned[-1] + 1 :]) == {IGNORE_INDEX}
