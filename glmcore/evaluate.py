"""Evaluation: batched generation over a dataset, scored as the model family's published fine-tuning scores it.

Examples are built as the published evaluation builds them (the prompt cut to max_source_length - 2 tokens, then
`[gMASK] <sop>`; the reference is the label tokenized with truncation and decoded back), and every example gets up
to max_target_length NEW tokens. The published budget (`max_length` = source + target, padding included) varies
with whatever else shares the batch; ours does not, so batch size does not change a greedy prediction in fp32 (in
bf16 or fp16 rounding depends on the batch's shape and a near-tie can go the other way: on an H200, 28 of 29
tiny-model predictions matched batch size 1).

Scores follow the metric mode (glmcore.metrics): the settings' `metric_mode`, else the model family's published
way; results.json and comparison.json name it. A thinking model's (GLM-Z1's) reasoning is parted from its answer
(glmcore.reasoning): the answer is scored and written as the prediction, the reasoning kept beside it in
examples.jsonl.

Generation is batched: prompts are sorted by length (so each batch pads little, longest first so a batch that does
not fit shows at once), left-padded, run through `generate` with the KV cache, and put back in the data's order.
Positions follow the published prediction path, which places the answer at a `[MASK]` written in the prompt before
the `[gMASK]` (chat and training take `[gMASK]` first). Predictions are the new tokens decoded with special tokens
skipped; they are scored as decoded, as the published `compute_metrics` scores them, and written to
`generated_predictions.txt` stripped of surrounding whitespace, labels too, as the published script writes it.

An evaluation folder holds `generated_predictions.txt` (ChatGLM-6B's form), `examples.jsonl` (per example: input,
label, prediction, scores) and `results.json`, written last: a folder with `results.json` is complete. A comparison
evaluates the base model and several prefix or LoRA checkpoints over the same data with ONE loaded model,
swapping only the prefix or the adapter (never merged into the base's weights), and writes each evaluation into its own subfolder with `comparison.json` and
`comparison_examples.jsonl` (before/after per example, worst first) beside them. Every checkpoint is checked
before the model loads; a damaged one is skipped, and comparison.json says which and why.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from glmcore.data import Columns, Example, evaluation_prompt_ids, load_examples, reference_text
from glmcore.errors import GlmError
from glmcore.metrics import METRIC_NAMES, UNRECORDED_MODE, MetricMode, metric_mode, prefixed, score_all
from glmcore.reasoning import prompt_ids_open_reasoning, split_reasoning
from glmcore.workspace import atomic_write_text

if TYPE_CHECKING:
    from glmcore.runs import Run

PREDICTIONS_FILE = "generated_predictions.txt"
EXAMPLES_FILE = "examples.jsonl"
RESULTS_FILE = "results.json"
COMPARISON_FILE = "comparison.json"
COMPARISON_EXAMPLES_FILE = "comparison_examples.jsonl"
BASE = "base"
"""The name that stands for the model without a prefix, in checkpoint lists and as its subfolder."""

CPU_BATCH_SIZE = 8
PUBLISHED_TOP_K = 50


class EvalError(GlmError):
    """An evaluation cannot run as asked."""


class EvaluationCancelled(GlmError):
    """The evaluation was cancelled before it finished; nothing of it was written."""

    def __init__(self, message: str = "The evaluation was cancelled; nothing was written.") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class EvalSettings:
    """How to generate: greedy by default, so scores repeat exactly."""

    max_source_length: int = 64
    max_target_length: int = 64
    batch_size: int | None = None
    """None picks one from free GPU memory (8 on the CPU)."""
    sampling: bool = False
    top_p: float = 0.7
    temperature: float = 0.95
    seed: int = 42
    """Seeds sampling; sampled predictions repeat for the same settings and batch size."""
    metric_mode: str | None = None
    """How to score ("ptuning" or "finetune-demo", glmcore.metrics); None: the model family's published way."""

    def __post_init__(self) -> None:
        if self.metric_mode is not None:
            metric_mode(self.metric_mode)
        if self.max_source_length < 3:
            raise EvalError(
                f"max_source_length {self.max_source_length} leaves no room for the prompt "
                "(2 tokens go to [gMASK] <sop>); use 3 or more."
            )
        if self.max_target_length < 3:
            raise EvalError(f"max_target_length must be 3 or more, not {self.max_target_length}.")
        if self.batch_size is not None and self.batch_size < 1:
            raise EvalError(f"The batch size must be 1 or more, not {self.batch_size}.")
        if not 0 < self.top_p <= 1:
            raise EvalError(f"top_p must be in (0, 1], not {self.top_p}.")
        if self.temperature <= 0:
            raise EvalError(f"The temperature must be above 0, not {self.temperature}.")

    @classmethod
    def published_sampling(cls, **overrides: object) -> EvalSettings:
        """ChatGLM-6B's evaluation decoding: sampling with top_p 0.7 and temperature 0.95."""
        return cls(**{"sampling": True, "top_p": 0.7, "temperature": 0.95, **overrides})

    def sampling_options(self):
        """The decoder's sampling settings (transformers 4.27, which produced the published numbers, also
        applied top_k 50 by default, so sampling keeps it)."""
        from glmcore.generation import Sampling

        if not self.sampling:
            return Sampling()
        return Sampling(
            do_sample=True,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=PUBLISHED_TOP_K,
            seed=self.seed,
        )


