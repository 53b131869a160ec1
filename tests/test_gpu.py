"""glmcore.gpu: recorded samples through the real parser and sampler thread, and NVML as this machine has it."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from glmcore import gpu

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "gpu_samples.json"
MIB = 1024 * 1024
NVML_PRESENT = gpu.read_gpus().available
WAIT_S = 30  # a deadline for the sampler thread, not a timing assertion


def write_samples(path: Path, devices: list[dict]) -> Path:
    sample = {
        "timestamp": 0.0,
        "driver_version": "550.54.15",
        "cuda_driver_version": 12020,
        "devices": devices,
    }
    path.write_text(json.dumps({"format": gpu.SAMPLES_FORMAT, "samples": [sample]}), encoding="utf-8")
    return path


def test_recorded_h100_sample_is_parsed_into_nvidia_smi_units() -> None:
    snapshot = gpu.RecordedGpuBackend(FIXTURE).read()

    assert snapshot.available and snapshot.reason is None
    assert (snapshot.driver_version, snapshot.cuda_version) == ("550.54.15", "12.4")
    first = snapshot.gpus[0]
    assert first.index == 0 and first.name == "NVIDIA H100 80GB HBM3"
    assert first.memory_total == 85520809984
    assert (first.memory_used, first.memory_free) == (41236 * MIB, first.memory_total - (41236 + 530) * MIB)
    assert (first.utilization_gpu, first.utilization_memory, first.temperature) == (97, 58, 61)
    assert first.power_draw == pytest.approx(612.453)
    assert first.power_limit == 700.0
    assert first.fan_speed is None
    assert first.memory_used_fraction == pytest.approx(first.memory_used / first.memory_total)
    training = first.processes[0]
    assert (training.pid, training.used_memory, training.kind) == (48213, 41236 * MIB, "C")
    assert training.command.endswith("--local-rank 0")
    hidden = snapshot.gpus[1].processes[1]
    assert (hidden.used_memory, hidden.command) == (None, None)


def test_recorded_backend_replays_samples_in_order_and_wraps() -> None:
    backend = gpu.RecordedGpuBackend(FIXTURE)
    recorded = json.loads(FIXTURE.read_text(encoding="utf-8"))["samples"]

    utilizations = [backend.read().gpus[0].utilization_gpu for _ in range(len(recorded) + 1)]

    expected = [sample["devices"][0]["utilization"]["gpu"] for sample in recorded]
    assert utilizations == [*expected, expected[0]]


def test_unsupported_fields_become_none_and_processes_merge_per_pid(tmp_path: Path) -> None:
    devices = [
        {
            "index": 0,
            "name": "NVIDIA A10",
            "memory": None,
            "utilization": None,
            "temperature": None,
            "power_usage": None,
            "enforced_power_limit": 150000,
            "fan_speed": 30,
            "compute_processes": [{"pid": 10, "usedGpuMemory": 5 * MIB, "command": "python train.py"}],
            "graphics_processes": [{"pid": 10, "usedGpuMemory": None, "command": "python train.py"}],
        },
        {"index": 1},
    ]
    snapshot = gpu.RecordedGpuBackend(write_samples(tmp_path / "samples.json", devices)).read()

    partial, bare = snapshot.gpus
    assert (
        partial.memory_used is partial.memory_total is partial.utilization_gpu is partial.power_draw is None
    )
    assert (partial.power_limit, partial.fan_speed) == (150.0, 30)
    assert partial.memory_used_fraction is None
    assert partial.processes == (gpu.GpuProcess(10, 5 * MIB, "python train.py", "C+G"),)
    assert bare.index == 1 and bare.name is None and bare.processes == ()
    assert gpu.free_memory_by_gpu(snapshot) == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "Cannot read GPU samples"),
        ('{"samples": []}', "is not a GPU samples file"),
        (json.dumps({"format": gpu.SAMPLES_FORMAT, "samples": []}), "holds no GPU samples"),
        (json.dumps({"format": gpu.SAMPLES_FORMAT, "samples": [{"devices": []}]}), "malformed GPU sample"),
    ],
)
def test_bad_samples_file_is_a_clear_user_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "samples.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")

    with pytest.raises(gpu.GpuSampleFileError, match=message) as raised:
        gpu.RecordedGpuBackend(path)

    assert str(path) in str(raised.value) and "--record" in str(raised.value)


def test_sampler_delivers_snapshots_from_its_thread_and_stops() -> None:
    delivered: list[tuple[gpu.GpuSnapshot, str]] = []
    three_delivered = threading.Event()

    def collect(snapshot: gpu.GpuSnapshot) -> None:
        delivered.append((snapshot, threading.current_thread().name))
        if len(delivered) >= 3:
            three_delivered.set()

    sampler = gpu.GpuSampler(gpu.RecordedGpuBackend(FIXTURE), interval=0.01)
    sampler.subscribe(collect)
    with sampler:
        assert three_delivered.wait(WAIT_S)
        assert sampler.running
    assert not sampler.running

    assert [snapshot.gpus[0].utilization_gpu for snapshot, _ in delivered[:3]] == [97, 99, 12]
    assert {thread for _, thread in delivered} == {"glmcore-gpu-sampler"}
    assert sampler.latest is delivered[-1][0]
    assert sampler.available is True and sampler.reason is None


class Counter:
    """Counts deliveries and lets a test wait until a given count is reached."""

    def __init__(self) -> None:
        self.count = 0
        self._condition = threading.Condition()

    def __call__(self, snapshot: gpu.GpuSnapshot) -> None:
        with self._condition:
            self.count += 1
            self._condition.notify_all()

    def wait_for(self, count: int) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: self.count >= count, WAIT_S)


def test_failing_subscriber_does_not_stop_sampling_or_others() -> None:
    def broken(snapshot: gpu.GpuSnapshot) -> None:
        raise RuntimeError("a panel that crashed")

    counter = Counter()
    sampler = gpu.GpuSampler(gpu.RecordedGpuBackend(FIXTURE), interval=0.01)
    sampler.subscribe(broken)
    sampler.subscribe(counter)
    with sampler:
        assert counter.wait_for(3)
        assert sampler.running


def test_unsubscribed_callback_is_not_called_again() -> None:
    leaving, staying = Counter(), Counter()
    sampler = gpu.GpuSampler(gpu.RecordedGpuBackend(FIXTURE), interval=0.01)
    unsubscribe = sampler.subscribe(leaving)
    sampler.subscribe(staying)
    with sampler:
        assert leaving.wait_for(1)
        unsubscribe()
        count_when_left, staying_mark = leaving.count, staying.count
        assert staying.wait_for(staying_mark + 2)
    # a sample already being delivered when unsubscribe() ran may still reach it once, no later one
    assert leaving.count <= count_when_left + 1


def test_sampler_rejects_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        gpu.GpuSampler(gpu.RecordedGpuBackend(FIXTURE), interval=0)


@pytest.mark.skipif(NVML_PRESENT, reason="this machine has an NVIDIA driver")
def test_without_a_driver_nvml_reports_unavailable_and_never_raises() -> None:
    snapshot = gpu.NvmlBackend().read()

    assert not snapshot.available
    assert snapshot.reason == gpu.NO_DRIVER_REASON
    assert snapshot.gpus == ()
    assert gpu.read_gpus().reason == gpu.NO_DRIVER_REASON
    assert gpu.free_memory_by_gpu() == {}
    with pytest.raises(gpu.GpuUnavailableError, match="No NVIDIA driver"):
        gpu.NvmlBackend().read_raw()


@pytest.mark.skipif(NVML_PRESENT, reason="this machine has an NVIDIA driver")
def test_sampler_without_a_driver_delivers_the_reason() -> None:
    received: list[gpu.GpuSnapshot] = []
    got_one = threading.Event()
    sampler = gpu.GpuSampler(interval=0.01)
    sampler.subscribe(lambda snapshot: (received.append(snapshot), got_one.set()))
    with sampler:
        assert got_one.wait(WAIT_S)
    assert sampler.available is False
    assert sampler.reason == gpu.NO_DRIVER_REASON
    assert received[0].reason == gpu.NO_DRIVER_REASON


@pytest.mark.skipif(not NVML_PRESENT, reason="needs an NVIDIA driver (run on the GPU machine)")
def test_nvml_reads_every_gpu_on_a_gpu_machine(tmp_path: Path) -> None:
    snapshot = gpu.read_gpus()

    assert snapshot.available and snapshot.gpus
    assert all(g.name and g.memory_total and g.memory_free is not None for g in snapshot.gpus)
    assert set(gpu.free_memory_by_gpu(snapshot)) == {g.index for g in snapshot.gpus}
    recorded = gpu.record_samples(tmp_path / "samples.json", count=2, interval=0.1)
    assert len(gpu.RecordedGpuBackend(recorded).read().gpus) == len(snapshot.gpus)


def test_process_command_reads_proc_and_tolerates_exited_processes() -> None:
    script = "print('ready', flush=True); input()"
    child = subprocess.Popen(
        [sys.executable, "-c", script, "marker-arg"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "ready\n"  # running its own program, past exec
        assert gpu.process_command(child.pid) == f"{sys.executable} -c {script} marker-arg"
    finally:
        child.communicate("\n")
    assert gpu.process_command(child.pid) is None


def test_a_training_rank_is_recognised_with_its_run_rank_and_user(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "20260501-110000-longer-prefix"
    script = "print('ready', flush=True); input()"
    child = subprocess.Popen(
        [sys.executable, "-c", script, "-m", "glmcore.train", str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "RANK": "3"},
    )
    try:
        assert child.stdout.readline() == "ready\n"
        identity = gpu.process_identity(child.pid)
        assert (identity.run, identity.rank) == (str(run_dir), 3)
        assert identity.user == pwd.getpwuid(os.getuid()).pw_name
        assert gpu.process_identity(os.getpid()).run is None  # pytest trains nothing
    finally:
        child.communicate("\n")
    assert gpu.process_identity(child.pid) == gpu.ProcessIdentity(None, None, None, None)


def test_recorded_processes_keep_their_user_run_and_rank() -> None:
    snapshot = gpu.RecordedGpuBackend(FIXTURES / "gpus-2.json").read()
    first = snapshot.gpus[0].processes
    assert [(p.pid, p.user, p.is_training_rank, p.rank, p.kind) for p in first] == [
        (62001, "ada", True, 0, "C"),
        (2214, None, False, None, "C"),
        (1875, "root", False, None, "G"),
    ]
    assert first[0].run == "/home/ada/glmtui/runs/20260501-110000-longer-prefix"
