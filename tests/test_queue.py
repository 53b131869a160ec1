"""Sweeps and the run queue: admission arithmetic on recorded GPU samples, and real processes working the queue.

The queue's workers and trainers are real processes. The 2x2 sweep goes through the real CLI and the real
trainer on the tiny model; the races and the kill test use the stand-in trainer of test_runs (they are about
who starts what, not about training).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.waiting import wait_until
from test_runs import DEADLINE_S, STAND_IN, make_config
from test_runs_hardening import glmtui
from test_train import ROWS
from test_train import make_config as train_config

from glmcore.config import ConfigError, RunConfig
from glmcore.estimate import estimate_vram
from glmcore.gpu import GpuSnapshot, RecordedGpuBackend
from glmcore.models.family import ModelShape
from glmcore.queue import Candidate, Occupant, Queue, QueueSettings, admit
from glmcore.runs import Run, RunError, launch
from glmcore.sweep import SweepError, expand, parse_sets, sweep_of
from glmcore.units import GIB
from glmcore.workspace import Workspace

FIXTURES = Path(__file__).parent / "fixtures"
CHATGLM_6B = ModelShape(130528, 4096, 28, 32, 16384)
MARGIN = QueueSettings().safety_margin_gib * GIB


def recorded(name: str = "gpus-2.json") -> GpuSnapshot:
    return RecordedGpuBackend(FIXTURES / name).read()


def free_of(snapshot: GpuSnapshot) -> dict[int, int]:
    return {gpu.index: gpu.memory_free for gpu in snapshot.gpus}


# admission arithmetic on recorded GPU samples


def test_several_runs_admitted_at_once_do_not_oversubscribe_a_gpu() -> None:
    free = free_of(recorded())  # two A100 80GB: 43.8 GiB free on GPU 0, 24.8 GiB on GPU 1
    config = RunConfig(name="x", model_path=Path("m"), train_file=Path("t"), quantization_bit=16, gpus=[0])
    need = estimate_vram(CHATGLM_6B, config).total  # 16-bit P-tuning of ChatGLM-6B: about 14 GiB
    candidates = [Candidate(f"run-{number}", (0,), need) for number in range(1, 8)]

    decisions = admit(candidates, [], free, QueueSettings(max_runs_per_gpu=8))

    admitted = [decision for decision in decisions if decision.admitted]
    fitting = int((free[0] - MARGIN) // need)  # each admitted run is held at its estimate, the margin once
    assert 1 <= len(admitted) == fitting < len(candidates) - 1
    assert len(admitted) * need + MARGIN <= free[0]
    first_waiting = decisions[len(admitted)]
    held = len(admitted) * need
    assert first_waiting.reason == (
        f"GPU 0: needs {need / GIB:.1f} GiB + 1.0 margin, {(free[0] - held) / GIB:.1f} free "
        f"({held / GIB:.1f} more held for runs starting)"
    )
    # In order: the runs behind it wait for it rather than for the memory.
    assert decisions[-1].reason == f"GPU 0: after run-{len(admitted) + 1} (position {len(admitted) + 1})"


def test_runs_still_starting_hold_their_estimate_and_the_per_gpu_limit_counts_running_runs() -> None:
    free = free_of(recorded())
    starting = Occupant("starting", (1,), {1: 20 * GIB})  # admitted, 20 GiB short of its peak
    candidates = [
        Candidate("small", (1,), 4 * GIB),
        Candidate("on-0", (0,), 4 * GIB),
        Candidate("cpu", (), None),
    ]

    decisions = admit(candidates, [starting], free, QueueSettings(max_runs_per_gpu=2))

    assert [decision.admitted for decision in decisions] == [False, True, True]
    assert decisions[0].reason.startswith("GPU 1: needs 4.0 GiB + 1.0 margin, 4.8 free (20.0 more held")
    limited = admit([Candidate("small", (1,), GIB)], [starting], free, QueueSettings(max_runs_per_gpu=1))
    assert limited[0].reason == "GPU 1: 1 running, at most 1 at once"
    unreadable = admit([Candidate("g", (0,), GIB)], [], None, QueueSettings(), no_gpu_reason="no driver")
    assert unreadable[0].reason == "GPU 0: free memory unknown (no driver)"
    absent = admit([Candidate("g", (5,), GIB)], [], free, QueueSettings())
    assert absent[0].reason == "GPU 5 is not on this machine (it has 2 GPUs)"


def test_an_occupant_is_held_at_its_estimate_less_what_nvml_shows_its_processes_using(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A run on GPU 0 that has not logged a step yet: its estimate less its processes' memory is held."""
    model = tmp_path / "chatglm-6b"
    model.mkdir()
    published = json.loads((tiny_model_dir / "config.json").read_text()) | {
        "vocab_size": 130528,
        "hidden_size": 4096,
        "num_layers": 28,
        "num_attention_heads": 32,
        "inner_hidden_size": 16384,
    }
    (model / "config.json").write_text(json.dumps(published))
    queue = Queue(Workspace(tmp_path / "ws"))
    config = make_config(tmp_path, name="going", gpus=[0], quantization_bit=16)
    going = queue.store.create(dataclasses.replace(config, model_path=model))
    going.mark_running(os.getpid())  # alive, this host, still at step 0
    snapshot = recorded()
    gpu0 = snapshot.gpus[0]
    ours = dataclasses.replace(gpu0.processes[0], run=str(going.path))
    snapshot = dataclasses.replace(
        snapshot, gpus=(dataclasses.replace(gpu0, processes=(ours,)), *snapshot.gpus[1:])
    )
    need = estimate_vram(CHATGLM_6B, going.config).total

    (occupant,) = queue.occupants(snapshot)
    assert occupant.pending == {0: max(0, need - ours.used_memory)}
    going.write_status(step=1)  # past its first step: at its peak, NVML's reading is the whole story
    assert queue.occupants(snapshot)[0].pending == {}


