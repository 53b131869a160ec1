"""`glmtui train CONFIG.toml [--detach] [--slurm …]`: validate a config, create its run, start it (or submit it
to Slurm) and, in front, follow it.

Nothing is created until the config has no problems. Either way the training is a separate process writing the
run folder; in front, this command only watches the folder (a progress bar from events.jsonl and status.json),
so closing the terminal leaves the run going and `glmtui logs RUN -f` picks it up again.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.text import Text

from glmcore import preflight
from glmcore.config import RunConfig, cautions, defaults_for, find_config_file
from glmcore.errors import GlmError
from glmcore.runs import EventTail, Run, launch, start_or_resume, stop
from glmcore.slurm.script import (
    SlurmOptions,
    SlurmOptionsError,
    check_submittable,
    for_slurm,
    requested_options,
)
from glmcore.start import create_run, run_problems
from glmcore.workspace import Workspace
from glmtui.text.estimate import CPU_RUN, estimate_line, fit_sentence
from glmtui.text.queue import worker_started_sentence
from glmtui.text.runs import (
    progress_summary,
    run_end_sentence,
    slurm_wait,
    start_or_resume_sentence,
    started_sentence,
)

FOLLOW_INTERVAL_S = 0.5
LOG_LINES_ON_FAILURE = 20
FORCE_GRACE_S = 10.0


def _print_vram_estimate(console: Console, config: RunConfig, *, here: bool = True) -> None:
    """The VRAM estimate and, on this machine (``here``; not a Slurm job's), whether it fits each chosen GPU's
    free memory now, as the config editor says it (`glmcore.estimate.gpu_fits`); a warning where it won't."""
    from glmcore.estimate import ModelShape, estimate_vram, gpu_fits
    from glmcore.gpu import free_memory_by_gpu

    estimate = estimate_vram(ModelShape.from_model_dir(config.model_path, config.family), config)
    console.print(estimate_line(estimate.total))
    if not here:
        return
    if not config.gpus:
        console.print(CPU_RUN)
    for fit in gpu_fits(estimate, config.gpus, free_memory_by_gpu() if config.gpus else {}):
        if fit.fits is False:
            console.print(
                f"[yellow]warning:[/] {escape(fit_sentence(fit))} (see `glmtui runs` and the log if it fails)"
            )
        else:
            console.print(escape(fit_sentence(fit)))


def follow(run: Run, process: subprocess.Popen | None, console: Console) -> int:
    """Show the run's progress until its process ends; Ctrl-C asks it to stop, a second Ctrl-C forces it.

    Without a process (a Slurm run) it follows the run's status until the run leaves Slurm's queue and ends.

    Returns 0 when the run finished or was stopped, 1 otherwise (with the reason and the log's last lines).
    """
    tail = EventTail(run.events_path)
    last_log: dict | None = None
    interrupts = 0
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=console) as progress:
        task: TaskID = progress.add_task(run.id, total=run.config.max_steps, detail="starting…")
        while True:
            try:
                for event in tail.read_events():
                    if event.get("kind") == "log":
                        last_log = event
                status = run.stored_status() if process is not None else run.status()
                progress.update(
                    task,
                    completed=status.step,
                    total=status.total or None,
                    detail=slurm_wait(status) or progress_summary(last_log),
                )
                ended = not (status.is_active or status.waits_in_slurm)
                if process.poll() is not None if process is not None else ended:
                    break
                time.sleep(FOLLOW_INTERVAL_S)
            except KeyboardInterrupt:
                interrupts += 1
                try:
                    if interrupts == 1:
                        progress.console.print(
                            "Stopping after the current step and saving a checkpoint; Ctrl-C again stops at once."
                        )
                        stop(run)
                    else:
                        progress.console.print(
                            "Stopping at once (SIGTERM, then SIGKILL); unsaved steps are lost."
                        )
                        stop(run, force=True, grace=FORCE_GRACE_S)
                except GlmError:
                    pass  # it ended on its own meanwhile
    if process is not None:
        process.wait()
    return report_end(run, console)


