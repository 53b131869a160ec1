"""Several ranks, one run: how glmtui starts a data-parallel or DeepSpeed run and how each rank finds its place.

A run whose config names more than one GPU is started through torchrun (``python -m torch.distributed.run``)
as one process tree: the torchrun agent is the run's process (its pid goes into status.json, its process
group is what a forced stop signals) and it starts one rank per GPU. The rendezvous is on 127.0.0.1 at a port
that was free a moment before, so nothing is offered beyond this host. Rank 0 alone writes status.json and
events.jsonl; every rank writes its own log, ``train.rank-<r>.log``, while the agent's lines go to train.log.

torchrun starts each rank in its own session, so signalling the agent's process group does not reach the
ranks. Each rank therefore asks the kernel to kill it when the agent dies (``PR_SET_PDEATHSIG``): a crashed,
OOM-killed or force-stopped agent takes every rank with it and none is left holding a GPU.

Several ranks on the CPU (gloo) exist for tests and debugging: set ``GLMTUI_CPU_PROCESSES=N`` in the
launcher's environment for a run with no GPUs. A Slurm job across several nodes (glmcore.slurm.node) runs one
agent per node with ``nodes``/``node_rank``, meeting at the first node's address: the one rendezvous beyond
127.0.0.1. docs/multi-gpu.md has the details.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from glmcore.config import RunConfig
from glmcore.errors import GlmError

CPU_PROCESSES_VARIABLE = "GLMTUI_CPU_PROCESSES"
"""How many gloo ranks a run without GPUs starts (tests and debugging); 1 when unset."""
RENDEZVOUS_HOST = "127.0.0.1"
SLURM_RUN_VARIABLE = "GLMTUI_SLURM_JOB"
"""Set (to the job id) for a Slurm run's training process by glmcore.slurm.node: Slurm's SIGTERM (scancel, a
hard time limit) then ends it at once, so the run shows how Slurm ended the job rather than a graceful stop."""
TORCHRUN = (sys.executable, "-m", "torch.distributed.run")
TRAINER_MODULE = "glmcore.train"
_PR_SET_PDEATHSIG = 1


class DistributedError(GlmError):
    """A multi-process run cannot be set up as asked."""


def cpu_processes(environment: Mapping[str, str] = os.environ) -> int:
    """The number of CPU ranks asked for through GLMTUI_CPU_PROCESSES (1 when unset)."""
    text = environment.get(CPU_PROCESSES_VARIABLE, "").strip()
    if not text:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise DistributedError(
            f"{CPU_PROCESSES_VARIABLE}={text!r} is not a number of processes; set it to 1 or more, or unset it"
        )
    return int(text)


def world_size(config: RunConfig, environment: Mapping[str, str] = os.environ) -> int:
    """How many ranks train ``config``: one per GPU, or the CPU process count for a run without GPUs."""
    return len(config.gpus) if config.gpus else cpu_processes(environment)


def free_port(host: str = RENDEZVOUS_HOST) -> int:
    """A TCP port nobody listens on at ``host`` right now (the OS picks it), for the rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def rank_log_path(run_dir: Path, rank: int) -> Path:
    """Where rank ``rank`` of a multi-process run writes its stdout and stderr."""
    return Path(run_dir) / f"train.rank-{rank}.log"


@dataclass(frozen=True)
class LaunchPlan:
    """What to start for a run: the command line and the environment variables it adds."""

    command: list[str]
    environment: dict[str, str]
    world_size: int


def launch_plan(
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool,
    program: Sequence[str] | None = None,
    port: int | None = None,
    environment: Mapping[str, str] = os.environ,
    nodes: int = 1,
    node_rank: int = 0,
    address: str = RENDEZVOUS_HOST,
) -> LaunchPlan:
    """The command and environment that train the run in ``run_dir`` with ``config``.

    One rank: ``python -m glmcore.train`` with the run folder. Several: torchrun with one process per GPU (or
    per CPU process), rendezvous on 127.0.0.1 at ``port`` (a free one by default), each running
    ``python -m glmcore.train``. ``program`` replaces the whole command before the run folder (a stand-in
    trainer in tests, or a launcher of its own that starts the ranks). CUDA_VISIBLE_DEVICES always holds
    config.gpus (empty: the CPU).

    Across ``nodes`` hosts (a Slurm allocation, glmcore.slurm.node) each host runs this plan with its
    ``node_rank``; the rendezvous is then at ``address``, the first node's address on the cluster network.
    """
    ranks = world_size(config, environment)
    tail = [str(run_dir)] + (["--resume"] if resume else [])
    added = {
        "CUDA_VISIBLE_DEVICES": ",".join(str(gpu) for gpu in config.gpus),
        "PYTHONUNBUFFERED": "1",
    }
    if program is not None:
        return LaunchPlan([*program, *tail], added, ranks)
    if ranks == 1 and nodes == 1:
        return LaunchPlan([sys.executable, "-m", TRAINER_MODULE, *tail], added, 1)
    command = [
        *TORCHRUN,
        "--nnodes",
        str(nodes),
        *(["--node-rank", str(node_rank)] if nodes > 1 else []),
        "--nproc-per-node",
        str(ranks),
        "--master-addr",
        address,
        "--master-port",
        str(port or free_port(address)),
        # The agent restarts nothing: a failed rank fails the run, which the user resumes.
        "--max-restarts",
        "0",
        "-m",
        TRAINER_MODULE,
        *tail,
    ]
    # torchrun otherwise sets 1 thread per rank with a warning; a CPU run gets its share of the cores.
    threads = max(1, (os.cpu_count() or 1) // ranks)
    added["OMP_NUM_THREADS"] = environment.get("OMP_NUM_THREADS", str(threads))
    return LaunchPlan(command, added, ranks * nodes)


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a run, from the variables torchrun sets (a lone process is rank 0 of 1)."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, environment: Mapping[str, str] = os.environ) -> RankInfo:
        return cls(
            rank=int(environment.get("RANK", "0")),
            local_rank=int(environment.get("LOCAL_RANK", "0")),
            world_size=int(environment.get("WORLD_SIZE", "1")),
        )


def run_process_id(info: RankInfo) -> int:
    """The pid that stands for the whole run in status.json: the torchrun agent (this rank's parent) when
    there are several ranks, else this process."""
    return os.getppid() if info.is_distributed else os.getpid()


def leave_process_group() -> None:
    """Destroy this rank's process group before the interpreter exits.

    Left to exit, gloo's worker threads could be destroyed still joinable ("terminate called without an active
    exception"): a rank that had finished its last step then exited with an abort, and torchrun reported the
    whole run as failed.
    """
    import torch.distributed as distributed

    if distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent (the torchrun agent) dies.

    torchrun gives each rank its own session, out of reach of a signal to the agent's group; without this, a
    killed agent would leave ranks holding their GPUs. Linux only; elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise DistributedError(f"cannot tie this rank to its launcher (prctl errno {ctypes.get_errno()})")
    if os.getppid() != parent:  # the agent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def redirect_output(path: Path) -> None:
    """Send this process's stdout and stderr (Python's and the C libraries') to ``path``, appended."""
    sys.stdout.flush()
    sys.stderr.flush()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
