"""Turning a LoRA or full fine-tuning run into a model folder that evaluation and chat load like any other.

A P-tuning run needs no export: its checkpoints are prefixes applied to the base model at load time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.runs import Run

TOKENIZER_CONFIG = "tokenizer_config.json"


def check_export(run: Run, destination: Path, *, checkpoint: str | None = None) -> Path:
    """The checkpoint ``export_run`` would export (the run's default one unless named), or the error that
    stops it, before anything is loaded or written."""
    if run.config.method == "ptuning-v2":
        raise GlmError(
            f"Run {run.id} trained a P-tuning prefix: use its checkpoints directly (glmtui chat --run {run.id}, "
            f"glmtui eval --run {run.id}); there is nothing to export."
        )
    if not run.checkpoints():
        raise GlmError(f"Run {run.id} has no complete checkpoint to export yet.")
    source = run.find_checkpoint(checkpoint).path
    if Path(destination).exists():
        raise GlmError(f"{destination} already exists; choose another folder or remove it.")
    return source


def export_run(run: Run, destination: Path, *, checkpoint: str | None = None) -> Path:
    """Write `destination` (built beside it and renamed into place) from the run's default or named checkpoint."""
    source = check_export(run, destination, checkpoint=checkpoint)
    config = run.config
    destination = Path(destination)
    building = destination.with_name(destination.name + ".exporting")
    shutil.rmtree(building, ignore_errors=True)
    if config.method == "lora":
        _merge_lora(Path(config.model_path), source, building, config.family)
    else:
        _consolidate_full(source, building)
    from glmcore.models import family_for

    family, _ = family_for(Path(config.model_path), config.family)
    for name in (family.tokenizer_file, TOKENIZER_CONFIG):
        shutil.copy2(Path(config.model_path) / name, building / name)
    os.replace(building, destination)
    return destination


def _merge_lora(base: Path, adapter: Path, target: Path, family: str | None) -> None:
    """Fold the adapters into the 16-bit base weights, so no PEFT is needed to load the result."""
    from peft import PeftModel

    from glmcore.models.loading import load_model

    model = load_model(base, quantization_bit=16, device="cpu", family=family)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(target))


def _consolidate_full(checkpoint: Path, target: Path) -> None:
    """A full checkpoint already holds the whole model; DeepSpeed ZeRO shards are gathered into one first."""
    target.mkdir(parents=True)
    if any(checkpoint.glob("global_step*")) and not any(checkpoint.glob("*.safetensors")):
        _gather_zero_shards(checkpoint, target)
    for path in checkpoint.iterdir():
        if path.name == "config.json" or path.suffix == ".safetensors" or path.name.endswith(".index.json"):
            shutil.copy2(path, target / path.name)


def _gather_zero_shards(checkpoint: Path, target: Path) -> None:
    """The fp32 master weights from the ZeRO shards, in the model's dtype, as one safetensors file.

    The LM head is tied to the word embedding and stored once, as `save_pretrained` stores it (safetensors
    refuses two names for one tensor).
    """
    import json

    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import save_file

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    dtype = getattr(torch, config.get("dtype") or config.get("torch_dtype") or "float32")
    state.pop("lm_head.weight", None)
    tensors = {name: tensor.to(dtype).contiguous() for name, tensor in state.items()}
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
