"""The Trainer callback that turns a training process into a run folder others can watch and stop.

It writes events.jsonl (one line per logging step, evaluation and checkpoint, plus start and end), keeps
status.json's step current, and serves the stop request: at each step end, if stop-request exists, it asks the
Trainer to save a checkpoint and stop. With several ranks the stop decision is all-reduced so every rank stops
at the same step (LlamaBoard's stop reached only some ranks and hung the rest). Only rank 0 writes files.

Tokens per second count real tokens: set ``TrainingArguments(include_num_input_tokens_seen="non_padding")`` and
the Trainer counts the attention mask's ones (or the non-pad ids) of every batch, over all ranks; the callback
turns that count into a rate. Left at "no", ``tokens_per_s`` is None.

events.jsonl stays strict JSON for every reader: a NaN or infinite figure (a diverged loss, its grad_norm, an
infinite learning rate) is written as null. With the run's ``stop_on_nan`` (the default) a non-finite logged loss
ends training on every rank with ``TrainingDiverged``, which the training process records as the run's failure.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from glmcore.errors import GlmError
from glmcore.runs import Run
from glmcore.units import GIB


def _gpu_memory_gib() -> list[float] | None:
    """Peak memory PyTorch has reserved on each visible GPU since the process started; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return [
        round(torch.cuda.max_memory_reserved(index) / GIB, 3) for index in range(torch.cuda.device_count())
    ]


def _all_ranks_agree_to_stop(wants_stop: bool, args: TrainingArguments) -> bool:
    """True on every rank if any rank wants to stop, so all ranks leave the loop at the same step.

    Reading the all-reduced flag back waits for the GPU once a step (NCCL reduces on the GPU). A second, CPU
    (gloo) process group would avoid the wait, at the price of a second network path that multi-node clusters
    would have to set up; one wait a step is kept instead."""
    import torch
    import torch.distributed as distributed

    if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() == 1:
        return wants_stop
    flag = torch.tensor([1 if wants_stop else 0], device=args.device)
    distributed.all_reduce(flag, op=distributed.ReduceOp.MAX)
    return bool(flag.item())


class TrainingDiverged(GlmError):
    """The loss became NaN or infinite and the run asked to stop then (``stop_on_nan``)."""


def finite_or_null(value: object) -> object:
    """``value`` with every NaN or infinite float (also inside lists) replaced by None, as JSON's null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    return value


class RunEventsCallback(TrainerCallback):
    """Writes a run's events and status from inside ``transformers.Trainer`` and serves its stop request."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.stop_on_nan = run.config.stop_on_nan
        self.stopped_by_request = False
        """Set once a stop request ended training, so the trainer records ``stopped`` rather than ``finished``."""
        self._session_start = 0.0
        self._session_start_step = 0
        self._last_log_time = 0.0
        self._last_log_step = 0
        self._last_log_tokens = 0
        self._summary: dict[str, float] = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        self._session_start = self._last_log_time = time.monotonic()
        self._session_start_step = self._last_log_step = state.global_step
        self._last_log_tokens = state.num_input_tokens_seen
        if not state.is_world_process_zero:
            return
        self.run.append_event(
            "start",
            step=state.global_step,
            total=state.max_steps,
            world_size=args.world_size,
            effective_batch_size=args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * args.world_size,
        )
        self.run.write_status(step=state.global_step, total=state.max_steps)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: object,
    ) -> None:
        if not logs:
            return
        loss = logs.get("loss")
        diverged = isinstance(loss, float) and not math.isfinite(loss)
        if state.is_world_process_zero:
            self._record_log(args, state, logs)
        if diverged and self.stop_on_nan:
            # Every rank logs the same all-reduced loss, so every rank stops here.
            raise TrainingDiverged(
                f"loss became {'NaN' if math.isnan(loss) else 'infinite'} at step {state.global_step}; "
                "lower the learning_rate (or set stop_on_nan = false to train on)"
            )

    def _record_log(self, args: TrainingArguments, state: TrainerState, logs: dict[str, float]) -> None:
        if "loss" not in logs:
            # Evaluation metrics arrive through on_evaluate; the end-of-training summary goes into the end event.
            if "train_runtime" in logs:
                self._summary = {
                    key: finite_or_null(value) for key, value in logs.items() if key.startswith("train_")
                }
            return
        now = time.monotonic()
        step = state.global_step
        interval = now - self._last_log_time
        elapsed = now - self._session_start
        steps_this_session = step - self._session_start_step
        counts_tokens = args.include_num_input_tokens_seen != "no"
        samples = (
            (step - self._last_log_step) * args.per_device_train_batch_size * args.gradient_accumulation_steps
        )
        samples *= args.world_size
        self.run.append_event(
            "log",
            step=step,
            loss=finite_or_null(logs["loss"]),
            learning_rate=finite_or_null(logs.get("learning_rate")),
            grad_norm=finite_or_null(logs.get("grad_norm")),
            epoch=state.epoch,
            tokens_per_s=(state.num_input_tokens_seen - self._last_log_tokens) / interval
            if counts_tokens and interval > 0
            else None,
            samples_per_s=samples / interval if interval > 0 else None,
            gpu_memory_gib=_gpu_memory_gib(),
            elapsed_s=elapsed,
            eta_s=(state.max_steps - step) * elapsed / steps_this_session if steps_this_session else None,
        )
        self.run.write_status(step=step, total=state.max_steps)
        self._last_log_time, self._last_log_step = now, step
        self._last_log_tokens = state.num_input_tokens_seen

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        if _all_ranks_agree_to_stop(self.run.stop_requested(), args):
            self.stopped_by_request = True
            control.should_save = True
            control.should_training_stop = True

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: object,
    ) -> None:
        if state.is_world_process_zero and metrics:
            metrics = {key: finite_or_null(value) for key, value in metrics.items()}
            self.run.append_event("eval", step=state.global_step, **metrics)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        if state.is_world_process_zero:
            path = str(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            self.run.append_event("checkpoint", step=state.global_step, path=path)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        if state.is_world_process_zero:
            self.run.append_event(
                "end",
                step=state.global_step,
                total=state.max_steps,
                stopped=self.stopped_by_request,
                **self._summary,
            )
            self.run.write_status(step=state.global_step)


class LogLinePrinter(TrainerCallback):
    """One readable line per logging step in train.log, in place of the Trainer's printed dictionaries
    (events.jsonl keeps every figure; this is for people reading the log)."""

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: object,
    ) -> None:
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        rate = logs.get("learning_rate")
        print(
            f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}"
            + (f"  lr {rate:.3g}" if rate is not None else ""),
            flush=True,
        )
