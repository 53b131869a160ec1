"""LoRA adapters applied over a shared base model, never merged into its weights.

A LoRA run's checkpoint holds PEFT's `adapter_config.json` and `adapter_model.safetensors`: for each target
Linear module a pair A [rank, in] and B [out, rank], and the update `scale * (x @ A.T) @ B.T` added to the
module's output. `LowRankUpdates` adds that update through a forward hook on each target module, so the model's
own weights (16-bit, or 4/8-bit, as it was loaded) stay shared and untouched:

- one adapter for every row (chat and evaluation of a LoRA run: `attach_adapter`);
- an adapter per row (serving): the adapters' weights sit in stacks [slots, in, rank] / [slots, rank, out],
  padded with zeros to the largest rank held, and each row gathers its own by index (`torch.bmm`); a row
  without an adapter has scale 0. The stacks, the row indexes and the scales are buffers updated in place, so a
  captured CUDA graph replays them.

Only the header of the safetensors file is read to check an adapter (`read_adapter_shape`): its modules must
exist in the base and have the shapes of the adapter's, else it was trained on another model and is refused
with a sentence. No code from the checkpoint runs: the config is JSON, the weights safetensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from glmcore.errors import GlmError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_ENDINGS = {".lora_A.weight": "A", ".lora_B.weight": "B"}


class AdapterError(GlmError):
    """A LoRA checkpoint that cannot be applied to this base (another model, a PEFT feature not applied here)."""


@dataclass(frozen=True)
class AdapterShape:
    """What an adapter checkpoint holds, read from its config and its weights' header only."""

    checkpoint: Path
    rank: int
    scale: float
    modules: dict[str, tuple[int, int]]
    """Target module path (as the base model names it) -> (in features, out features)."""

    def bytes_at(self, rank: int, element_size: int) -> int:
        """The memory of its weights padded to `rank`."""
        return rank * sum(inputs + outputs for inputs, outputs in self.modules.values()) * element_size


def is_adapter_checkpoint(checkpoint: Path) -> bool:
    """Whether `checkpoint` holds a LoRA adapter: PEFT's config of any kind but prefix tuning, which a GLM-4
    P-tuning checkpoint carries beside its prefix for PEFT to read (glmcore.prefix)."""
    path = Path(checkpoint) / CONFIG
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # taken as an adapter, whose check says what is wrong with the file
    return not (isinstance(config, dict) and config.get("peft_type") == "PREFIX_TUNING")


