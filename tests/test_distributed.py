"""Several ranks, one run: the torchrun command glmtui builds, and real two-process runs on the CPU (gloo).

The runs train the tiny model through `glmcore.runs.launch`, exactly as a two-GPU run is started, with
GLMTUI_CPU_PROCESSES=2 standing in for two GPUs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest
from support.waiting import wait_until
from test_train import make_config as train_config

from glmcore.config import RunConfig
from glmcore.distributed import (
    CPU_PROCESSES_VARIABLE,
    DistributedError,
    RankInfo,
    free_port,
    launch_plan,
    rank_log_path,
    world_size,
)
from glmcore.runs import Run, RunError, RunStore, launch, process_start_time, resume, stop

DEADLINE_S = 120  # how long to wait for the ranks to get somewhere; never an assertion on speed
ROWS = [
    {"content": "类型#上衣*颜色#白色", "summary": "白色上衣简约百搭"},
    {"content": "Hello", "summary": "world, this is a test"},
]


def make_config(model_dir: Path, train_file: Path, **overrides: object) -> RunConfig:
    """The training tests' config, as a long run with regular checkpoints (to be stopped mid-way)."""
    settings = {
        "name": "ddp",
        "per_device_train_batch_size": 2,
        "max_steps": 3000,
        "save_steps": 20,
        "logging_steps": 5,
    }
    return train_config(model_dir, train_file, **{**settings, **overrides})


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(
        "\n".join(json.dumps(row, ensure_ascii=False) for row in ROWS * 8) + "\n", encoding="utf-8"
    )
    return path


@pytest.fixture
def two_cpu_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_PROCESSES_VARIABLE, "2")


# --- the command and environment ------------------------------------------------------------------


def test_several_gpus_start_torchrun_on_localhost_with_one_rank_per_gpu(tmp_path: Path) -> None:
    config = make_config(tmp_path / "model", tmp_path / "train.json", gpus=[2, 5])
    plan = launch_plan(config, tmp_path / "run", resume=True, port=29612, environment={})

    assert plan.world_size == 2
    assert plan.command == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        "29612",
        "--max-restarts",
        "0",
        "-m",
        "glmcore.train",
        str(tmp_path / "run"),
        "--resume",
    ]
    assert plan.environment["CUDA_VISIBLE_DEVICES"] == "2,5"
    assert int(plan.environment["OMP_NUM_THREADS"]) >= 1


def test_one_gpu_or_the_cpu_runs_the_trainer_directly(tmp_path: Path) -> None:
    one_gpu = launch_plan(make_config(tmp_path, tmp_path, gpus=[1]), tmp_path, resume=False, environment={})
    assert one_gpu.command == [sys.executable, "-m", "glmcore.train", str(tmp_path)]
    assert one_gpu.environment["CUDA_VISIBLE_DEVICES"] == "1"
    cpu = launch_plan(make_config(tmp_path, tmp_path), tmp_path, resume=False, environment={})
    assert cpu.world_size == 1 and cpu.environment["CUDA_VISIBLE_DEVICES"] == ""
    own = launch_plan(make_config(tmp_path, tmp_path, gpus=[0, 1]), tmp_path, resume=False, program=["ds"])
    assert own.command == ["ds", str(tmp_path)], "a program of its own starts the ranks itself"


def test_cpu_ranks_come_from_the_environment_and_a_bad_count_is_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path, tmp_path)
    assert world_size(config, {CPU_PROCESSES_VARIABLE: "3"}) == 3
    assert world_size(make_config(tmp_path, tmp_path, gpus=[0]), {CPU_PROCESSES_VARIABLE: "3"}) == 1
    with pytest.raises(DistributedError, match="not a number of processes"):
        world_size(config, {CPU_PROCESSES_VARIABLE: "two"})


def test_a_bad_rank_count_refuses_the_launch_and_leaves_the_run_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = RunStore(tmp_path / "runs").create(make_config(tmp_path, tmp_path))
    monkeypatch.setenv(CPU_PROCESSES_VARIABLE, "0")
    with pytest.raises(RunError, match=CPU_PROCESSES_VARIABLE):
        launch(run, detach=True)
    assert run.status().state == "created"


def test_free_port_can_be_listened_on_at_localhost() -> None:
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()


