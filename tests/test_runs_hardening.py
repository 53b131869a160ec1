"""Runs tried as an attacker and a careless user would (Hardening I): simultaneous launches and resumes,
checkpoints cut short, a disk that fills up, a resume that is refused.

Concurrency uses real processes racing on one run folder; a full disk is a really small tmpfs (root only).
The stand-in trainer of test_runs follows the run contract through the same Run API; the real trainer runs
only where its own saving is what is tested.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.tmpfs import fill, small_tmpfs
from support.waiting import wait_until
from test_runs import DEADLINE_S, STAND_IN, make_config

from glmcore.runs import (
    DiskFull,
    Run,
    RunError,
    RunStore,
    checkpoint_problem,
    describe_failure,
    launch,
    resume,
    stop,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RACERS = 4

RACER = """
import sys, time
from pathlib import Path
from glmcore.runs import Run, RunError, launch, resume

run, go, how, program = Run(Path(sys.argv[1])), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
while not go.exists():
    time.sleep(0.001)
try:
    started = resume(run, detach=True, program=program) if how == "resume" else launch(
        run, detach=True, program=program
    )
    print("started", started)
except RunError as error:
    print("refused", error)
"""


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs")


def race(run: Run, go: Path, kinds: list[str]) -> list[str]:
    """Start one process per kind ("launch"/"resume"), let them all go at once, return what each printed."""
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(run.path), str(go), kind, *STAND_IN],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for kind in kinds
    ]
    go.touch()
    return [racer.communicate(timeout=DEADLINE_S)[0].strip() for racer in racers]


def log_lines(run: Run, start: str) -> int:
    lines = run.log_path.read_text().splitlines() if run.log_path.exists() else []
    return sum(line.startswith(start) for line in lines)


def trainers_started(run: Run) -> int:
    """Training processes that got going: each stand-in prints this line first."""
    return log_lines(run, "stand-in trainer from step")


def launcher_lines(run: Run) -> int:
    """Training processes spawned: the launcher writes one such line before each."""
    return log_lines(run, "=== ")


# the claim


@pytest.mark.parametrize("kinds", [["resume"] * RACERS, ["launch", "resume"] * (RACERS // 2)])
def test_of_simultaneous_launches_and_resumes_exactly_one_trains(
    store: RunStore, tmp_path: Path, kinds: list[str]
) -> None:
    run = store.create(make_config(tmp_path))
    run.write_status(state="stopped")

    answers = race(run, tmp_path / "go", kinds)

    started = [answer for answer in answers if answer.startswith("started")]
    refused = [answer for answer in answers if answer.startswith("refused")]
    assert len(started) == 1 and len(refused) == RACERS - 1, answers
    assert all("is already running" in answer and "stop it first" in answer for answer in refused)
    wait_until(lambda: trainers_started(run) == 1, "the one trainer to start")
    status = run.status()
    assert status.state == "running" and started[0] == f"started {status.pid}"
    assert stop(run, timeout=DEADLINE_S).state == "stopped"
    assert trainers_started(run) == 1 and launcher_lines(run) == 1
    winner = kinds[answers.index(started[0])]
    resumed = [event for event in run.events() if event["kind"] == "resumed"]
    assert len(resumed) == (1 if winner == "resume" else 0)  # a refused resume records nothing


def glmtui(workspace: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "glmtui.cli", "--workspace", str(workspace), *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_simultaneous_cli_resumes_start_one_trainer_and_refuse_the_rest(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    run = RunStore(workspace / "runs").create(make_config(tmp_path))
    run.write_status(state="stopped")

    commands = [glmtui(workspace, "resume", run.id, "--detach") for _ in range(3)]
    results = [(command.wait(timeout=DEADLINE_S), *command.communicate()) for command in commands]

    assert sorted(code for code, _, _ in results) == [0, 1, 1], results
    for code, out, err in results:
        if code == 0:
            assert "starts again from step 0" in " ".join(out.split()) and "Started run" in out
        else:  # only the refusal: no "Resuming …" before it
            assert out == "" and "is already running" in " ".join(err.split()) and "Traceback" not in err
    assert launcher_lines(run) == 1
    wait_until(
        lambda: run.status().state in ("failed", "crashed"), "the real trainer to fail on the absent model"
    )


def test_resume_of_a_finished_run_says_only_the_refusal(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    run = RunStore(workspace / "runs").create(make_config(tmp_path))
    (run.checkpoints_dir / "checkpoint-40").mkdir()
    (run.checkpoints_dir / "checkpoint-40" / "trainer_state.json").write_text("{}")
    run.finish("finished")

    out, err = glmtui(workspace, "resume", run.id).communicate(timeout=DEADLINE_S)

    assert out == "" and "checkpoint-40" not in err
    assert "finished all its 1000000 steps; there is nothing to resume" in " ".join(err.split())


# checkpoints complete or absent, and the fallback


def torch_zip(path: Path) -> None:
    """A file in torch.save's zip layout (what optimizer.pt and rng_state.pth are)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 100)
        archive.writestr("archive/data/0", bytes(4096))


