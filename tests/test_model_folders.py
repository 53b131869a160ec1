"""Every model folder of a workspace listed with its state and why (`glmtui models`, the Models screen), and the
family set by hand wherever a refusal says to set it: `glmtui models --family`, f on the Models screen, the
`family` setting, `--family` on a command, the config editor's Family row."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import GOLDEN
from support.app import make_app, make_workspace, settle, tiny_config, write_run
from support.waiting import wait_until_in_app
from textual.widgets import DataTable, Input, Select, Static

from glmcore import preflight
from glmcore.config import RunConfig, validate
from glmcore.errors import GlmError
from glmcore.model_folders import list_model_folders
from glmcore.models import UnsupportedModel, family_for, family_named, family_names
from glmcore.models.checkpoint import convert_to_safetensors
from glmcore.models.loading import load_model
from glmcore.workspace import Workspace
from glmtui.cli import main

EXPECTED_ROWS = {
    "Qwen2-7B": ("—", "not a GLM model"),
    "chatglm2": ("ChatGLM2-6B", "complete"),
    "chatglm3": ("ChatGLM3-6B", "complete"),
    "demo-chatglm-tiny.building": ("—", "building"),
    "THUDM/chatglm-6b": ("—", "downloading"),
    "tiny-chatglm": ("ChatGLM-6B", "complete"),
    "unclear": ("—", "family unclear: set it"),
}


def mixed_workspace(root: Path) -> Workspace:
    """A shared server's models/: a Qwen2 folder, a ChatGLM folder whose config.json tells no family, a demo
    being built, a download under way, and a working model of every family."""
    workspace = make_workspace(root)
    models = workspace.models_dir
    shutil.copytree(GOLDEN / "chatglm2" / "tiny-chatglm2", models / "chatglm2")
    shutil.copytree(GOLDEN / "chatglm3" / "tiny-chatglm3", models / "chatglm3")
    qwen = models / "Qwen2-7B"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 3584}))
    (qwen / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    unclear = shutil.copytree(GOLDEN / "chatglm3" / "tiny-chatglm3", models / "unclear")
    config = json.loads((unclear / "config.json").read_text())
    config.pop("_name_or_path", None)
    config["seq_length"] = 1024
    (unclear / "config.json").write_text(json.dumps(config))
    shutil.copytree(models / "tiny-chatglm", models / "demo-chatglm-tiny.building")
    downloading = models / "THUDM" / "chatglm-6b"
    downloading.mkdir(parents=True)
    (downloading / "pytorch_model-00001-of-00008.bin.part").write_bytes(b"\0" * 1000)
    return workspace


def run_cli(capsys: pytest.CaptureFixture, workspace: Workspace, *argv: str) -> tuple[int, str]:
    """`glmtui --workspace ROOT ARGV...` in this process (the caller has put $GLMTUI_HOME under monkeypatch, which
    restores what --workspace sets)."""
    code = main(["--workspace", str(workspace.root), *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_glmtui_models_lists_every_folder_with_its_state_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    workspace = mixed_workspace(tmp_path / "ws")
    monkeypatch.setenv("GLMTUI_HOME", str(workspace.root))
    code, out = run_cli(capsys, workspace, "models")
    assert code == 0
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()[2:9]}
    assert set(rows) == set(EXPECTED_ROWS)
    for name, (family, state) in EXPECTED_ROWS.items():
        assert rows[name].startswith(family) and rows[name].endswith(state), (name, rows[name])
    assert "holds a 'qwen2' model that none of glmtui's families" in out
    assert "becomes the model demo-chatglm-tiny when the build finishes" in out
    assert "1 unfinished file(s): pytorch_model-00001-of-00008.bin.part" in out
    # Folders being built or downloaded are never offered as models (the editor's pre-fill, the choices).
    assert [path.name for path in workspace.find_models()] == [
        "Qwen2-7B",
        "chatglm2",
        "chatglm3",
        "tiny-chatglm",
        "unclear",
    ]

    # The refusal's fix, followed: `glmtui models --family NAME MODEL_DIR` (an alias will do), remembered.
    unclear = workspace.models_dir / "unclear"
    with pytest.raises(UnsupportedModel, match=r"glmtui models --family NAME MODEL_DIR"):
        family_for(unclear)
    code, out = run_cli(capsys, workspace, "models", "--family", "chatglm3", str(unclear))
    assert code == 0 and "complete · " in out and 'family "chatglm3-6b" was set for this folder' in out
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "elsewhere"))  # the folder's own workspace still knows
    assert family_for(unclear)[0] is family_named("chatglm3-6b")
    code, out = run_cli(capsys, workspace, "models", str(unclear))
    assert code == 0 and "ChatGLM3-6B" in out
    code, out = run_cli(capsys, workspace, "models", "--family", "auto", str(unclear))
    assert code == 0 and "family unclear: set it" in out
    workspace.model_families_path.write_text("= not toml\n")
    code, out = run_cli(capsys, workspace, "models", str(unclear))
    assert code == 1 and f"{workspace.model_families_path} cannot be read (Invalid" in " ".join(out.split())


def test_the_family_setting_and_the_family_option_do_what_the_refusal_says(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = mixed_workspace(tmp_path / "ws")
    monkeypatch.setenv("GLMTUI_HOME", str(workspace.root))
    unclear = workspace.models_dir / "unclear"
    config = tiny_config(workspace, model_path=unclear)
    assert any("set family = " in problem.message for problem in preflight.check(config))
    # The `family` setting of a run config (read from TOML, an alias accepted) makes the run pass its checks.
    config.save(tmp_path / "run.toml")
    toml = (tmp_path / "run.toml").read_text()
    (tmp_path / "run.toml").write_text(f'family = "chatglm3"\n{toml}')
    with_family = RunConfig.load(tmp_path / "run.toml")
    assert with_family.family == "chatglm3" and preflight.check(with_family) == []
    assert [
        str(problem) for problem in validate(RunConfig.from_dict({**config.to_dict(), "family": "qwen2"}))
    ] == [f"family: 'qwen2' is not a model family glmtui knows; use one of {family_names()}, or leave it out"]
    # `--family` on a command that takes a model folder: chat answers, and the folder remembers its family.
    monkeypatch.setattr(sys, "stdin", io.StringIO("类型#裙\n"))
    code = main(
        ["chat", "--model", str(unclear), "--family", "chatglm3", "--greedy", "--max-new-tokens", "3"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "The family of" in captured.err and "is now chatglm3-6b" in captured.err
    assert workspace.chosen_family(unclear) == "chatglm3-6b"
    assert main(["models", str(unclear)]) == 0
    with pytest.raises(SystemExit):
        main(["chat", "--model", str(unclear), "--family", "qwen2"])
    assert (
        "--family: qwen2 is not a model family glmtui knows; use one of: chatglm-6b"
        in capsys.readouterr().err
    )


def test_a_32k_folder_is_chatglm3_by_name_and_loads_with_its_rope_ratio(tmp_path: Path) -> None:
    folder = shutil.copytree(GOLDEN / "chatglm3" / "tiny-chatglm3", tmp_path / "chatglm3-6b-32k")
    config = json.loads((folder / "config.json").read_text())
    config.update(_name_or_path="THUDM/chatglm3-6b-32k", seq_length=32768, rope_ratio=50)
    (folder / "config.json").write_text(json.dumps(config))
    family, why = family_for(folder)
    assert (
        family is family_named("chatglm3-6b") and why == "config.json _name_or_path is THUDM/chatglm3-6b-32k"
    )
    assert family.implementation().config_class.from_pretrained(folder).rope_ratio == 50


def rows_of(table: DataTable) -> dict[str, tuple[str, str]]:
    return {
        str(table.get_row_at(row)[0]): (str(table.get_row_at(row)[1]), str(table.get_row_at(row)[3]))
        for row in range(table.row_count)
    }


async def test_the_models_screen_lists_every_folder_and_f_sets_an_unclear_family(tmp_path: Path) -> None:
    workspace = mixed_workspace(tmp_path / "ws")
    app = make_app(workspace)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        await pilot.press("f2")
        table = app.screen.query_one("#models-local", DataTable)
        await wait_until_in_app(pilot, lambda: table.row_count == len(EXPECTED_ROWS), "every model folder")
        assert rows_of(table) == EXPECTED_ROWS
        detail = app.screen.query_one("#models-detail", Static)
        order = [str(table.get_row_at(row)[0]) for row in range(table.row_count)]
        table.focus()
        await pilot.press(*["down"] * order.index("Qwen2-7B"))
        assert "holds a 'qwen2' model that none of glmtui's families" in str(detail.render())
        await pilot.press(*["down"] * (order.index("unclear") - order.index("Qwen2-7B")))
        assert "(f on the Models screen)" in str(detail.render())
        # The sentence's fix: f picks each family in turn; ChatGLM3-6B is the third.
        for _ in range(3):
            await pilot.press("f")
            await settle(pilot)
        await wait_until_in_app(
            pilot, lambda: rows_of(table)["unclear"] == ("ChatGLM3-6B", "complete"), "the family set by hand"
        )
        assert "was set for this folder" in str(detail.render())
        assert workspace.chosen_family(workspace.models_dir / "unclear") == "chatglm3-6b"


async def test_the_config_editor_offers_the_family_when_config_json_does_not_tell(tmp_path: Path) -> None:
    workspace = mixed_workspace(tmp_path / "ws")
    unclear = workspace.models_dir / "unclear"
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("f4")
        await settle(pilot)
        screen = app.screen
        model_path = screen.query_one("#model_path", Input)
        assert Path(model_path.value).name == "chatglm2"  # the first working model: none being built, no Qwen
        row = screen.query_one("#row-family")
        assert not row.display
        model_path.value = str(unclear)
        screen.query_one("#train_file", Input).value = str(workspace.data_dir / "sample" / "train.json")
        await wait_until_in_app(pilot, lambda: row.display, "the Family row")
        problems = screen.query_one("#config-problems", Static)
        await wait_until_in_app(
            pilot, lambda: "set family = " in str(problems.render()), "the family problem"
        )
        screen.query_one("#family", Select).focus()
        await pilot.press("enter", "down", "down", "down", "enter")
        assert screen.query_one("#family", Select).value == "chatglm3-6b"
        await wait_until_in_app(
            pilot,
            lambda: "set family" not in str(problems.render()),
            "the problem gone once the family is set",
        )
        assert "Model family: ChatGLM3-6B" in str(screen.query_one("#config-estimate", Static).render())
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert workspace.chosen_family(unclear) == "chatglm3-6b"
        assert list_model_folders(workspace)[-1].state == "ready"


def test_the_models_list_preflight_and_the_loader_agree_on_a_folder_missing_a_shard(tmp_path: Path) -> None:
    # Converted to safetensors, then one of the .bin shards its index still names deleted: the Models list
    # called it ready and the loader loaded it, while preflight refused it. One check now answers all three:
    # the .bin shards of a converted folder are not read (`glmtui convert` says they may be deleted), a
    # safetensors shard is.
    folder = shutil.copytree(GOLDEN / "tiny-chatglm6b", tmp_path / "models" / "tiny")
    convert_to_safetensors(folder)
    (folder / "pytorch_model-00002-of-00008.bin").unlink()
    [listed] = list_model_folders(Workspace(tmp_path))
    assert listed.state == "ready" and preflight.model_problems(folder) == []
    load_model(folder)

    shard = "model-00002-of-00008.safetensors"
    (folder / shard).unlink()
    [listed] = list_model_folders(Workspace(tmp_path))
    assert listed.state == "incomplete" and listed.missing == (shard,)
    assert [problem.message for problem in preflight.model_problems(folder)] == [
        f"{folder} lacks 1 of the 8 weight shards named by model.safetensors.index.json: {shard}; download the "
        "model with `glmtui download` or point model_path at a complete folder"
    ]
    with pytest.raises(GlmError, match=f"is incomplete: missing {shard}"):
        load_model(folder)


async def test_glmtui_runs_and_the_runs_screen_both_name_the_family_a_run_sets(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run on a folder whose config.json tells no family, with `family = "chatglm3"` in its config: the Runs
    # screen named the family, while `glmtui runs` ignored the setting and showed —.
    workspace = mixed_workspace(tmp_path / "ws")
    monkeypatch.setenv("GLMTUI_HOME", str(workspace.root))
    config = tiny_config(workspace, model_path=workspace.models_dir / "unclear", family="chatglm3")
    run = write_run(workspace, "20260501-100000-unclear", config, state="finished", step=8, losses=[2.0])
    monkeypatch.setenv("COLUMNS", "200")
    code, out = run_cli(capsys, workspace, "runs")
    [row] = [line for line in out.splitlines() if line.startswith(run.id)]
    assert code == 0 and "ChatGLM3-6B" in row
    app = make_app(workspace)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("f5")
        table = app.screen.query_one("#runs-table", DataTable)
        await wait_until_in_app(pilot, lambda: table.row_count == 1, "the run's row")
        family = [str(column.label) for column in table.ordered_columns].index("Family")
        assert str(table.get_row_at(0)[family]) == "ChatGLM3-6B"
