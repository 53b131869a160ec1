"""The training process of one run: `python -m glmcore.train RUN_DIR [--resume]`.

It reads the run's config.toml, trains through transformers' Trainer (a callback writes events.jsonl and
status.json and serves stop requests), and records how it ended. It never depends on whoever launched
it: the run folder is the whole contract (see docs/runs.md).

Methods: `ptuning-v2` trains only the prefix (the base frozen, often 4- or 8-bit) and saves prefix-only
checkpoints; `lora` attaches PEFT adapters to the family's `lora_target_modules` (query_key_value); `full`
trains every parameter.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from glmcore.callbacks import LogLinePrinter, RunEventsCallback
from glmcore.config import RunConfig
from glmcore.data import Columns, TrainingCollator, load_examples, training_dataset
from glmcore.distributed import (
    SLURM_RUN_VARIABLE,
    RankInfo,
    die_with_parent,
    leave_process_group,
    rank_log_path,
    redirect_output,
    run_process_id,
)
from glmcore.errors import GlmError
from glmcore.estimate import ModelShape, resolve_gradient_checkpointing
from glmcore.notify import announce_end
from glmcore.quiet import LIBRARY_LOG_NAME, quiet_libraries
from glmcore.runs import Run, RunError, describe_failure, describe_resume, hold_trainer_lock
from glmcore.train_eval import early_stop_reason, evaluation_callbacks, greater_is_better, trainer_metric_name


def _dtype(config: RunConfig):
    import torch

    from glmcore.models.loading import default_device, default_dtype

    if config.dtype:
        return getattr(torch, config.dtype)
    return default_dtype(default_device())


def free_gpu_memory() -> int | None:
    """Free memory of the training GPU, before the model is loaded; None on the CPU."""
    import torch

    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None


def training_device() -> str | None:
    """This rank's GPU (`cuda:<local rank>`) when several ranks share the visible GPUs; None picks the default."""
    import torch

    info = RankInfo.from_environment()
    if info.is_distributed and torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        return f"cuda:{info.local_rank}"
    return None


def prepare_model(config: RunConfig):
    """The model with exactly the parameters of `config.method` trainable, on this rank's device."""
    from glmcore.models.loading import load_model

    device = training_device()
    if config.method == "ptuning-v2":
        model = load_model(
            config.model_path,
            quantization_bit=config.quantization_bit,
            dtype=_dtype(config),
            device=device,
            family=config.family,
            pre_seq_len=config.pre_seq_len,
            prefix_projection=config.prefix_projection,
        )
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("transformer.prefix_encoder.")
        # transformers refuses to train a quantized model without a trainable adapter; the prefix is one.
        model._hf_peft_config_loaded = True
        return model
    model = load_model(
        config.model_path,
        quantization_bit=config.quantization_bit,
        dtype=_dtype(config),
        device=device,
        family=config.family,
    )
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        from glmcore.models import family_of

        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(family_of(model).lora_target_modules),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora)
    for parameter in model.parameters():
        parameter.requires_grad = True
    return model