@dataclass(frozen=True)
class EvalProgress:
    """A snapshot for progress displays; `eta_seconds` is None until a rate is known."""

    label: str
    phase: str
    """"generating" or "scoring"."""
    done: int
    total: int
    tokens_per_second: float = 0.0
    eta_seconds: float | None = None
    evaluation: int = 1
    """1-based index of this evaluation within a comparison, and how many there are."""
    evaluations: int = 1


@dataclass(frozen=True)
class ExampleResult:
    index: int
    input: str
    label: str
    prediction: str
    scores: dict[str, float]
    input_tokens: int
    input_truncated: bool
    generated_tokens: int
    reasoning: str | None = None
    """A thinking model's reasoning before its answer (the prediction); None for other models."""

    @property
    def overall(self) -> float:
        return overall_score(self.scores)


@dataclass
class EvalResult:
    label: str
    output_dir: Path
    metrics: dict[str, float]
    """Means over examples, by plain name (`bleu-4`, `rouge-1`, ...)."""
    examples: list[ExampleResult]
    runtime_seconds: float
    generation_seconds: float
    generated_tokens: int
    settings: EvalSettings
    checkpoint: str | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0

    @property
    def metric_mode(self) -> MetricMode:
        """How the scores were computed."""
        return metric_mode(self.settings.metric_mode or UNRECORDED_MODE.name)

    def results(self) -> dict[str, object]:
        """The contents of results.json: the published keys first, then timings and settings."""
        count = len(self.examples)
        return {
            **prefixed(self.metrics),
            "predict_samples": count,
            "predict_runtime": round(self.runtime_seconds, 4),
            "predict_samples_per_second": round(count / self.runtime_seconds, 3)
            if self.runtime_seconds > 0
            else 0.0,
            "predict_generated_tokens": self.generated_tokens,
            "predict_tokens_per_second": round(self.tokens_per_second, 3),
            "generation_runtime": round(self.generation_seconds, 4),
            "metric_mode": self.metric_mode.name,
            "label": self.label,
            "checkpoint": self.checkpoint,
            "settings": asdict(self.settings),
        }

    def worst(self, count: int = 20) -> list[ExampleResult]:
        return sorted(self.examples, key=lambda example: example.overall)[:count]


def overall_score(scores: dict[str, float]) -> float:
    """The mean of the four metrics: what "worst first" ranks by."""
    return sum(scores[name] for name in METRIC_NAMES) / len(METRIC_NAMES)


def automatic_batch_size(model, settings: EvalSettings) -> int:
    """A batch size that fits the GPU's free memory (`glmcore.estimate.evaluation_batch_size`), or 8 on a CPU."""
    import torch

    from glmcore.estimate import evaluation_batch_size
    from glmcore.models import family_of

    device = model.device
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return evaluation_batch_size(
        family_of(model).shape(model.config.to_dict()),
        free_bytes=free_bytes,
        element_bytes=torch.finfo(model.get_input_embeddings().weight.dtype).bits // 8,
        sequence_length=settings.max_source_length + settings.max_target_length,
        pre_seq_len=model.config.pre_seq_len or 0,
    )