def report_end(run: Run, console: Console) -> int:
    """Say how the run ended; for a failure or crash add its reason and the log's last lines."""
    status = run.status()
    checkpoint = run.latest_checkpoint()
    saved = f"; latest checkpoint: {checkpoint.path}" if checkpoint else ""
    console.print(Text(run_end_sentence(run.id, status, saved)))
    if status.state in ("finished", "stopped"):
        if status.state == "stopped":
            console.print(f"Continue it with `glmtui resume {run.id}`.")
        return 0
    if status.reason:
        console.print(f"[red]{escape(status.reason)}[/]")
    if run.log_path.exists():
        lines = run.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[
            -LOG_LINES_ON_FAILURE:
        ]
        console.print(f"[dim]last lines of {escape(str(run.log_path))}:[/]")
        console.print("\n".join(lines), markup=False, highlight=False)
    return 1


def start(run: Run, *, detach: bool, resume: bool, console: Console) -> int:
    """Launch (or resume) ``run`` detached or followed in front; shared by `train` and `resume`."""
    said = False
    if resume:  # said once the start is under way, so a refused one prints only the refusal
        outcome = start_or_resume(run, detach=detach)
        started = outcome.process
        in_front = outcome.how == "started" and not detach and not outcome.slurm  # following it says enough
        if not in_front:
            console.print(Text(start_or_resume_sentence(run.id, outcome)))
        said = outcome.how != "resumed" and not in_front
    else:
        started = launch(run, detach=detach)
    if isinstance(started, int) and run.stored_status().slurm_job == started:
        if not said:
            console.print(Text(started_sentence(run.id, started, slurm=True)))
        if detach:
            console.print(f"Follow it with `glmtui logs {run.id} -f`, stop it with `glmtui stop {run.id}`.")
            return 0
        return follow(run, None, console)
    if detach:
        if not said:
            console.print(Text(started_sentence(run.id, started, slurm=False)))
        console.print(f"Follow it with `glmtui logs {run.id} -f`, stop it with `glmtui stop {run.id}`.")
        return 0
    assert isinstance(started, subprocess.Popen)
    return follow(run, started, console)


def enqueue(run: Run, workspace: Workspace, console: Console) -> int:
    """Queue the run instead of starting it, and make sure a worker will start it (`Queue.queue_runs`, as a
    sweep from the app or `glmtui sweep` is queued)."""
    from glmcore.queue import Queue

    queue = Queue(workspace)
    [position], pid = queue.queue_runs([run])
    console.print(f"Queued it at position {position}; it starts when its GPUs have room (`glmtui queue`).")
    if pid is not None:
        console.print(Text(worker_started_sentence(pid, queue.worker_log_path)))
    return 0


def load_config(
    args: argparse.Namespace, workspace: Workspace, console: Console, slurm: SlurmOptions | None
) -> RunConfig:
    """CONFIG.toml, found here or in the workspace, the settings it leaves out set for the machine it will train
    on (this one, or a Slurm job's nodes); says where it was found and which settings the machine chose (`train`
    and `sweep`). Sets ``args.config`` to its path."""
    path = find_config_file(args.config, workspace.root)
    if path != args.config:
        console.print(f"Using {escape(str(path))} from the workspace.")
    args.config = path
    defaults = preflight.machine_defaults() if slurm is None else defaults_for(slurm.gpus_per_node)
    config, filled = RunConfig.load_over(path, defaults)
    if filled:
        chosen = ", ".join(f"{name} = {defaults.values[name]}" for name in filled)
        console.print(f"Not in {escape(path.name)}, so set for this machine ({defaults.machine}): {chosen}.")
    return config


def print_cautions(console: Console, configs: list[RunConfig]) -> None:
    """Each setting that will train but likely not as wanted, once (a warning, not a refusal)."""
    for caution in dict.fromkeys(caution for config in configs for caution in cautions(config)):
        console.print(f"[yellow]warning:[/] {escape(str(caution))}")


