"""Workspace: where its root comes from, its folders, finding model folders, atomic writes, model completeness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glmcore.models.checkpoint import model_folder_problems
from glmcore.workspace import Workspace, WorkspaceError, atomic_write_text


def test_root_comes_from_the_argument_then_the_environment_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "from-env"))
    assert Workspace.from_env(tmp_path / "given").root == tmp_path / "given"
    assert Workspace.from_env().root == tmp_path / "from-env"
    monkeypatch.delenv("GLMTUI_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Workspace.from_env().root == tmp_path / "home" / "glmtui"


def test_ensure_creates_the_folders_and_reports_a_file_in_the_way(tmp_path: Path) -> None:
    workspace = Workspace.from_env(tmp_path / "ws").ensure()
    assert workspace.models_dir.is_dir() and workspace.data_dir.is_dir() and workspace.runs_dir.is_dir()

    blocked = Workspace.from_env(tmp_path / "blocked")
    blocked.root.mkdir()
    (blocked.root / "runs").write_text("not a folder")
    with pytest.raises(WorkspaceError, match="runs exists but is not a folder"):
        blocked.ensure()


def test_find_models_lists_folders_with_a_config(tmp_path: Path) -> None:
    workspace = Workspace.from_env(tmp_path).ensure()
    for folder in ("chatglm-6b", "THUDM/chatglm-6b-int4", "empty"):
        (workspace.models_dir / folder).mkdir(parents=True)
    (workspace.models_dir / "chatglm-6b" / "config.json").write_text("{}")
    (workspace.models_dir / "THUDM" / "chatglm-6b-int4" / "config.json").write_text("{}")

    assert workspace.find_models() == [
        workspace.models_dir / "THUDM" / "chatglm-6b-int4",
        workspace.models_dir / "chatglm-6b",
    ]
    assert Workspace.from_env(tmp_path / "none").find_models() == []


def test_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    target.write_text("old")
    atomic_write_text(target, "new content")
    assert target.read_text() == "new content"
    assert [path.name for path in tmp_path.iterdir()] == ["status.json"]


PUBLISHED_CONFIG = Path(__file__).parent / "fixtures" / "reference" / "chatglm-6b" / "config.json"


def write_model(folder: Path, shards: list[str], present: list[str]) -> Path:
    folder.mkdir()
    # The published ChatGLM-6B config, so the folder's family (and with it the tokenizer file) is known.
    (folder / "config.json").write_text(PUBLISHED_CONFIG.read_text(encoding="utf-8"))
    (folder / "ice_text.model").write_bytes(b"sp")
    weight_map = {f"tensor.{index}": shard for index, shard in enumerate(shards)}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for shard in present:
        (folder / shard).write_bytes(b"w")
    return folder


def test_model_folder_problems_name_each_missing_part(tmp_path: Path) -> None:
    shards = [f"pytorch_model-0000{index}-of-00003.bin" for index in (1, 2, 3)]
    complete = write_model(tmp_path / "complete", shards, shards)
    assert model_folder_problems(complete) == []

    partial = write_model(tmp_path / "partial", shards, shards[:1])
    (partial / "ice_text.model").unlink()
    assert model_folder_problems(partial) == [
        f"{partial} has no ice_text.model",
        f"{partial} lacks 2 of the 3 weight shards named by pytorch_model.bin.index.json: {shards[1]}, {shards[2]}",
    ]

    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_text("{}")
    (single / "ice_text.model").write_bytes(b"sp")
    assert "holds no weights" in model_folder_problems(single)[0]
    (single / "model.safetensors").write_bytes(b"w")
    assert model_folder_problems(single) == []

    assert model_folder_problems(tmp_path / "absent") == [
        f"the model folder {tmp_path / 'absent'} does not exist"
    ]
