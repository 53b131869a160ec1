"""Evaluation while a run trains: BLEU/Rouge on the first rows of the validation file, the best checkpoint, early
stopping.

The Trainer already computes the eval loss every ``eval_steps``. With ``eval_metric_rows`` the run also generates
for the first K validation rows and scores them through ``glmcore.evaluate.evaluate`` (the same prompts, decoding
and published metrics as `glmtui eval`), so the figures compare with a later evaluation; each such evaluation's
files go to ``<run>/evaluations/training/step-N/``. The scores join the Trainer's metrics as ``eval_bleu-4``,
``eval_rouge-1``…, so they reach events.jsonl, TensorBoard, the best-checkpoint choice and early stopping like the
loss.

The Trainer tracks the best evaluation (``metric_for_best_model``: the run's ``best_metric``); after each save that
holds the best evaluated step, ``BestCheckpointMarker`` writes best-checkpoint.json, which makes that checkpoint
the one the run stands for (``Run.default_checkpoint``). Early stopping is transformers' ``EarlyStoppingCallback``.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from glmcore.config import RunConfig
from glmcore.runs import Run

TRAINING_EVALUATIONS = Path("evaluations") / "training"
"""Under the run folder: one folder per scored evaluation during training, ``step-N``."""


def greater_is_better(metric: str) -> bool:
    """Losses fall as a run improves; the published metrics rise."""
    return not metric.endswith("loss")


def trainer_metric_name(metric: str) -> str:
    """``best_metric`` as the Trainer's metrics name it (``eval_bleu-4``)."""
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def score_rows(model, tokenizer, examples, config: RunConfig, output_dir: Path) -> dict[str, float]:
    """BLEU-4 and Rouge of greedy answers to ``examples`` by the model as it stands, as `glmtui eval` scores them."""
    from glmcore.evaluate import EvalSettings, evaluate

    generating = (
        model.get_base_model() if hasattr(model, "get_base_model") else model
    )  # LoRA: adapters stay on
    was_training = generating.training
    generating.eval()
    try:
        result = evaluate(
            generating,
            tokenizer,
            examples,
            EvalSettings(
                max_source_length=config.max_source_length,
                max_target_length=config.max_target_length,
                metric_mode=config.metric_mode,
            ),
            output_dir=output_dir,
            label=output_dir.name,
        )
    finally:
        generating.train(was_training)
    return result.metrics


class BestCheckpointMarker(TrainerCallback):
    """Writes best-checkpoint.json once the checkpoint of the Trainer's best evaluated step is saved."""

    def __init__(self, run: Run, metric: str) -> None:
        self.run = run
        self.metric = metric
        mark = run.best_mark()
        self._marked: int | None = mark["step"] if mark else None

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        step = state.best_global_step
        if not state.is_world_process_zero or not step or step == self._marked or state.best_metric is None:
            return
        if not (self.run.checkpoints_dir / f"checkpoint-{step}").is_dir():
            return  # the best evaluation fell between saves; the mark keeps naming a saved checkpoint
        self.run.mark_best_checkpoint(
            step, self.metric, float(state.best_metric), greater_is_better=greater_is_better(self.metric)
        )
        self._marked = step


def evaluation_callbacks(run: Run) -> list[TrainerCallback]:
    """The callbacks a run that evaluates while training needs: the best-checkpoint mark, early stopping."""
    from transformers import EarlyStoppingCallback

    config = run.config
    if not (config.eval_steps and config.validation_file):
        return []
    callbacks: list[TrainerCallback] = [BestCheckpointMarker(run, config.best_metric)]
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    return callbacks


def early_stop_reason(run: Run) -> str | None:
    """Why the attempt that just ended stopped before max_steps without a stop request (its evaluations stopped
    improving), read from its ``end`` event; None when it ran to the end or was asked to stop."""
    config = run.config
    end = next((event for event in reversed(run.events()) if event["kind"] == "end"), None)
    if not config.early_stopping_patience or end is None or end.get("stopped") or end["step"] >= end["total"]:
        return None
    mark = run.best_mark()
    best = f"; its best is {mark['checkpoint']} ({config.best_metric} {mark['value']:.4g})" if mark else ""
    return (
        f"stopped early at step {end['step']}: {config.best_metric} did not improve in "
        f"{config.early_stopping_patience} evaluations in a row{best}"
    )
