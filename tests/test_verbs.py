"""Each verb is decided once, in glmcore, for both front ends: the CLI and the app, run on the same workspace,
give the same sentence or the same run folder (issue 31 §1)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
from support.app import make_app, make_workspace, settle, tiny_config, write_run
from support.waiting import wait_until_in_app
from textual.widgets import DataTable, Input, Select, Static

from glmcore.queue import Queue
from glmcore.runs import Run, stop
from glmtui.cli import main
from glmtui.messages import ChatWith
from glmtui.screens.chat import ChatScreen
from glmtui.screens.config import ConfigScreen
from glmtui.screens.runs import RunsScreen
from glmtui.text.estimate import CPU_RUN


def one_line(text: str) -> str:
    """`text` with the terminal's line wrapping undone."""
    return " ".join(text.split())


async def test_a_full_fine_tuning_run_is_refused_by_chat_with_the_same_sentence_before_anything_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = make_workspace(tmp_path / "ws")
    run = write_run(
        workspace, "0501-full", tiny_config(workspace, method="full"), state="finished", step=30, losses=[1.0]
    )
    (run.checkpoints_dir / "checkpoint-30").mkdir()

    assert main(["--workspace", str(workspace.root), "chat", "--run", run.id]) == 1
    refused = one_line(capsys.readouterr().err)
    assert "trained full, neither a prefix nor a LoRA adapter: export it" in refused

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        app.post_message(ChatWith(run))
        await wait_until_in_app(pilot, lambda: isinstance(app.screen, ChatScreen), "the chat screen")
        status = app.screen.query_one("#chat-status", Static)
        await wait_until_in_app(pilot, lambda: "export it" in str(status.render()), "the refusal")
        assert f"error: {one_line(str(status.render()))}" == refused
        assert app.screen.session is None and not [w for w in app.workers if w.group == "chat-load"]


async def test_evaluation_refuses_a_full_run_and_a_run_without_validation_data_in_the_same_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = make_workspace(tmp_path / "ws")
    full = write_run(
        workspace, "0501-full", tiny_config(workspace, method="full"), state="finished", step=30, losses=[1.0]
    )
    no_validation = write_run(
        workspace,
        "0501-novalid",
        tiny_config(workspace, validation_file=None),
        state="finished",
        step=30,
        losses=[1.0],
    )
    refusals = {}
    for run in (full, no_validation):
        assert main(["--workspace", str(workspace.root), "eval", "--run", run.id]) == 1
        refusals[run.id] = one_line(capsys.readouterr().err)
    assert "neither P-tuning v2 nor LoRA: export it" in refusals[full.id]
    assert "has no validation file" in refusals[no_validation.id]

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        evaluate = app.workbench_screen("evaluate")
        app.action_show("evaluate")
        await settle(pilot)
        for run in (full, no_validation):
            evaluate.select_run(run)
            await settle(pilot)
            status = one_line(str(evaluate.query_one("#evaluate-status", Static).render()))
            assert f"error: {status}" == refusals[run.id]
            # The run's validation file, never its training file in its place; nothing starts.
            validation = run.config.validation_file
            assert evaluate.query_one("#evaluate-data", Input).value == (
                str(validation) if validation else ""
            )
            await pilot.press("ctrl+g")
            await settle(pilot)
            assert not [worker for worker in app.workers if worker.group == "evaluate"]
    assert not list(workspace.runs_dir.glob("*/evaluations"))


async def test_a_queued_cpu_run_gets_the_same_fit_answer_from_train_and_the_config_editor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = make_workspace(tmp_path / "ws")
    config = tiny_config(workspace)
    config_path = workspace.root / "tiny.toml"
    config.save(config_path)
    queue = Queue(workspace)
    queue.folder.mkdir(parents=True, exist_ok=True)
    with open(queue.worker_lock_path, "a") as worker_lock:
        fcntl.flock(worker_lock, fcntl.LOCK_EX)  # a worker is alive: none starts, the run stays queued
        assert main(["--workspace", str(workspace.root), "train", str(config_path), "--queue"]) == 0
    said = capsys.readouterr().out.splitlines()
    [queued] = queue.runs()
    assert said[2].startswith(f"Created run {queued.id} in ")
    assert "Queued it at position 1; it starts when its GPUs have room (`glmtui queue`)." in said
    assert CPU_RUN in said
    assert workspace.last_config() == queued.config_path  # remembered as the editor remembers what it starts

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        editor = app.workbench_screen(ConfigScreen.NAME)
        app.action_show(ConfigScreen.NAME)
        await settle(pilot)
        editor.load(config)
        estimate = editor.query_one("#config-estimate", Static)
        await wait_until_in_app(pilot, lambda: "VRAM per GPU" in str(estimate.render()), "the estimate")
        assert CPU_RUN in str(estimate.render()).splitlines()


SINFO = """#!/bin/sh
case "$*" in
  *-N*) echo "debug*|n1|idle|(null)|(null)|" ;;
  *) echo "debug*" ;;
esac
"""


