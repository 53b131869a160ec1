"""Inside a run's Slurm allocation: `python -m glmcore.slurm.job RUN [--resume]`, what slurm-job.sh runs.

It runs on the job's first node. It records the job id and nodes in status.json, picks the rendezvous (the
first node's address as Slurm knows it, NodeAddr, and a port free there), and starts one
``glmcore.slurm.node`` per node through ``srun``; each starts that node's ranks. The training process writes
the run folder exactly as on one machine.

Time limits: the job script asks Slurm for SIGUSR1 ``signal_lead_s`` before the limit, to this process alone
(``--signal=B:USR1@…``). It becomes the ordinary stop request (``stop-request``, which every rank reads at its
next step end) plus ``time-limit``, so the run saves a checkpoint and ends ``stopped``; with ``requeue`` the
job then puts itself back in Slurm's queue, and when it runs again (SLURM_RESTART_COUNT > 0) it resumes from
that checkpoint under the same job id. A run that has trained before always resumes, so submitting
slurm-job.sh again by hand never starts it over its checkpoints.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from glmcore.distributed import RENDEZVOUS_HOST, free_port
from glmcore.runs import Run, now_iso, record_resume
from glmcore.slurm.jobs import expand_nodelist, node_address, requeue
from glmcore.slurm.script import TIME_LIMIT_FILE, SlurmOptions, read_options, step_flags


def rendezvous(nodes: list[str]) -> tuple[str, int]:
    """Where the nodes' torchrun agents meet: this (the first) node's address and a port free on it.

    One node meets on 127.0.0.1; several on the first node's NodeAddr, the one port glmtui opens beyond this
    host, on the cluster's own network (docs/multi-gpu.md).
    """
    address = RENDEZVOUS_HOST if len(nodes) == 1 else node_address(nodes[0])
    return address, free_port(address)


def on_time_limit_warning(run: Run) -> None:
    """Slurm's warning before the time limit: stop at the next step with a checkpoint, marked as time-limited."""

    def handle(signal_number: int, frame) -> None:
        (run.path / TIME_LIMIT_FILE).write_text(now_iso() + "\n", encoding="utf-8")
        run.request_stop()
        print("glmtui: Slurm's time limit is near; stopping at the next step with a checkpoint", flush=True)

    signal.signal(signal.SIGUSR1, handle)


def after_training(run: Run, options: SlurmOptions, job_id: int) -> None:
    """A run stopped for the time limit says so, and with ``requeue`` its job goes back in the queue."""
    if not (run.path / TIME_LIMIT_FILE).exists() or run.stored_status().state != "stopped":
        return
    checkpoint = run.latest_checkpoint()
    where = f"continues from {checkpoint.path.name}" if checkpoint else "starts again from step 0"
    if options.requeue:
        run.write_status(
            state="queued", queued=now_iso(), reason=f"requeued at its time limit; it {where} when it runs"
        )
        (run.path / TIME_LIMIT_FILE).unlink(missing_ok=True)
        print(f"glmtui: requeueing Slurm job {job_id}; it {where}", flush=True)
        requeue(job_id)
        return
    run.write_status(
        reason=f"stopped before Slurm job {job_id}'s time limit; `glmtui resume {run.id}` {where}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glmcore.slurm.job", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    args = parser.parse_args(argv)
    run = Run(args.run_dir.resolve())
    options = read_options(run.path) or SlurmOptions()
    job_id = int(os.environ["SLURM_JOB_ID"])
    resume = args.resume and int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0  # glmtui recorded it
    if not resume and run.stored_status().started is not None:
        # Requeued, or the script submitted again by hand: continue from the latest checkpoint, never over it.
        record_resume(run)
        resume = True
    nodes = expand_nodelist(os.environ["SLURM_JOB_NODELIST"])
    run.write_status(slurm_job=job_id, nodes=nodes)
    address, port = rendezvous(nodes)
    on_time_limit_warning(run)
    command = [
        "srun",
        *step_flags(options),
        "--kill-on-bad-exit=1",
        sys.executable,
        "-m",
        "glmcore.slurm.node",
        str(run.path),
        "--address",
        address,
        "--port",
        str(port),
        *(["--resume"] if resume else []),
    ]
    print(
        f"=== {now_iso()} glmtui: Slurm job {job_id} on {', '.join(nodes)}: {' '.join(command)}", flush=True
    )
    code = subprocess.Popen(command, stdin=subprocess.DEVNULL).wait()
    after_training(run, options, job_id)
    return code


if __name__ == "__main__":
    sys.exit(main())
