"""Starting a run or a sweep: the one way `glmtui train`, `glmtui sweep` and the config editor do it.

A start is checked whole before anything is created: the config as it will run (on Slurm the GPUs are the job's,
so this machine's are not checked), every combination of a sweep. Then the run folder (or the sweep's folders)
is created, where a run is remembered as the workspace's last config (the editor reopens it) and a `family`
setting for its model folder (so evaluating or chatting with it later needs none), and the runs are launched,
queued or submitted to Slurm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from glmcore import preflight
from glmcore.config import Problem, RunConfig
from glmcore.model_folders import choose_family
from glmcore.queue import Queue
from glmcore.runs import Run, RunStore
from glmcore.slurm.script import SlurmOptions, for_slurm, write_options
from glmcore.sweep import Sweep, SweepPoint, create, expand, submit_to_slurm
from glmcore.workspace import Workspace


def as_checked(config: RunConfig, slurm: SlurmOptions | None) -> RunConfig:
    """The config as a start checks it: on Slurm without this machine's GPUs (the job's are Slurm's to check)."""
    return config if slurm is None else dataclasses.replace(config, gpus=[])


def run_problems(config: RunConfig, workspace: Workspace, slurm: SlurmOptions | None = None) -> list[Problem]:
    """Everything that keeps `config` from starting here (or on Slurm with `slurm`); nothing is created."""
    return preflight.check(as_checked(config, slurm), runs_dir=workspace.runs_dir)


def create_run(workspace: Workspace, config: RunConfig, slurm: SlurmOptions | None = None) -> Run:
    """The run folder of a checked `config` (on Slurm: set for the job, its options beside it), remembered as the
    workspace's last config, with the config's `family` setting remembered for its model folder."""
    if slurm is not None:
        config = for_slurm(config, slurm)
    run = RunStore(workspace.ensure().runs_dir).create(config)
    if slurm is not None:
        write_options(run.path, slurm)
    workspace.remember_config(run.config_path)
    if config.family is not None:
        choose_family(workspace, config.model_path, config.family)
    return run


def sweep_points(
    config: RunConfig, axes: dict[str, list[object]], slurm: SlurmOptions | None
) -> list[SweepPoint]:
    """One point per combination of `axes`' values over `config`, as a start checks them (`sweep.problems`)."""
    return expand(as_checked(config, slurm), axes)


@dataclass(frozen=True)
class StartedSweep:
    sweep: Sweep
    points: list[SweepPoint]
    jobs: list[int]
    """The Slurm job of each run, in order; empty when the runs were queued here."""
    worker: int | None
    """The queue worker started for them (None: one was going already, or they went to Slurm)."""


def start_sweep(
    workspace: Workspace, config: RunConfig, axes: dict[str, list[object]], slurm: SlurmOptions | None = None
) -> StartedSweep:
    """Create a sweep's runs (checked first: `sweep_points` and `sweep.problems`) and queue them, or on Slurm
    submit each as a job (Slurm is then their queue)."""
    if slurm is not None:
        config = for_slurm(config, slurm)
    points = expand(config, axes)
    sweep = create(RunStore(workspace.ensure().runs_dir), config, points)
    if slurm is not None:
        return StartedSweep(sweep, points, submit_to_slurm(sweep, slurm), None)
    _, worker = Queue(workspace).queue_runs(sweep.runs)
    return StartedSweep(sweep, points, [], worker)
