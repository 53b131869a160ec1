"""The demo workspace: a tiny model of a family (ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B, GLM-4-9B) and the
AdvertiseGen-form sample, built on first use.

The model is pretrained as a plain language model on ad copy in the sample's style, never on the
attributes-to-copy task, so its outputs ignore the attribute list until a P-tuning prefix teaches it to
follow one: the whole loop (configure, train, watch, evaluate before/after, chat, serve) shows a real effect on
a laptop CPU in minutes. It is written in its family's published on-disk layout (ChatGLM-6B's sharded `.bin`,
index and `ice_text.model`; GLM-4's safetensors and tiktoken `tokenizer.model`), so it loads through exactly the
code paths a real folder of the family does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glmcore.config import RunConfig
from glmcore.examples import IGNORE_INDEX
from glmcore.models import DEFAULT_FAMILY, family_named
from glmcore.workspace import Workspace

DEMO_DATA_NAME = "advertisegen-sample"
DEMO_MARKER = "glmtui-demo.json"
DEMO_SP_VOCAB = 1600
PRETRAIN_TEXTS = 3000
PRETRAIN_STEPS = 400
PRETRAIN_BATCH = 32
PRETRAIN_MAX_TOKENS = 96
SEED = 0
PROGRESS_EVERY = 10
PRETRAIN_START, PRETRAIN_END = 0.1, 0.95
"""The share of the progress bar before and after pretraining, which takes nearly all of the build's time."""

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class DemoWorkspace:
    model_dir: Path
    train_file: Path
    dev_file: Path


