"""A run's Slurm settings (``slurm.json`` in its folder), the workspace's defaults, and the job script.

The job script is written into the run folder (``slurm-job.sh``) before each submission, so the user can read
exactly what was asked of Slurm and submit it again by hand (``sbatch runs/<id>/slurm-job.sh``). It holds only
``#SBATCH`` lines and one command, ``python -m glmcore.slurm.job RUN``, which does the rest inside the
allocation (see ``glmcore.slurm.job``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from glmcore.config import RunConfig
from glmcore.errors import GlmError
from glmcore.workspace import atomic_write_text

OPTIONS_FILE = "slurm.json"
SCRIPT_FILE = "slurm-job.sh"
DEFAULTS_FILE = "slurm.toml"
"""``<workspace>/slurm.toml``: the options every Slurm run of the workspace starts from."""
TIME_LIMIT_FILE = "time-limit"
"""Written by the job when Slurm's warning signal arrives: the stop that follows is for the time limit."""
DEFAULT_SIGNAL_LEAD_S = 300
"""How long before its time limit a job is told to checkpoint and stop (Slurm may signal up to 60 s early)."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.,:+-]+")
TIME_PATTERN = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}|\d+-\d+")
"""Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
SBATCH_MANGLED = re.compile(r"""[\s"'\\#%\x00-\x1f\x7f]""")
"""Characters sbatch reads specially in an #SBATCH line (or that end the line): see ``check_folder``."""
MANGLED_NAMES = {'"': "a double quote", "'": "a quote", "\\": "a backslash", "#": "a '#'", "%": "a '%'"}


class SlurmOptionsError(GlmError):
    """A Slurm setting (a flag, slurm.toml, the editor) that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class SlurmOptions:
    """Where and how long a run's Slurm job asks to run; every field but ``nodes`` may be left to the cluster."""

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    """0: a job without GPUs (CPU ranks); otherwise one rank per GPU on every node."""
    cpus_per_node: int | None = None
    """CPU cores for each node's ranks (``--cpus-per-task``); None leaves the cluster's default, often 1."""
    time: str | None = None
    """Slurm's time limit format (``90``, ``4:00:00``, ``2-00:00:00``); None leaves the partition's default."""
    account: str | None = None
    requeue: bool = False
    """At its time limit the run checkpoints, then requeues its job to continue from that checkpoint."""
    signal_lead_s: int = DEFAULT_SIGNAL_LEAD_S

    def problems(self) -> list[str]:
        """Every setting that cannot be used, one sentence each (nothing is submitted while there are any)."""
        found = []
        for name in ("partition", "account"):
            value = getattr(self, name)
            if value is not None and not NAME_PATTERN.fullmatch(value):
                found.append(f"slurm {name} {value!r} is not a Slurm name (letters, digits, _ . , : + -)")
        if self.nodes < 1:
            found.append(f"slurm nodes is {self.nodes}; ask for 1 node or more")
        if self.cpus_per_node is not None and self.cpus_per_node < 1:
            found.append(f"slurm cpus_per_node is {self.cpus_per_node}; give 1 or more, or leave it out")
        if self.gpus_per_node < 0:
            found.append(f"slurm gpus_per_node is {self.gpus_per_node}; give 0 (CPU) or more")
        if self.time is not None and not TIME_PATTERN.fullmatch(self.time):
            found.append(
                f"slurm time {self.time!r} is not a Slurm time limit; write minutes (90), H:MM:SS (4:00:00) "
                "or D-HH:MM:SS (2-00:00:00)"
            )
        if self.signal_lead_s < 0:
            found.append(
                f"slurm signal_lead_s is {self.signal_lead_s}; give the seconds before the limit (300)"
            )
        return found

    def to_dict(self) -> dict[str, object]:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict[str, object], *, where: str) -> SlurmOptions:
        known = {option.name: option for option in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SlurmOptionsError(
                f"{where}: {', '.join(unknown)} is not a Slurm setting (settings: {', '.join(known)})"
            )
        values: dict[str, object] = {}
        for key, value in data.items():
            integers = ("nodes", "gpus_per_node", "cpus_per_node", "signal_lead_s")
            wanted = int if key in integers else bool if key == "requeue" else str
            if isinstance(value, bool) != (wanted is bool) or not isinstance(value, wanted):
                raise SlurmOptionsError(f"{where}: {key} = {value!r} should be a {wanted.__name__}")
            values[key] = value
        options = cls(**values)
        if problems := options.problems():
            raise SlurmOptionsError(f"{where}: {problems[0]}")
        return options

    def with_changes(self, **changes: object) -> SlurmOptions:
        """These options with the given ones replaced (a None change keeps the current value)."""
        return dataclasses.replace(
            self, **{key: value for key, value in changes.items() if value is not None}
        )


def load_defaults(workspace_root: Path) -> SlurmOptions:
    """The workspace's ``slurm.toml`` (its keys are SlurmOptions' fields), or the plain defaults without one."""
    path = Path(workspace_root) / DEFAULTS_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return SlurmOptions()
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SlurmOptionsError(f"{path} cannot be read ({error}); fix or delete it") from None
    return SlurmOptions.from_dict(data, where=str(path))


def requested_options(workspace_root: Path, **asked: object) -> SlurmOptions:
    """The job settings asked for (`glmtui train --slurm`'s flags, or the config editor's Slurm rows; a None
    keeps the setting's) over the workspace's slurm.toml; SlurmOptionsError names the first that cannot be used."""
    options = load_defaults(workspace_root).with_changes(**asked)
    if problems := options.problems():
        raise SlurmOptionsError(problems[0])
    return options


def read_options(run_dir: Path) -> SlurmOptions | None:
    """The run's Slurm settings, or None for a run that trains on the machine that starts it."""
    path = Path(run_dir) / OPTIONS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise SlurmOptionsError(f"{path} cannot be read ({error}); is this a run folder?") from None
    return SlurmOptions.from_dict(data, where=str(path))


def write_options(run_dir: Path, options: SlurmOptions) -> None:
    """Make the run a Slurm run: its launches and resumes become job submissions with these settings."""
    atomic_write_text(Path(run_dir) / OPTIONS_FILE, json.dumps(options.to_dict(), indent=2) + "\n")


def step_flags(options: SlurmOptions) -> list[str]:
    """What each node's task needs, for sbatch and again for srun (which does not inherit --cpus-per-task)."""
    flags = ["--ntasks-per-node=1"]
    if options.cpus_per_node:
        flags.append(f"--cpus-per-task={options.cpus_per_node}")
    if options.gpus_per_node:
        flags.append(f"--gpus-per-node={options.gpus_per_node}")
    return flags


def sbatch_flags(options: SlurmOptions) -> list[str]:
    """The sbatch options that ask for the allocation ``options`` describe."""
    flags = [f"--nodes={options.nodes}", *step_flags(options)]
    if options.partition:
        flags.append(f"--partition={options.partition}")
    if options.account:
        flags.append(f"--account={options.account}")
    if options.time:
        flags.append(f"--time={options.time}")
        # B: the signal goes to the batch script alone, which turns it into a stop request every rank sees.
        flags.append(f"--signal=B:USR1@{options.signal_lead_s}")
    flags.append("--requeue" if options.requeue else "--no-requeue")
    return flags


def check_submittable(options: SlurmOptions, runs_dir: Path) -> None:
    """Before any run folder exists: whether the job script can name folders under ``runs_dir``, then ask Slurm
    whether it would take such a job (``sbatch --test-only``)."""
    from glmcore.slurm.jobs import SlurmError, missing_commands, run_command

    check_folder(Path(runs_dir))
    if missing := missing_commands():
        raise SlurmError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed here; run glmtui --slurm "
            "on a host with Slurm's client commands (the cluster's login node)"
        )
    try:
        run_command(["sbatch", "--test-only", *sbatch_flags(options), "--wrap", "true"])
    except SlurmError as error:
        raise SlurmOptionsError(f"Slurm would refuse this job: {error}") from None


