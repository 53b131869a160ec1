"""Runs side by side: which run of a sweep won, and what it did differently.

``compare_runs(store, names, metric)`` reads each run folder (config.toml, status.json, events.jsonl, its
evaluations) into a ``RunSummary``: the loss curves (training and validation), the final and best losses, the
mean tokens/s, the peak GPU memory, the training time over every attempt, and the evaluation metrics where the run
has them. A name is a run (as every command names one) or a sweep id, which brings in every run of the sweep. The
runs come back best first by ``metric`` (runs without it last), with the settings whose values differ between
them; `glmtui compare` and the Compare screen show the same ``RunComparison``. Each run's metrics carry the way
they were scored (glmcore.metrics' modes); runs scored in different ways are ranked by a metric only within each
way, never against each other. Each run also carries its model's family and that family's published size, so
runs of one data set on several generations (a sweep over ``model_path``) read side by side.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from glmcore.config import GENERATION_METRICS
from glmcore.errors import GlmError
from glmcore.metrics import UNRECORDED_MODE, MetricMode, MetricModeError, metric_mode
from glmcore.runs import Run, RunError, RunStatus, RunStore
from glmcore.sweep import sweep_of

LOWER_IS_BETTER = ("final_loss", "best_loss", "eval_loss", "duration_s", "peak_gpu_memory_gib")
HIGHER_IS_BETTER = (*GENERATION_METRICS, "tokens_per_s")
METRICS = (*LOWER_IS_BETTER, *HIGHER_IS_BETTER)
"""What runs can be ordered by: eval_loss is each run's best validation loss; the published metrics come from
its evaluations (or, failing those, its scored evaluations during training)."""
IDENTITY_SETTINGS = ("name",)
"""Settings that name a run rather than change it; never reported as differing."""


class CompareError(GlmError):
    """The runs cannot be compared as asked."""


@dataclass
class RunSummary:
    """One run as a comparison reads it."""

    run: Run
    status: RunStatus
    settings: dict[str, object]
    sweep: str | None
    losses: list[tuple[int, float]] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: float | None = None
    peak_gpu_memory_gib: float | None = None
    duration_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    """The published metrics (bleu-4, rouge-1…) of its newest evaluation of the checkpoint it stands for."""
    metrics_source: str | None = None
    """Where ``metrics`` come from: an evaluation folder, or "training" (the scored evaluations while training)."""
    metric_mode: MetricMode | None = None
    """How ``metrics`` were scored; None when the run has none (or its results name a way glmtui does not know)."""
    family: str | None = None
    """The title of the run's model family ("GLM-4-9B"); None when its model folder cannot be read."""
    published_parameters: int | None = None
    """The parameters of that family's published model: the size the family goes by, whatever the folder holds."""
    problem: str | None = None
    """Why the run folder cannot be read (a damaged status.json or config.toml); it is listed with no figures."""

    @property
    def name(self) -> str:
        return str(self.settings.get("name", self.run.id))

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None

    @property
    def best_loss(self) -> float | None:
        return min(loss for _, loss in self.losses) if self.losses else None

    @property
    def eval_loss(self) -> float | None:
        """The best validation loss of the run."""
        return min(loss for _, loss in self.eval_losses) if self.eval_losses else None

    def value(self, metric: str) -> float | None:
        if metric in GENERATION_METRICS:
            return self.metrics.get(metric)
        return getattr(self, metric)


@dataclass
class RunComparison:
    runs: list[RunSummary]
    """Best first by ``metric``; runs without a value for it come last, in the order they were named."""
    metric: str
    differing: list[str]
    """The settings whose values are not the same in every run, in config order."""

    @property
    def across_families(self) -> bool:
        """Whether the runs' models are of more than one family (the table then names each run's)."""
        return len({summary.family for summary in self.runs if summary.problem is None}) > 1

    @property
    def metric_names(self) -> list[str]:
        """The published metrics that at least one run has."""
        return [name for name in GENERATION_METRICS if any(name in summary.metrics for summary in self.runs)]

    @property
    def metric_modes(self) -> list[MetricMode]:
        """The ways the runs' metrics were scored, each once, in the table's order."""
        modes: list[MetricMode] = []
        for summary in self.runs:
            if summary.metrics and summary.metric_mode is not None and summary.metric_mode not in modes:
                modes.append(summary.metric_mode)
        return modes