def _generate_batch(
    decoder, tokenizer, prompts: list[list[int]], settings: EvalSettings, cancel: threading.Event
) -> list[list[int]]:
    """New tokens per prompt (ending at a stop id when one came), for one batch, through the static decoder.

    A short last batch is filled up with copies of its last prompt on the GPU, so the CUDA graph captured
    for the full batch serves it too; the copies' outputs are dropped.
    """
    from glmcore.generation import generate
    from glmcore.models import family_of

    real = len(prompts)
    if decoder.use_graph and real < decoder.batch:
        prompts = prompts + [prompts[-1]] * (decoder.batch - real)
    rows = generate(
        decoder.model,
        prompts,
        max_new_tokens=settings.max_target_length,
        # The family's stop ids: ChatGLM3's answers also end at <|user|> or <|observation|>.
        eos_token_id=family_of(decoder.model).implementation().stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        sampling=settings.sampling_options(),
        decoder=decoder if len(prompts) == decoder.batch else None,
        should_stop=cancel.is_set,
        prediction=True,
    )
    return rows[:real]


def _generate_all(
    model,
    tokenizer,
    prompts: list[list[int]],
    settings: EvalSettings,
    report: Callable[[int, int], None],
    cancel: threading.Event,
) -> tuple[list[list[int]], int]:
    """New tokens for every prompt, in the prompts' order, and the batch size that was used.

    Batches hold prompts of similar length, longest first. A batch that runs out of GPU memory is halved and
    retried (greedy results do not depend on the batch).
    """
    import torch

    from glmcore.generation import new_decoder

    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]), reverse=True)
    batch_size = min(settings.batch_size or automatic_batch_size(model, settings), len(prompts))
    capacity = settings.max_source_length + settings.max_target_length
    generated: dict[int, list[int]] = {}
    position = 0
    decoder = None
    while position < len(order):
        if cancel.is_set():
            raise EvaluationCancelled()
        indices = order[position : position + batch_size]
        try:
            if decoder is None or decoder.batch != batch_size:
                decoder = None
                decoder = new_decoder(model, batch_size, capacity, prediction=True)
            rows = _generate_batch(
                decoder, tokenizer, [prompts[index] for index in indices], settings, cancel
            )
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise EvalError(
                    "The GPU ran out of memory generating even one example: use a smaller max_source_length "
                    "or max_target_length, quantization_bit 4 or 8, or free the GPU."
                ) from None
            torch.cuda.empty_cache()
            batch_size = max(1, batch_size // 2)
            continue
        if cancel.is_set():
            raise EvaluationCancelled()
        generated.update(zip(indices, rows, strict=True))
        position += len(indices)
        report(position, sum(len(row) for row in rows))
    return [generated[index] for index in range(len(prompts))], batch_size


def evaluate(
    model,
    tokenizer,
    examples: Sequence[Example],
    settings: EvalSettings,
    *,
    output_dir: str | Path,
    progress: Callable[[EvalProgress], None] | None = None,
    cancel: threading.Event | None = None,
    label: str = "",
    checkpoint: str | None = None,
) -> EvalResult:
    """Generate for every example with `model` as it stands (prefix or not), score, and write `output_dir`.

    Raises EvaluationCancelled, having written nothing, when `cancel` is set before the end.
    """
    from glmcore.models import family_of

    if not examples:
        raise EvalError("There are no examples to evaluate.")
    cancel = cancel or threading.Event()
    output_dir = Path(output_dir)
    label = label or output_dir.name
    if settings.sampling:
        from transformers import set_seed

        set_seed(settings.seed)
    source_limit = settings.max_source_length - 2
    source_lengths = [len(tokenizer.encode(example.prompt, add_special_tokens=False)) for example in examples]
    prompts = [evaluation_prompt_ids(tokenizer, example, settings.max_source_length) for example in examples]
    labels = [reference_text(tokenizer, example.response, settings.max_target_length) for example in examples]

    started = time.monotonic()
    generated_so_far = 0

    def report_generation(done: int, new_tokens: int) -> None:
        nonlocal generated_so_far
        generated_so_far += new_tokens
        elapsed = time.monotonic() - started
        if progress is not None:
            progress(
                EvalProgress(
                    label=label,
                    phase="generating",
                    done=done,
                    total=len(examples),
                    tokens_per_second=generated_so_far / elapsed if elapsed > 0 else 0.0,
                    eta_seconds=elapsed / done * (len(examples) - done),
                )
            )

    if progress is not None:
        progress(EvalProgress(label=label, phase="generating", done=0, total=len(examples)))
    generated, batch_size = _generate_all(model, tokenizer, prompts, settings, report_generation, cancel)
    generation_seconds = time.monotonic() - started
    mode = metric_mode(settings.metric_mode or family_of(model).metric_mode)
    replies = [
        split_reasoning(
            tokenizer.decode(tokens, skip_special_tokens=True),
            opened=prompt_ids_open_reasoning(tokenizer, prompt),
        )
        for prompt, tokens in zip(prompts, generated, strict=True)
    ]
    predictions = [reply.answer for reply in replies]

    def report_scoring(done: int, total: int) -> None:
        if cancel.is_set():
            raise EvaluationCancelled()
        if progress is not None:
            progress(
                EvalProgress(
                    label=label,
                    phase="scoring",
                    done=done,
                    total=total,
                    tokens_per_second=generated_so_far / generation_seconds if generation_seconds else 0.0,
                    eta_seconds=0.0,
                )
            )

    per_example, means = score_all(predictions, labels, mode=mode, on_progress=report_scoring)
    result = EvalResult(
        label=label,
        output_dir=output_dir,
        metrics=means,
        examples=[
            ExampleResult(
                index=index,
                input=example.prompt,
                label=labels[index],
                prediction=predictions[index],
                scores=per_example[index],
                input_tokens=min(source_lengths[index], source_limit),
                input_truncated=source_lengths[index] > source_limit,
                generated_tokens=len(generated[index]),
                reasoning=replies[index].reasoning,
            )
            for index, example in enumerate(examples)
        ],
        runtime_seconds=time.monotonic() - started,
        generation_seconds=generation_seconds,
        generated_tokens=sum(len(tokens) for tokens in generated),
        settings=replace(settings, batch_size=batch_size, metric_mode=mode.name),
        checkpoint=checkpoint,
    )
    write_evaluation(result)
    return result


def write_evaluation(result: EvalResult) -> None:
    """Write the three files of an evaluation folder, each atomically, results.json last."""
    folder = result.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        folder / PREDICTIONS_FILE,
        "".join(
            json.dumps(
                {"labels": example.label.strip(), "predict": example.prediction.strip()}, ensure_ascii=False
            )
            + "\n"
            for example in result.examples
        ),
    )
    atomic_write_text(
        folder / EXAMPLES_FILE,
        "".join(json.dumps(asdict(example), ensure_ascii=False) + "\n" for example in result.examples),
    )
    atomic_write_text(
        folder / RESULTS_FILE, json.dumps(result.results(), ensure_ascii=False, indent=2) + "\n"
    )


