"""`glmtui demo --family`: each family's demo model is built in its published layout, pretrained, and its
demo run config is valid. The pretraining is cut to a few steps here (the real demo's 400 take minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import glmcore.demo as demo
from glmcore.config import validate
from glmcore.models import family_for, family_named
from glmcore.workspace import Workspace


@pytest.mark.parametrize("family", ["chatglm2-6b", "chatglm3-6b"])
def test_the_familys_demo_model_is_built_pretrained_and_ready_to_tune(
    tmp_path: Path, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "PRETRAIN_STEPS", 3)
    monkeypatch.setattr(demo, "PRETRAIN_TEXTS", 40)
    monkeypatch.setattr(demo, "PRETRAIN_BATCH", 4)
    workspace = Workspace(tmp_path / "ws")
    messages: list[str] = []
    paths = demo.ensure_demo_workspace(workspace, lambda fraction, message: messages.append(message), family)

    assert demo.demo_ready(workspace, family) and not demo.demo_ready(workspace)
    assert family_for(paths.model_dir)[0] is family_named(family)
    assert json.loads((paths.model_dir / "config.json").read_text())["seq_length"] == 2048
    assert "pretraining the demo model: step 3/3" in " ".join(messages)
    assert not list(workspace.models_dir.glob("*.building"))
    config = demo.demo_run_config(workspace, family)
    assert config.model_path == paths.model_dir and validate(config, runs_dir=workspace.runs_dir) == []
