"""A training step on a CUDA GPU makes the host wait for the GPU nowhere (issue 36). Skipped without one.

Run on the GPU machine: `python -m pytest tests/gpu -q`. torch's sync debug mode (`torch.cuda.set_sync_debug_mode`)
warns at each call that makes the host wait for the GPU: a copy to the host (`.item()`, `int()`, `bool()` of a GPU
tensor), a blocking copy to the GPU, `nonzero` and boolean-mask indexing, stream and device synchronisation. Each
such wait left the GPU idle while the host caught up (about 16 ms of a 107 ms ChatGLM-6B step at batch 16).

The mode warns from the end of the first optimizer step (which creates the optimizer's state) to the end of the
second, and raises through the third, through the Trainer as a run sets it up (`glmcore.train`): the data
loader's next batches and their copies to the GPU, the forward and backward passes of two micro-batches with the
fused loss, the token count, gradient clipping, the optimizer and scheduler steps and the run's callback. Logging
steps read the loss back by design; none falls in the window. The CPU suite checks the same window's operations
(tests/test_train.py) but cannot see copies or waits.
"""

from __future__ import annotations

import contextlib
import json
import traceback
import warnings

import pytest
import torch
from transformers import TrainerCallback

import glmcore
from glmcore.callbacks import RunEventsCallback
from glmcore.config import RunConfig
from glmcore.data import Example, TrainingCollator, training_dataset
from glmcore.models import family_named
from glmcore.runs import RunStore
from glmcore.train import prepare_model, trainer_class, training_arguments

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SYNC_WARNING = "called a synchronizing CUDA operation"
"""The warning torch's sync debug mode gives (c10/cuda/CUDAFunctions.cpp)."""

ROWS = [
    {"content": "类型#上衣*颜色#白色*风格#简约", "summary": "白色上衣简约百搭，很好看"},
    {"content": "类型#裙*材质#牛仔布", "summary": "牛仔裙时尚个性"},
    {"content": "Hello", "summary": "world, this is a test"},
    {"content": "类型#裤*风格#休闲", "summary": "休闲裤舒适"},
]
"""Rows of different lengths: the batches are padded and trimmed as real ones are."""


class SyncWatch(TrainerCallback):
    """torch's sync debug mode from the end of optimizer step `first` to the end of the next: "warn" records
    every synchronising call with where it was made; "error" raises at the first, which holds even where code
    in the window silences warnings."""

    def __init__(self, first: int, mode: str = "warn") -> None:
        self.first, self.mode = first, mode
        self.calls: list[str] = []
        self.watched = False
        self._stack: contextlib.ExitStack | None = None

    def start(self) -> None:
        torch.cuda.synchronize()  # before the mode is on: nothing queued earlier is waited for inside the window
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("always")  # every call, not the first from each line
        warnings.showwarning = self._record
        torch.cuda.set_sync_debug_mode(self.mode)
        self._stack.callback(torch.cuda.set_sync_debug_mode, "default")

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
            self.watched = True

    def _record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if SYNC_WARNING in str(message):
            frames = [frame for frame in traceback.format_stack(limit=16)[:-1] if "/warnings.py" not in frame]
            self.calls.append(f"{filename}:{lineno}\n{''.join(frames)}")

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.first + 1:
            self.stop()
        elif state.global_step == self.first:
            self.start()

    def on_train_end(self, args, state, control, **kwargs):
        self.stop()


def test_the_watch_sees_synchronising_calls():
    """The watch is not blind: a GPU tensor's `.item()` and a boolean mask's selection are each recorded, and
    in "error" mode the first raises."""
    values = torch.arange(6, device="cuda")
    recorder = SyncWatch(first=1)
    recorder.start()
    try:
        values.sum().item()
        values[values > 2].sum()
    finally:
        recorder.stop()
    assert len(recorder.calls) >= 2, recorder.calls
    tripwire = SyncWatch(first=1, mode="error")
    tripwire.start()
    try:
        with pytest.raises(RuntimeError, match=SYNC_WARNING):
            values.sum().item()
    finally:
        tripwire.stop()


@pytest.mark.parametrize(
    ("family_name", "method", "dtype"),
    [
        ("chatglm-6b", "ptuning-v2", "bfloat16"),
        ("chatglm-6b", "ptuning-v2", "float16"),  # fp16 takes the plain loss (a loss scaler's path)
        ("chatglm3-6b", "ptuning-v2", "bfloat16"),
        ("chatglm3-6b", "ptuning-v2", "float16"),
        ("chatglm-6b", "lora", "bfloat16"),  # the fused loss under PEFT's wrapper
    ],
)
def test_a_training_step_never_waits_for_the_gpu(tiny_family_dir, tmp_path, family_name, method, dtype):
    model_dir = tiny_family_dir(family_named(family_name))
    train_file = tmp_path / "train.json"
    train_file.write_text(
        "\n".join(json.dumps(row, ensure_ascii=False) for row in ROWS) + "\n", encoding="utf-8"
    )
    config = RunConfig(
        name="sync",
        method=method,
        model_path=model_dir,
        train_file=train_file,
        quantization_bit=16,
        pre_seq_len=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=3,
        save_steps=1000,
        logging_steps=1000,
        max_source_length=24,
        max_target_length=16,
        gpus=[0],
        dtype=dtype,
    )
    run = RunStore(tmp_path / "runs").create(config)
    tokenizer = glmcore.load_tokenizer(model_dir)
    examples = [Example(row["content"], row["summary"]) for row in ROWS] * 8  # all three steps in one epoch
    recorder, tripwire = SyncWatch(first=1), SyncWatch(first=2, mode="error")
    trainer = trainer_class(config.method)(
        model=prepare_model(config),
        args=training_arguments(config, run.checkpoints_dir, gradient_checkpointing=False),
        train_dataset=training_dataset(
            tokenizer, examples, config.max_source_length, config.max_target_length
        ),
        data_collator=TrainingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[RunEventsCallback(run), recorder, tripwire],
    )
    assert next(trainer.model.parameters()).is_cuda
    tripped: RuntimeError | None = None
    try:
        trainer.train()
    except RuntimeError as error:  # the tripwire's, at a synchronising call in step 3
        tripped = error
    finally:
        recorder.stop()
        tripwire.stop()

    assert not recorder.calls, f"{len(recorder.calls)} synchronising calls in step 2:\n\n" + "\n\n".join(
        recorder.calls
    )
    assert tripped is None, "".join(traceback.format_exception(tripped))
    assert recorder.watched and tripwire.watched and trainer.state.global_step == 3
