"""Snapshots of every screen and dialog at 80x24 and 120x40, each reached by pressing keys, on a fixed workspace,
recorded GPUs and a fixed clock. At 80x24 each also checks that nothing on screen is cut (``cut_text``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.app import (
    columns_fit_rows,
    cut_text,
    make_app,
    make_workspace,
    paste,
    settle,
    tiny_config,
    write_run,
)
from support.snapshot_root import fixed_root, module_on_a_clean_root
from support.waiting import wait_until_in_app

from glmcore.workspace import Workspace
from glmtui.screens.base import NAVIGATION
from glmtui.screens.chat import ChatScreen
from glmtui.screens.evaluate import EvaluateScreen
from glmtui.screens.training import TrainingScreen

SIZES = [(80, 24), (120, 40)]
# Paths are shown on screen, so the workspace lives at the same place on every run.
SNAPSHOT_ROOT = fixed_root("glmtui-snapshot-workspace")

clean_snapshot_root = module_on_a_clean_root(SNAPSHOT_ROOT)

STATES = ("created", "running", "stopping", "stopped", "finished", "failed", "crashed")
REASONS = {
    "failed": "CUDA out of memory: tried to allocate 2.00 GiB; lower the batch or use 4-bit",
    "crashed": "the training process (pid 4242 on gpu-server) ended without a word",
}


def run_id(state: str) -> str:
    return f"20260501-1{STATES.index(state)}0000-{state}"


def workspace_with_runs(*, checkpoint: bool = False) -> Workspace:
    """A run in every state; the finished one has a prefix checkpoint when ``checkpoint`` (for Evaluate)."""
    workspace = make_workspace(SNAPSHOT_ROOT)
    config = tiny_config(workspace, max_steps=200, logging_steps=10)
    for state in STATES:
        step = {"created": 0, "finished": 200}.get(state, 80)
        losses = [] if state == "created" else [3.2, 2.9, 2.5, 2.3, 2.0, 1.9, 1.7, 1.65][: step // 10]
        run = write_run(workspace, run_id(state), config, state=state, step=step, losses=losses)
        if state in REASONS:
            status = json.loads(run.status_path.read_text())
            run.status_path.write_text(json.dumps({**status, "reason": REASONS[state]}))
        if state == "finished" and checkpoint:
            write_prefix_checkpoint(run.checkpoints_dir / "checkpoint-200", workspace)
    return workspace


def write_prefix_checkpoint(folder: Path, workspace: Workspace) -> None:
    """A complete P-tuning checkpoint of the tiny model whose prefix is large enough to change its answers."""
    import torch

    import glmcore
    from glmcore.prefix import save_prefix_checkpoint

    torch.manual_seed(3)
    model = glmcore.load_model(workspace.models_dir / "tiny-chatglm", pre_seq_len=4)
    with torch.no_grad():
        model.transformer.prefix_encoder.embedding.weight.mul_(4)
    save_prefix_checkpoint(model, folder)
    (folder / "trainer_state.json").write_text("{}")


async def press(pilot, *keys: str) -> None:
    for key in keys:
        await pilot.press(key)
        await settle(pilot)


async def assert_whole(pilot) -> None:
    """At 80x24, nothing on screen is cut. Also stops the text cursors blinking and checks that no notification
    is showing (it goes after a timeout): a snapshot must not depend on the moment it is taken."""
    from textual.widgets import Input

    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await settle(pilot)
    showing = [note.message for note in pilot.app.notifications_on_screen]
    assert showing == [], f"a snapshot would show these notifications until they time out: {showing}"
    if tuple(pilot.app.size) == (80, 24):
        cuts = cut_text(pilot.app.screen)
        assert cuts == [], "\n".join(cuts)


async def list_every_run(pilot) -> None:
    """Wait until the Runs screen lists a run per state (the app reads the folders in a worker)."""
    table = pilot.app.screen.query_one("#runs-table")
    await wait_until_in_app(pilot, lambda: table.row_count == len(STATES), "a row per state")
    await settle(pilot)


async def highlight(pilot, state: str) -> None:
    """Move the Runs table's cursor to the run in ``state`` by keys."""
    await list_every_run(pilot)
    table = pilot.app.screen.query_one("#runs-table")
    index = [key.value for key in table.rows].index(run_id(state))
    await press(pilot, *["down"] * index)