def safetensors(path: Path) -> None:
    header = json.dumps({"prefix": {"dtype": "F32", "shape": [256], "data_offsets": [0, 1024]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(1024))


def whole_checkpoint(run: Run, step: int) -> Path:
    with run.saving_checkpoint(step) as partial:
        torch_zip(partial / "optimizer.pt")
        torch_zip(partial / "rng_state.pth")
        safetensors(partial / "prefix.safetensors")
        (partial / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return run.checkpoints_dir / f"checkpoint-{step}"


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_checkpoint_appears_whole_or_not_at_all(store: RunStore, tmp_path: Path) -> None:
    run = store.create(make_config(tmp_path))
    folder = whole_checkpoint(run, 10)
    assert sorted(path.name for path in folder.iterdir()) == [
        "optimizer.pt",
        "prefix.safetensors",
        "rng_state.pth",
        "trainer_state.json",
    ]

    with pytest.raises(RuntimeError, match="killed mid-save"), run.saving_checkpoint(20) as partial:
        torch_zip(partial / "optimizer.pt")
        (partial / "trainer_state.json").write_text("{}")
        raise RuntimeError("killed mid-save")

    assert [checkpoint.step for checkpoint in run.checkpoints()] == [10]
    assert not (run.checkpoints_dir / "checkpoint-20").exists()
    assert list((run.checkpoints_dir / ".partial").iterdir()) == []


@pytest.mark.parametrize(
    "damaged", ["optimizer.pt", "rng_state.pth", "prefix.safetensors", "trainer_state.json"]
)
def test_resume_passes_over_a_cut_short_checkpoint_and_says_so(
    store: RunStore, tmp_path: Path, damaged: str
) -> None:
    run = store.create(make_config(tmp_path))
    whole_checkpoint(run, 20)
    cut_short(whole_checkpoint(run, 40) / damaged)
    run.write_status(state="stopped")

    resume(run, detach=True, program=STAND_IN)
    wait_until(lambda: trainers_started(run) == 1, "the resumed trainer to start")
    stop(run, timeout=DEADLINE_S)

    assert "stand-in trainer from step 20 " in run.log_path.read_text()
    resumed = next(event for event in run.events() if event["kind"] == "resumed")
    assert resumed["step"] == 20 and resumed["checkpoint"].endswith("checkpoint-20")
    assert resumed["skipped"][0]["checkpoint"].endswith("checkpoint-40")
    assert resumed["skipped"][0]["problem"].startswith(damaged)
    assert "cut short" in resumed["skipped"][0]["problem"]


def test_resume_refuses_when_no_checkpoint_is_whole_and_says_how_to_start_over(
    store: RunStore, tmp_path: Path
) -> None:
    run = store.create(make_config(tmp_path))
    cut_short(whole_checkpoint(run, 20) / "optimizer.pt")
    cut_short(whole_checkpoint(run, 40) / "rng_state.pth")
    run.write_status(state="failed")

    with pytest.raises(RunError) as refused:
        resume(run, detach=True, program=STAND_IN)

    message = str(refused.value)
    assert message.startswith("checkpoint-40 cannot be loaded (rng_state.pth is cut short or damaged")
    assert "no earlier checkpoint is complete" in message
    assert f"to start run {run.id} again from step 0, delete {run.checkpoints_dir}/checkpoint-*" in message
    assert not run.log_path.exists() and run.stored_status().state == "failed"


def test_a_resumed_run_saves_over_the_damaged_checkpoint_it_passed_over(
    store: RunStore, tmp_path: Path
) -> None:
    run = store.create(make_config(tmp_path))
    whole_checkpoint(run, 20)
    damaged = whole_checkpoint(run, 40)
    cut_short(damaged / "optimizer.pt")

    whole_checkpoint(run, 40)

    assert run.resume_point().checkpoint.step == 40 and run.resume_point().skipped == ()


# disk full


def test_disk_full_during_a_checkpoint_save_deletes_it_and_says_how_much_is_free(
    store: RunStore, tmp_path: Path
) -> None:
    run = store.create(make_config(tmp_path))
    with small_tmpfs(run.checkpoints_dir, "256k"):
        with pytest.raises(DiskFull) as full, run.saving_checkpoint(10) as partial:  # noqa: SIM117
            with open(partial / "optimizer.pt", "wb") as handle:  # closed before the partial folder goes
                while True:
                    handle.write(bytes(64 * 1024))

        assert str(full.value).startswith(f"disk full: 256.0 KiB free on {run.checkpoints_dir} while saving")
        assert run.checkpoints() == [] and list((run.checkpoints_dir / ".partial").iterdir()) == []


@pytest.fixture
def tiny_ptuning_run(tiny_model_dir: Path, tmp_path: Path) -> Run:
    from test_train import ROWS
    from test_train import make_config as train_config

    train_file = tmp_path / "train.json"
    train_file.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in ROWS * 4) + "\n")
    config = train_config(tiny_model_dir, train_file, max_steps=4, save_steps=2)
    return RunStore(tmp_path / "runs").create(config)


@pytest.mark.slow
def test_the_real_trainer_ends_failed_with_disk_full_and_leaves_no_partial_checkpoint(
    tiny_ptuning_run: Run,
) -> None:
    run = tiny_ptuning_run
    with small_tmpfs(run.checkpoints_dir, "64k"):
        process = launch(run, detach=False)
        assert process.wait(timeout=300) == 1, run.log_path.read_text()[-3000:]

        status = run.status()
        listing = sorted(
            str(path.relative_to(run.checkpoints_dir)) for path in run.checkpoints_dir.rglob("*")
        )
        assert status.state == "failed", (status, listing)
        assert status.reason.startswith("disk full: "), status.reason
        assert f"free on {run.checkpoints_dir} while saving checkpoint-" in status.reason
        failed_step = int(status.reason.split("while saving checkpoint-")[1].split()[0])
        assert not (run.checkpoints_dir / f"checkpoint-{failed_step}").exists()
        assert list((run.checkpoints_dir / ".partial").iterdir()) == [], listing
        assert all(checkpoint_problem(checkpoint.path) is None for checkpoint in run.checkpoints())
        failed = [event for event in run.events() if event["kind"] == "failed"]
        assert failed and failed[-1]["reason"] == status.reason
        assert f"glmtui: {status.reason}" in run.log_path.read_text()


def test_when_even_the_last_status_write_fails_the_crash_shows_the_disk_full_line(tmp_path: Path) -> None:
    """The run folder's disk fills up (another process took the space); only train.log lives elsewhere (a
    bind mount: glmtui follows no symbolic link in a run folder)."""
    store = RunStore(tmp_path / "runs")
    elsewhere = tmp_path / "train.log"
    elsewhere.touch()
    with small_tmpfs(store.runs_dir, "1m"):  # its lazy unmount takes the bind mount with it
        run = store.create(make_config(tmp_path))
        run.log_path.touch()
        subprocess.run(["mount", "--bind", str(elsewhere), str(run.log_path)], check=True)
        launch(run, detach=True, program=STAND_IN)
        wait_until(lambda: run.stored_status().step >= 2, "the stand-in trainer to take steps")

        fill(store.runs_dir)
        wait_until(lambda: run.status().state == "crashed", "the trainer to die of the full disk")

        assert run.stored_status().state == "running"  # its last write failed too
        reason = run.status().reason
        assert "(train.log: OSError: [Errno 28] No space left on device" in reason, reason
        assert reason.endswith(
            "free some space, then it saved no checkpoint, so resuming starts again from step 0"
        )


def test_any_write_that_fails_on_a_full_disk_is_described_as_disk_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        monkeypatch.chdir(disk)  # a training process works in its run folder
        fill(disk)
        try:
            (disk / "status.json").write_text("x" * 10_000)
        except OSError as error:
            reason = describe_failure(error, step=7)
        monkeypatch.chdir(tmp_path)
        assert reason.startswith(f"disk full at step 7: 0 B free on {disk} (OSError: [Errno 28]")


def test_a_launch_that_fails_leaves_the_run_created_with_why_it_never_launched(
    store: RunStore, tmp_path: Path
) -> None:
    run = store.create(make_config(tmp_path))
    assert run.status().reason == f"never launched; start it with `glmtui resume {run.id}`"

    with pytest.raises(RunError, match="the training process could not start"):
        launch(run, detach=True, program=(str(tmp_path / "no-such-python"),))

    status = run.status()
    assert status.state == "created"
    assert status.reason.startswith("never launched: the training process could not start: [Errno 2]")