# the sweep grid


def test_a_grid_gives_every_combination_named_after_its_values(tmp_path: Path) -> None:
    base = make_config(tmp_path, name="advertisegen")
    points = expand(base, parse_sets(["pre_seq_len=64,128", "learning_rate=1e-2,2e-2"]))

    assert [(point.config.pre_seq_len, point.config.learning_rate) for point in points] == [
        (64, 0.01),
        (64, 0.02),
        (128, 0.01),
        (128, 0.02),
    ]
    assert points[1].config.name == "advertisegen psl64 lr0.02"
    assert points[0].config.train_file == base.train_file and points[3].config.max_steps == base.max_steps
    assert parse_sets(["gpus=[0],[0,1]"]) == {"gpus": [[0], [0, 1]]}
    for bad, says in [
        ("pre_seq_lenn=1,2", "'pre_seq_lenn' is not a run setting (did you mean 'pre_seq_len'?)"),
        ("learning_rate", "is not KEY=V1,V2"),
        ("name=a,b", "a sweep names each run after its values"),
        ("pre_seq_len=4,4", "an empty or repeated value"),
    ]:
        with pytest.raises(SweepError, match=re.escape(says)):
            parse_sets([bad])
    with pytest.raises(ConfigError, match=r"--set pre_seq_len=abc: .*pre_seq_len must be a whole number"):
        expand(base, parse_sets(["pre_seq_len=4,abc"]))


def tiny_sweep_config(tiny_model_dir: Path, tmp_path: Path) -> Path:
    train_file = tmp_path / "train.json"
    train_file.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in ROWS) + "\n")
    config = train_config(tiny_model_dir, train_file, name="tiny", max_steps=2, save_steps=2)
    path = tmp_path / "tiny.toml"
    config.save(path)
    return path


def test_a_sweep_with_a_bad_combination_creates_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tiny_sweep_config(tiny_model_dir, tmp_path)

    out, err = glmtui(
        tmp_path / "ws", "sweep", str(config), "--set", "pre_seq_len=0,4", "--set", "learning_rate=1e-2,-1"
    ).communicate(timeout=DEADLINE_S)

    said = " ".join(err.split())
    assert "3 of the 4 combinations have problems; nothing was created" in said, (out, err)
    assert "• pre_seq_len=0 learning_rate=0.01: pre_seq_len: P-tuning v2 needs a prefix" in said
    assert "• pre_seq_len=4 learning_rate=-1: learning_rate: must be more than 0" in said
    assert not (tmp_path / "ws" / "runs").exists() or not list((tmp_path / "ws" / "runs").iterdir())


