"""The config editor: a run's settings on the left; the VRAM estimate, problems and command line beside them.

Every change rebuilds a ``RunConfig`` from the form and checks it in a worker (``validate`` reads the model
folder, the data files and the disk), so the side panel is always about what the form says now. ctrl+s saves
the TOML under configs/ (what ``glmtui train`` takes); ctrl+g creates the run folder and starts it detached.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Checkbox, Input, Label, Select, Static

from glmcore import runs as run_control
from glmcore.config import METHODS, QUANTIZATION_BITS, ConfigError, Problem, RunConfig, validate
from glmcore.data import SUPPORTED_SUFFIXES
from glmcore.errors import GlmError
from glmcore.estimate import ModelShape, VramEstimate, estimate_vram
from glmcore.gpu import GpuSnapshot, free_memory_by_gpu
from glmcore.runs import Run
from glmtui.gpu_text import compact_gpu_rows
from glmtui.messages import DataChoice, OpenRun
from glmtui.presentation import family_title
from glmtui.screens.base import WorkbenchScreen

GIB = 2**30
INTEGER_FIELDS = (
    "pre_seq_len",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "save_steps",
    "logging_steps",
    "max_source_length",
    "max_target_length",
)
TEXT_FIELDS = ("name", "model_path", "train_file", "validation_file")
FIELD_LABELS = {
    "name": "Name",
    "model_path": "Model folder",
    "train_file": "Train file",
    "validation_file": "Validation file",
    "method": "Method",
    "quantization_bit": "Quantization bit",
    "pre_seq_len": "Prefix length",
    "prefix_projection": "Prefix MLP",
    "learning_rate": "Learning rate",
    "per_device_train_batch_size": "Batch per GPU",
    "gradient_accumulation_steps": "Accumulation",
    "max_steps": "Steps",
    "save_steps": "Save every",
    "logging_steps": "Log every",
    "max_source_length": "Source length",
    "max_target_length": "Target length",
    "gpus": "GPUs (e.g. 0,1)",
}


class ConfigChecked(Message):
    """The checks of one form state: problems, and the VRAM estimate when the model folder can be read."""

    def __init__(
        self, config: RunConfig, problems: list[Problem], estimate: VramEstimate | None, family: str = ""
    ) -> None:
        super().__init__()
        self.config = config
        self.problems = problems
        self.estimate = estimate
        self.family = family


class LoadConfigScreen(ModalScreen[Path | None]):
    """Asks for the path of a config TOML to load."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="load-cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="load-dialog"):
            yield Label("Path of a run config (config.toml) to load; enter loads, escape cancels:")
            yield Input(id="load-path", placeholder="~/glmtui/configs/my-run.toml")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(Path(event.value).expanduser() if event.value.strip() else None)

    def action_cancel(self) -> None:
        self.dismiss(None)


def parse_gpus(text: str) -> list[int]:
    """ "0,1" or "0 1" -> [0, 1]; empty means the CPU."""
    return [int(part) for part in re.split(r"[,\s]+", text.strip()) if part]


def describe_estimate(
    estimate: VramEstimate, gpus: list[int], snapshot: GpuSnapshot | None, width: int = 38
) -> Text:
    """The estimate per GPU against each chosen GPU's free memory now: green where it fits, red where not.

    Every GPU's row (as the Training view's panel shows it, from the app's one sampler) comes first, so the
    GPUs other jobs are using can be seen while choosing.
    """
    text = Text()
    text.append(f"VRAM estimate: {estimate.total / GIB:.1f} GiB per GPU\n", style="bold")
    for part, size in estimate.parts.items():
        text.append(f"  {part.replace('_', ' ')}: {size / GIB:.2f} GiB\n", style="dim")
    if snapshot is not None and snapshot.gpus:
        text.append("GPUs now:\n", style="dim")
        for row in compact_gpu_rows(snapshot.gpus, width):
            text.append_text(row)
            text.append("\n")
    if not gpus:
        text.append("Trains on the CPU (no GPU chosen).\n")
        return text
    free = free_memory_by_gpu(snapshot) if snapshot is not None and snapshot.available else {}
    for gpu in gpus:
        if gpu not in free:
            text.append(f"GPU {gpu}: free memory unknown\n", style="yellow")
        elif estimate.fits(free[gpu]):
            text.append(f"GPU {gpu}: {free[gpu] / GIB:.1f} GiB free, fits\n", style="green")
        else:
            text.append(f"GPU {gpu}: {free[gpu] / GIB:.1f} GiB free, does not fit\n", style="bold red")
    return text