def trainer_class(method: str):
    """The Trainer, saving each checkpoint whole or not at all; prefix-only saving and loading for P-tuning.

    ``_save_checkpoint`` is the Trainer's one place that writes a checkpoint (model, optimizer, scheduler, RNG
    states, trainer_state.json last). Its folder is written under checkpoints/.partial/ (through
    ``Run.saving_checkpoint``: fsynced, renamed into place, deleted if the save fails), and the Trainer's pruning
    to ``save_total_limit`` runs once the new checkpoint is in place.

    A training step on one GPU reads nothing back from it (tests/gpu/test_training_step_gpu.py): the count of
    input tokens stays on the device until a logging step or a checkpoint reads it (``_track_num_input_tokens``).
    With several ranks the stop request's all-reduce is read back once a step (``glmcore.callbacks``).
    """
    import torch
    from transformers import Trainer
    from transformers.trainer_utils import rotate_checkpoints

    class RunTrainer(Trainer):
        _partial_root: str | None = None
        scored_rows: list = []
        """Validation examples to generate for and score at each evaluation (``eval_metric_rows``)."""
        run: Run | None = None
        _unread_input_tokens: torch.Tensor | int = 0
        """Input tokens counted since ``state.num_input_tokens_seen`` was last brought up to date."""

        def _track_num_input_tokens(self, inputs) -> None:
            """The Trainer's count of input tokens, left where it is counted until it is read (``log``, a
            checkpoint): the Trainer reads each micro-batch's count back from the GPU, a wait for the GPU to
            finish that micro-batch before the host may queue the next."""
            mode = self.args.include_num_input_tokens_seen
            if mode == "no" or "input_ids" not in inputs:
                super()._track_num_input_tokens(inputs)
                return
            count = input_token_count(inputs, mode, getattr(self.processing_class, "pad_token_id", None))
            if self.args.world_size > 1:  # every rank's count, gathered as the Trainer gathers it
                count = torch.as_tensor(count, device=self.args.device, dtype=torch.int64)
                count = self.accelerator.gather(count).sum()
            self._unread_input_tokens = self._unread_input_tokens + count

        def _read_input_tokens(self) -> None:
            self.state.num_input_tokens_seen += int(self._unread_input_tokens)
            self._unread_input_tokens = 0

        def log(self, logs: dict[str, float], *args, **kwargs) -> None:
            self._read_input_tokens()
            super().log(logs, *args, **kwargs)

        def evaluation_loop(self, *args, **kwargs):
            output = super().evaluation_loop(*args, **kwargs)
            if self.scored_rows and self.run is not None:
                from glmcore.train_eval import TRAINING_EVALUATIONS, score_rows

                prefix = kwargs.get("metric_key_prefix", "eval")
                folder = self.run.path / TRAINING_EVALUATIONS / f"step-{self.state.global_step}"
                scores = score_rows(
                    self.model, self.processing_class, self.scored_rows, self.run.config, folder
                )
                output.metrics.update({f"{prefix}_{name}": value for name, value in scores.items()})
            return output

        def _get_output_dir(self, trial) -> str:
            return self._partial_root or super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial) -> None:
            self._read_input_tokens()  # trainer_state.json holds the count
            run = Run(Path(self.args.output_dir).parent)
            with run.saving_checkpoint(self.state.global_step, owner=self.args.should_save) as partial:
                self._partial_root = str(partial.parent)
                try:
                    super()._save_checkpoint(model, trial)
                finally:
                    self._partial_root = None
                if self.state.best_global_step:  # the Trainer named it inside the partial folder
                    self.state.best_model_checkpoint = os.path.join(
                        self.args.output_dir, f"checkpoint-{self.state.best_global_step}"
                    )
                self.accelerator.wait_for_everyone()  # every rank has written its part (RNG state, shards)
            if self.args.should_save:
                rotate_checkpoints(
                    self.args.output_dir,
                    save_total_limit=self.args.save_total_limit,
                    best_model_checkpoint=self.state.best_model_checkpoint,
                )
            self.accelerator.wait_for_everyone()

    if method != "ptuning-v2":
        return RunTrainer

    class PrefixTrainer(RunTrainer):
        def create_optimizer(self, *args, **kwargs):
            optimizer = super().create_optimizer(*args, **kwargs)
            if getattr(self.model.config, "quantization_config", None) is not None:
                keep_optimizer_state_on_host(optimizer)
            return optimizer

        def _save(self, output_dir: str | None = None, state_dict=None) -> None:
            from glmcore.prefix import save_prefix_checkpoint

            # The Trainer calls _save on every rank and leaves writing to the one that should save.
            if not self.args.should_save:
                return
            save_prefix_checkpoint(self.model, Path(output_dir or self.args.output_dir))

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            from glmcore.prefix import check_resumes, read_checked_prefix

            model = model or self.model
            check_resumes(
                Path(resume_from_checkpoint), model.config.pre_seq_len, model.config.prefix_projection
            )
            # Loaded into the encoder in place: the optimizer already holds its parameters.
            _, state = read_checked_prefix(resume_from_checkpoint, model.config)
            model.transformer.prefix_encoder.load_state_dict(state)

    return PrefixTrainer


def input_token_count(inputs: dict, mode: str, pad_token_id: int | None):
    """A batch's input tokens as the Trainer counts them (``include_num_input_tokens_seen``): "all" its ids;
    "non_padding" the attention mask's ones, else the ids that are not `pad_token_id`. A count of a tensor's
    elements stays on the tensor's device (a tensor); one of its shape is a number."""
    input_ids = inputs["input_ids"]
    if mode == "non_padding" and "attention_mask" in inputs:
        return inputs["attention_mask"].sum()
    if mode == "non_padding" and pad_token_id is not None:
        return (input_ids != pad_token_id).sum()
    return input_ids.numel()


