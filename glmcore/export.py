"""Turning a LoRA or full fine-tuning run into a model folder that evaluation and chat load like any other.

A P-tuning run needs no export: its checkpoints are prefixes applied to the base model at load time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.runs import Run

TOKENIZER_FILES = ("ice_text.model", "tokenizer_config.json")


def _checkpoint(run: Run, checkpoint: str | None) -> Path:
    checkpoints = run.checkpoints()
    if not checkpoints:
        raise GlmError(f"Run {run.id} has no complete checkpoint to export yet.")
    if checkpoint is None:
        return checkpoints[-1].path
    for candidate in checkpoints:
        if checkpoint in (candidate.path.name, str(candidate.step), str(candidate.path)):
            return candidate.path
    names = ", ".join(candidate.path.name for candidate in checkpoints)
    raise GlmError(f"Run {run.id} has no checkpoint {checkpoint!r}; it has {names}.")


def export_run(run: Run, destination: Path, *, checkpoint: str | None = None) -> Path:
    """Write `destination` (built beside it and renamed into place) from the run's latest or named checkpoint."""
    config = run.config
    if config.method == "ptuning-v2":
        raise GlmError(
            f"Run {run.id} trained a P-tuning prefix: use its checkpoints directly "
            "(glmtui eval/chat --checkpoint), there is nothing to export."
        )
    source = _checkpoint(run, checkpoint)
    destination = Path(destination)
    if destination.exists():
        raise GlmError(f"{destination} already exists; choose another folder or remove it.")
    building = destination.with_name(destination.name + ".exporting")
    shutil.rmtree(building, ignore_errors=True)
    if config.method == "lora":
        _merge_lora(Path(config.model_path), source, building)
    else:
        _consolidate_full(source, building)
    for name in TOKENIZER_FILES:
        shutil.copy2(Path(config.model_path) / name, building / name)
    os.replace(building, destination)
    return destination


def _merge_lora(base: Path, adapter: Path, target: Path) -> None:
    """Fold the adapters into the 16-bit base weights, so no PEFT is needed to load the result."""
    from peft import PeftModel

    from glmcore.models.loading import load_model

    model = load_model(base, quantization_bit=16, device="cpu")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(target))


def _consolidate_full(checkpoint: Path, target: Path) -> None:
    """A full checkpoint already holds the whole model; DeepSpeed ZeRO shards are gathered into one first."""
    if any(checkpoint.glob("global_step*")) and not any(checkpoint.glob("*.safetensors")):
        from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict

        target.mkdir(parents=True)
        convert_zero_checkpoint_to_fp32_state_dict(str(checkpoint), str(target), safe_serialization=True)
        shutil.copy2(checkpoint / "config.json", target / "config.json")
        return
    target.mkdir(parents=True)
    for path in checkpoint.iterdir():
        if path.name == "config.json" or path.suffix == ".safetensors" or path.name.endswith(".index.json"):
            shutil.copy2(path, target / path.name)