def _figures(run: Run, summary: RunSummary) -> None:
    """The curves, speed, memory and time of ``summary`` from the run's events."""
    rates, memory, attempts = [], [], []
    attempt_time: float | None = None
    for event in run.events():
        kind, step = event.get("kind"), event.get("step")
        if kind == "start":
            attempts.append(attempt_time)
            attempt_time = None
        elif kind == "log" and isinstance(step, int):
            if isinstance(event.get("loss"), float | int):
                summary.losses.append((step, float(event["loss"])))
            if isinstance(event.get("tokens_per_s"), float | int):
                rates.append(float(event["tokens_per_s"]))
            memory += [gib for gib in event.get("gpu_memory_gib") or () if isinstance(gib, float | int)]
            if isinstance(event.get("elapsed_s"), float | int):
                attempt_time = max(attempt_time or 0.0, float(event["elapsed_s"]))
        elif kind == "eval" and isinstance(step, int) and isinstance(event.get("eval_loss"), float | int):
            summary.eval_losses.append((step, float(event["eval_loss"])))
        elif kind == "end" and isinstance(event.get("train_runtime"), float | int):
            attempt_time = float(event["train_runtime"])
    timed = [seconds for seconds in (*attempts, attempt_time) if seconds is not None]
    summary.tokens_per_s = sum(rates) / len(rates) if rates else None
    summary.peak_gpu_memory_gib = max(memory) if memory else None
    summary.duration_s = sum(timed) if timed else None


def _results_mode(results: dict) -> MetricMode | None:
    """The way a results.json was scored (one written before the modes existed was scored the first way)."""
    try:
        return metric_mode(results.get("metric_mode", UNRECORDED_MODE.name))
    except MetricModeError:
        return None