def keep_optimizer_state_on_host(optimizer) -> None:
    """Hold the optimizer's moments in pinned host memory between steps; each step runs on the GPU as before.

    A quantized P-tuning run is chosen to save GPU memory, and the prefix's two fp32 AdamW moments (0.22 GiB for
    ChatGLM-6B at pre_seq_len 128) would otherwise sit on the GPU through every forward and backward pass. They
    are copied in before `step()` and out after it, on the same stream, so the update is the same kernel on the
    same numbers; the copies take a few milliseconds once per optimizer step.
    """
    import torch

    host: dict[tuple[int, str], torch.Tensor] = {}

    def to_gpu(optimizer, args, kwargs) -> None:
        for parameter, state in optimizer.state.items():
            for key, value in state.items():
                if key != "step" and torch.is_tensor(value) and value.is_pinned():
                    state[key] = value.to(parameter.device, non_blocking=True)

    def to_host(optimizer, args, kwargs) -> None:
        for parameter, state in optimizer.state.items():
            for key, value in state.items():
                if key != "step" and torch.is_tensor(value) and value.is_cuda and value.dim():
                    buffer = host.get((id(parameter), key))
                    if buffer is None or buffer.shape != value.shape:
                        buffer = host[(id(parameter), key)] = torch.empty(
                            value.shape, dtype=value.dtype, pin_memory=True
                        )
                    state[key] = buffer.copy_(value, non_blocking=True)

    if torch.cuda.is_available():
        optimizer.register_step_pre_hook(to_gpu)
        optimizer.register_step_post_hook(to_host)


def deepspeed_config_file(choice: str | None) -> str | None:
    """A shipped preset ("zero2", "zero3") or the user's own DeepSpeed JSON file."""
    if choice is None:
        return None
    preset = Path(__file__).parent / "assets" / "deepspeed" / f"{choice}.json"
    return str(preset if preset.is_file() else Path(choice))


def training_arguments(config: RunConfig, output_dir: Path, gradient_checkpointing: bool):
    """The Trainer's settings for ``config``; the distributed ones follow the ranks torchrun started.

    Several ranks without GPUs talk over gloo on the CPU. DDP skips its search for unused parameters: a frozen
    base with a prefix or adapters as the only trainable weights would make every step pay for it. Under
    DeepSpeed the model's 16-bit dtype becomes DeepSpeed's mixed precision (its configs say "auto").
    """
    import torch
    from transformers import TrainingArguments

    evaluate = bool(config.eval_steps and config.validation_file)
    distributed = RankInfo.from_environment().is_distributed
    dtype = _dtype(config) if config.deepspeed else None
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler,
        logging_steps=config.logging_steps,
        # The filter reads every micro-batch's loss back from the GPU (a wait per micro-batch), and it would hide a
        # diverged loss, which must show (and stop the run, see stop_on_nan).
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=config.eval_steps if evaluate else None,
        # The best evaluated checkpoint is tracked (and kept by save_total_limit), then marked in the run folder
        # (glmcore.train_eval); nothing is loaded back at the end, since the run's files are its result.
        load_best_model_at_end=False,
        metric_for_best_model=trainer_metric_name(config.best_metric) if evaluate else None,
        greater_is_better=greater_is_better(config.best_metric) if evaluate else None,
        seed=config.seed,
        gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        # Batches are pinned (dataloader_pin_memory, the default) and copied to the GPU without waiting: a
        # blocking copy waits for the GPU to finish the step before.
        accelerator_config={"non_blocking": bool(config.gpus)},
        report_to=list(config.report_to),
        disable_tqdm=True,
        save_only_model=False,
        deepspeed=deepspeed_config_file(config.deepspeed),
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not config.gpus,
        ddp_backend="gloo" if distributed and not config.gpus else None,
        ddp_find_unused_parameters=False if distributed else None,
    )


