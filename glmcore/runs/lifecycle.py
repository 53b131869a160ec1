"""Starting, resuming and stopping a run: the claim, the trainer lock, the launch and the stop."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from glmcore.config import ConfigError, validate
from glmcore.distributed import launch_plan
from glmcore.errors import GlmError, RunError
from glmcore.process_identity import process_command, process_matches
from glmcore.runs.folder import (
    APPEND,
    CLAIM_LOCK,
    FINAL_STATES,
    KILL_AFTER_SPAWN_VARIABLE,
    KILL_WAIT_S,
    RUN_ENTRIES,
    STOP_POLL_S,
    TRAINER_EXIT_WAIT_S,
    TRAINER_LOCK,
    TRAINER_LOCK_VARIABLE,
    ResumePoint,
    Run,
    RunStatus,
    _held_trainer_locks,
    now_iso,
)
from glmcore.runs.tail import EventTail, _link_sentence, open_run_file
from glmcore.slurm.script import OPTIONS_FILE as SLURM_OPTIONS_FILE


@contextlib.contextmanager
def claim(run: Run) -> Iterator[None]:
    """Exclusive right to start ``run``: held from the state check until the new process is in status.json.

    Every launch and resume, from the CLI, the app or the engine, in any process on this host, takes it
    (``flock`` on claim.lock, released by the kernel if the holder dies), so of N simultaneous attempts one
    starts a trainer and the others then find the run running and are refused. The lock file descriptor is not
    inherited by the training process.
    """
    with open_run_file(run.path / CLAIM_LOCK, APPEND) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open_trainer_lock(run: Run) -> int:
    with open_run_file(run.path / TRAINER_LOCK, APPEND) as handle:
        return os.dup(handle.fileno())  # a dup is close-on-exec; only pass_fds hands it on


def _take_trainer_lock(run: Run) -> int:
    """trainer.lock, locked, for a launcher to hand to the trainer it spawns; RunError while a live trainer
    holds it. A trainer that recorded its end is given a few seconds to exit."""
    descriptor = _open_trainer_lock(run)
    # A run that recorded its end, or whose trainer is gone (crashed), may still have a process on its way out
    # holding the lock (the trainer exiting, a child it forked): give it a few seconds rather than refuse.
    exiting = run.status().state in FINAL_STATES
    deadline = time.monotonic() + (TRAINER_EXIT_WAIT_S if exiting else 0.0)
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return descriptor
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                raise RunError(
                    f"run {run.id} already has a live training process (one whose launcher stopped before "
                    "recording it, or one still exiting); it was not started again: wait for it to show as "
                    "running or to end"
                ) from None
            time.sleep(STOP_POLL_S)


def hold_trainer_lock(run: Run) -> None:
    """Make this process the run's one training process, for its whole life; RunError if another live one is.

    A trainer started by ``launch`` inherits trainer.lock already locked (its descriptor in
    GLMTUI_TRAINER_LOCK_FD); one started some other way (by hand, a Slurm job) takes it here. The kernel
    drops the lock when the holder dies, so it never goes stale.
    """
    inherited = os.environ.get(TRAINER_LOCK_VARIABLE, "")
    descriptor = int(inherited) if inherited.isdigit() and _is_trainer_lock(int(inherited), run) else None
    if descriptor is None:
        descriptor = _open_trainer_lock(run)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise RunError(
            f"run {run.id} is already being trained by another live process; this one leaves the run alone "
            f"(`glmtui stop {run.id}` stops the other)"
        ) from None
    _held_trainer_locks[run.path] = descriptor


def _is_trainer_lock(descriptor: int, run: Run) -> bool:
    try:
        held, lock = os.fstat(descriptor), os.stat(run.path / TRAINER_LOCK, follow_symlinks=False)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (lock.st_dev, lock.st_ino)


def refuse_links(run: Run) -> None:
    """RunError when a file or folder glmtui uses in the run folder is a symbolic link (see RUN_ENTRIES)."""
    for name in RUN_ENTRIES:
        if (run.path / name).is_symlink():
            raise RunError(_link_sentence(run.path / name))


def config_problem(run: Run) -> str | None:
    """Why the run's config.toml cannot start it (not TOML, a bad value: edited since it was checked), or None."""
    try:
        problems = validate(run.config)
    except GlmError as error:
        return str(error)
    return f"{run.config_path}: " + "; ".join(map(str, problems)) if problems else None