@pytest.mark.slow
def test_a_2x2_sweep_finishes_through_the_queue_at_most_two_at_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    queue = Queue(Workspace(workspace))
    QueueSettings(max_cpu_runs=2, poll_s=0.2).save(queue.settings_path)
    config = tiny_sweep_config(tiny_model_dir, tmp_path)

    sweep = glmtui(
        workspace, "sweep", str(config), "--set", "pre_seq_len=2,4", "--set", "learning_rate=1e-2,2e-2"
    )
    most_at_once = 0
    while sweep.poll() is None:
        active = [run for run in queue.store.list() if run.status().is_active]
        most_at_once = max(most_at_once, len(active))
        time.sleep(0.05)
    out, err = sweep.communicate()

    assert sweep.returncode == 0, (out, err)
    runs = sorted(queue.store.list(), key=lambda run: sweep_of(run)["index"])
    assert [(run.config.pre_seq_len, run.config.learning_rate) for run in runs] == [
        (2, 0.01),
        (2, 0.02),
        (4, 0.01),
        (4, 0.02),
    ]
    assert [run.id.split("-", 2)[2] for run in runs] == [
        "tiny-psl2-lr0-01",
        "tiny-psl2-lr0-02",
        "tiny-psl4-lr0-01",
        "tiny-psl4-lr0-02",
    ]
    assert len({sweep_of(run)["sweep"] for run in runs}) == 1
    assert [run.status().state for run in runs] == ["finished"] * 4, [run.status().reason for run in runs]
    assert most_at_once == 2
    assert f"Sweep {sweep_of(runs[0])['sweep']}: 4 of 4 runs finished." in " ".join(out.split())
    wait_until(lambda: not queue.worker_alive(), "the worker to exit once the queue is empty")

    table, _ = glmtui(workspace, "runs").communicate(timeout=DEADLINE_S)
    lines = [line for line in table.splitlines() if line.strip()]
    heading = next(number for number, line in enumerate(lines) if line.startswith("sweep "))
    assert [line.split()[0] for line in lines[heading + 1 : heading + 5]] == [run.id for run in runs]


# workers: the claim, and nothing lost when every process dies

WORKER = """
import sys, time
from pathlib import Path
from glmcore.queue import Queue
from glmcore.workspace import Workspace

workspace, go, program = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
while not go.exists():
    time.sleep(0.001)
Queue(Workspace(workspace)).work(program=program, say=lambda line: print(line, flush=True))
"""


def start_worker(workspace: Path, go: Path, log: Path) -> subprocess.Popen:
    with open(log, "a") as output:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, str(workspace), str(go), *STAND_IN],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def queued_stand_ins(queue: Queue, tmp_path: Path, steps: list[int]) -> list[Run]:
    runs = [
        queue.store.create(make_config(tmp_path, name=f"q{number}", max_steps=n))
        for number, n in enumerate(steps)
    ]
    for run in runs:
        queue.add(run)
    return runs


def trainers_started(run: Run) -> int:
    lines = run.log_path.read_text().splitlines() if run.log_path.exists() else []
    return sum(line.startswith("stand-in trainer from step") for line in lines)


def test_two_workers_started_together_never_start_one_run_twice(tmp_path: Path) -> None:
    queue = Queue(Workspace(tmp_path / "ws"))
    QueueSettings(max_cpu_runs=4, poll_s=0.05).save(queue.settings_path)
    runs = queued_stand_ins(queue, tmp_path, [10] * 4)
    go = tmp_path / "go"

    workers = [start_worker(queue.workspace.root, go, tmp_path / f"worker-{n}.log") for n in range(2)]
    go.touch()
    for worker in workers:
        assert worker.wait(timeout=DEADLINE_S) == 0, (tmp_path / "worker-0.log").read_text()

    wait_until(lambda: all(run.status().state == "finished" for run in runs), "the four runs to finish")
    assert [trainers_started(run) for run in runs] == [1] * 4
    assert [run.log_path.read_text().count("\n=== ") for run in runs] == [1] * 4
    with pytest.raises(RunError, match="is finished, no longer queued; it was not started"):
        launch(runs[0], detach=True, program=STAND_IN, only_if="queued")


