"""Sending a run to Slurm and cancelling its job: the run folder's side of sbatch and scancel."""

from __future__ import annotations

import time

from glmcore.errors import GlmError, RunError
from glmcore.runs.folder import ACTIVE_STATES, STOP_POLL_S, Run, RunStatus, now_iso


def submit_run(run: Run, *, resume: bool, never_launched: bool) -> int:
    """Write the run's job script and ``sbatch`` it; the run is ``queued`` (in Slurm) with the job id."""
    from glmcore.slurm.jobs import submit
    from glmcore.slurm.script import TIME_LIMIT_FILE, read_options, write_job_script

    try:
        script = write_job_script(run.path, run.id, read_options(run.path), resume=resume)
        run.stop_request_path.unlink(missing_ok=True)
        (run.path / TIME_LIMIT_FILE).unlink(missing_ok=True)
        job_id = submit(script)
    except GlmError as error:
        if never_launched:
            run.write_status(state="created", reason=f"never launched: {error}")
        raise RunError(str(error)) from None
    with open(run.log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {now_iso()} glmtui: submitted {script.name} as Slurm job {job_id}\n")
    run.mark_submitted(job_id)
    return job_id


def cancel_run(run: Run, status: RunStatus, grace: float) -> RunStatus:
    """``scancel`` the run's job (a forced stop, or a job still waiting) and record the stop once it has ended.

    Slurm sends SIGTERM to every process of the job, then SIGKILL after its KillWait; this waits for the job
    to leave its running states (``grace`` plus a minute) before writing the run's final state.
    """
    from glmcore.slurm.jobs import cancel, job_info

    run.request_stop()
    cancel(status.slurm_job)
    deadline = time.monotonic() + grace + 60.0
    while (info := job_info(status.slurm_job)) is not None and info.running and time.monotonic() < deadline:
        time.sleep(STOP_POLL_S)
    stored = run.stored_status()
    if stored.state not in ("queued", *ACTIVE_STATES):
        return run.status()
    if stored.started is None:
        run.stop_request_path.unlink(missing_ok=True)
        return run.write_status(
            state="created",
            reason=f"never launched: its Slurm job {status.slurm_job} was cancelled before it started; "
            f"start it with `glmtui resume {run.id}`",
        )
    checkpoint = run.latest_checkpoint()
    return run.finish(
        "stopped",
        f"stopped by force (Slurm job {status.slurm_job} cancelled) near step {stored.step}; "
        + (f"resume continues from {checkpoint.path.name}" if checkpoint else "no checkpoint was saved"),
    )