class ConfigScreen(WorkbenchScreen):
    """Edit a run config; ctrl+s save TOML, ctrl+g start, ctrl+o load."""

    NAME = "config"
    BINDINGS = [
        Binding("ctrl+g", "start_run", "Start", id="config-start", tooltip="Create the run and start it"),
        Binding("ctrl+s", "save_config", "Save", id="config-save", tooltip="Save the config as TOML"),
        Binding("ctrl+o", "load_config", "Load", id="config-load", tooltip="Load a config TOML"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.base: RunConfig | None = None
        self.config: RunConfig | None = None
        self.problems: list[Problem] = []
        self.estimate: VramEstimate | None = None
        self.family = ""
        """The chosen model folder's family title, shown above the estimate."""
        self._filling = False

    def blank_config(self) -> RunConfig:
        """A new run with the published defaults on the workspace's first model, on the CPU until GPUs are picked."""
        models = self.workbench.workspace.find_models()
        return RunConfig(
            name="my-run",
            model_path=models[0] if models else Path(""),
            train_file=Path(""),
            gpus=[],
        )

    # form

    def compose_body(self) -> ComposeResult:
        workspace = self.workbench.workspace
        model_paths = [str(path) for path in workspace.find_models()]
        data_paths = sorted(
            str(path) for path in workspace.data_dir.rglob("*") if path.suffix.lower() in SUPPORTED_SUFFIXES
        )
        with Horizontal(id="config-columns"):
            with VerticalScroll(id="config-form"):
                for name in FIELD_LABELS:
                    with Horizontal(classes="field"):
                        yield Label(FIELD_LABELS[name], classes="field-label")
                        yield self._field_widget(name, model_paths, data_paths)
                    if name == "gradient_accumulation_steps":
                        yield Static("", id="effective-batch")
            with VerticalScroll(id="config-side"):
                yield Static("", id="config-estimate")
                yield Static("", id="config-problems")
                yield Static("", id="config-command")

    def _field_widget(self, name: str, model_paths: list[str], data_paths: list[str]):
        if name == "method":
            return Select([(method, method) for method in METHODS], id=name, allow_blank=False)
        if name == "quantization_bit":
            return Select([(str(bit), bit) for bit in QUANTIZATION_BITS], id=name, allow_blank=False)
        if name == "prefix_projection":
            return Checkbox("on", id=name)
        suggestions = model_paths if name == "model_path" else data_paths if name.endswith("_file") else []
        return Input(
            id=name,
            suggester=SuggestFromList(suggestions, case_sensitive=True) if suggestions else None,
            type="integer" if name in INTEGER_FIELDS else "text",
        )

    def on_mount(self) -> None:
        self._write_form(self.base or self.blank_config())

    def fill_form(self, config: RunConfig) -> None:
        """Show ``config`` in the form (its other settings are kept for saving)."""
        self.base = config
        if self.is_mounted:
            self._write_form(config)

    def _write_form(self, config: RunConfig) -> None:
        self.base = config
        self._filling = True
        try:
            for name in TEXT_FIELDS + INTEGER_FIELDS + ("learning_rate",):
                value = getattr(config, name)
                self.query_one(f"#{name}", Input).value = "" if value in (None, Path("")) else str(value)
            self.query_one("#gpus", Input).value = ",".join(map(str, config.gpus))
            self.query_one("#method", Select).value = config.method
            self.query_one("#quantization_bit", Select).value = config.quantization_bit
            self.query_one("#prefix_projection", Checkbox).value = config.prefix_projection
        finally:
            self._filling = False
        self.recheck()

    def load(self, config: RunConfig) -> None:
        """Fill the form with ``config`` (the demo, a loaded TOML); before mounting, the form starts with it."""
        self.fill_form(config)

    def use_data(self, choice: DataChoice) -> None:
        """Apply the Data screen's choice over the config being edited (lengths left empty stay as they are)."""
        base = self.current_config()
        self.load(
            dataclasses.replace(
                base,
                train_file=choice.train_file,
                prompt_column=choice.prompt_column,
                response_column=choice.response_column,
                history_column=choice.history_column,
                max_source_length=choice.max_source_length or base.max_source_length,
                max_target_length=choice.max_target_length or base.max_target_length,
            )
        )

    def current_config(self) -> RunConfig:
        """The form's config when it is valid, else the one the form started from."""
        if self.is_mounted:
            config, _ = self.read_form()
            if config is not None:
                return config
        return self.base or self.blank_config()

    def read_form(self) -> tuple[RunConfig | None, list[Problem]]:
        """The config the form describes, or the problems that stop it from being one."""
        data = (self.base or self.blank_config()).to_dict()
        problems: list[Problem] = []
        for name in TEXT_FIELDS:
            value = self.query_one(f"#{name}", Input).value.strip()
            if value:
                data[name] = value
            elif name == "validation_file":
                data.pop(name, None)
            else:
                problems.append(Problem(name, "fill this in"))
        for name in INTEGER_FIELDS:
            text = self.query_one(f"#{name}", Input).value.strip()
            try:
                data[name] = int(text)
            except ValueError:
                problems.append(Problem(name, f"{text!r} is not a whole number"))
        text = self.query_one("#learning_rate", Input).value.strip()
        try:
            data["learning_rate"] = float(text)
        except ValueError:
            problems.append(Problem("learning_rate", f"{text!r} is not a number (e.g. 2e-2)"))
        try:
            data["gpus"] = parse_gpus(self.query_one("#gpus", Input).value)
        except ValueError:
            problems.append(
                Problem("gpus", "list GPU numbers separated by commas, e.g. 0,1; empty trains on the CPU")
            )
        data["method"] = self.query_one("#method", Select).value
        data["quantization_bit"] = self.query_one("#quantization_bit", Select).value
        data["prefix_projection"] = self.query_one("#prefix_projection", Checkbox).value
        if problems:
            return None, problems
        try:
            return RunConfig.from_dict(data), []
        except ConfigError as error:
            return None, [Problem("config", str(error))]

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def form_changed(self) -> None:
        if not self._filling:
            self.recheck()

    def recheck(self) -> None:
        """Update what can be shown at once and start the checks that read the disk."""
        config, problems = self.read_form()
        self.config = config
        self._show_effective_batch()
        if config is None:
            self._show(problems, None)
            return
        self.check_config(config)

    def _show_effective_batch(self) -> None:
        """Batch × accumulation × GPUs, from the fields themselves, so it shows while other fields are wrong."""
        effective = self.query_one("#effective-batch", Static)
        try:
            batch = int(self.query_one("#per_device_train_batch_size", Input).value)
            accumulation = int(self.query_one("#gradient_accumulation_steps", Input).value)
            gpus = len(parse_gpus(self.query_one("#gpus", Input).value))
        except ValueError:
            effective.update("effective batch -")
            return
        devices = f" × {gpus} GPUs" if gpus > 1 else ""
        effective.update(
            f"effective batch [b]{batch * accumulation * max(1, gpus)}[/b] = {batch} × {accumulation}{devices}"
        )

    @work(thread=True, exclusive=True, exit_on_error=False, group="config-check")
    def check_config(self, config: RunConfig) -> None:
        problems = validate(config, runs_dir=self.workbench.workspace.runs_dir)
        estimate, family = None, ""
        if config.model_path.is_dir():
            family = family_title(config.model_path)
            try:
                estimate = estimate_vram(ModelShape.from_model_dir(config.model_path), config)
            except GlmError:
                estimate = None
        self.post_message(ConfigChecked(config, problems, estimate, family))

    def on_config_checked(self, message: ConfigChecked) -> None:
        if message.config is self.config:
            self.family = message.family
            self._show(message.problems, message.estimate)

    def _show(self, problems: list[Problem], estimate: VramEstimate | None) -> None:
        self.problems = problems
        self.estimate = estimate
        problem_text = Text()
        if problems:
            problem_text.append(f"{len(problems)} problem(s):\n", style="bold red")
            for problem in problems:
                problem_text.append(f"• {FIELD_LABELS.get(problem.field, problem.field)}: ", style="red")
                problem_text.append(problem.message + "\n")
        else:
            problem_text.append("Ready to start (ctrl+g).\n", style="bold green")
        self.query_one("#config-problems", Static).update(problem_text)
        self._show_estimate()
        command = self.query_one("#config-command", Static)
        if self.config is not None:
            command.update(
                Text("Same from the shell:\n", style="dim")
                + Text(self.config.train_command(self.config_path()))
            )
        else:
            command.update("")

    def _show_estimate(self) -> None:
        widget = self.query_one("#config-estimate", Static)
        if self.estimate is None or self.config is None:
            widget.update(Text("VRAM estimate: needs a readable model folder", style="dim"))
        else:
            width = (widget.content_size.width or 40) - 2  # rows stay whole when the side's scrollbar appears
            text = Text(f"Model family: {self.family}\n") if self.family else Text()
            widget.update(
                text + describe_estimate(self.estimate, self.config.gpus, self.workbench.gpu_snapshot, width)
            )

    def gpu_snapshot_changed(self, snapshot: GpuSnapshot | None) -> None:
        super().gpu_snapshot_changed(snapshot)
        if self.is_mounted:
            self._show_estimate()

    def config_path(self) -> Path:
        """Where ctrl+s saves this config."""
        name = self.config.name if self.config else "run"
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
        return self.workbench.workspace.root / "configs" / f"{slug}.toml"

    # actions

    def _ready_config(self) -> RunConfig | None:
        config, problems = self.read_form()
        if config is None or problems:
            self.notify("Fix the problems listed beside the form first.", severity="error")
        return config

    def action_save_config(self) -> None:
        if config := self._ready_config():
            path = self.config_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            config.save(path)
            self.notify(f"Saved {path}.")

    def action_start_run(self) -> None:
        if config := self._ready_config():
            self.start_run(config)

    @work(thread=True, exclusive=True, exit_on_error=False, group="config-start")
    def start_run(self, config: RunConfig) -> None:
        """Validate once more, create the run folder and launch it detached; then show it."""
        problems = validate(config, runs_dir=self.workbench.workspace.runs_dir)
        if problems:
            raise ConfigError("the run cannot start: " + "; ".join(map(str, problems)))
        run = self.workbench.run_store.create(config)
        run_control.launch(run, detach=True)
        self.app.call_from_thread(self._started, run)

    def _started(self, run: Run) -> None:
        self.notify(f"Started {run.id}.")
        self.post_message(OpenRun(run))

    def action_load_config(self) -> None:
        def loaded(path: Path | None) -> None:
            if path is not None:
                try:
                    self.load(RunConfig.load(path))
                except GlmError as error:
                    self.notify(str(error), severity="error")

        self.app.push_screen(LoadConfigScreen(), loaded)