def _training_mode(run: Run, step: object) -> MetricMode | None:
    """How the scored evaluation of training step ``step`` was scored, from the results.json it wrote (in
    glmcore.train_eval's ``evaluations/training/step-N``)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        results_path = run.path / "evaluations" / "training" / f"step-{step}" / "results.json"
        return _results_mode(json.loads(results_path.read_text(encoding="utf-8")))
    return None


def _evaluation_metrics(run: Run) -> tuple[dict[str, float], str | None, MetricMode | None]:
    """The newest evaluation of the checkpoint the run stands for (else of its newest evaluated checkpoint);
    failing any, the scores of its best (else last) scored evaluation during training; and how they were scored."""
    standing = None
    with contextlib.suppress(GlmError):
        standing = str(run.default_checkpoint().path)
    found: list[tuple[bool, int, str, dict, MetricMode | None]] = []
    folder = run.path / "evaluations"
    for results_path in folder.glob("*/**/results.json") if folder.is_dir() else ():
        if results_path.relative_to(folder).parts[0] == "training":
            continue
        with contextlib.suppress(OSError, ValueError):
            results = json.loads(results_path.read_text(encoding="utf-8"))
            checkpoint = results.get("checkpoint")
            if not isinstance(checkpoint, str) or not checkpoint.startswith(str(run.checkpoints_dir)):
                continue
            step = int(checkpoint.rsplit("-", 1)[-1]) if checkpoint.rsplit("-", 1)[-1].isdigit() else -1
            metrics = {name: results[f"predict_{name}"] for name in GENERATION_METRICS}
            found.append(
                (
                    checkpoint == standing,
                    step,
                    str(results_path.parent.relative_to(run.path)),
                    metrics,
                    _results_mode(results),
                )
            )
    if found:
        *_, source, metrics, mode = max(found, key=lambda entry: entry[:3])
        return metrics, source, mode
    scored = [event for event in run.events() if event.get("kind") == "eval" and "eval_bleu-4" in event]
    if not scored:
        return {}, None, None
    mark = run.best_mark()
    chosen = next((event for event in scored if mark and event.get("step") == mark["step"]), scored[-1])
    metrics = {name: chosen[f"eval_{name}"] for name in GENERATION_METRICS if f"eval_{name}" in chosen}
    return metrics, "training", _training_mode(run, chosen.get("step"))


def _family_and_size(run: Run) -> tuple[str | None, int | None]:
    """The title of the run's model family and its published model's parameters; (None, None) when the model
    folder cannot be read."""
    from glmcore.models import family_for

    try:
        family, _ = family_for(run.config.model_path, run.config.family)
    except GlmError:
        return None, None
    return family.title, family.published_shape().parameters


def summarize(run: Run) -> RunSummary:
    """Everything a comparison shows of one run; an unreadable one is listed with its ``problem`` only."""
    try:
        summary = RunSummary(run, run.status(), run.config.to_dict(), (sweep_of(run) or {}).get("sweep"))
        _figures(run, summary)
        summary.metrics, summary.metrics_source, summary.metric_mode = _evaluation_metrics(run)
        summary.family, summary.published_parameters = _family_and_size(run)
    except GlmError as error:
        return RunSummary(run, RunStatus(state="unreadable"), {}, None, problem=str(error))
    return summary


def sweep_runs(store: RunStore, name: str) -> list[Run] | None:
    """The runs of the sweep whose id is ``name`` (or begins with it), in sweep order; None when no sweep is."""
    members: dict[str, list[tuple[int, Run]]] = {}
    for run in store.list():
        record = sweep_of(run)
        if record and record["sweep"].startswith(name):
            members.setdefault(record["sweep"], []).append((record.get("index", 0), run))
    if not members or (len(members) > 1 and name not in members):
        if len(members) > 1:
            raise CompareError(
                f"{name!r} begins several sweeps ({', '.join(sorted(members))}); give more of it"
            )
        return None
    indexed = members.get(name) or next(iter(members.values()))
    return [run for _, run in sorted(indexed, key=lambda item: item[0])]


def resolve_names(store: RunStore, names: Sequence[str]) -> list[Run]:
    """The runs ``names`` stand for, each once, in the order named (a sweep's in sweep order)."""
    runs: list[Run] = []
    for name in names:
        found = sweep_runs(store, name)
        if found is None:
            try:
                found = [store.resolve(name)]
            except RunError as error:
                raise CompareError(f"{error} (nor is {name!r} a sweep id)") from None
        runs += [run for run in found if run not in runs]
    return runs


def default_metric(summaries: Sequence[RunSummary]) -> str:
    """The best validation loss when a run has one, else the final training loss."""
    return "eval_loss" if any(summary.eval_loss is not None for summary in summaries) else "final_loss"


def differing_settings(summaries: Sequence[RunSummary]) -> list[str]:
    """The settings (in config order) whose values are not the same in every readable run; a setting left out
    of one config (None, "automatic") differs from one given in another."""
    readable = [summary for summary in summaries if summary.problem is None]
    names: list[str] = []
    for summary in readable:
        names += [name for name in summary.settings if name not in names and name not in IDENTITY_SETTINGS]
    return [name for name in names if len({json.dumps(s.settings.get(name)) for s in readable}) > 1]


def compare_runs(store: RunStore, names: Sequence[str], metric: str | None = None) -> RunComparison:
    """The runs (and sweeps) ``names`` stand for, summarized, best first by ``metric`` (default_metric)."""
    if metric is not None and metric not in METRICS:
        raise CompareError(
            f"{metric!r} is not something runs can be ordered by; use one of {', '.join(METRICS)}"
        )
    if not names:
        raise CompareError("name the runs to compare (ids, names or a sweep id)")
    summaries = [summarize(run) for run in resolve_names(store, names)]
    return order(summaries, metric or default_metric(summaries))


def order(summaries: Sequence[RunSummary], metric: str) -> RunComparison:
    """``summaries`` best first by ``metric``, with the settings that differ between them. By a published metric,
    runs scored in different ways are ranked within each way (in the order the ways first appear), since a
    BLEU-4 ×100 and one on a 0–1 scale do not compare."""
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    position = {id(summary): number for number, summary in enumerate(summaries)}
    ways: list[MetricMode | None] = []
    for summary in summaries:
        if summary.metric_mode not in ways:
            ways.append(summary.metric_mode)

    def rank(summary: RunSummary) -> tuple[bool, int, float, int]:
        value = summary.value(metric)
        way = ways.index(summary.metric_mode) if metric in GENERATION_METRICS else 0
        return (value is None, way, 0.0 if value is None else sign * value, position[id(summary)])

    ranked = sorted(summaries, key=rank)
    return RunComparison(ranked, metric, differing_settings(ranked))