def read_adapter_shape(checkpoint: Path, model) -> AdapterShape:
    """The adapter of `checkpoint`, checked against `model`'s modules; AdapterError with the sentence to show
    when it cannot be applied."""
    from safetensors import safe_open

    checkpoint = Path(checkpoint)
    in_run = checkpoint.parent.name == "checkpoints"
    where = f"{checkpoint.parent.parent.name}/{checkpoint.name}" if in_run else checkpoint.name
    config = _read_config(checkpoint, where)
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    try:
        with safe_open(str(checkpoint / WEIGHTS), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 (a safetensors file is not iterable)
                module, part = _module_and_part(name)
                if part is None:
                    raise AdapterError(
                        f"The adapter {where} holds {name}, a weight this server does not apply (only LoRA's "
                        f"A and B are): export the run (glmtui export) and serve the exported folder."
                    )
                shapes.setdefault(module, {})[part] = tuple(weights.get_slice(name).get_shape())
    except AdapterError:
        raise
    except Exception as error:
        raise AdapterError(
            f"The adapter {where}'s {WEIGHTS} cannot be read ({type(error).__name__}); save or copy the "
            "checkpoint again."
        ) from None
    rank = int(config["r"])
    modules: dict[str, tuple[int, int]] = {}
    for module, parts in sorted(shapes.items()):
        if (
            set(parts) != {"A", "B"}
            or any(len(shape) != 2 for shape in parts.values())
            or parts["A"][0] != rank
            or parts["B"][1] != rank
        ):
            raise AdapterError(
                f"The adapter {where} has no matching A and B of rank {rank} for {module}; save the checkpoint "
                "again."
            )
        inputs, outputs = parts["A"][1], parts["B"][0]
        layer = _submodule(model, module)
        if layer is None or (getattr(layer, "in_features", None), getattr(layer, "out_features", None)) != (
            inputs,
            outputs,
        ):
            found = (
                "has no such layer"
                if layer is None
                else f"has it as {getattr(layer, 'in_features', '?')} -> {getattr(layer, 'out_features', '?')}"
            )
            raise AdapterError(
                f"The adapter {where} was trained on another base model: it changes {module} ({inputs} -> "
                f"{outputs}) and this base {found}; use it with the model it was trained on."
            )
        modules[module] = (inputs, outputs)
    if not modules:
        raise AdapterError(f"The adapter {where} holds no LoRA weights; save the checkpoint again.")
    alpha = config.get("lora_alpha", rank)
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return AdapterShape(checkpoint, rank, scale, modules)


def adapter_problem(checkpoint: Path, model_path: Path, family: str | None = None) -> str | None:
    """Why the adapter of `checkpoint` cannot be applied to the model in `model_path` (files damaged, a PEFT
    feature not applied here, another base), None when it can; checked against the model built on the meta
    device, so before any weight loads."""
    import torch

    from glmcore.models import family_for
    from glmcore.models.loading import load_config

    model_family, _ = family_for(Path(model_path), family)
    with torch.device("meta"):
        model = model_family.implementation().model_class(load_config(model_path, family))
    try:
        read_adapter_shape(checkpoint, model)
    except AdapterError as error:
        return str(error)
    return None


def _read_config(checkpoint: Path, where: str) -> dict:
    try:
        config = json.loads((checkpoint / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AdapterError(
            f"The adapter {where}'s {CONFIG} cannot be read ({type(error).__name__}); save or copy the "
            "checkpoint again."
        ) from None
    if not isinstance(config, dict):
        raise AdapterError(f"The adapter {where}'s {CONFIG} is not a JSON object; save the checkpoint again.")
    unsupported = [
        setting
        for setting, applies in (
            ("peft_type", config.get("peft_type", "LORA") != "LORA"),
            ("use_dora", bool(config.get("use_dora"))),
            ("bias", config.get("bias", "none") != "none"),
            ("fan_in_fan_out", bool(config.get("fan_in_fan_out"))),
            ("rank_pattern", bool(config.get("rank_pattern"))),
            ("alpha_pattern", bool(config.get("alpha_pattern"))),
            ("modules_to_save", bool(config.get("modules_to_save"))),
        )
        if applies
    ]
    if not isinstance(config.get("r"), int) or isinstance(config["r"], bool) or config["r"] < 1:
        unsupported.append("r")
    alpha = config.get("lora_alpha", 1)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        unsupported.append("lora_alpha")
    if unsupported:
        raise AdapterError(
            f"The adapter {where}'s {CONFIG} sets {', '.join(unsupported)} in a way this server does not apply: "
            "export the run (glmtui export) and use the exported folder."
        )
    return config


def _module_and_part(name: str) -> tuple[str, str | None]:
    for ending, part in _ENDINGS.items():
        if name.endswith(ending):
            return name.removeprefix(_PEFT_PREFIX).removesuffix(ending), part
    return name, None


def _submodule(model, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def read_adapter_weights(
    shape: AdapterShape, dtype: torch.dtype, device: torch.device
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each module's (A [in, rank], B [rank, out]): the weights transposed for `x @ A @ B`."""
    from safetensors import safe_open

    weights = {}
    try:
        with safe_open(str(shape.checkpoint / WEIGHTS), framework="pt") as source:
            for module in shape.modules:
                a = source.get_tensor(f"{_PEFT_PREFIX}{module}.lora_A.weight")
                b = source.get_tensor(f"{_PEFT_PREFIX}{module}.lora_B.weight")
                weights[module] = (a.t().to(device, dtype).contiguous(), b.t().to(device, dtype).contiguous())
    except Exception as error:  # changed or cut short since it was checked
        raise AdapterError(
            f"The adapter in {shape.checkpoint} cannot be read ({type(error).__name__}); save or copy the "
            "checkpoint again."
        ) from None
    return weights


class LowRankUpdates:
    """Forward hooks adding `scale * (x @ A) @ B` to the outputs of a model's target modules.

    `stacks[module]` is (A [slots, in, rank], B [slots, rank, out]). With `row_slots` None every row takes slot
    0 and the update is two matmuls; otherwise row i takes slot `row_slots[i]` with `row_scales[i]`, gathered and
    applied with `torch.bmm`. `active` False skips the update altogether (no adapter among the rows)."""

    def __init__(self, model) -> None:
        self.model = model
        self.stacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.scale = 0.0
        self.row_slots: torch.Tensor | None = None
        self.row_scales: torch.Tensor | None = None
        self.active = False
        self._hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}

    def hook(self, modules) -> None:
        """Install the hook on each of `modules` not hooked yet."""
        for module in modules:
            if module not in self._hooks:
                self._hooks[module] = self.model.get_submodule(module).register_forward_hook(
                    self._update_of(module)
                )

    def remove(self) -> None:
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self.stacks.clear()
        self.active = False

    def _update_of(self, module: str) -> Callable:
        def add_update(_layer, inputs, output):
            if not self.active or module not in self.stacks:
                return output
            a, b = self.stacks[module]
            x = inputs[0].to(a.dtype)
            if self.row_slots is None:
                update = (x @ a[0]) @ b[0] * self.scale
            else:
                rows = x.shape[0]
                gathered_a = a.index_select(0, self.row_slots)
                gathered_b = b.index_select(0, self.row_slots)
                update = torch.bmm(torch.bmm(x.reshape(rows, -1, x.shape[-1]), gathered_a), gathered_b)
                update = update.view(*output.shape) * self.row_scales.view(rows, *[1] * (output.dim() - 1))
            return output + update.to(output.dtype)

        return add_update


def model_compute_dtype(model) -> torch.dtype:
    """The dtype the model's activations have: its first floating-point weight's (the embedding, or at 4 and 8
    bits, where the embedding is int8, the first layer norm's: bitsandbytes' compute dtype). A prefix encoder,
    kept in fp32, does not count."""
    for name, parameter in model.named_parameters():
        if parameter.dtype.is_floating_point and "prefix_encoder" not in name:
            return parameter.dtype
    return torch.float16


def attach_adapter(model, checkpoint: Path) -> LowRankUpdates:
    """Apply the LoRA adapter of `checkpoint` to every row of `model` (chat, evaluation); `.remove()` takes it
    off again. The base weights are not changed."""
    shape = read_adapter_shape(checkpoint, model)
    device = next(model.parameters()).device
    updates = LowRankUpdates(model)
    for module, (a, b) in read_adapter_weights(shape, model_compute_dtype(model), device).items():
        updates.stacks[module] = (a[None], b[None])
    updates.scale = shape.scale
    updates.hook(shape.modules)
    updates.active = True
    return updates
