"""Runs on disk: one folder per run is the contract between a training process and everyone watching it.

A run folder (``<workspace>/runs/<yyyymmdd-hhmmss>-<name>``) holds config.toml, status.json, events.jsonl,
train.log, checkpoints/ and, while a stop is asked for, stop-request; docs/runs.md describes each file for other
tools. Nothing here depends on the process that started a run: the TUI, the CLI, a later SSH session or another
user read the same files, and a run keeps going when its launcher is gone.

Lessons taken from LLaMA-Factory's LlamaBoard, which runs training the same way: the child's output goes to a
file, never to a pipe nobody reads (a full pipe blocks training); a stop is a file every rank can see, decided
together at a step boundary; and a run is found again by its name, not by re-selecting an output folder.

The package keeps every name the single module had: ``folder`` (Run, RunStatus, checkpoints), ``store``
(RunStore), ``tail`` (following files), ``lifecycle`` (launch, resume, stop), ``failure`` (why a trainer
failed); process identity is ``glmcore.process_identity`` (serve uses it too), Slurm submission and
cancelling ``glmcore.slurm.submission``.
"""

from glmcore.errors import RunError
from glmcore.process_identity import process_command, process_matches, process_start_time
from glmcore.runs.failure import (
    DISK_FULL_FREE_BYTES,
    DISK_FULL_MARKERS,
    DiskFull,
    describe_failure,
    is_disk_full,
)
from glmcore.runs.folder import (
    ACTIVE_STATES,
    APPEND,
    BEST_CHECKPOINT_FILE,
    CHECKPOINT_COMPLETE_MARKER,
    CHECKPOINT_PATTERN,
    CLAIM_LOCK,
    FINAL_STATES,
    KILL_AFTER_SPAWN_VARIABLE,
    KILL_WAIT_S,
    LOG_TAIL_BYTES,
    PARTIAL_CHECKPOINTS,
    RUN_ENTRIES,
    STATES,
    STOP_POLL_S,
    TENSORBOARD_FOLDER,
    TRAINER_EXIT_WAIT_S,
    TRAINER_LOCK,
    TRAINER_LOCK_VARIABLE,
    Checkpoint,
    ResumePoint,
    Run,
    RunStatus,
    checkpoint_problem,
    now_iso,
    release_trainer_lock,
)
from glmcore.runs.lifecycle import (
    Started,
    claim,
    config_problem,
    describe_resume,
    hold_trainer_lock,
    launch,
    record_resume,
    refuse_links,
    resume,
    start_or_resume,
    start_queued_now,
    stop,
    wait_for_end,
)
from glmcore.runs.store import (
    RunStore,
)
from glmcore.runs.tail import (
    LINE_BLOCK_BYTES,
    EventTail,
    FileTail,
    last_lines_offset,
    latest_by_step,
    open_run_file,
)

__all__ = [
    "ACTIVE_STATES",
    "APPEND",
    "BEST_CHECKPOINT_FILE",
    "CHECKPOINT_COMPLETE_MARKER",
    "CHECKPOINT_PATTERN",
    "CLAIM_LOCK",
    "Checkpoint",
    "DISK_FULL_FREE_BYTES",
    "DISK_FULL_MARKERS",
    "DiskFull",
    "EventTail",
    "FINAL_STATES",
    "FileTail",
    "KILL_AFTER_SPAWN_VARIABLE",
    "KILL_WAIT_S",
    "LINE_BLOCK_BYTES",
    "LOG_TAIL_BYTES",
    "PARTIAL_CHECKPOINTS",
    "RUN_ENTRIES",
    "ResumePoint",
    "Run",
    "RunError",
    "RunStatus",
    "RunStore",
    "STATES",
    "STOP_POLL_S",
    "TENSORBOARD_FOLDER",
    "TRAINER_EXIT_WAIT_S",
    "TRAINER_LOCK",
    "TRAINER_LOCK_VARIABLE",
    "checkpoint_problem",
    "claim",
    "config_problem",
    "describe_failure",
    "describe_resume",
    "Started",
    "start_or_resume",
    "start_queued_now",
    "hold_trainer_lock",
    "is_disk_full",
    "last_lines_offset",
    "latest_by_step",
    "launch",
    "now_iso",
    "open_run_file",
    "process_command",
    "process_matches",
    "process_start_time",
    "record_resume",
    "refuse_links",
    "release_trainer_lock",
    "resume",
    "stop",
    "wait_for_end",
]