def test_rank_info_reads_what_torchrun_sets() -> None:
    info = RankInfo.from_environment({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert (info.rank, info.local_rank, info.is_main, info.is_distributed) == (1, 1, False, True)
    assert RankInfo.from_environment({}) == RankInfo(0, 0, 1)


# --- real two-rank runs on the CPU ----------------------------------------------------------------


def rank_pids(run: Run) -> list[int]:
    """The pids of the latest attempt's ranks, as each rank wrote at its start."""
    pids = []
    for rank in (0, 1):
        path = rank_log_path(run.path, rank)
        found = re.findall(r"rank \d of 2, pid (\d+)", path.read_text()) if path.exists() else []
        if not found:
            return []
        pids.append(int(found[-1]))
    return pids


def no_process_alive(pids: list[int]) -> bool:
    return all(process_start_time(pid) is None for pid in pids)


def final_steps(run: Run) -> list[int]:
    """The step at which each rank's latest attempt ended, from its own log."""
    return [
        int(re.findall(r"rank \d of 2 \w+ at step (\d+)", rank_log_path(run.path, rank).read_text())[-1])
        for rank in (0, 1)
    ]


def assert_one_history(run: Run) -> None:
    records = [json.loads(line) for line in run.events_path.read_text().splitlines()]
    starts = [record for record in records if record["kind"] == "start"]
    assert all(start["world_size"] == 2 for start in starts)
    attempts = len([record for record in records if record["kind"] in ("start",)])
    assert attempts == 1 + len([record for record in records if record["kind"] == "resumed"])
    steps = [event["step"] for event in run.events() if event["kind"] == "log"]
    every = run.config.logging_steps
    assert steps == list(range(every, steps[-1] + 1, every)), "only rank 0 writes, once per logging step"


@pytest.mark.slow
def test_two_ranks_stop_together_resume_and_leave_no_process_when_forced_or_crashed(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path, two_cpu_ranks: None
) -> None:
    run = RunStore(tmp_path / "runs").create(make_config(tiny_model_dir, train_file))
    agent = launch(run, detach=True)
    wait_until(lambda: run.status().step >= 15, "steps from both ranks")
    assert run.stored_status().pid == agent, "status names the torchrun agent, not a rank"
    ranks = rank_pids(run)
    assert len(ranks) == 2 and agent not in ranks
    assert all(os.getsid(pid) != os.getsid(agent) for pid in ranks), "torchrun gives each rank a session"

    status = stop(run, timeout=DEADLINE_S)
    assert status.state == "stopped"
    first, second = final_steps(run)
    assert first == second == status.step, "every rank stopped at the same step"
    assert run.latest_checkpoint().step == status.step
    assert "torch.distributed.run" in run.log_path.read_text()
    wait_until(lambda: no_process_alive([agent, *ranks]), "the ranks to exit")

    resume(run, detach=True)
    wait_until(lambda: run.status().step >= status.step + 10, "the resumed ranks")
    ranks = wait_until(lambda: (pids := rank_pids(run)) and pids != ranks and pids, "the new ranks")
    forced = stop(run, force=True, grace=5)
    assert forced.state == "stopped"
    wait_until(lambda: no_process_alive(ranks), "every rank to be gone after a forced stop")

    agent = resume(run, detach=True)
    wait_until(lambda: (pids := rank_pids(run)) and pids != ranks, "the ranks of the third attempt")
    ranks = rank_pids(run)
    wait_until(lambda: run.status().step >= forced.step + 5, "steps of the third attempt")
    os.kill(agent, signal.SIGKILL)  # the OOM killer or a lost node: the agent dies without a word
    wait_until(lambda: no_process_alive(ranks), "the ranks to die with their agent")
    assert run.status().state == "crashed"
    assert_one_history(run)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "checkpointing"), [("ptuning-v2", True), ("ptuning-v2", False), ("lora", True)]
)
def test_data_parallel_training_finishes_with_a_frozen_base(
    tiny_model_dir: Path,
    train_file: Path,
    tmp_path: Path,
    two_cpu_ranks: None,
    method: str,
    checkpointing: bool,
) -> None:
    config = make_config(
        tiny_model_dir,
        train_file,
        method=method,
        max_steps=6,
        save_steps=6,
        logging_steps=1,
        gradient_checkpointing=checkpointing,
        learning_rate=2e-2,
    )
    run = RunStore(tmp_path / "runs").create(config)
    process = launch(run, detach=False)
    assert process.wait(timeout=DEADLINE_S) == 0, rank_log_path(run.path, 1).read_text()[-3000:]
    assert run.status().state == "finished"
    assert final_steps(run) == [6, 6]
    losses = [event["loss"] for event in run.events() if event["kind"] == "log"]
    assert len(losses) == 6 and all(loss == loss and loss > 0 for loss in losses)
    assert run.latest_checkpoint().step == 6


@pytest.fixture(scope="module")
def stopped_zero3_run(
    tiny_model_dir: Path, train_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Run:
    """A ZeRO-3 full fine-tuning run on two CPU ranks, stopped, resumed and stopped again."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional extra glmtui[deepspeed]")
    config = make_config(
        tiny_model_dir,
        train_file,
        method="full",
        deepspeed="zero3",
        save_steps=10**6,
        logging_steps=1,
        learning_rate=1e-3,
    )
    run = RunStore(tmp_path_factory.mktemp("zero3") / "runs").create(config)
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv(CPU_PROCESSES_VARIABLE, "2")
        launch(run, detach=True)
        wait_until(lambda: run.status().step >= 2, "ZeRO-3 steps")
        first = stop(run, timeout=DEADLINE_S)
        assert first.state == "stopped"
        resume(run, detach=True)
        wait_until(lambda: run.status().step >= first.step + 2, "the resumed ZeRO-3 ranks")
        assert stop(run, timeout=DEADLINE_S).state == "stopped"
    return run


@pytest.mark.slow
def test_zero3_stops_with_zero_shards_and_resumes_from_them(stopped_zero3_run: Run) -> None:
    run = stopped_zero3_run
    first, second = run.checkpoints()
    for checkpoint in (first, second):
        assert list(checkpoint.path.glob("global_step*/*optim_states.pt")), "ZeRO shards of both ranks"
    assert final_steps(run) == [second.step, second.step] == [run.status().step] * 2
    assert [event["step"] for event in run.events() if event["kind"] == "start"] == [0, first.step]
    assert_one_history(run)


@pytest.mark.slow
def test_zero3_shards_alone_export_to_the_same_weights(stopped_zero3_run: Run, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from glmcore.export import export_run

    run = stopped_zero3_run
    gathered = export_run(run, tmp_path / "gathered")
    (run.latest_checkpoint().path / "model.safetensors").unlink()  # leave only the ZeRO shards
    consolidated = export_run(run, tmp_path / "consolidated")
    expected, actual = (
        load_file(gathered / "model.safetensors"),
        load_file(consolidated / "model.safetensors"),
    )
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert actual[name].equal(tensor), name