def _refuse_if_active(run: Run, status: RunStatus) -> None:
    if status.waits_in_slurm:
        raise RunError(
            f"run {run.id} already waits in Slurm as job {status.slurm_job}; "
            f"`glmtui stop {run.id}` takes it out of the queue"
        )
    if status.is_active:
        where = f" on {status.host}" if status.host != socket.gethostname() else ""
        raise RunError(f"run {run.id} is already {status.state}{where} (pid {status.pid}); stop it first")


def launch(
    run: Run,
    *,
    detach: bool,
    resume: bool = False,
    program: Sequence[str] | None = None,
    only_if: str | None = None,
) -> subprocess.Popen | int:
    """Start the training process for ``run``; returns its Popen (foreground) or its pid (detached).

    The child's stdout and stderr are appended to train.log (a file: a pipe nobody reads would block it), stdin
    is /dev/null, the working folder is the run folder, and CUDA_VISIBLE_DEVICES holds config.gpus. The child is
    always the leader of its own process group, so Ctrl-C in the launching terminal reaches only the launcher
    (which then asks for a graceful stop) and a forced stop can signal the whole group; detached, it also gets
    its own session so a dropped SSH connection (SIGHUP) does not reach it. With several GPUs the child is the
    torchrun agent that starts one rank per GPU (see glmcore.distributed); it is the run's process either way.
    ``program`` replaces ``python -m glmcore.train`` (what torchrun runs, with several ranks; a stand-in
    trainer in tests). Runs under the run's ``claim``; ``only_if`` (the queue's "queued") refuses unless the
    run is still in that state once the claim is held, so a run the queue started once is never started again.
    """
    with claim(run):
        refuse_links(run)
        status = run.status()
        _refuse_if_active(run, status)
        if only_if is not None and status.state != only_if:
            raise RunError(f"run {run.id} is {status.state}, no longer {only_if}; it was not started")
        return _start(run, detach=detach, resume=resume, program=program)


def _start(run: Run, *, detach: bool, resume: bool, program: Sequence[str] | None) -> subprocess.Popen | int:
    """Spawn the training process and record its pid (or submit its Slurm job); the caller holds the claim."""
    never_launched = run.stored_status().state in ("created", "queued")
    if program is None and (run.path / SLURM_OPTIONS_FILE).is_file():
        from glmcore.slurm.submission import submit_run

        return submit_run(run, resume=resume, never_launched=never_launched)
    try:
        if problem := config_problem(run):  # checked again: the config may have been edited since
            raise ConfigError(problem)
        plan = launch_plan(run.config, run.path, resume=resume, program=program)
    except GlmError as error:
        if never_launched:  # a queued run leaves the queue: it would fail the same way again
            run.write_status(state="created", reason=f"never launched: {error}")
        raise RunError(str(error)) from None
    argv = plan.command
    trainer_lock = _take_trainer_lock(run)
    environment = {**os.environ, **plan.environment, TRAINER_LOCK_VARIABLE: str(trainer_lock)}
    die_after_spawn = environment.pop(KILL_AFTER_SPAWN_VARIABLE, None)
    run.stop_request_path.unlink(missing_ok=True)
    try:
        with open_run_file(run.log_path, APPEND) as log:
            log.write(
                f"\n=== {now_iso()} glmtui: {'resuming' if resume else 'starting'} {' '.join(argv)}\n".encode()
            )
            log.flush()
            try:
                # The trainer inherits trainer.lock, locked: from here on it alone holds the run, whether or
                # not this launcher lives to record its pid.
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=run.path,
                    env=environment,
                    start_new_session=detach,
                    process_group=None if detach else 0,
                    pass_fds=(trainer_lock,),
                )
            except OSError as error:
                reason = f"the training process could not start: {error}"
                if never_launched:
                    run.write_status(state="created", reason=f"never launched: {reason}")
                else:
                    run.write_status(state="failed", reason=reason, ended=now_iso())
                raise RunError(reason) from None
    finally:
        os.close(trainer_lock)  # the trainer keeps its own copy, and with it the lock
    if die_after_spawn:
        os.kill(os.getpid(), signal.SIGKILL)
    run.mark_running(process.pid, only_if_unclaimed=True)
    return process.pid if detach else process