def test_after_every_process_is_killed_one_new_worker_finishes_the_rest(tmp_path: Path) -> None:
    queue = Queue(Workspace(tmp_path / "ws"))
    QueueSettings(max_cpu_runs=2, poll_s=0.05).save(queue.settings_path)
    long_a, long_b, short_c, short_d = runs = queued_stand_ins(queue, tmp_path, [1_000_000, 1_000_000, 5, 5])
    go = tmp_path / "go"
    go.touch()
    first = start_worker(queue.workspace.root, go, tmp_path / "first.log")
    wait_until(lambda: long_a.stored_status().step > 0 and long_b.stored_status().step > 0, "two runs going")

    for pid in (first.pid, long_a.stored_status().pid, long_b.stored_status().pid):
        os.killpg(pid, signal.SIGKILL)
    first.wait(timeout=DEADLINE_S)
    wait_until(lambda: long_a.status().state == long_b.status().state == "crashed", "the kills to show")
    assert [run.status().state for run in (short_c, short_d)] == ["queued", "queued"]
    assert not queue.worker_alive()

    second = start_worker(queue.workspace.root, go, tmp_path / "second.log")
    assert second.wait(timeout=DEADLINE_S) == 0
    wait_until(lambda: short_c.status().state == short_d.status().state == "finished", "the rest to finish")
    assert [run.status().state for run in (long_a, long_b)] == ["crashed", "crashed"]
    assert [trainers_started(run) for run in runs] == [1, 1, 1, 1]  # the crashed ones were not restarted
    said = (tmp_path / "second.log").read_text().splitlines()
    started = [line.split()[1] for line in said if line.endswith(" started")]
    assert started == [short_c.id, short_d.id]


def test_queue_lists_why_each_run_waits_and_moves_and_cancels_them(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    queue = Queue(Workspace(workspace))
    busy = queue.store.create(make_config(tmp_path, name="busy"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    busy.mark_running(sleeper.pid)
    try:
        first, second = queued_stand_ins(queue, tmp_path, [5, 5])

        listing, _ = glmtui(workspace, "queue").communicate(timeout=DEADLINE_S)
        rows = [" ".join(line.split()) for line in listing.splitlines()]
        assert f"1 {first.id} cpu the CPU: 1 running, at most 1 at once" in rows, listing
        assert f"2 {second.id} cpu the CPU: after {first.id} (position 1)" in rows
        assert "2 queued; no worker is alive" in " ".join(rows)

        moved, _ = glmtui(workspace, "queue", "up", second.id).communicate(timeout=DEADLINE_S)
        assert f"Run {second.id} is now number 1 in the queue." in " ".join(moved.split())
        assert queue.runs() == [second, first]
        queue.cancel(first)
        assert queue.runs() == [second] and first.status().state == "created"
        assert "taken off the queue" in first.status().reason
    finally:
        sleeper.kill()
        sleeper.wait()


def test_train_queue_queues_the_run_and_starts_a_worker_that_waits_for_room(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    queue = Queue(Workspace(workspace))
    QueueSettings(poll_s=0.1).save(queue.settings_path)
    busy = queue.store.create(make_config(tmp_path, name="busy"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    busy.mark_running(sleeper.pid)  # holds the one CPU slot
    try:
        out, err = glmtui(
            workspace, "train", str(tiny_sweep_config(tiny_model_dir, tmp_path)), "--queue"
        ).communicate(timeout=DEADLINE_S)
        said = " ".join(out.split())
        assert "Queued it at position 1" in said and "Started a queue worker (pid" in said, (out, err)
        (run,) = queue.runs()
        assert run.status().state == "queued" and queue.worker_alive()
        wait_until(
            lambda: "the CPU: 1 running, at most 1 at once" in queue.worker_log_path.read_text(), "the wait"
        )
        queue.cancel(run)
        wait_until(lambda: not queue.worker_alive(), "the worker to exit once nothing is queued")
        assert trainers_started(run) == 0 and not run.log_path.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