@pytest.mark.parametrize("size", SIZES)
def test_welcome_offers_the_demo(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(make_workspace(SNAPSHOT_ROOT, with_model=False))
    assert snap_compare(app, terminal_size=size, run_before=assert_whole)


@pytest.mark.parametrize("size", SIZES)
def test_models_screen(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(make_workspace(SNAPSHOT_ROOT))

    async def open_models(pilot) -> None:
        await press(pilot, "f2")
        local = pilot.app.screen.query_one("#models-local")
        await wait_until_in_app(
            pilot, lambda: local.row_count == 1 and columns_fit_rows(local), "the model folder listed"
        )
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=open_models)


@pytest.mark.parametrize("size", SIZES)
def test_data_screen_preview(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(make_workspace(SNAPSHOT_ROOT))

    async def preview(pilot) -> None:
        await press(pilot, "f3", "ctrl+g")
        stats = pilot.app.screen.query_one("#data-stats")
        await wait_until_in_app(
            pilot, lambda: stats.row_count == 2 and columns_fit_rows(stats), "the token statistics"
        )
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=preview)


def workspace_with_saved_config() -> tuple[Workspace, Path]:
    workspace = make_workspace(SNAPSHOT_ROOT)
    path = workspace.root / "configs" / "tiny-ptuning.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tiny_config(workspace).save(path)
    return workspace, path


async def open_load_dialog(pilot, path: Path) -> None:
    await press(pilot, "ctrl+o")
    await wait_until_in_app(
        pilot, lambda: getattr(pilot.app.focused, "id", None) == "load-path", "the dialog"
    )
    await paste(pilot, str(path))
    await wait_until_in_app(pilot, lambda: pilot.app.focused.value == str(path), "the path pasted")


async def load_saved_config(pilot, path: Path) -> None:
    """ctrl+o, type the TOML's path, enter: the editor fills from it (focus goes back to the Name field)."""
    await open_load_dialog(pilot, path)
    await press(pilot, "enter")
    await wait_until_in_app(pilot, lambda: getattr(pilot.app.focused, "id", None) == "name", "the editor")
    await wait_until_in_app(pilot, lambda: pilot.app.focused.value == "tiny-ptuning", "the config loaded")
    await settle(pilot)


@pytest.mark.parametrize("size", SIZES)
def test_config_load_dialog(snap_compare, size: tuple[int, int]) -> None:
    workspace, path = workspace_with_saved_config()
    app = make_app(workspace)

    async def open_dialog(pilot) -> None:
        await open_load_dialog(pilot, path)
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=open_dialog)


@pytest.mark.parametrize("size", SIZES)
def test_config_editor(snap_compare, size: tuple[int, int]) -> None:
    workspace, path = workspace_with_saved_config()
    app = make_app(workspace)

    async def load(pilot) -> None:
        await load_saved_config(pilot, path)
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=load)


@pytest.mark.parametrize("size", SIZES)
def test_config_editor_with_lora(snap_compare, size: tuple[int, int]) -> None:
    workspace, path = workspace_with_saved_config()
    app = make_app(workspace)

    async def choose_lora(pilot) -> None:
        await load_saved_config(pilot, path)
        await press(pilot, "tab", "tab", "tab", "tab")  # Name -> Model -> Train -> Validation -> Method
        method = pilot.app.screen.query_one("#method")
        await press(pilot, "enter")
        await wait_until_in_app(
            pilot,
            lambda: method.expanded and type(pilot.app.focused).__name__ == "SelectOverlay",
            "the method list open",
        )
        await press(pilot, "down", "enter")  # ptuning-v2 -> lora
        assert pilot.app.screen.current_config().method == "lora"
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=choose_lora)


@pytest.mark.parametrize("size", SIZES)
def test_runs_screen_with_a_run_in_every_state(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(workspace_with_runs())

    async def list_runs(pilot) -> None:
        await list_every_run(pilot)
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=list_runs)


@pytest.mark.parametrize("size", SIZES)
def test_delete_confirmation(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(workspace_with_runs())

    async def ask_to_delete(pilot) -> None:
        await settle(pilot)
        await highlight(pilot, "finished")
        await press(pilot, "d")
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=ask_to_delete)


@pytest.mark.parametrize("size", SIZES)
def test_quitting_with_active_runs_says_they_go_on(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(workspace_with_runs())

    async def ask_to_quit(pilot) -> None:
        await list_every_run(pilot)
        await press(pilot, "q")
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=ask_to_quit)


