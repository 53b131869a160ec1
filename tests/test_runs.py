"""Run folders: creation, naming, status and crash detection, events, checkpoints, launch/stop/resume.

Launch, stop and resume use real child processes. Until a test needs the real model (the lead's end-to-end
test), the child is a stand-in trainer that follows the same contract through the same Run API.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from support.waiting import wait_until

from glmcore.config import RunConfig
from glmcore.errors import GlmError
from glmcore.runs import (
    EventTail,
    Run,
    RunError,
    RunStore,
    describe_failure,
    latest_by_step,
    launch,
    process_start_time,
    resume,
    stop,
    wait_for_end,
)

DEADLINE_S = 60  # how long to wait for a child process to get somewhere; never an assertion on speed

STAND_IN_TRAINER = """
import os, sys, time
from pathlib import Path
from glmcore.runs import Run, hold_trainer_lock

run = Run(Path(sys.argv[1]))
hold_trainer_lock(run)
run.mark_running(os.getpid())
latest = run.resume_point().checkpoint if "--resume" in sys.argv else None
step = latest.step if latest else 0
run.append_event("start", step=step, total=run.config.max_steps)
print("stand-in trainer from step", step, "gpus", repr(os.environ["CUDA_VISIBLE_DEVICES"]), "in", os.getcwd())
print("stdin", repr(sys.stdin.read()), flush=True)
while step < run.config.max_steps:
    time.sleep(0.02)
    step += 1
    run.append_event("log", step=step, loss=1.0 / step)
    run.write_status(step=step)
    if run.stop_requested():
        break
with run.saving_checkpoint(step) as partial:
    (partial / "trainer_state.json").write_text("{}")