def resume(run: Run, *, detach: bool, program: Sequence[str] | None = None) -> subprocess.Popen | int:
    """Continue ``run`` from its latest whole checkpoint (or from step 0 if it saved none).

    A checkpoint whose files are cut short is passed over for the one before it (``Run.resume_point``); the
    ``resumed`` event names the step, the checkpoint and what was passed over and why, and readers drop the
    records of the abandoned attempt past that step (see ``latest_by_step``); the history in events.jsonl itself
    is never rewritten. Runs under the run's ``claim``, so a run is never resumed twice at once.
    """
    with claim(run):
        refuse_links(run)
        status = run.status()
        _refuse_if_active(run, status)
        if status.state == "finished":
            raise RunError(f"run {run.id} finished all its {status.total} steps; there is nothing to resume")
        record_resume(run)
        return _start(run, detach=detach, resume=True, program=program)


def start_queued_now(run: Run, *, detach: bool = True, program: Sequence[str] | None = None) -> int:
    """Start a queued run at once, without waiting for the queue's admission; returns its pid. The one way a
    queued run is started ahead of the queue (`glmtui queue start`, `glmtui resume`, the Runs screen's keys):
    refused unless it is still queued once its claim is held, so the queue's worker never starts it again."""
    started = launch(run, detach=detach, program=program, only_if="queued")
    return started if isinstance(started, int) else started.pid


@dataclass(frozen=True)
class Started:
    """What `start_or_resume` did: `how` is "ahead of the queue", "started" or "resumed"; `process` is the
    trainer's pid (detached, or a Slurm job id when `slurm`) or its Popen (followed in front); a resume says
    from where (`describe_resume`)."""

    how: str
    process: subprocess.Popen | int
    slurm: bool = False
    resumed: str = ""

    @property
    def pid(self) -> int:
        return self.process if isinstance(self.process, int) else self.process.pid


def start_or_resume(run: Run, *, detach: bool, program: Sequence[str] | None = None) -> Started:
    """Start a run that never ran (a queued one ahead of its queue), resume any other: what `glmtui resume` and
    the r key of the Runs screen and the Training view both do."""
    state = run.status().state
    if state == "queued":
        how, process = "ahead of the queue", start_queued_now(run, detach=detach, program=program)
    elif state == "created":
        how, process = "started", launch(run, detach=detach, program=program)
    else:
        how, process = "resumed", resume(run, detach=detach, program=program)
    slurm = isinstance(process, int) and run.stored_status().slurm_job == process
    return Started(how, process, slurm, describe_resume(run) if how == "resumed" else "")


def record_resume(run: Run) -> ResumePoint:
    """Check where a resume continues from and say so: the ``resumed`` event and ``resumed_from``."""
    point = run.resume_point()
    if point.checkpoint is not None and run.config.method == "ptuning-v2":
        from glmcore.prefix import check_resumes

        check_resumes(point.checkpoint.path, run.config.pre_seq_len, run.config.prefix_projection)
    step = point.checkpoint.step if point.checkpoint else 0
    run.append_event(
        "resumed",
        step=step,
        checkpoint=str(point.checkpoint.path) if point.checkpoint else None,
        skipped=[{"checkpoint": str(bad.path), "problem": problem} for bad, problem in point.skipped],
    )
    run.write_status(resumed_from=step, step=step)
    return point


def describe_resume(run: Run) -> str:
    """What the latest resume of ``run`` did, for people: the checkpoint it continues from and any passed over."""
    resumed = [event for event in EventTail(run.events_path).read_events() if event.get("kind") == "resumed"]
    if not resumed:
        return f"Run {run.id} has not been resumed."
    event = resumed[-1]
    passed_over = "".join(
        f" {Path(item['checkpoint']).name} cannot be loaded ({item['problem']}), so it was passed over."
        for item in event.get("skipped") or []
    )
    if event.get("checkpoint"):
        return f"Resuming run {run.id} from {Path(event['checkpoint']).name}.{passed_over}"
    return f"Run {run.id} saved no checkpoint; it starts again from step 0.{passed_over}"


