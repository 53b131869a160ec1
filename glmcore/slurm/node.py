"""One node of a run's Slurm job: `python -m glmcore.slurm.node RUN --address A --port P [--resume]`.

``glmcore.slurm.job`` starts this once per node through ``srun --ntasks-per-node=1``. It starts the node's
training process as ``glmcore.distributed.launch_plan`` says (the trainer itself for one rank on one node,
otherwise a torchrun agent with this node's rank and the rendezvous at the first node's address), keeps
Slurm's CUDA_VISIBLE_DEVICES (the GPUs Slurm gave this node), and, while it runs, appends this node's GPU
readings to the run folder (``glmcore.slurm.gpus``).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

from glmcore.config import RunConfig
from glmcore.distributed import SLURM_RUN_VARIABLE, launch_plan
from glmcore.slurm.gpus import RECORDED_SAMPLES_VARIABLE, SAMPLE_INTERVAL_S, NodeSampler, raw_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glmcore.slurm.node")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--address", required=True, help="the first node's address, for the rendezvous")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    config = RunConfig.load(run_dir / "config.toml")
    plan = launch_plan(
        config,
        run_dir,
        resume=args.resume,
        port=args.port,
        nodes=int(os.environ.get("SLURM_NNODES", "1")),
        node_rank=int(os.environ.get("SLURM_NODEID", "0")),
        address=args.address,
    )
    environment = {**os.environ, **plan.environment, SLURM_RUN_VARIABLE: os.environ.get("SLURM_JOB_ID", "")}
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        environment["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    read = raw_source() if (config.gpus or os.environ.get(RECORDED_SAMPLES_VARIABLE)) else None
    sampler = NodeSampler(run_dir, node, read, SAMPLE_INTERVAL_S).start() if read else None
    try:
        process = subprocess.Popen(plan.command, env=environment, stdin=subprocess.DEVNULL, cwd=run_dir)
        return process.wait()
    finally:
        if sampler is not None:
            sampler.stop()


if __name__ == "__main__":
    sys.exit(main())