def for_slurm(config: RunConfig, options: SlurmOptions) -> RunConfig:
    """The run's config on Slurm: ``gpus`` are the job's GPUs of each node (0…G-1, as Slurm shows them)."""
    return dataclasses.replace(config, gpus=list(range(options.gpus_per_node)))


def check_folder(folder: Path) -> None:
    """Refuse a folder whose path #SBATCH lines would change: sbatch splits them at spaces, strips quotes and
    backslashes, reads ``#`` as the start of a comment and ``%`` as a file name pattern (``%j``: the job id), so
    the job would run, or write its log, somewhere else."""
    found = SBATCH_MANGLED.search(str(folder))
    if found is None:
        return
    character = found.group()
    what = (
        "a space"
        if character.isspace()
        else MANGLED_NAMES.get(character, f"the character U+{ord(character):04X}")
    )
    raise SlurmOptionsError(
        f"the path {folder} has {what}, which sbatch would change in the job script's #SBATCH lines; use a "
        "workspace whose path has only letters, digits and / . _ - (set GLMTUI_HOME or pass --workspace)"
    )


def job_script(run_dir: Path, run_id: str, options: SlurmOptions, *, resume: bool) -> str:
    """The batch script for one submission of the run in ``run_dir``."""
    run_dir = Path(run_dir)
    check_folder(run_dir)
    lines = [
        "#!/bin/bash",
        f"# glmtui's Slurm job for run {run_id}. Submit it again with `sbatch {run_dir / SCRIPT_FILE}`;",
        f"# `glmtui resume {run_id}` writes a fresh one that continues from the latest checkpoint.",
        f"#SBATCH --job-name=glmtui-{run_id}",
        f"#SBATCH --chdir={run_dir}",
        f"#SBATCH --output={run_dir / 'train.log'}",
        "#SBATCH --open-mode=append",
    ]
    lines += [f"#SBATCH {flag}" for flag in sbatch_flags(options)]
    command = [sys.executable, "-m", "glmcore.slurm.job", str(run_dir)] + (["--resume"] if resume else [])
    lines.append("exec " + shlex.join(command))
    return "\n".join(lines) + "\n"


def write_job_script(run_dir: Path, run_id: str, options: SlurmOptions, *, resume: bool) -> Path:
    """Write ``slurm-job.sh`` for this submission (atomically, executable) and return its path."""
    path = Path(run_dir) / SCRIPT_FILE
    atomic_write_text(path, job_script(run_dir, run_id, options, resume=resume))
    path.chmod(0o755)
    return path
