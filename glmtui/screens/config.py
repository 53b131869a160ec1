"""The config editor: the paths across the top, a run's settings on the left, the checks beside them.

Paths get the full width (they are the long values); the settings below show only the fields of the chosen
method (prefix length and Prefix MLP for P-tuning v2, rank/alpha/dropout for LoRA). Every change rebuilds a
``RunConfig`` from the form and checks it in a worker (``preflight.check`` reads the model folder, the data files
and the disk), so the side panel is always about what the form says now: the problems, and the VRAM estimate for
this model next to what the same settings need on its family's published model (the real ChatGLM3-6B for a
tiny ChatGLM3, ``glmcore.estimate.published_estimate``). ctrl+s saves the TOML under configs/
(what ``glmtui train`` takes); ctrl+g creates the run folder and starts it detached.

The prefix length and the learning rate take a list of values ("64,128"): the form then stands for a sweep, one
run per combination, and the side panel says how many runs that makes and what each will need; ctrl+g queues
them (``glmcore.sweep``, ``glmcore.queue``, as ``glmtui sweep`` does).

Where a Slurm cluster answers (``sinfo``), a "Where" row offers this machine or Slurm; Slurm shows the
partition (with its free GPUs), nodes, GPUs per node and time limit over the workspace's slurm.toml, and
ctrl+g then submits the run (or each run of a sweep) as a job, as ``glmtui train --slurm`` does.
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

from glmcore import preflight
from glmcore import runs as run_control
from glmcore.config import BEST_METRICS, METHODS, QUANTIZATION_BITS, ConfigError, Problem, RunConfig, cautions
from glmcore.data import SUPPORTED_SUFFIXES
from glmcore.errors import GlmError
from glmcore.estimate import (
    ContextCache,
    ModelShape,
    VramEstimate,
    context_cache,
    estimate_vram,
    gpu_fits,
    published_context_cache,
    published_estimate,
)
from glmcore.gpu import GpuSnapshot, free_memory_by_gpu
from glmcore.model_folders import choose_family, family_title_of
from glmcore.models import FAMILIES, family_for
from glmcore.queue import Queue
from glmcore.runs import Run
from glmcore.slurm.jobs import Partition, cluster_configured, partitions
from glmcore.slurm.script import (
    SlurmOptions,
    check_submittable,
    load_defaults,
    requested_options,
)
from glmcore.start import create_run, run_problems, start_sweep, sweep_points
from glmcore.sweep import SweepPoint, expand, format_value
from glmcore.sweep import problems as sweep_problems
from glmcore.units import format_bytes
from glmtui.config_form import (
    CHOICE_FIELDS,
    INTEGER_FIELDS,
    METHOD_FIELDS,
    NUMBER_FIELDS,
    PATH_FIELDS,
    SWEEP_FIELDS,
    TEXT_FIELDS,
    TICK_FIELDS,
    FormReading,
    form_values,
    parse_gpus,
    read_form,
)
from glmtui.messages import DataChoice, OpenRun
from glmtui.screens.base import WorkbenchScreen
from glmtui.text.estimate import CPU_RUN, fit_sentence, sweep_need
from glmtui.text.figures import MISSING
from glmtui.text.gpus import compact_gpu_rows
from glmtui.text.queue import sweep_queued_sentence, sweep_submitted_sentence, worker_started_sentence
from glmtui.text.runs import started_sentence

QUANTIZATION_LABELS = {4: "4-bit (NF4)", 8: "8-bit (int8)", 16: "16-bit (none)"}
FIELD_LABELS = {
    "name": "Name",
    "model_path": "Model folder",
    "train_file": "Train file",
    "validation_file": "Validation file",
    "method": "Method",
    "quantization_bit": "Quantization",
    "pre_seq_len": "Prefix length",
    "prefix_projection": "Prefix MLP",
    "lora_rank": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "learning_rate": "Learning rate",
    "per_device_train_batch_size": "Batch per GPU",
    "gradient_accumulation_steps": "Accumulation",
    "effective_batch": "Effective batch",
    "max_steps": "Steps",
    "save_steps": "Save every",
    "logging_steps": "Log every",
    "max_source_length": "Source length",
    "max_target_length": "Target length",
    "gpus": "GPUs (e.g. 0,1)",
    "eval_steps": "Evaluate every",
    "eval_metric_rows": "Scored rows",
    "best_metric": "Best by",
    "early_stopping_patience": "Patience",
    "report_to": "TensorBoard",
}


WHERE_CHOICES = [("this machine", "local"), ("Slurm", "slurm")]
SLURM_FIELDS = {
    "slurm_partition": "Partition",
    "slurm_nodes": "Nodes",
    "slurm_gpus_per_node": "GPUs per node",
    "slurm_time": "Time limit",
}
"""The Slurm rows, shown when "Where" is Slurm; each is the SlurmOptions field after ``slurm_``."""


@dataclasses.dataclass
class SlurmFound(Message):
    """What sinfo says about the cluster this machine submits to (nothing: no cluster answers)."""

    partitions: list[Partition]
    defaults: SlurmOptions


@dataclasses.dataclass
class ConfigChecked(Message):
    """The checks of one form state: problems, and the VRAM estimates (or why this model's cannot be made)."""

    config: RunConfig
    problems: list[Problem]
    estimates: Estimates
    saved: bool
    """Whether the file ctrl+s writes already holds exactly this config."""
    sweep: list[tuple[SweepPoint, int | None]] | None = None
    """Each run of a sweep with its VRAM estimate per GPU (None: unknown); None for a single run."""
    family: str = ""
    """The model folder's family title ("" when the folder cannot be read)."""
    family_unclear: bool = False
    """Whether config.json alone does not tell the folder's family, so the form offers the Family row."""


@dataclasses.dataclass(frozen=True)
class Estimates:
    """The estimate for the form's model folder (or why there is none) and for the published model of its
    family (`reference_name`: "ChatGLM3-6B")."""

    model: VramEstimate | None
    reference: VramEstimate
    reference_name: str
    model_problem: str | None = None
    model_context: ContextCache | None = None
    """The KV cache row chat and serving start with on this model, and on the published one."""
    reference_context: ContextCache | None = None


class OnOffCheckbox(Checkbox):
    """A checkbox that reads "[X] on" or "[ ] off", so its state shows without colour."""

    @property
    def _button(self):  # noqa: ANN202 (Textual's Content)
        self.BUTTON_INNER = "X" if self.value else " "
        return super()._button

    def watch_value(self) -> None:
        self.label = "on" if self.value else "off"
        super().watch_value()


class LoadConfigScreen(ModalScreen[Path | None]):
    """Asks for the path of a config TOML to load."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="load-cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="load-dialog"):
            yield Static("Path of a run config (config.toml) to load; enter loads, escape cancels:")
            yield Input(id="load-path", placeholder="~/glmtui/configs/my-run.toml")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(Path(event.value).expanduser() if event.value.strip() else None)

    def action_cancel(self) -> None:
        self.dismiss(None)


def _family_unclear(model_dir: Path) -> bool:
    """Whether `model_dir` holds a config.json from which detection alone cannot tell the family."""
    if not (model_dir / "config.json").is_file():
        return False
    try:
        family_for(model_dir)
    except GlmError:
        return True
    return False


ESTIMATE_PARTS = {
    "cuda_context": "CUDA context",
    "weights": "weights",
    "trainable_states": "optimizer",
    "activations": "activations",
    "logits": "logits",
    "fragmentation": "allocator",
}
CONTEXT_ROWS = {
    "chat context": lambda cache: f"{cache.context:,}",
    "chat KV cache": lambda cache: format_bytes(cache.row_bytes),
}
"""Below the total: the context (tokens) chat and serving size a KV cache row for, and that row's bytes."""
LABEL_WIDTH, VALUE_WIDTH = 13, 11


def _estimate_row(label: str, model: str, reference: str, reference_width: int = VALUE_WIDTH) -> str:
    return f"{label:<{LABEL_WIDTH}}{model:>{VALUE_WIDTH}}{reference:>{reference_width}}\n"


def describe_estimate(
    estimates: Estimates, gpus: list[int], snapshot: GpuSnapshot | None, width: int = 38
) -> Text:
    """The estimate per GPU part by part, this model beside its family's published one, then every GPU's row (as the Training
    view's panel shows it, from the app's one sampler, so the GPUs other jobs use can be seen while choosing) and
    each chosen GPU's free memory now: green where a run fits, red where not."""
    model, reference = estimates.model, estimates.reference
    # A name as wide as the column ("ChatGLM3-6B") keeps a space before it.
    width = max(VALUE_WIDTH, len(estimates.reference_name) + 1)
    text = Text()
    text.append(_estimate_row("VRAM per GPU", "this model", estimates.reference_name, width), style="bold")
    for part, label in ESTIMATE_PARTS.items():
        shown = format_bytes(model.parts[part]) if model else "-"
        text.append(_estimate_row(label, shown, format_bytes(reference.parts[part]), width), style="dim")
    text.append(
        _estimate_row(
            "total", format_bytes(model.total) if model else "-", format_bytes(reference.total), width
        ),
        style="bold",
    )
    if estimates.reference_context is not None:
        model_context, reference_context = estimates.model_context, estimates.reference_context
        for label, value in CONTEXT_ROWS.items():
            shown = value(model_context) if model_context else "-"
            text.append(_estimate_row(label, shown, value(reference_context), width), style="dim")
    if estimates.model_problem:
        text.append(f"This model: {estimates.model_problem}\n", style="yellow")
    if snapshot is not None and snapshot.gpus:
        text.append("GPUs now:\n", style="dim")
        for row in compact_gpu_rows(snapshot.gpus, width):
            text.append_text(row)
            text.append("\n")
    if not gpus:
        text.append(CPU_RUN + "\n")
        return text
    free = free_memory_by_gpu(snapshot) if snapshot is not None and snapshot.available else {}
    for fit in gpu_fits(model or reference, gpus, free):
        if fit.fits is None:
            text.append(fit_sentence(fit) + "\n", style="yellow")
            continue
        line = fit_sentence(fit)
        if model is not None:  # the published model's answer beside this one's
            verdict = "fits" if reference.fits(fit.free_bytes) else "does not fit"
            line += f" {estimates.reference_name} {verdict}."
        text.append(line + "\n", style="green" if fit.fits else "bold red")
    return text


def sweep_text(sweep: list[tuple[SweepPoint, int | None]]) -> Text:
    """How many runs the listed values make, and each run's values with its VRAM estimate per GPU."""
    names = " × ".join(dict.fromkeys(key for point, _ in sweep for key in point.values))
    text = Text(f"Sweep: {len(sweep)} runs ({names})\n", style="bold")
    for point, need in sweep:
        text.append(f"  {point.short_label}: {sweep_need(need)}\n")
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
        self.estimates: Estimates | None = None
        self._checking: RunConfig | None = None
        self.family = ""
        """The chosen model folder's family title, shown above the estimate."""
        self.axes: dict[str, list[object]] = {}
        """The fields given several values, with them: a sweep when not empty."""
        self._filling = False
        self.partitions: list[Partition] = []
        """The Slurm cluster's partitions, when one answers; the "Where" row shows only then."""
        self.blank: RunConfig | None = None
        self.blank_reason = ""
        """Why a new run starts from the defaults it does, shown while the form started from them."""

    def blank_config(self) -> RunConfig:
        """A new run on the workspace's first model whose family is known, with this machine's defaults (their
        reason shown beside)."""
        models = self.workbench.workspace.find_models()
        known = [path for path in models if not _family_unclear(path)] or models  # not a Qwen folder first
        defaults = preflight.machine_defaults()
        self.blank = RunConfig(
            name="my-run",
            model_path=known[0] if known else Path(""),
            train_file=Path(""),
            **defaults.values,
        )
        self.blank_reason = defaults.reason
        return self.blank

    # form

    def compose_body(self) -> ComposeResult:
        workspace = self.workbench.workspace
        model_paths = [str(path) for path in workspace.find_models()]
        data_paths = sorted(
            str(path) for path in workspace.data_dir.rglob("*") if path.suffix.lower() in SUPPORTED_SUFFIXES
        )
        with Vertical(id="config-paths"):
            for name in PATH_FIELDS:
                yield from self._field_row(name, model_paths, data_paths)
                if name == "model_path":
                    yield from self._family_row()
        with Horizontal(id="config-columns"):
            with VerticalScroll(id="config-form", can_focus=False):
                for name in FIELD_LABELS:
                    if name not in PATH_FIELDS:
                        yield from self._field_row(name, model_paths, data_paths)
                yield from self._slurm_rows()
            with VerticalScroll(id="config-side"):
                yield Static("", id="config-sweep")
                yield Static("", id="config-problems")
                yield Static("", id="config-estimate")
                yield Static("", id="config-command")

    def _field_row(self, name: str, model_paths: list[str], data_paths: list[str]) -> ComposeResult:
        methods = [method for method, fields in METHOD_FIELDS.items() if name in fields]
        classes = "field " + " ".join(f"for-{method}" for method in methods)
        with Horizontal(classes=classes, id=f"row-{name}"):
            yield Label(FIELD_LABELS[name], classes="field-label")
            if name == "effective_batch":
                yield Static("", id="effective-batch")
            else:
                yield self._field_widget(name, model_paths, data_paths)

    def _family_row(self) -> ComposeResult:
        """The `family` setting, shown only while config.json does not tell the family or one is set."""
        with Horizontal(classes="field", id="row-family"):
            yield Label("Family", classes="field-label")
            yield Select(
                [(f"{family.title} ({family.name})", family.name) for family in FAMILIES],
                id="family",
                prompt="found from config.json",
            )

    def _slurm_rows(self) -> ComposeResult:
        """The "Where" row and the Slurm settings, hidden until a cluster answers (``find_slurm``)."""
        with Horizontal(classes="field slurm-where", id="row-where"):
            yield Label("Where", classes="field-label")
            yield Select(WHERE_CHOICES, id="where", allow_blank=False, value="local")
        for name, label in SLURM_FIELDS.items():
            with Horizontal(classes="field slurm-field", id=f"row-{name}"):
                yield Label(label, classes="field-label")
                if name == "slurm_partition":
                    yield Select([], id=name, prompt="the cluster's default")
                else:
                    yield Input(id=name, type="integer" if name != "slurm_time" else "text")

    @work(thread=True, exclusive=True, exit_on_error=False, group="config-slurm")
    def find_slurm(self) -> None:
        """Ask sinfo for the cluster's partitions (nothing when Slurm is not installed or does not answer)."""
        if not cluster_configured():
            return
        try:
            found = partitions()
            defaults = load_defaults(self.workbench.workspace.root)
        except GlmError:
            return
        if found:
            self.post_message(SlurmFound(found, defaults))

    def on_slurm_found(self, message: SlurmFound) -> None:
        self.partitions = message.partitions
        defaults = message.defaults
        options = [(partition.summary(), partition.name) for partition in message.partitions]
        partition = self.query_one("#slurm_partition", Select)
        partition.set_options(options)
        if defaults.partition in {name for _, name in options}:
            partition.value = defaults.partition
        self.query_one("#slurm_nodes", Input).value = str(defaults.nodes)
        self.query_one("#slurm_gpus_per_node", Input).value = str(defaults.gpus_per_node)
        self.query_one("#slurm_time", Input).value = defaults.time or ""
        self._show_slurm_rows()

    def _show_slurm_rows(self) -> None:
        self.query_one("#row-where").display = bool(self.partitions)
        on_slurm = self.on_slurm
        for name in SLURM_FIELDS:
            self.query_one(f"#row-{name}").display = on_slurm
        self.query_one("#row-gpus").display = not on_slurm

    @property
    def on_slurm(self) -> bool:
        """Whether the form sends its run to Slurm."""
        return bool(self.partitions) and self.query_one("#where", Select).value == "slurm"

    def slurm_options(self) -> SlurmOptions:
        """The Slurm rows over the workspace's slurm.toml; SlurmOptionsError says what is wrong."""
        from glmcore.slurm.script import SlurmOptionsError

        changes: dict[str, object] = {}
        for name in ("slurm_nodes", "slurm_gpus_per_node"):
            text = self.query_one(f"#{name}", Input).value.strip()
            if text:
                try:
                    changes[name.removeprefix("slurm_")] = int(text)
                except ValueError:
                    raise SlurmOptionsError(f"{SLURM_FIELDS[name]}: {text!r} is not a whole number") from None
        partition = self.query_one("#slurm_partition", Select).value
        changes["partition"] = partition if isinstance(partition, str) else None
        changes["time"] = self.query_one("#slurm_time", Input).value.strip() or None
        return requested_options(self.workbench.workspace.root, **changes)

    def _field_widget(self, name: str, model_paths: list[str], data_paths: list[str]):
        if name == "method":
            return Select([(method, method) for method in METHODS], id=name, allow_blank=False)
        if name == "quantization_bit":
            return Select(
                [(QUANTIZATION_LABELS.get(bit, f"{bit}-bit"), bit) for bit in QUANTIZATION_BITS],
                id=name,
                allow_blank=False,
            )
        if name == "prefix_projection":
            return OnOffCheckbox("off", id=name)
        if name == "best_metric":
            return Select([(metric, metric) for metric in BEST_METRICS], id=name, allow_blank=False)
        if name == "report_to":
            return OnOffCheckbox("off", id=name)
        suggestions = model_paths if name == "model_path" else data_paths if name.endswith("_file") else []
        if name in SWEEP_FIELDS:
            return Input(
                id=name, restrict=r"[0-9eE.+\-, ]*", tooltip="one value, or several (64,128) for a sweep"
            )
        return Input(
            id=name,
            suggester=SuggestFromList(suggestions, case_sensitive=True) if suggestions else None,
            type="integer" if name in INTEGER_FIELDS else "number" if name in NUMBER_FIELDS else "text",
        )

    def reopened_config(self) -> RunConfig | None:
        """The workspace's last config (saved, loaded, started or made by the demo), if it still loads."""
        path = self.workbench.workspace.last_config()
        if path is None:
            return None
        try:
            return RunConfig.load(path)
        except GlmError:
            return None

    def on_mount(self) -> None:
        self._show_slurm_rows()
        self._write_form(self.base or self.reopened_config() or self.blank_config())
        self.find_slurm()

    def fill_form(self, config: RunConfig) -> None:
        """Show ``config`` in the form (its other settings are kept for saving)."""
        self.base = config
        if self.is_mounted:
            self._write_form(config)

    def _write_form(self, config: RunConfig) -> None:
        self.base = config
        self._filling = True
        try:
            values = form_values(config)
            for name in TEXT_FIELDS + INTEGER_FIELDS + NUMBER_FIELDS + ("gpus",):
                field = self.query_one(f"#{name}", Input)
                field.value = str(values[name])
                field.cursor_position = 0  # show a long path from its start
            for name in CHOICE_FIELDS:
                value = values[name]
                self.query_one(f"#{name}", Select).value = Select.NULL if value is None else value
            for name in TICK_FIELDS:
                self.query_one(f"#{name}", Checkbox).value = bool(values[name])
            self.query_one("#row-family").display = config.family is not None
        finally:
            self._filling = False
        self._show_method_fields(config.method)
        self.recheck()

    def _show_method_fields(self, method: object) -> None:
        """Show the rows of ``method``'s own fields and hide the other methods'."""
        for other in METHOD_FIELDS:
            for row in self.query(f".for-{other}"):
                row.display = row.has_class(f"for-{method}")

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
        reading = self._reading()
        self.axes = reading.axes
        return reading.config()

    def _reading(self) -> FormReading:
        """What the fields say over the config the form started from (`glmtui.config_form.read_form`)."""
        values: dict[str, object] = {
            name: self.query_one(f"#{name}", Input).value
            for name in TEXT_FIELDS + INTEGER_FIELDS + NUMBER_FIELDS + ("gpus",)
        }
        for name in CHOICE_FIELDS:
            value = self.query_one(f"#{name}", Select).value
            values[name] = None if value is Select.NULL else value
        for name in TICK_FIELDS:
            values[name] = self.query_one(f"#{name}", Checkbox).value
        return read_form(self.base or self.blank_config(), values, on_slurm=self.on_slurm)

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def form_changed(self, event: Message) -> None:
        if isinstance(event, Select.Changed) and event.select.id == "method":
            self._show_method_fields(event.value)
        if isinstance(event, Select.Changed) and event.select.id == "where":
            self._show_slurm_rows()
        if not self._filling:
            self.recheck()

    def recheck(self) -> None:
        """Update what can be shown at once and start the checks that read the disk."""
        config, problems = self.read_form()
        self.config = config
        self._show_effective_batch()
        self._checking = config or self._reading().sketch()
        if self._checking is None:
            self._show(problems, None)
            return
        if not preflight.data_checked(self._checking):  # a large file takes seconds: say so meanwhile
            self.query_one("#config-problems", Static).update(Text("Checking the data files…", style="dim"))
        self.check_config(self._checking, problems, dict(self.axes))

    def _show_effective_batch(self) -> None:
        """Batch × accumulation × GPUs, from the fields themselves, so it shows while other fields are wrong."""
        effective = self.query_one("#effective-batch", Static)
        try:
            batch = int(self.query_one("#per_device_train_batch_size", Input).value)
            accumulation = int(self.query_one("#gradient_accumulation_steps", Input).value)
            gpus = len(parse_gpus(self.query_one("#gpus", Input).value))
        except ValueError:
            effective.update("- (needs batch and accumulation)")
            return
        devices = f" × {gpus} GPUs" if gpus > 1 else ""
        effective.update(f"[b]{batch * accumulation * max(1, gpus)}[/b] = {batch} × {accumulation}{devices}")

    @work(thread=True, exclusive=True, exit_on_error=False, group="config-check")
    def check_config(
        self, config: RunConfig, form_problems: list[Problem], axes: dict[str, list[object]]
    ) -> None:
        """Check the config against the disk (or keep the form's problems while paths are missing), estimate its
        memory, and for a sweep check and estimate every combination."""
        runs_dir = self.workbench.workspace.runs_dir
        shape, model, model_problem, family = None, None, None, ""
        unclear = _family_unclear(config.model_path)
        try:
            if config.model_path.is_dir():
                family = family_title_of(config.model_path, config.family) or MISSING
            shape = ModelShape.from_model_dir(config.model_path, config.family)
            model = estimate_vram(shape, config)
        except GlmError as error:
            model_problem = str(error)
        reference_name, reference = published_estimate(config)
        estimates = Estimates(
            model,
            reference,
            reference_name,
            model_problem,
            model_context=context_cache(shape) if shape is not None else None,
            reference_context=published_context_cache(config),
        )
        saved = not form_problems and self._is_saved(config)
        if form_problems or not axes:
            problems = form_problems or preflight.check(config, runs_dir=runs_dir)
            self.post_message(
                ConfigChecked(config, problems, estimates, saved, family=family, family_unclear=unclear)
            )
            return
        try:
            points = expand(config, axes)
        except GlmError as error:
            problems = [Problem("config", str(error))]
            self.post_message(
                ConfigChecked(config, problems, estimates, saved, family=family, family_unclear=unclear)
            )
            return
        problems = [
            Problem(problem.field, f"{point.label}: {problem.message}")
            for point, problem in sweep_problems(points, runs_dir=runs_dir)
        ]
        sweep = [(point, estimate_vram(shape, point.config).total if shape else None) for point in points]
        self.post_message(ConfigChecked(config, problems, estimates, saved, sweep, family, unclear))

    def _is_saved(self, config: RunConfig) -> bool:
        path = self.config_path(config)
        try:
            return path.is_file() and RunConfig.load(path).to_dict() == config.to_dict()
        except GlmError:
            return False

    def on_config_checked(self, message: ConfigChecked) -> None:
        if message.config is self._checking:
            self.family = message.family
            self.query_one("#row-family").display = (
                message.family_unclear or message.config.family is not None
            )
            self._show(message.problems, message.estimates, message.saved, message.sweep)

    def _show(
        self,
        problems: list[Problem],
        estimates: Estimates | None,
        saved: bool = False,
        sweep: list[tuple[SweepPoint, int | None]] | None = None,
    ) -> None:
        self.problems = problems
        self.estimates = estimates
        sweep_panel = self.query_one("#config-sweep", Static)
        sweep_panel.update(sweep_text(sweep) if sweep else "")
        sweep_panel.display = bool(sweep)
        problem_text = Text()
        if self.base is not None and self.base is self.blank:
            problem_text.append(self.blank_reason + "\n", style="dim")
        if problems:
            count = len(problems)
            problem_text.append(f"{count} problem{'s' if count != 1 else ''}:\n", style="bold red")
            for problem in problems:
                problem_text.append(f"• {FIELD_LABELS.get(problem.field, problem.field)}: ", style="red")
                problem_text.append(problem.message + "\n")
        elif sweep:
            problem_text.append(f"Ready to queue the {len(sweep)} runs (ctrl+g).\n", style="bold green")
        else:
            problem_text.append("Ready to start (ctrl+g).\n", style="bold green")
        for caution in cautions(self.config) if self.config is not None else []:
            problem_text.append(f"Note: {FIELD_LABELS[caution.field]}: {caution.message}\n", style="yellow")
        self.query_one("#config-problems", Static).update(problem_text)
        self._show_estimate()
        command = self.query_one("#config-command", Static)
        if self.config is not None:
            line = self.config.train_command(self.config_path())
            if sweep:
                sets = " ".join(
                    f"--set {name}={','.join(format_value(value) for value in values)}"
                    for name, values in self.axes.items()
                )
                line = line.replace("glmtui train", "glmtui sweep", 1) + " " + sets
            if saved:
                command.update(Text("Same from the shell:\n", style="dim") + Text(line))
            else:
                verb = "sweep" if sweep else "train"
                command.update(
                    Text(f"Not saved: ctrl+s writes {self.config_path()} for `glmtui {verb}`.", style="dim")
                )
        else:
            command.update("")

    def _show_estimate(self) -> None:
        """The estimates, or which field the estimate waits for (the form's first problem)."""
        widget = self.query_one("#config-estimate", Static)
        if self.estimates is None or self._checking is None:
            first = self.problems[0] if self.problems else None
            reason = (
                f"{FIELD_LABELS.get(first.field, first.field)}: {first.message}" if first else "checking…"
            )
            widget.update(Text(f"VRAM estimate waits for {reason}", style="yellow"))
        else:
            width = (widget.content_size.width or 40) - 2  # rows stay whole when the side's scrollbar appears
            text = Text(f"Model family: {self.family}\n") if self.family else Text()
            widget.update(
                text
                + describe_estimate(self.estimates, self._checking.gpus, self.workbench.gpu_snapshot, width)
            )

    def gpu_snapshot_changed(self, snapshot: GpuSnapshot | None) -> None:
        super().gpu_snapshot_changed(snapshot)
        if self.is_mounted:
            self._show_estimate()

    def config_path(self, config: RunConfig | None = None) -> Path:
        """Where ctrl+s saves this config (``config``, else the form's)."""
        config = config or self.config
        name = config.name if config else "run"
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
        return self.workbench.workspace.configs_dir / f"{slug}.toml"

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
            self.workbench.workspace.remember_config(path)
            self._remember_family(config)
            self.notify(f"Saved {path}.")
            self.recheck()

    def action_start_run(self) -> None:
        if config := self._ready_config():
            slurm = None
            if self.on_slurm:
                try:
                    slurm = self.slurm_options()
                except GlmError as error:
                    self.notify(str(error), severity="error")
                    return
            if self.axes:
                self.queue_sweep(config, dict(self.axes), slurm)
            else:
                self.start_run(config, slurm)

    @work(thread=True, exclusive=True, exit_on_error=False, group="config-start")
    def queue_sweep(
        self, config: RunConfig, axes: dict[str, list[object]], slurm: SlurmOptions | None = None
    ) -> None:
        """Check every combination, create the sweep's runs and queue them (a worker starts them), or, on
        Slurm, submit each as a job (`glmcore.start`, as `glmtui sweep`)."""
        workspace = self.workbench.workspace
        problems = sweep_problems(sweep_points(config, axes, slurm), runs_dir=workspace.runs_dir)
        if problems:
            point, problem = problems[0]
            raise ConfigError(f"the sweep cannot start: {point.label}: {problem} ({len(problems)} problems)")
        if slurm is not None:
            check_submittable(slurm, workspace.runs_dir)
        started = start_sweep(workspace, config, axes, slurm)
        sweep = started.sweep
        if started.jobs:
            message = sweep_submitted_sentence(sweep.id, started.jobs)
        else:
            message = sweep_queued_sentence(sweep.id, len(sweep.runs))
            if started.worker is not None:
                message += " " + worker_started_sentence(started.worker, Queue(workspace).worker_log_path)
        self.app.call_from_thread(self.notify, message)
        self.app.call_from_thread(self.workbench.action_show, "runs")

    @work(thread=True, exclusive=True, exit_on_error=False, group="config-start")
    def start_run(self, config: RunConfig, slurm: SlurmOptions | None = None) -> None:
        """Validate once more, create the run folder and launch it detached (or submit it to Slurm); then
        show it (`glmcore.start`, as `glmtui train`)."""
        workspace = self.workbench.workspace
        problems = run_problems(config, workspace, slurm)
        if problems:
            raise ConfigError("the run cannot start: " + "; ".join(map(str, problems)))
        if slurm is not None:
            check_submittable(slurm, workspace.runs_dir)
        run = create_run(workspace, config, slurm)
        started = run_control.launch(run, detach=True)
        assert isinstance(started, int)  # detached: a pid, or the Slurm job's number
        self.app.call_from_thread(
            self._started, run, started_sentence(run.id, started, slurm=slurm is not None)
        )

    def _remember_family(self, config: RunConfig) -> None:
        """A family set in the form is remembered for the model folder too, so evaluating or chatting with it
        later needs no setting (`glmcore.model_folders.choose_family`)."""
        if config.family is not None:
            choose_family(self.workbench.workspace, config.model_path, config.family)

    def _started(self, run: Run, said: str) -> None:
        self.notify(said)
        self.post_message(OpenRun(run))

    def action_load_config(self) -> None:
        def loaded(path: Path | None) -> None:
            if path is not None:
                try:
                    self.load(RunConfig.load_over(path, preflight.machine_defaults())[0])
                except GlmError as error:
                    self.notify(str(error), severity="error")
                else:
                    self.workbench.workspace.remember_config(path)

        self.app.push_screen(LoadConfigScreen(), loaded)