@pytest.mark.parametrize("size", SIZES)
def test_command_palette(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(workspace_with_runs())

    async def open_palette(pilot) -> None:
        await list_every_run(pilot)
        await press(pilot, "ctrl+p")
        await wait_until_in_app(
            pilot, lambda: type(pilot.app.focused).__name__ == "CommandInput", "the palette"
        )
        await pilot.press(*"go to")
        await settle(pilot)  # the palette's search is a worker
        options = pilot.app.screen.query_one("CommandList")
        first = [str(options.get_option_at_index(n).prompt).splitlines()[0] for n in range(len(NAVIGATION))]
        assert first == [f"Go to {title}" for _, _, title in NAVIGATION]
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=open_palette)


TRAINING_CASES = [(state, (80, 24)) for state in STATES] + [("running", (120, 40)), ("failed", (120, 40))]


@pytest.mark.parametrize(("state", "size"), TRAINING_CASES)
def test_training_view(snap_compare, state: str, size: tuple[int, int]) -> None:
    app = make_app(workspace_with_runs())

    async def open_the_run(pilot) -> None:
        await settle(pilot)
        await highlight(pilot, state)
        await pilot.press("enter")
        screen = pilot.app.screen
        assert isinstance(screen, TrainingScreen)
        await wait_until_in_app(
            pilot,
            lambda: screen.status is not None and len(screen.query_one("#training-log").lines) >= 3,
            "the run's status and its first log lines",
        )
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=open_the_run)


@pytest.mark.parametrize("size", SIZES)
def test_training_view_with_no_run_open(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(make_workspace(SNAPSHOT_ROOT))

    async def open_training(pilot) -> None:
        await press(pilot, "f6")
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=open_training)


@pytest.mark.parametrize("size", SIZES)
def test_evaluate_with_results(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(workspace_with_runs(checkpoint=True))

    async def evaluate(pilot) -> None:
        await settle(pilot)
        await highlight(pilot, "finished")
        await press(pilot, "e")
        screen = pilot.app.screen
        assert isinstance(screen, EvaluateScreen)
        await press(pilot, "ctrl+g")
        await wait_until_in_app(pilot, lambda: screen.comparison is not None, "the evaluation's results")
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=evaluate)


@pytest.mark.parametrize("size", SIZES)
def test_evaluate_before_a_run_is_picked(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(make_workspace(SNAPSHOT_ROOT))

    async def open_evaluate(pilot) -> None:
        await press(pilot, "f7")
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=open_evaluate)


@pytest.mark.parametrize("size", SIZES)
def test_chat_with_a_checkpoint(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(workspace_with_runs(checkpoint=True))

    async def chat(pilot) -> None:
        await settle(pilot)
        await highlight(pilot, "finished")
        await press(pilot, "c")
        screen = pilot.app.screen
        assert isinstance(screen, ChatScreen)
        await wait_until_in_app(pilot, lambda: screen.session is not None, "the model loaded")
        await pilot.press(*"hello")
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=chat)


def test_chat_with_a_system_prompt(snap_compare) -> None:
    """ChatGLM3's chat has a system role, so its Chat screen has a System field (ChatGLM-6B's has none)."""
    from glmcore.models import family_named

    workspace = make_workspace(SNAPSHOT_ROOT)
    model = (
        family_named("chatglm3-6b")
        .implementation()
        .write_tiny_checkpoint(workspace.models_dir / "tiny-chatglm3", num_shards=1, seq_length=2048)
    )
    config = tiny_config(workspace, model_path=model)
    write_run(workspace, "20260501-110000-chatglm3", config, state="finished", step=30, losses=[2.0])
    app = make_app(workspace)

    async def chat(pilot) -> None:
        await settle(pilot)
        await press(pilot, "c")
        screen = pilot.app.screen
        assert isinstance(screen, ChatScreen)
        await wait_until_in_app(pilot, lambda: screen.session is not None, "the model loaded")
        await press(pilot, "shift+tab", "shift+tab", "shift+tab")  # from the message back past Tools to System
        await pilot.press(*"Answer briefly.")
        await press(pilot, "enter")
        await pilot.press(*"hello")
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=chat)


async def test_the_cut_check_finds_a_screen_too_narrow_for_its_text(tmp_path: Path) -> None:
    """The check the snapshots rely on does fail: the config editor in 50 columns cuts its paths."""
    workspace = make_workspace(tmp_path / "ws")
    path = workspace.root / "configs" / "tiny.toml"
    path.parent.mkdir()
    tiny_config(workspace).save(path)
    app = make_app(workspace)
    async with app.run_test(size=(50, 24)) as pilot:
        await load_saved_config(pilot, path)
        await settle(pilot)
        cuts = cut_text(app.screen)
    assert any(cut.startswith("Input#train_file shows") for cut in cuts), cuts
