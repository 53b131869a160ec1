"""Runs on a real Slurm (two slurmd on this machine, tests/support/slurm.py) with the tiny model on the CPU.

Every run goes through sbatch, squeue, scontrol and scancel as on a cluster; nothing of Slurm is imitated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.waiting import wait_until
from test_distributed import DEADLINE_S
from test_distributed import train_file as distributed_train_file
from test_train import make_config

from glmcore.distributed import CPU_PROCESSES_VARIABLE
from glmcore.runs import Run, RunStore, launch, resume
from glmcore.slurm.gpus import MAX_FILE_BYTES, append_sample, latest_readings, merged_snapshot, samples_path
from glmcore.slurm.jobs import gpu_count
from glmcore.slurm.script import SlurmOptions, SlurmOptionsError, job_script, write_options
from glmtui.text.gpus import node_heading

train_file = distributed_train_file
"""The two-rank tests' data (16 rows), shared so a one-node and a two-node run split it the same way."""


@pytest.fixture
def slurm(slurm_cluster, monkeypatch: pytest.MonkeyPatch):
    """The cluster, with SLURM_CONF set for glmtui (and the jobs it submits, which inherit the environment)."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.environment["SLURM_CONF"])
    return slurm_cluster


def glmtui(workspace: Path, *argv: str, cluster) -> subprocess.CompletedProcess:
    environment = {**cluster.environment, "GLMTUI_HOME": str(workspace), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "glmtui.cli", *argv],
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
    )


def slurm_run(tmp_path: Path, model: Path, train_file: Path, options: SlurmOptions, **overrides) -> Run:
    config = make_config(model, train_file, **{"per_device_train_batch_size": 2, **overrides})
    run = RunStore(tmp_path / "runs").create(config)
    write_options(run.path, options)
    return run


def long_run(tmp_path: Path, model: Path, train_file: Path, options: SlurmOptions) -> Run:
    return slurm_run(tmp_path, model, train_file, options, name="long", max_steps=3000, save_steps=4)


def steps_logged(run: Run) -> list[int]:
    return [event["step"] for event in run.events() if event["kind"] == "log"]


# --- the job script and the settings, without a cluster ---------------------------------------------


def test_the_job_script_asks_slurm_for_what_the_settings_say(tmp_path: Path) -> None:
    options = SlurmOptions(
        partition="gpu",
        nodes=2,
        gpus_per_node=4,
        cpus_per_node=32,
        time="4:00:00",
        account="lab",
        requeue=True,
    )
    script = job_script(tmp_path, "20261201-run", options, resume=True)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for flag in (
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=4",
        "--cpus-per-task=32",
        "--partition=gpu",
        "--account=lab",
        "--time=4:00:00",
        "--signal=B:USR1@300",
        "--requeue",
        f"--output={tmp_path / 'train.log'}",
    ):
        assert f"#SBATCH {flag}" in lines
    assert lines[-1].endswith(f"-m glmcore.slurm.job {tmp_path} --resume")
    plain = job_script(tmp_path, "r", SlurmOptions(), resume=False)
    assert "#SBATCH --no-requeue" in plain and "--signal" not in plain and "--partition" not in plain


def test_bad_slurm_settings_are_refused_with_a_sentence(tmp_path: Path) -> None:
    problems = SlurmOptions(partition="gpu; rm -rf /", nodes=0, time="soon").problems()
    assert len(problems) == 3
    assert "not a Slurm name" in problems[0] and "1 node or more" in problems[1] and "4:00:00" in problems[2]
    with pytest.raises(SlurmOptionsError, match="nodez is not a Slurm setting"):
        SlurmOptions.from_dict({"nodez": 2}, where="slurm.toml")
    with pytest.raises(SlurmOptionsError, match="has a space"):
        job_script(tmp_path / "a b", "r", SlurmOptions(), resume=False)


def test_gpus_are_counted_from_slurms_gres_strings() -> None:
    assert gpu_count("gpu:a100:4(S:0-1),gpu:v100:2") == 6
    assert gpu_count("gpu:2(IDX:0-1)") == 2
    assert gpu_count("gpu:a100:0(IDX:N/A),craynetwork:1") == 0


def test_slurm_flags_without_slurm_are_refused_before_anything_is_created(tmp_path: Path) -> None:
    make_config(tmp_path / "model", tmp_path / "train.json").save(tmp_path / "config.toml")
    environment = {**os.environ, "GLMTUI_HOME": str(tmp_path / "ws"), "COLUMNS": "200"}
    argv = [sys.executable, "-m", "glmtui.cli", "train", str(tmp_path / "config.toml"), "--nodes", "2"]
    done = subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--nodes sets where a Slurm job runs; add --slurm to use Slurm" in done.stderr
    assert not (tmp_path / "ws" / "runs").exists()


def test_each_nodes_latest_gpu_reading_is_read_back_and_shown_as_one_panel(tmp_path: Path) -> None:
    raw = json.loads((Path(__file__).parent / "fixtures" / "gpus-2.json").read_text())["samples"][0]
    for node in ("n2", "n1"):
        append_sample(tmp_path, node, raw)
    with open(samples_path(tmp_path, "n2"), "a") as handle:
        handle.write('{"node": "n2", "devi')  # a reading cut off mid-write is not read
    readings = latest_readings(tmp_path)
    assert [reading.node for reading in readings] == ["n1", "n2"]
    merged = merged_snapshot(readings)
    assert [gpu.index for gpu in merged.gpus] == [0, 1, 2, 3]
    assert [gpu.name.split()[0] for gpu in merged.gpus] == ["n1", "n1", "n2", "n2"]
    heading = node_heading(readings, now=readings[0].snapshot.timestamp + 5)
    assert heading.startswith("GPUs on n1 (5s ago), n2 (")
    path = samples_path(tmp_path, "n1")
    while path.stat().st_size <= MAX_FILE_BYTES:
        append_sample(tmp_path, "n1", raw)
    append_sample(tmp_path, "n1", raw)
    assert len(path.read_text().splitlines()) == 1  # cut back to the latest reading


# --- on the local cluster ---------------------------------------------------------------------------


def test_a_run_submitted_through_the_cli_finishes_and_its_job_is_seen_while_it_runs(
    slurm, tiny_model_dir, train_file, tmp_path
) -> None:
    config = make_config(tiny_model_dir, train_file, name="cli slurm", max_steps=8, save_steps=4)
    config.save(tmp_path / "config.toml")
    submitted = subprocess.Popen(
        [sys.executable, "-m", "glmtui.cli", "train", str(tmp_path / "config.toml"), "--slurm"],
        env={**slurm.environment, "GLMTUI_HOME": str(tmp_path / "ws"), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run = wait_until(lambda: next(iter(RunStore(tmp_path / "ws" / "runs").list()), None), "the run folder")
    job = wait_until(lambda: run.stored_status().slurm_job, "the job id in status.json")
    wait_until(
        lambda: slurm.squeue(job) == "RUNNING" and run.stored_status().state == "running", "a running job"
    )
    output, _ = submitted.communicate(timeout=DEADLINE_S)
    assert submitted.returncode == 0, output
    assert f"Submitted run {run.id} to Slurm as job {job}" in output
    assert f"Run {run.id} finished at step 8/8" in output
    status = run.status()
    assert (status.state, status.step, status.nodes) == ("finished", 8, ["n1"])
    assert [checkpoint.step for checkpoint in run.checkpoints()] == [4, 8]
    assert [event["kind"] for event in run.events()][-1] == "end"
    assert (run.path / "slurm-job.sh").read_text().startswith("#!/bin/bash")
    log = run.log_path.read_text()
    assert f"submitted slurm-job.sh as Slurm job {job}" in log and "step 8/8" in log
    wait_until(lambda: slurm.squeue(job) == "COMPLETED", "the job to complete")


def test_two_nodes_train_two_ranks_through_torchrun_with_the_loss_of_one_node_with_two_ranks(
    slurm, tiny_model_dir, train_file, tmp_path, monkeypatch
) -> None:
    settings = {"max_steps": 6, "save_steps": 6, "per_device_train_batch_size": 2}
    two_nodes = slurm_run(tmp_path / "a", tiny_model_dir, train_file, SlurmOptions(nodes=2), **settings)
    one_node = slurm_run(tmp_path / "b", tiny_model_dir, train_file, SlurmOptions(nodes=1), **settings)
    launch(two_nodes, detach=True)
    monkeypatch.setenv(CPU_PROCESSES_VARIABLE, "2")  # two gloo ranks on the one node
    launch(one_node, detach=True)
    for run in (two_nodes, one_node):
        wait_until(lambda run=run: run.status().state == "finished", f"{run.id} to finish")
    assert two_nodes.status().nodes == ["n1", "n2"] and one_node.status().nodes == ["n1"]
    for run in (two_nodes, one_node):
        start = next(event for event in run.events() if event["kind"] == "start")
        assert start["world_size"] == 2
        assert "rank 1 of 2 finished at step 6" in (run.path / "train.rank-1.log").read_text()
    losses = [
        [event["loss"] for event in run.events() if event["kind"] == "log"] for run in (two_nodes, one_node)
    ]
    assert len(losses[0]) == 6 and losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_a_time_limit_checkpoints_first_then_the_job_requeues_and_resumes_from_it_and_scancel_is_a_crash(
    slurm, tiny_model_dir, train_file, tmp_path
) -> None:
    # Slurm's time limits are whole minutes and it signals up to a minute early: a 1-minute limit with the
    # warning 55 s before it arrives within the first half minute.
    options = SlurmOptions(time="1", signal_lead_s=55, requeue=True)
    run = long_run(tmp_path, tiny_model_dir, train_file, options)
    job = launch(run, detach=True)
    wait_until(lambda: run.status().state == "running", "the run to start")
    requeued = wait_until(
        lambda: (
            run.stored_status().reason and "requeued" in run.stored_status().reason and run.stored_status()
        ),
        "the time limit's checkpoint and requeue",
    )
    saved = run.latest_checkpoint()
    assert saved is not None and requeued.state == "queued" and requeued.slurm_job == job
    assert any(event["kind"] == "end" and event["stopped"] for event in run.events())
    pending = wait_until(lambda: run.status().pending_reason, "Slurm to hold the requeued job")
    assert pending == "BeginTime"
    # Slurm holds a requeued job for two minutes; release it sooner, as an administrator could (not in the
    # second of the requeue: the nodes refuse to start a job with the credential revoked that second).
    wait_until(lambda: slurm.squeue(job) == "PENDING", "the job to be pending again")
    # Its second run gets a longer limit, so no second warning races the checks below.
    slurm.command("scontrol", "update", f"JobId={job}", "StartTime=now+3", "TimeLimit=10")
    wait_until(
        lambda: max(steps_logged(run)) > saved.step and run.status().state == "running",
        "the requeued job to train",
    )
    resumed = [event for event in run.events() if event["kind"] == "resumed"]
    starts = [event for event in run.events() if event["kind"] == "start"]
    assert resumed[-1]["checkpoint"] == str(saved.path) and starts[-1]["step"] == saved.step > 0
    assert "Slurm's time limit is near" in run.log_path.read_text()

    # Behind glmtui's back: scancel ends the job; the run did not record its end, so it is crashed.
    slurm.command("scancel", str(job))
    status = wait_until(lambda: (status := run.status()).state == "crashed" and status, "the crash")
    assert status.reason.startswith(f"Slurm job {job} cancelled (scancel) (CANCELLED")
    assert "resume it from checkpoint-" in status.reason


def test_stop_is_graceful_force_cancels_the_job_and_resume_is_a_new_job(
    slurm, tiny_model_dir, train_file, tmp_path
) -> None:
    run = long_run(tmp_path / "ws" / "x", tiny_model_dir, train_file, SlurmOptions())
    run = Run(run.path)
    first = launch(run, detach=True)
    wait_until(lambda: run.status().state == "running" and run.stored_status().step >= 2, "training steps")
    stopped = glmtui(tmp_path / "ws", "stop", str(run.path), cluster=slurm)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    status = run.status()
    assert status.state == "stopped" and run.latest_checkpoint().step == status.step
    wait_until(lambda: slurm.squeue(first) == "COMPLETED", "the job to end on its own")

    second = resume(run, detach=True)
    assert second != first and run.stored_status().slurm_job == second
    wait_until(lambda: run.status().state == "running" and steps_logged(run), "the resumed job to train")
    forced = glmtui(tmp_path / "ws", "stop", str(run.path), "--force", cluster=slurm)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    status = run.status()
    assert status.state == "stopped" and f"Slurm job {second} cancelled" in status.reason
    assert slurm.squeue(second) == "CANCELLED"


def test_a_waiting_job_shows_slurms_reason_and_a_sweep_becomes_jobs(
    slurm, tiny_model_dir, train_file, tmp_path
) -> None:
    blocker = int(
        slurm.command("sbatch", "--parsable", "--exclusive", "-N2", "-o", "/dev/null", "--wrap", "sleep 300")
    )
    try:
        wait_until(lambda: slurm.squeue(blocker) == "RUNNING", "the nodes to be taken")
        config = make_config(tiny_model_dir, train_file, name="grid")
        config.save(tmp_path / "config.toml")
        swept = glmtui(
            tmp_path / "ws",
            "sweep",
            str(tmp_path / "config.toml"),
            "--set",
            "learning_rate=1e-2,2e-2",
            "--slurm",
            "--detach",
            cluster=slurm,
        )
        assert swept.returncode == 0, swept.stdout + swept.stderr
        runs = RunStore(tmp_path / "ws" / "runs").list()
        jobs = [run.stored_status().slurm_job for run in runs]
        assert len(runs) == 2 and None not in jobs and len(set(jobs)) == 2
        for run, job in zip(runs, jobs, strict=True):
            assert slurm.squeue(job) == "PENDING"
            assert wait_until(lambda run=run: run.status().pending_reason, "a reason") in (
                "Resources",
                "Priority",
            )
        assert "to Slurm (Slurm is their queue): jobs " in " ".join(swept.stdout.split())
        refused = glmtui(
            tmp_path / "ws",
            "train",
            str(tmp_path / "config.toml"),
            "--slurm",
            "--partition",
            "gpu",
            cluster=slurm,
        )
        assert refused.returncode == 2 and "Slurm would refuse this job" in refused.stderr
        assert "invalid partition" in refused.stderr.lower().replace("\n", " ")
        assert len(RunStore(tmp_path / "ws" / "runs").list()) == 2  # nothing was created for it
        listed = glmtui(tmp_path / "ws", "runs", cluster=slurm)
        assert "Resources" in listed.stdout, listed.stdout
        assert not (tmp_path / "ws" / "queue" / "order.json").exists()  # glmtui's own queue is not used
        for run in runs:
            stopped = glmtui(tmp_path / "ws", "stop", run.id, cluster=slurm)
            assert stopped.returncode == 0, stopped.stderr
            assert run.status().state == "created" and "cancelled before it started" in run.status().reason
    finally:
        slurm.command("scancel", str(blocker))
