"""The queue as text: why a queued run waits and what a queue action did, as `glmtui queue`, `glmtui train
--queue`, `glmtui sweep`, the Runs screen and the config editor say it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glmcore.queue import Decision

ADMITTED = "starts at the worker's next look"


def queue_wait(decision: Decision) -> str:
    """Why a queued run waits: the queue's reason, that it starts at the next pass, or that it cannot start."""
    if decision.unstartable:
        return f"cannot start and leaves the queue ({decision.reason})"
    return ADMITTED if decision.admitted else decision.reason or ""


def moved_sentence(run_id: str, position: int) -> str:
    return f"Run {run_id} is now number {position} in the queue."


def started_now_sentence(run_id: str, pid: int) -> str:
    return f"Started run {run_id} now, ahead of the queue (pid {pid})."


def unqueued_sentence(run_id: str) -> str:
    return (
        f"Took run {run_id} off the queue; it stays as a created run: start it with `glmtui resume {run_id}` or "
        "r on the Runs screen."
    )


def worker_started_sentence(pid: int, log_path: Path) -> str:
    return f"Started a queue worker (pid {pid}); it logs to {log_path} and exits when the queue is empty."


def sweep_queued_sentence(sweep_id: str, count: int) -> str:
    return f"Queued sweep {sweep_id}: {count} runs."


def sweep_submitted_sentence(sweep_id: str, jobs: list[int | str]) -> str:
    return f"Submitted sweep {sweep_id} to Slurm (Slurm is their queue): jobs {', '.join(map(str, jobs))}."