async def test_a_slurm_setting_that_cannot_be_used_is_refused_in_the_same_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slurm's client commands as a login node without a reachable cluster has them: sinfo answers, nothing runs.
    commands = tmp_path / "bin"
    commands.mkdir()
    for name in ("sbatch", "squeue", "scontrol", "scancel", "sinfo"):
        (commands / name).write_text(SINFO if name == "sinfo" else "#!/bin/sh\nexit 0\n")
        (commands / name).chmod(0o755)
    (tmp_path / "slurm.conf").write_text("")
    monkeypatch.setenv("PATH", f"{commands}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    workspace = make_workspace(tmp_path / "ws")
    config = tiny_config(workspace)
    config_path = workspace.root / "tiny.toml"
    config.save(config_path)

    command = ["--workspace", str(workspace.root), "train", str(config_path), "--slurm", "--nodes", "0"]
    assert main(command) == 2
    refused = one_line(capsys.readouterr().err)
    assert refused == "error: slurm nodes is 0; ask for 1 node or more"

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        editor = app.screen
        assert isinstance(editor, ConfigScreen)
        editor.load(config)
        await wait_until_in_app(pilot, lambda: editor.query_one("#row-where").display, "the Where row")
        editor.query_one("#where", Select).value = "slurm"
        await wait_until_in_app(pilot, lambda: editor.on_slurm, "Slurm chosen")
        editor.query_one("#slurm_nodes", Input).value = "0"
        await settle(pilot)
        await pilot.press("ctrl+g")
        await wait_until_in_app(pilot, lambda: app.notifications, "a notification")
        assert [f"error: {one_line(note.message)}" for note in app.notifications] == [refused]
    assert not list(workspace.runs_dir.iterdir())


def sweep_made(runs: list[Run]) -> list[tuple[dict, dict]]:
    """What a sweep left in its run folders: each run's config and values, in sweep order, ids left out."""
    made = []
    for run in runs:
        record = json.loads((run.path / "sweep.json").read_text())
        made.append((run.config.to_dict(), {key: record[key] for key in ("index", "size", "values")}))
    return sorted(made, key=lambda entry: entry[1]["index"])


async def test_a_sweep_started_from_the_shell_and_from_the_editor_makes_the_same_queued_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = make_workspace(tmp_path / "ws")
    config = tiny_config(workspace)
    config_path = workspace.root / "tiny.toml"
    config.save(config_path)
    queue = Queue(workspace)
    queue.folder.mkdir(parents=True, exist_ok=True)
    with open(queue.worker_lock_path, "a") as worker_lock:
        fcntl.flock(worker_lock, fcntl.LOCK_EX)  # a worker is alive: none starts, the runs stay queued
        command = ["--workspace", str(workspace.root), "sweep", str(config_path), "--set", "pre_seq_len=4,8"]
        assert main([*command, "--detach"]) == 0
        from_shell = queue.runs()
        capsys.readouterr()

        app = make_app(workspace)
        async with app.run_test(size=(120, 40)) as pilot:
            editor = app.workbench_screen(ConfigScreen.NAME)
            app.action_show(ConfigScreen.NAME)
            await settle(pilot)
            editor.load(config)
            editor.query_one("#pre_seq_len", Input).value = "4,8"
            await wait_until_in_app(pilot, lambda: editor.axes, "the sweep's values read")
            await settle(pilot)
            await pilot.press("ctrl+g")
            await wait_until_in_app(pilot, lambda: len(queue.runs()) == 4, "the sweep queued")
        from_app = [run for run in queue.runs() if run not in from_shell]
    assert len(from_shell) == 2
    assert sweep_made(from_app) == sweep_made(from_shell)


async def test_a_queued_run_started_by_glmtui_resume_and_by_r_on_the_runs_screen_leaves_the_queue_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Starting a queued run ahead of its queue is one engine path (`start_or_resume`), so the shell and the app
    say the same sentence and leave the same folder: started once, off the queue."""
    workspace = make_workspace(tmp_path / "ws")
    by_shell, by_app = (
        write_run(workspace, run_id, tiny_config(workspace, max_steps=1), state="queued", step=0, losses=[])
        for run_id in ("20260501-110000-shell", "20260501-110100-app")
    )
    queue = Queue(workspace)
    queue.folder.mkdir(parents=True, exist_ok=True)
    (queue.folder / "order.json").write_text(json.dumps({"runs": [by_shell.id, by_app.id]}))
    try:
        with open(queue.worker_lock_path, "a") as worker_lock:
            fcntl.flock(worker_lock, fcntl.LOCK_EX)  # a worker is alive: only the hand starts a run here
            assert main(["--workspace", str(workspace.root), "resume", by_shell.id, "--detach"]) == 0
            shell_said = one_line(capsys.readouterr().out).split(". Follow it with")[0] + "."

            app = make_app(workspace)
            async with app.run_test(size=(120, 40)) as pilot:
                app.action_show(RunsScreen.NAME)
                await settle(pilot)
                table = app.screen.query_one("#runs-table", DataTable)
                await wait_until_in_app(pilot, lambda: table.row_count == 2, "both runs listed")
                table.move_cursor(row=[str(table.get_row_at(i)[0]) for i in range(2)].index(by_app.id))
                await pilot.press("r")
                await wait_until_in_app(pilot, lambda: app.notifications_on_screen, "the start said")
                app_said = app.notifications_on_screen[-1].message
        assert shell_said == f"Started run {by_shell.id} now, ahead of the queue (pid {by_shell.status().pid})."
        assert app_said == f"Started run {by_app.id} now, ahead of the queue (pid {by_app.status().pid})."
        assert queue.runs() == []
        for run in (by_shell, by_app):
            assert run.stored_status().state != "queued"
            assert run.log_path.read_text().count("\n=== ") == 1  # started once
    finally:
        for run in (by_shell, by_app):
            if run.status().is_active:
                stop(run, force=True, grace=1.0)