run.append_event("checkpoint", step=step, path=str(run.checkpoints_dir / f"checkpoint-{step}"))
run.append_event("end", step=step)
run.finish("stopped" if run.stop_requested() else "finished")
"""
STAND_IN = (sys.executable, "-c", STAND_IN_TRAINER)


def make_config(tmp_path: Path, name: str = "advertise gen", **changes: object) -> RunConfig:
    settings: dict[str, object] = {"max_steps": 1_000_000, "gpus": [], **changes}
    return RunConfig(name=name, model_path=tmp_path / "model", train_file=tmp_path / "train.json", **settings)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs")


@pytest.fixture
def run(store: RunStore, tmp_path: Path) -> Run:
    return store.create(make_config(tmp_path))


def add_checkpoint(run: Run, step: int, *, complete: bool = True) -> Path:
    folder = run.checkpoints_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def sleeping_child() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


# creating, listing, naming


def test_create_writes_the_run_folder_contract(store: RunStore, tmp_path: Path) -> None:
    config = make_config(tmp_path, name="AdvertiseGen P-tuning!", learning_rate=0.01)
    run = store.create(config)

    assert run.path.parent == store.runs_dir
    date, clock, slug = run.id.split("-", 2)
    assert len(date) == 8 and len(clock) == 6 and slug == "advertisegen-p-tuning"
    assert run.config == RunConfig.load(run.config_path) == config
    assert run.events_path.read_text() == ""
    assert run.checkpoints_dir.is_dir() and not run.log_path.exists()
    status = json.loads(run.status_path.read_text())
    assert status["state"] == "created" and status["total"] == 1_000_000 and status["created"]


def test_runs_created_in_the_same_second_get_distinct_ids(store: RunStore, tmp_path: Path) -> None:
    ids = {store.create(make_config(tmp_path, name="same")).id for _ in range(3)}
    assert len(ids) == 3


def test_list_is_newest_first_and_skips_folders_that_are_not_runs(store: RunStore, tmp_path: Path) -> None:
    store.runs_dir.mkdir(parents=True)
    for run_id in ("20240101-120000-old", "20250301-080000-new", "20240601-000000-mid"):
        (store.runs_dir / run_id).mkdir()
        make_config(tmp_path).save(store.runs_dir / run_id / "config.toml")
    (store.runs_dir / "notes").mkdir()

    assert [run.id for run in store.list()] == [
        "20250301-080000-new",
        "20240601-000000-mid",
        "20240101-120000-old",
    ]


def test_resolve_by_id_prefix_name_or_path(store: RunStore, tmp_path: Path) -> None:
    store.runs_dir.mkdir(parents=True)
    for run_id in ("20240101-120000-lora", "20240101-130000-ptuning", "20240102-090000-ptuning"):
        (store.runs_dir / run_id).mkdir()
        make_config(tmp_path).save(store.runs_dir / run_id / "config.toml")

    assert store.resolve("20240101-120000-lora").id == "20240101-120000-lora"
    assert store.resolve("20240102").id == "20240102-090000-ptuning"
    assert store.resolve("lora").id == "20240101-120000-lora"
    assert store.resolve(str(store.runs_dir / "20240101-130000-ptuning")).id == "20240101-130000-ptuning"
    with pytest.raises(RunError, match="names 2 runs .*20240101-130000-ptuning, 20240101-120000-lora"):
        store.resolve("20240101")
    with pytest.raises(RunError, match="names 2 runs"):
        store.resolve("ptuning")
    with pytest.raises(RunError, match="no run named 'full'.*glmtui runs"):
        store.resolve("full")
    with pytest.raises(RunError, match="is not a run folder"):
        store.resolve(str(tmp_path))


# status and crash detection


def test_write_status_changes_only_the_named_fields(run: Run) -> None:
    run.write_status(step=7, reason="x")
    run.write_status(state="stopping")

    status = run.stored_status()
    assert (status.state, status.step, status.reason, status.total) == ("stopping", 7, "x", 1_000_000)
    assert not list(run.path.glob(".status.json.*"))  # no temporary file left behind
    with pytest.raises(ValueError, match="unknown run state 'paused'"):
        run.write_status(state="paused")


def test_a_sigkilled_training_process_is_reported_crashed_with_its_checkpoint(run: Run) -> None:
    child = sleeping_child()
    run.mark_running(child.pid)
    assert run.status().state == "running"
    add_checkpoint(run, 200)

    child.send_signal(signal.SIGKILL)
    child.wait()

    status = run.status()
    assert status.state == "crashed"
    assert status.reason == (
        f"the training process (pid {child.pid}) is gone without writing a final state; "
        "resume it from checkpoint-200"
    )
    assert run.stored_status().state == "running"  # reading never rewrites the file


def test_a_reused_pid_does_not_pass_for_the_training_process(run: Run) -> None:
    run.mark_running(os.getpid())
    assert run.status().state == "running"

    run.write_status(pid_start_time=run.stored_status().pid_start_time - 3600)

    status = run.status()
    assert status.state == "crashed" and "saved no checkpoint" in status.reason


def test_a_run_on_another_host_keeps_its_stored_state(run: Run) -> None:
    child = sleeping_child()
    run.mark_running(child.pid)
    run.write_status(host="gpu-node-7")
    child.kill()
    child.wait()

    status = run.status()
    assert (status.state, status.host) == ("running", "gpu-node-7")
    with pytest.raises(RunError, match="runs on gpu-node-7; force-stop it there"):
        stop(run, force=True)


def test_process_start_time_matches_psutil_and_ignores_zombies() -> None:
    assert process_start_time(os.getpid()) == pytest.approx(psutil.Process().create_time(), abs=2)
    child = sleeping_child()
    assert process_start_time(child.pid) is not None
    child.kill()
    wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, "the child to be a zombie")
    assert process_start_time(child.pid) is None
    child.wait()
    assert process_start_time(child.pid) is None


# events


def test_events_survive_a_half_written_last_line(run: Run) -> None:
    run.append_event("log", step=10, loss=2.0)
    with open(run.events_path, "a") as handle:
        handle.write('{"kind": "log", "step": 20, "lo')

    assert [event["step"] for event in run.events()] == [10]

    run.append_event("log", step=20, loss=1.5)  # the next writer starts on a fresh line
    assert [(event["step"], event["loss"]) for event in run.events()] == [(10, 2.0), (20, 1.5)]


def test_latest_record_of_each_step_wins_and_a_resume_drops_the_abandoned_attempt() -> None:
    records = [
        {"kind": "start", "step": 0},
        {"kind": "log", "step": 10, "loss": 3.0},
        {"kind": "log", "step": 20, "loss": 2.0},
        {"kind": "checkpoint", "step": 20},
        {"kind": "log", "step": 30, "loss": 1.9},
        {"kind": "log", "step": 40, "loss": 1.8},
        {"kind": "resumed", "step": 20},
        {"kind": "start", "step": 20},
        {"kind": "log", "step": 30, "loss": 1.7},
        {"kind": "note"},
    ]

    kept = latest_by_step(records)

    assert [(event["kind"], event.get("step"), event.get("loss")) for event in kept] == [
        ("start", 0, None),
        ("log", 10, 3.0),
        ("log", 20, 2.0),
        ("checkpoint", 20, None),
        ("resumed", 20, None),
        ("start", 20, None),
        ("log", 30, 1.7),
        ("note", None, None),
    ]


def test_event_tail_reads_only_new_complete_lines(run: Run) -> None:
    tail = run.tail_events()
    assert tail.read_events() == []

    run.append_event("log", step=1)
    with open(run.events_path, "a") as handle:
        handle.write('{"kind": "log", "step": 2')
    assert [event["step"] for event in tail.read_events()] == [1]
    assert tail.read_events() == []

    with open(run.events_path, "a") as handle:
        handle.write("}\nnot json\n")
    assert [event["step"] for event in tail.read_events()] == [2]

    offset = tail.offset
    resumed = EventTail(run.events_path, offset)
    run.append_event("log", step=3)
    assert [event["step"] for event in resumed.read_events()] == [3]

    run.events_path.write_text('{"kind": "start", "step": 0}\n')  # replaced by a shorter file
    assert tail.read_events() == [{"kind": "start", "step": 0}]


# checkpoints, stop request, delete


def test_checkpoints_are_the_complete_folders_in_step_order(run: Run) -> None:
    for step in (1000, 200, 30):
        add_checkpoint(run, step)
    add_checkpoint(run, 3000, complete=False)  # the Trainer was killed while saving it
    (run.checkpoints_dir / "checkpoint-4000.tmp").mkdir()
    (run.checkpoints_dir / "checkpoint-4000.tmp" / "trainer_state.json").write_text("{}")

    assert [checkpoint.step for checkpoint in run.checkpoints()] == [30, 200, 1000]
    assert run.latest_checkpoint().path == run.checkpoints_dir / "checkpoint-1000"


def test_delete_refuses_a_running_run(run: Run) -> None:
    run.mark_running(os.getpid())
    with pytest.raises(RunError, match="is running; stop it"):
        run.delete()
    run.finish("stopped")
    run.delete()
    assert not run.path.exists()


# launching, stopping, resuming


def test_detached_run_lives_in_its_own_session_and_stops_with_a_checkpoint(
    store: RunStore, tmp_path: Path
) -> None:
    run = store.create(make_config(tmp_path, gpus=[2, 3]))
    pid = launch(run, detach=True, program=STAND_IN)

    assert isinstance(pid, int)
    assert os.getsid(pid) != os.getsid(0) and os.getsid(pid) == pid
    status = run.status()
    assert (status.state, status.pid, status.host) == ("running", pid, socket.gethostname())
    wait_until(lambda: run.stored_status().step >= 3, "the stand-in trainer to take steps")

    status = stop(run, timeout=DEADLINE_S)

    assert status.state == "stopped" and not run.stop_requested()
    checkpoint = run.latest_checkpoint()
    assert checkpoint.step == status.step >= 3
    log = run.log_path.read_text()
    assert f"gpus '2,3' in {run.path}" in log and "stdin ''" in log


def test_stop_reports_a_run_that_is_not_running(run: Run) -> None:
    with pytest.raises(RunError, match="is not running \\(it is created\\)"):
        stop(run)


def test_stop_of_a_vanished_process_records_the_crash(run: Run) -> None:
    child = sleeping_child()
    run.mark_running(child.pid)
    child.kill()
    child.wait()

    status = stop(run)

    assert status.state == "crashed" and run.stored_status().state == "crashed"
    assert run.stored_status().ended


def test_foreground_run_has_its_own_process_group_in_this_session(run: Run) -> None:
    process = launch(run, detach=False, program=STAND_IN)
    try:
        assert isinstance(process, subprocess.Popen)
        assert os.getpgid(process.pid) == process.pid != os.getpgid(0)
        assert os.getsid(process.pid) == os.getsid(0)
        with pytest.raises(RunError, match="is already running"):
            launch(run, detach=False, program=STAND_IN)
        stop(run)
        assert process.wait(timeout=DEADLINE_S) == 0
    finally:
        process.kill()
    assert run.status().state == "stopped"


def test_resume_continues_the_steps_and_events_without_duplicates(run: Run) -> None:
    launch(run, detach=True, program=STAND_IN)
    wait_until(lambda: run.stored_status().step >= 2, "the first attempt to take steps")
    first = stop(run, timeout=DEADLINE_S)
    assert first.state == "stopped"

    resume(run, detach=True, program=STAND_IN)
    wait_until(lambda: run.stored_status().step >= first.step + 2, "the resumed attempt to take steps")
    second = stop(run, timeout=DEADLINE_S)

    assert second.state == "stopped" and second.resumed_from == first.step
    events = run.events()
    resumed = [event for event in events if event["kind"] == "resumed"]
    assert [event["step"] for event in resumed] == [first.step]
    log_steps = [event["step"] for event in events if event["kind"] == "log"]
    assert log_steps == list(range(1, second.step + 1))
    assert [checkpoint.step for checkpoint in run.checkpoints()] == [first.step, second.step]
    assert run.log_path.read_text().count("glmtui: resuming") == 1


def test_resume_refuses_running_and_finished_runs(run: Run) -> None:
    run.mark_running(os.getpid())
    with pytest.raises(RunError, match="is already running .*; stop it first"):
        resume(run, detach=True, program=STAND_IN)
    run.finish("finished")
    with pytest.raises(RunError, match="finished all its 1000000 steps"):
        resume(run, detach=True, program=STAND_IN)


def test_a_crashed_run_resumes_from_its_last_checkpoint(run: Run) -> None:
    pid = launch(run, detach=True, program=STAND_IN)
    wait_until(lambda: run.stored_status().step >= 2, "the stand-in trainer to take steps")
    add_checkpoint(run, 1)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: run.status().state == "crashed", "the crash to show")

    resume(run, detach=True, program=STAND_IN)
    wait_until(lambda: run.stored_status().step >= 3, "the resumed attempt to take steps")
    status = stop(run, timeout=DEADLINE_S)

    assert status.resumed_from == 1
    assert "stand-in trainer from step 1 " in run.log_path.read_text()


def test_force_stop_kills_the_whole_process_group(run: Run, tmp_path: Path) -> None:
    grandchild_file = tmp_path / "grandchild.pid"
    ignores_stop = (
        sys.executable,
        "-c",
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(grandchild_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n",
    )
    pid = launch(run, detach=True, program=ignores_stop)
    wait_until(lambda: grandchild_file.exists() and grandchild_file.read_text() != "", "the grandchild")
    grandchild = int(grandchild_file.read_text())

    status = stop(run, force=True, grace=5)

    assert status.state == "stopped" and "stopped by force" in status.reason
    assert process_start_time(pid) is None
    wait_until(lambda: process_start_time(grandchild) is None, "the grandchild to be reaped by init")


def test_wait_for_end_returns_at_the_deadline_while_the_run_goes_on(run: Run) -> None:
    run.mark_running(os.getpid())
    assert wait_for_end(run, timeout=0).state == "running"


# failure reasons


def test_describe_failure_says_what_to_change_for_cuda_out_of_memory() -> None:
    reason = describe_failure(
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), step=120
    )
    assert reason.startswith("CUDA ran out of memory at step 120: try a smaller per-device batch")
    try:
        try:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")
        except RuntimeError as error:
            raise ValueError("backward failed") from error
    except ValueError as wrapped:
        assert describe_failure(wrapped).startswith("CUDA ran out of memory: try")


def test_describe_failure_keeps_other_messages() -> None:
    assert describe_failure(GlmError("the data file x.json has no column 'content'")) == (
        "the data file x.json has no column 'content'"
    )
    assert (
        describe_failure(KeyError("transformer.word_embeddings")) == "KeyError: 'transformer.word_embeddings'"
    )


# the command line over the same folders


def glmtui(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "glmtui.cli", "--workspace", str(workspace), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S)


def test_train_prints_every_problem_and_creates_nothing(tmp_path: Path) -> None:
    config_path = tmp_path / "bad.toml"
    config_path.write_text(
        'name = "bad"\nmodel_path = "absent"\ntrain_file = "absent.json"\nquantization_bit = 5\n'
        "gradient_accumulation_steps = 0\ngpus = []\n"
    )

    result = glmtui(tmp_path / "ws", "train", str(config_path), "--detach")

    assert result.returncode == 2
    output = " ".join(result.stderr.split())
    assert "has 4 problems; nothing was started" in output
    for field_name in ("quantization_bit", "gradient_accumulation_steps", "model_path", "train_file"):
        assert f"• {field_name}:" in output
    assert not (tmp_path / "ws" / "runs").exists()


def test_runs_logs_and_stop_commands_follow_a_detached_run(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    run = RunStore(workspace / "runs").create(make_config(tmp_path, name="cli demo"))
    launch(run, detach=True, program=STAND_IN)
    wait_until(lambda: run.stored_status().step >= 2, "the stand-in trainer to take steps")

    table = glmtui(workspace, "runs")
    assert table.returncode == 0
    row = next(line for line in table.stdout.splitlines() if line.startswith(run.id))
    assert "running" in row and "/1000000" in row and "cpu" in row

    stopped = glmtui(workspace, "stop", "cli-demo")
    assert stopped.returncode == 0, stopped.stderr
    assert f"Run {run.id} stopped at step" in " ".join(stopped.stdout.split())

    events = glmtui(workspace, "logs", run.id[:15], "--events")
    assert events.returncode == 0
    assert " end " in events.stdout and " log " in events.stdout and "loss 1.0000" in events.stdout
    log = glmtui(workspace, "logs", str(run.path), "-f")  # ended: prints the log and returns
    assert "stand-in trainer from step 0" in log.stdout and "is stopped" in log.stderr

    missing = glmtui(workspace, "stop", "nothing-like-this")
    assert missing.returncode == 1 and "no run named 'nothing-like-this'" in missing.stderr