def train(args: argparse.Namespace) -> int:
    console = Console()
    errors = Console(stderr=True)
    workspace = Workspace.from_env()
    try:
        slurm = slurm_options(args, workspace)
        config = load_config(args, workspace, console, slurm)
    except GlmError as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        return 2
    print_cautions(console, [config if slurm is None else for_slurm(config, slurm)])
    if slurm is not None and args.queue:
        errors.print("[red]error:[/] --queue and --slurm do not go together: Slurm queues the job itself")
        return 2
    # On Slurm, the GPUs are the job's (gpus_per_node of each node), not this machine's.
    problems = run_problems(config, workspace, slurm)
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        errors.print(f"[red]{escape(str(args.config))} has {count}; nothing was started:[/]")
        for problem in problems:
            errors.print(f"  • {escape(str(problem))}")
        return 2
    try:
        _print_vram_estimate(
            console, config if slurm is None else for_slurm(config, slurm), here=slurm is None
        )
        run = create_run(workspace, config, slurm)
        console.print(f"Created run {run.id} in {escape(str(run.path))}.")
        if args.queue:
            return enqueue(run, workspace, console)
        return start(run, detach=args.detach, resume=False, console=console)
    except GlmError as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        return 1


def slurm_options(args: argparse.Namespace, workspace: Workspace) -> SlurmOptions | None:
    """The Slurm settings the flags ask for over the workspace's slurm.toml; None without --slurm.

    Checked before anything is created: the values themselves, that Slurm's commands are here, and that Slurm
    would accept such a job (``sbatch --test-only``).
    """
    flags = {name: getattr(args, name, None) for name in SLURM_FLAGS}
    if not args.slurm:
        given = [f"--{name.replace('_', '-')}" for name, value in flags.items() if value not in (None, False)]
        if given:
            raise SlurmOptionsError(
                f"{', '.join(given)} sets where a Slurm job runs; add --slurm to use Slurm"
            )
        return None
    options = requested_options(workspace.root, **flags)
    check_submittable(options, workspace.runs_dir)
    return options


SLURM_FLAGS = ("partition", "nodes", "gpus_per_node", "time", "account", "requeue")


def add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    """--slurm and the job's settings (each over the workspace's slurm.toml), shared with `glmtui sweep`."""
    group = parser.add_argument_group("Slurm", "send the run to a Slurm cluster instead of training here")
    group.add_argument("--slurm", action="store_true", help="submit the run as a Slurm job (sbatch)")
    group.add_argument("--partition", metavar="P", help="the partition to run in (default: the cluster's)")
    group.add_argument("--nodes", type=int, metavar="N", help="nodes (default 1); torchrun spans them")
    group.add_argument("--gpus-per-node", type=int, metavar="G", help="GPUs on each node (default 0: CPU)")
    group.add_argument("--time", metavar="T", help="the time limit, e.g. 4:00:00 (default: the partition's)")
    group.add_argument("--account", metavar="A", help="the account to charge")
    group.add_argument(
        "--requeue",
        action="store_true",
        default=None,
        help="at the time limit, checkpoint and requeue the job to go on from there",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="start a training run from a config.toml",
        description="Validate CONFIG.toml, create a run for it under the workspace's runs/ and start training. "
        "In front, a progress bar follows the run (Ctrl-C stops it gracefully, twice stops it at once); "
        "with --detach it runs in the background and outlives the terminal and the SSH session.",
    )
    parser.add_argument("config", type=Path, metavar="CONFIG.toml", help="the run's settings")
    parser.add_argument(
        "--detach", action="store_true", help="start in the background and return at once (print the run id)"
    )
    parser.add_argument(
        "--queue",
        action="store_true",
        help="queue the run instead of starting it: it starts when its GPUs have room (see `glmtui queue`)",
    )
    add_slurm_arguments(parser)
    parser.set_defaults(func=train)