def read_predictions(path: str | Path) -> list[tuple[str, str]]:
    """(label, prediction) pairs from a `generated_predictions.txt`, ours or ChatGLM-6B's."""
    pairs = []
    path = Path(path)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            pairs.append((record["labels"], record["predict"]))
        except (ValueError, KeyError, TypeError):
            raise EvalError(
                f'{path}, line {number}: expected a JSON object with "labels" and "predict".'
            ) from None
    return pairs


def read_evaluation(folder: str | Path) -> EvalResult:
    """An evaluation folder read back (for browsing its worst examples), or an error if it is incomplete."""
    folder = Path(folder)
    try:
        results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
        lines = (folder / EXAMPLES_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvalError(
            f"{folder} holds no complete evaluation (results.json or examples.jsonl is missing)."
        ) from None
    except ValueError as error:
        raise EvalError(f"{folder / RESULTS_FILE} is not valid JSON ({error}).") from None
    return EvalResult(
        label=results["label"],
        output_dir=folder,
        metrics={name: results[f"predict_{name}"] for name in METRIC_NAMES},
        examples=[ExampleResult(**json.loads(line)) for line in lines if line.strip()],
        runtime_seconds=results["predict_runtime"],
        generation_seconds=results["generation_runtime"],
        generated_tokens=results["predict_generated_tokens"],
        settings=EvalSettings(**{"metric_mode": UNRECORDED_MODE.name, **results["settings"]}),
        checkpoint=results["checkpoint"],
    )


# --- comparing the base model and prefix checkpoints ------------------------------------------------


@dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint a comparison left out, found damaged (or unfit for the model) before it began."""

    label: str
    checkpoint: str
    reason: str


@dataclass
class CheckpointComparison:
    output_dir: Path
    evaluations: list[EvalResult]
    complete: bool
    """False when cancelled after some evaluations finished: those are kept, the rest were not run."""
    skipped: list[SkippedCheckpoint] = field(default_factory=list)

    def metrics(self) -> dict[str, dict[str, float]]:
        """Published metric names per evaluation label, side by side."""
        return {evaluation.label: prefixed(evaluation.metrics) for evaluation in self.evaluations}

    @property
    def metric_mode(self) -> MetricMode:
        """How every evaluation of the comparison was scored (one model, one setting: the same for all)."""
        return self.evaluations[0].metric_mode


def _is_base(checkpoint: str | Path | None) -> bool:
    return checkpoint is None or str(checkpoint) == BASE


def checkpoint_plan(
    model_path: str | Path, checkpoints: Sequence[str | Path | None], family: str | None = None
) -> tuple[list[tuple[str, str | Path | None]], list[SkippedCheckpoint]]:
    """The (label, checkpoint) pairs a comparison evaluates, and those it skips with why, decided before the
    model loads rather than after an hour of evaluating the entries before a damaged one.

    A checkpoint that does not exist is refused (a name mistyped); one whose prefix or LoRA adapter files are
    damaged, unsafe or made for another model is skipped. Refused when nothing is left to evaluate.
    """
    from glmcore.adapters import adapter_problem, is_adapter_checkpoint
    from glmcore.models.loading import load_config
    from glmcore.prefix import prefix_problem

    config = None
    evaluated, skipped = [], []
    for label, checkpoint in zip(comparison_labels(checkpoints), checkpoints, strict=True):
        if _is_base(checkpoint):
            evaluated.append((label, checkpoint))
            continue
        if not Path(checkpoint).is_dir():
            raise EvalError(f"The checkpoint {checkpoint} does not exist.")
        if config is None:
            config = load_config(model_path, family)
        if is_adapter_checkpoint(Path(checkpoint)):
            problem = adapter_problem(Path(checkpoint), Path(model_path), family)
        else:
            problem = prefix_problem(Path(checkpoint), config)
        if problem:
            skipped.append(SkippedCheckpoint(label, str(Path(checkpoint).absolute()), problem))
        else:
            evaluated.append((label, checkpoint))
    if not evaluated:
        reasons = " ".join(f"{entry.label}: {entry.reason}" for entry in skipped)
        raise EvalError(f"None of the checkpoints can be evaluated. {reasons}")
    return evaluated, skipped


def comparison_labels(checkpoints: Sequence[str | Path | None]) -> list[str]:
    """Subfolder names: `base`, else the checkpoint folder's name, made unique with -2, -3, ..."""
    labels: list[str] = []
    for checkpoint in checkpoints:
        name = BASE if _is_base(checkpoint) else Path(checkpoint).name
        candidate, number = name, 2
        while candidate in labels:
            candidate, number = f"{name}-{number}", number + 1
        labels.append(candidate)
    return labels


def compare_checkpoints(
    model_path: str | Path,
    checkpoints: Sequence[str | Path | None],
    data_file: str | Path,
    settings: EvalSettings,
    output_root: str | Path,
    *,
    columns: Columns | None = None,
    quantization_bit: int = 16,
    progress: Callable[[EvalProgress], None] | None = None,
    cancel: threading.Event | None = None,
    device: str | None = None,
    limit: int | None = None,
    family: str | None = None,
    four_bit: str = "nf4",
) -> CheckpointComparison:
    """Evaluate the same data through the base model (`"base"`) and each prefix or LoRA checkpoint, side by side.

    `limit` evaluates only the data's first `limit` examples (a quick look before the whole file); it is
    recorded in comparison.json with the file's full count. `family` is the model's `family` setting. `four_bit`
    says how 4-bit weights are stored (nf4 or int4, `glmcore.models.int4`).

    The base model is loaded once; each checkpoint only swaps the prefix encoder or the LoRA adapter (its
    low-rank updates added to the base's outputs, as `glmcore.adapters` applies them). Results go into
    `output_root/<label>/`, with comparison.json and comparison_examples.jsonl in `output_root`. A damaged
    checkpoint is skipped (`checkpoint_plan`): the comparison's `skipped` and comparison.json name it and why.
    When cancelled, the finished evaluations are kept and comparison.json says `"complete": false`; if none
    finished, nothing is left behind and EvaluationCancelled is raised.
    """
    from glmcore.adapters import attach_adapter, is_adapter_checkpoint
    from glmcore.models.loading import load_model, load_tokenizer
    from glmcore.prefix import install_prefix_checkpoint, set_prefix

    if not checkpoints:
        raise EvalError('Nothing to evaluate: name at least one checkpoint, or "base" for the model alone.')
    if limit is not None and limit < 1:
        raise EvalError(f"The limit must be 1 or more examples (got {limit}); leave it out for all of them.")
    cancel = cancel or threading.Event()
    output_root = Path(output_root)
    if output_root.exists() and any(output_root.iterdir()):
        raise EvalError(f"{output_root} already holds files; choose an empty or new output folder.")
    evaluated, skipped = checkpoint_plan(model_path, checkpoints, family)
    all_examples = load_examples(data_file, columns or Columns()).examples
    examples = all_examples[:limit]
    tokenizer = load_tokenizer(model_path, family=family)
    model = load_model(
        model_path, quantization_bit=quantization_bit, device=device, family=family, four_bit=four_bit
    )

    evaluations: list[EvalResult] = []
    started = time.monotonic()
    adapter = None
    for number, (label, checkpoint) in enumerate(evaluated, start=1):
        if adapter is not None:
            adapter.remove()
            adapter = None
        if _is_base(checkpoint):
            set_prefix(model, None)
            checkpoint_name = None
        elif is_adapter_checkpoint(Path(checkpoint)):
            set_prefix(model, None)
            adapter = attach_adapter(model, Path(checkpoint))
            checkpoint_name = str(Path(checkpoint).absolute())
        else:
            install_prefix_checkpoint(model, checkpoint)
            checkpoint_name = str(Path(checkpoint).absolute())
        this_started = time.monotonic()

        def report(snapshot: EvalProgress, number: int = number, this_started: float = this_started) -> None:
            """The evaluation's snapshot, its ETA extended by the evaluations still to come."""
            if progress is None:
                return
            eta = snapshot.eta_seconds
            if eta is not None:
                one_evaluation = (
                    (this_started - started) / len(evaluations)
                    if evaluations
                    else time.monotonic() - this_started + eta
                )
                eta += (len(evaluated) - number) * one_evaluation
            progress(replace(snapshot, eta_seconds=eta, evaluation=number, evaluations=len(evaluated)))

        try:
            evaluations.append(
                evaluate(
                    model,
                    tokenizer,
                    examples,
                    settings,
                    output_dir=output_root / label,
                    progress=report,
                    cancel=cancel,
                    label=label,
                    checkpoint=checkpoint_name,
                )
            )
        except EvaluationCancelled:
            if not evaluations:
                _remove_empty(output_root)
                raise
            break
    comparison = CheckpointComparison(output_root, evaluations, len(evaluations) == len(evaluated), skipped)
    subset = {"limit": limit, "data_examples": len(all_examples)}
    _write_comparison(comparison, model_path, data_file, quantization_bit, settings, subset, four_bit)
    return comparison


def _remove_empty(folder: Path) -> None:
    """Remove `folder` and its parents up to the first that holds something else (all were made for us)."""
    for candidate in (folder, *folder.parents):
        try:
            candidate.rmdir()
        except OSError:
            return


def _write_comparison(
    comparison: CheckpointComparison,
    model_path: str | Path,
    data_file: str | Path,
    quantization_bit: int,
    settings,
    subset: dict[str, int | None],
    four_bit: str,
) -> None:
    """comparison.json (metrics side by side) and comparison_examples.jsonl (before/after, worst first).

    "Before" is the base model's output; "after" holds each checkpoint's. Rows are ranked by the last
    checkpoint's score (the base's when only the base was evaluated), worst first.
    """
    evaluations = comparison.evaluations
    base = next((evaluation for evaluation in evaluations if evaluation.checkpoint is None), None)
    tuned = [evaluation for evaluation in evaluations if evaluation.checkpoint is not None]
    ranking = tuned[-1] if tuned else evaluations[-1]
    summary = {
        "complete": comparison.complete,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": str(Path(model_path).absolute()),
        "data": str(Path(data_file).absolute()),
        **subset,
        "quantization_bit": quantization_bit,
        **({"four_bit": four_bit} if quantization_bit == 4 else {}),
        "settings": asdict(replace(settings, metric_mode=comparison.metric_mode.name)),
        "metric_mode": comparison.metric_mode.name,
        "ranked_by": ranking.label,
        "metrics": comparison.metrics(),
        "evaluations": [
            {"label": evaluation.label, "folder": evaluation.label, **evaluation.results()}
            for evaluation in evaluations
        ],
        "skipped": [asdict(entry) for entry in comparison.skipped],
    }
    rows = []
    for index in sorted(range(len(ranking.examples)), key=lambda index: ranking.examples[index].overall):
        first = evaluations[0].examples[index]
        rows.append(
            {
                "index": index,
                "input": first.input,
                "label": first.label,
                "before": base.examples[index].prediction if base else None,
                "before_scores": base.examples[index].scores if base else None,
                "after": {evaluation.label: evaluation.examples[index].prediction for evaluation in tuned},
                "after_scores": {evaluation.label: evaluation.examples[index].scores for evaluation in tuned},
            }
        )
    folder = comparison.output_dir
    atomic_write_text(
        folder / COMPARISON_EXAMPLES_FILE, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    )
    atomic_write_text(folder / COMPARISON_FILE, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")


def new_evaluation_folder(parent: str | Path, now: datetime | None = None) -> Path:
    """`parent/<yyyymmdd-hhmmss>` (of ``now``, default the clock), with a suffix if that name is taken (not
    created here)."""
    base = Path(parent) / f"{now or datetime.now():%Y%m%d-%H%M%S}"
    candidate, number = base, 2
    while candidate.exists():
        candidate, number = base.with_name(f"{base.name}-{number}"), number + 1
    return candidate


def new_run_evaluation_folder(run: Run, now: datetime | None = None) -> Path:
    """Where a new evaluation of `run` goes: `<run>/evaluations/<yyyymmdd-hhmmss>`."""
    return new_evaluation_folder(run.path / "evaluations", now)


def run_checkpoints(run: Run) -> list[Path]:
    """The run's complete checkpoints (prefixes or LoRA adapters), oldest first; an error when it has none yet."""
    checkpoints = [checkpoint.path for checkpoint in run.checkpoints()]
    if not checkpoints:
        raise EvalError(f"Run {run.id} has no complete checkpoint yet; evaluate it after its first save.")
    return checkpoints


@dataclass(frozen=True)
class EvalPlan:
    """What a comparison of a run (or a model folder) evaluates, on what data and how: `compare_checkpoints`'s arguments
    but the output folder, decided before anything loads, the same for the CLI and the app."""

    model_path: Path
    checkpoints: list[str | Path]
    data_file: Path
    columns: Columns
    settings: EvalSettings
    quantization_bit: int
    family: str | None
    """The `family` setting to load with (the run's, or as asked); None: found from the folder."""
    four_bit: str = "nf4"
    """How 4-bit weights are stored: nf4 or int4 (`glmcore.models.int4`)."""

    def compare_arguments(self) -> dict[str, object]:
        """The keyword arguments of `compare_checkpoints` this plan stands for."""
        return {
            "model_path": self.model_path,
            "checkpoints": self.checkpoints,
            "data_file": self.data_file,
            "settings": self.settings,
            "columns": self.columns,
            "quantization_bit": self.quantization_bit,
            "family": self.family,
            "four_bit": self.four_bit,
        }


def check_evaluable_run(run: Run) -> None:
    """Refuses (EvalError) a run whose checkpoints are whole models (full fine-tuning): prefix and LoRA
    checkpoints are evaluated over the base, a whole model once exported."""
    if run.config.method not in ("ptuning-v2", "lora"):
        raise EvalError(
            f"Run {run.id} trained with {run.config.method}, neither P-tuning v2 nor LoRA: export it (glmtui "
            f"export {run.id}) and evaluate the exported folder (glmtui eval --model FOLDER)."
        )


def plan_evaluation(
    run: Run | None,
    *,
    model: Path | None = None,
    checkpoints: Sequence[str | Path] | None = None,
    data: Path | None = None,
    prompt_column: str | None = None,
    response_column: str | None = None,
    history_column: str | None = None,
    max_source_length: int | None = None,
    max_target_length: int | None = None,
    quantization_bit: int | None = None,
    family: str | None = None,
    batch_size: int | None = None,
    seed: int = 42,
    sample: bool = False,
    metric_mode: str | None = None,
    four_bit: str = "nf4",
) -> EvalPlan:
    """The evaluation of `run` (or of the `model` folder) the options ask for, each left out taken from the run;
    raises EvalError with the sentence to show when there is none to make.

    A full fine-tuning run is refused (export it first); the data is the run's validation file unless named (never its
    training file: scores on the data it learned would flatter it); the checkpoints, unless named, are the base
    model and every complete checkpoint of the run. `metric_mode`, else the run's, else the family's published way
    scores it. `four_bit` int4 means 4-bit unless the bits are given.
    """
    from glmcore.models import int4

    if run is not None:
        check_evaluable_run(run)
    config = run.config if run is not None else None
    folder = model or (config.model_path if config else None)
    if folder is None:
        raise EvalError("Name the model folder with --model (or a run with --run).")
    data = data or (config.validation_file if config else None)
    if data is None:
        raise EvalError(
            f"Run {run.id} has no validation file: name the data to evaluate on (--data, or the Data file "
            "field)."
            if run is not None
            else "Name the data to evaluate on with --data."
        )
    if checkpoints is None:
        checkpoints = [BASE, *(run_checkpoints(run) if run is not None else [])]
    asked = {"max_source_length": max_source_length, "max_target_length": max_target_length}
    lengths = {
        name: value
        if value is not None
        else getattr(config, name, EvalSettings.__dataclass_fields__[name].default)
        for name, value in asked.items()
    }
    bits = int4.resolve_bits(quantization_bit, four_bit, config.quantization_bit if config else 16)
    int4.check_four_bit(four_bit, bits)
    common = {
        "batch_size": batch_size,
        "seed": seed,
        "metric_mode": metric_mode or (config.metric_mode if config else None),
        **lengths,
    }
    return EvalPlan(
        model_path=Path(folder).expanduser(),
        checkpoints=list(checkpoints),
        data_file=Path(data).expanduser(),
        columns=Columns(
            prompt=prompt_column or (config.prompt_column if config else "content"),
            response=response_column or (config.response_column if config else "summary"),
            history=history_column or (config.history_column if config else None),
        ),
        settings=EvalSettings.published_sampling(**common) if sample else EvalSettings(**common),
        quantization_bit=bits,
        family=family or (config.family if config else None),
        four_bit=four_bit,
    )