def train(run: Run, *, resume: bool) -> str:
    """Train `run` to its end or to a stop request; returns the final state."""
    from transformers import PrinterCallback, set_seed

    from glmcore.models.loading import load_tokenizer

    config = run.config
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model_path, family=config.family)
    columns = Columns(config.prompt_column, config.response_column, config.history_column)
    train_data = load_examples(config.train_file, columns)
    if train_data.skipped_empty:
        print(f"glmtui: skipped {train_data.skipped_empty} rows with an empty prompt or response", flush=True)
    lengths = (config.max_source_length, config.max_target_length)
    train_set = training_dataset(tokenizer, train_data.examples, *lengths)
    eval_set, scored_rows = None, []
    if config.eval_steps and config.validation_file:
        validation = load_examples(config.validation_file, columns).examples
        eval_set = training_dataset(tokenizer, validation, *lengths)
        scored_rows = validation[: config.eval_metric_rows]
    if "tensorboard" in config.report_to:
        # transformers' TensorBoardCallback writes where this names (the run folder, not the checkpoints).
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.tensorboard_dir)

    checkpointing = resolve_gradient_checkpointing(
        ModelShape.from_model_dir(config.model_path, config.family), config, free_bytes=free_gpu_memory()
    )
    model = prepare_model(config)
    callback = RunEventsCallback(run)
    trainer = trainer_class(config.method)(
        model=model,
        args=training_arguments(config, run.checkpoints_dir, checkpointing),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=TrainingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[callback, *evaluation_callbacks(run)],
    )
    trainer.run, trainer.scored_rows = run, scored_rows
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LogLinePrinter())
    checkpoint = run.resume_point().checkpoint if resume else None
    if resume:
        print(describe_resume(run), flush=True)
    trainer.train(resume_from_checkpoint=str(checkpoint.path) if checkpoint else None)
    state = "stopped" if callback.stopped_by_request else "finished"
    info = RankInfo.from_environment()
    print(
        f"glmtui: rank {info.rank} of {info.world_size} {state} at step {trainer.state.global_step}",
        flush=True,
    )
    return state


def _stop_gracefully_on_sigterm(run: Run) -> None:
    """A first SIGTERM asks for the same graceful stop as `glmtui stop`; a second one interrupts."""

    def handle(signal_number: int, frame) -> None:
        if run.stop_requested():
            raise KeyboardInterrupt
        run.request_stop()

    signal.signal(signal.SIGTERM, handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glmcore.train", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    args = parser.parse_args(argv)
    run = Run(args.run_dir.resolve())
    info = RankInfo.from_environment()
    if not info.is_distributed:  # with several ranks, the torchrun agent its launcher started holds the run
        try:
            hold_trainer_lock(run)
        except RunError as error:
            print(f"glmtui: {error}", file=sys.stderr, flush=True)
            return 1
    quiet_libraries(run.path / LIBRARY_LOG_NAME)
    if info.is_distributed:
        die_with_parent()
        redirect_output(rank_log_path(run.path, info.rank))
        print(f"glmtui: rank {info.rank} of {info.world_size}, pid {os.getpid()}", flush=True)
    if info.is_main:
        run.mark_running(run_process_id(info))
    if not os.environ.get(SLURM_RUN_VARIABLE):  # under Slurm, SIGTERM is scancel or a hard time limit
        _stop_gracefully_on_sigterm(run)
    try:
        state = train(run, resume=args.resume)
        if info.is_distributed:
            leave_process_group()
    except KeyboardInterrupt:
        # A forced stop (a second SIGTERM) or Ctrl-C: work since the last checkpoint is lost, nothing else.
        if info.is_main:
            checkpoint = run.latest_checkpoint()
            resume_from = (
                f"resume continues from {checkpoint.path.name}" if checkpoint else "no checkpoint was saved"
            )
            run.finish("stopped", f"interrupted at step {run.stored_status().step}; {resume_from}")
            announce_end(run)
        return 130
    except BaseException as error:
        step = run.stored_status().step
        reason = describe_failure(error, step)
        # Said in train.log first: on a full disk the writes below may fail too, and readers then find it there.
        print(f"glmtui: {reason}", file=sys.stderr, flush=True)
        if info.is_main:
            try:
                run.append_event("failed", step=step, reason=reason)
                run.finish("failed", reason)
                announce_end(run)
            except OSError as write_error:
                print(
                    f"glmtui: could not record the failure in {run.path} ({write_error})",
                    file=sys.stderr,
                    flush=True,
                )
        if isinstance(error, GlmError):
            return 1
        raise
    if info.is_main:
        run.finish(state, early_stop_reason(run))
        announce_end(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