def format_eta(seconds: float) -> str:
    """``75`` -> ``1m15s``, ``9`` -> ``9s``: short enough for a progress line."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def demo_paths(workspace: Workspace, family: str = DEFAULT_FAMILY.name) -> DemoWorkspace:
    data_dir = workspace.data_dir / DEMO_DATA_NAME
    model_dir = workspace.models_dir / family_named(family).demo.folder
    return DemoWorkspace(model_dir, data_dir / "train.json", data_dir / "dev.json")


def demo_ready(workspace: Workspace, family: str = DEFAULT_FAMILY.name) -> bool:
    paths = demo_paths(workspace, family)
    return (
        (paths.model_dir / DEMO_MARKER).is_file() and paths.train_file.is_file() and paths.dev_file.is_file()
    )


def language_model_row(features: dict[str, list[int]]) -> dict[str, list[int]]:
    """A training row learned as a plain language model: every token up to its last learned one.

    A family's fine-tuning learns the answer alone, and GLM-4's leaves out even the newline after `<|assistant|>`
    (its published demo's loss mask), which a chat model must still write first: pretrained on such rows, the
    demo model began every answer with a stray byte. Learning the whole row teaches it the format around the copy
    as a published model knows it."""
    labels = features["labels"]
    end = max(index for index, label in enumerate(labels) if label != IGNORE_INDEX) + 1
    return {"input_ids": features["input_ids"], "labels": features["input_ids"][:end] + labels[end:]}


def _pretrain(model_dir: Path, texts: list[str], progress: Progress) -> None:
    """Train the randomly initialised model to continue ad copy: rows of the family's chat format with an empty
    prompt and the copy as the answer (ChatGLM-6B's `[gMASK] <sop> copy <eop>`), every token learned."""
    import torch

    from glmcore.data import Example, TrainingCollator, training_features
    from glmcore.models.loading import load_model, load_tokenizer

    torch.manual_seed(SEED)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, device="cpu", dtype=torch.float32)
    rows = [
        language_model_row(training_features(tokenizer, Example("", text), 1, PRETRAIN_MAX_TOKENS))
        for text in texts
    ]
    collate = TrainingCollator(tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=PRETRAIN_STEPS, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    started = time.monotonic()
    for step in range(PRETRAIN_STEPS):
        picks = torch.randint(len(rows), (PRETRAIN_BATCH,), generator=generator).tolist()
        loss = model(**collate([rows[index] for index in picks])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % PROGRESS_EVERY == 0 or step == PRETRAIN_STEPS - 1:
            done = step + 1
            left = (time.monotonic() - started) / done * (PRETRAIN_STEPS - done)
            progress(
                PRETRAIN_START + (PRETRAIN_END - PRETRAIN_START) * done / PRETRAIN_STEPS,
                f"pretraining the demo model: step {done}/{PRETRAIN_STEPS}, loss {loss.item():.2f}, "
                f"about {format_eta(left)} left",
            )
    from glmcore.models.checkpoint import rewrite_weights

    # A tied output layer is in the state under its own name too, so it is stored twice as published.
    rewrite_weights(model_dir, {name: tensor.detach().half() for name, tensor in model.state_dict().items()})


def ensure_demo_workspace(
    workspace: Workspace | None = None, progress: Progress | None = None, family: str = DEFAULT_FAMILY.name
) -> DemoWorkspace:
    """Build the demo model of `family` (a `family = ...` name) and the data if they are not there yet (about a
    minute on a 2-core CPU for ChatGLM-6B's; see README).

    A built workspace returns at once, before torch is imported. The model is built in a temporary folder and
    renamed into place, so an interrupted build leaves nothing half-made behind.
    """
    workspace = workspace or Workspace.from_env()
    report = progress or (lambda fraction, message: None)
    paths = demo_paths(workspace, family)
    if demo_ready(workspace, family):
        report(1.0, "the demo workspace is ready")
        return paths

    from glmcore.sample_data import ad_copy_corpus, generate_examples, write_sample_dataset

    workspace.ensure()
    demo = family_named(family).demo
    if not (paths.train_file.is_file() and paths.dev_file.is_file()):
        report(0.0, "writing the AdvertiseGen-form sample data")
        write_sample_dataset(paths.train_file.parent, seed=SEED)
    if not (paths.model_dir / DEMO_MARKER).is_file():
        report(0.02, "training the demo tokenizer")
        building = paths.model_dir.with_name(paths.model_dir.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        texts = ad_copy_corpus(PRETRAIN_TEXTS, SEED)
        # The tokenizer sees the attribute vocabulary too, so prompts tokenize into words, not bytes.
        attributes = [example["content"] for example in generate_examples(500, seed=SEED + 1)]
        family_named(family).implementation().write_tiny_checkpoint(
            building, corpus=texts + attributes, sp_vocab_size=DEMO_SP_VOCAB, seed=SEED, **demo.shape
        )
        _pretrain(building, texts, report)
        (building / DEMO_MARKER).write_text(
            json.dumps({"pretrained_on": f"{PRETRAIN_TEXTS} ad copy texts", "steps": PRETRAIN_STEPS})
        )
        shutil.rmtree(paths.model_dir, ignore_errors=True)
        os.replace(building, paths.model_dir)
    report(1.0, "the demo workspace is ready")
    return paths


def demo_run_config(workspace: Workspace | None = None, family: str = DEFAULT_FAMILY.name) -> RunConfig:
    """A P-tuning v2 run that visibly improves the demo model within a few CPU minutes."""
    paths = demo_paths(workspace or Workspace.from_env(), family)
    return RunConfig(
        name=f"{family_named(family).demo.configs}-ptuning",
        model_path=paths.model_dir,
        train_file=paths.train_file,
        validation_file=paths.dev_file,
        method="ptuning-v2",
        quantization_bit=16,
        pre_seq_len=16,
        prefix_projection=False,
        learning_rate=2e-2,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        max_steps=200,
        save_steps=100,
        logging_steps=5,
        max_source_length=64,
        max_target_length=64,
        gpus=[],
    )


def demo_lora_config(workspace: Workspace | None = None, family: str = DEFAULT_FAMILY.name) -> RunConfig:
    """The same data through LoRA adapters instead of a prefix: a second method to try on the CPU."""
    config = demo_run_config(workspace, family)
    return dataclasses.replace(
        config, name=config.name.replace("ptuning", "lora"), method="lora", learning_rate=2e-3
    )


def write_demo_configs(
    workspace: Workspace | None = None, family: str = DEFAULT_FAMILY.name
) -> list[tuple[Path, bool]]:
    """``configs/demo-ptuning.toml`` and ``configs/demo-lora.toml`` (ChatGLM2/3's: ``demo-chatglm3-ptuning.toml``
    ...), for ``glmtui train``; each path with whether it was written now (a file already there, perhaps edited,
    is kept as it is).

    The P-tuning config becomes the workspace's last config, so the config editor opens with it.
    """
    workspace = workspace or Workspace.from_env()
    written = []
    for config in (demo_run_config(workspace, family), demo_lora_config(workspace, family)):
        path = workspace.configs_dir / f"{config.name}.toml"
        fresh = not path.is_file()
        if fresh:
            path.parent.mkdir(parents=True, exist_ok=True)
            config.save(path)
        written.append((path, fresh))
    workspace.remember_config(written[0][0])
    return written