def wait_for_end(run: Run, timeout: float) -> RunStatus:
    """Poll until the run is no longer running or stopping, or ``timeout`` seconds pass; returns its status."""
    deadline = time.monotonic() + timeout
    status = run.status()
    while status.is_active and time.monotonic() < deadline:
        time.sleep(STOP_POLL_S)
        status = run.status()
    return status


def stop(run: Run, timeout: float = 0.0, *, force: bool = False, grace: float = 10.0) -> RunStatus:
    """Ask ``run`` to stop: it saves a checkpoint at its next step boundary and ends ``stopped``.

    Waits up to ``timeout`` seconds for it to end. ``force`` does not wait for the step: it sends SIGTERM to the
    training process group (every rank and data worker), then SIGKILL after ``grace`` seconds, so nothing is
    left holding a GPU; progress since the last checkpoint is lost. A run whose process is already gone is
    recorded as crashed.
    """
    status = run.status()
    if status.slurm_job is not None and (status.state == "queued" or (force and status.is_active)):
        from glmcore.slurm.submission import cancel_run

        return cancel_run(run, status, grace)
    if status.state == "crashed" and run.stored_status().is_active:
        return run.write_status(state="crashed", reason=status.reason, ended=now_iso())
    if not status.is_active:
        raise RunError(f"run {run.id} is not running (it is {status.state}); there is nothing to stop")
    if force and status.host != socket.gethostname():
        raise RunError(
            f"run {run.id} runs on {status.host}; force-stop it there (`glmtui stop {run.id} --force`)"
        )
    if force and (stranger := _not_the_trainer(run, status)):
        # status.json names a live process that is not this run's trainer (a crafted or copied folder):
        # it is never signalled, and the run, whose own process is not there, is recorded as crashed.
        return run.finish(
            "crashed", f"{stranger}, so glmtui signalled nothing; `glmtui resume {run.id}` restarts it"
        )
    run.request_stop()
    if status.state != "stopping":
        run.write_status(state="stopping")
    if force:
        _terminate_group(status, grace)
        if run.stored_status().is_active:
            checkpoint = run.latest_checkpoint()
            run.write_status(
                state="stopped",
                ended=now_iso(),
                reason=f"stopped by force near step {run.stored_status().step}; "
                + (
                    f"resume continues from {checkpoint.path.name}"
                    if checkpoint
                    else "no checkpoint was saved"
                ),
            )
        return run.status()
    return wait_for_end(run, timeout)


def _not_the_trainer(run: Run, status: RunStatus) -> str | None:
    """Why the live process status.json names is not ``run``'s training process, or None when it is one.

    Its start time must be the recorded one, and its command line must name the run folder or it must run in
    it (every launch runs the trainer there; torchrun and a trainer started by hand name it).
    """
    pid = status.pid
    if pid is None or status.pid_start_time is None:
        return (
            f"status.json names pid {pid} without its start time, so it cannot be told from another process"
        )
    if not process_matches(pid, status.pid_start_time):
        return None  # gone: there is nothing to signal (the caller records the stop)
    found = process_command(pid)
    if found is None:
        return None
    command, folder = found
    places = {str(run.path), str(run.path.resolve())}
    named = any(os.path.normpath(os.path.join(folder or "/", part)) in places for part in command)
    if named or folder in places:
        return None
    shown = shlex.join(command)
    return f"pid {pid} runs `{shown[:80]}{'…' if len(shown) > 80 else ''}`, not run {run.id}'s training"


def _terminate_group(status: RunStatus, grace: float) -> None:
    """SIGTERM, then SIGKILL, the training process and its process group (when it leads one)."""
    pid = status.pid
    if pid is None or not process_matches(pid, status.pid_start_time):
        return
    leads_group = os.getpgid(pid) == pid

    def alive() -> bool:
        return process_matches(pid, status.pid_start_time)

    def send(signal_number: int) -> None:
        # A group id stays reserved while any member lives, so signalling the group is safe even after its
        # leader has exited; a lone pid is signalled only while it is still the same process.
        with contextlib.suppress(ProcessLookupError):
            if leads_group:
                os.killpg(pid, signal_number)
            elif alive():
                os.kill(pid, signal_number)

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(STOP_POLL_S)
    send(signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    while alive() and time.monotonic() < deadline:
        time.sleep(STOP_POLL_S / 4)
