"""P-tuning v2 prefix checkpoints: ours (safetensors) and those of ChatGLM-6B's own ptuning scripts.

Our checkpoint folder holds `prefix.safetensors` and `prefix_config.json`, plus a `pytorch_model.bin`
and `config.json` under the published key names, so ChatGLM-6B's own scripts can read it too. A
published checkpoint (`checkpoint-N/pytorch_model.bin` with `transformer.prefix_encoder.*` beside a
`config.json` carrying `pre_seq_len`) loads as well, and so does the prefix of a checkpoint that saved the
whole model as safetensors (ChatGLM3's fine-tuning demo), and a PEFT prefix-tuning adapter (the GLM-4
fine-tuning demo's P-tuning v2); a family that says how (`peft_prefix_config`) gets one written beside ours.
The prefix is always kept in fp32.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from glmcore.errors import GlmError

if TYPE_CHECKING:
    import torch

PREFIX_WEIGHTS = "prefix.safetensors"
PREFIX_CONFIG = "prefix_config.json"
PUBLISHED_WEIGHTS = "pytorch_model.bin"
KEY_PREFIX = "transformer.prefix_encoder."
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX_KEY = "prompt_embeddings"
"""PEFT's saved prefix: every virtual token's keys and values, [layer, key/value, group, channel] as ours."""


class PrefixMismatch(GlmError):
    pass


@dataclass(frozen=True)
class PrefixSpec:
    pre_seq_len: int
    prefix_projection: bool


PrefixReader = Callable[[Path], "tuple[PrefixSpec, dict[str, torch.Tensor]]"]


ENCODER_DIMENSIONS = {"embedding.weight": 2}
PROJECTION_DIMENSIONS = {"trans.0.weight": 2, "trans.0.bias": 1, "trans.2.weight": 2, "trans.2.bias": 1}


def _read_state(checkpoint: Path, *, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """The prefix encoder's tensors; with `shapes_only`, tensors on the meta device (or memory-mapped) that
    carry the shapes without reading the weights."""
    from glmcore.models.checkpoint import read_bin_shard, read_weights

    if (checkpoint / PEFT_CONFIG).is_file() and not (checkpoint / PREFIX_WEIGHTS).is_file():
        return _peft_prefix_state(checkpoint, shapes_only=shapes_only)
    if (checkpoint / PREFIX_WEIGHTS).is_file():
        path = checkpoint / PREFIX_WEIGHTS
        state = _shapes_in(path) if shapes_only else read_weights(path)
    elif (checkpoint / PUBLISHED_WEIGHTS).is_file():
        state = read_bin_shard(checkpoint / PUBLISHED_WEIGHTS)  # memory-mapped: read only where used
    elif whole_model_files := _whole_model_safetensors(checkpoint):
        state = _prefix_tensors_of(whole_model_files, shapes_only=shapes_only)
    else:
        raise GlmError(
            f"{checkpoint} holds no prefix: expected {PREFIX_WEIGHTS}, a ptuning {PUBLISHED_WEIGHTS}, or the "
            "safetensors of a whole model saved with its prefix."
        )
    prefix_state = {
        key[len(KEY_PREFIX) :]: value for key, value in state.items() if key.startswith(KEY_PREFIX)
    }
    if not prefix_state:
        raise GlmError(
            f"{checkpoint} has weights but no {KEY_PREFIX}* tensors: it is not a P-tuning checkpoint."
        )
    _check_encoder_tensors(checkpoint, prefix_state)
    return prefix_state


def _peft_prefix_state(checkpoint: Path, *, shapes_only: bool) -> dict[str, torch.Tensor]:
    """A PEFT PREFIX_TUNING adapter as a prefix encoder without projection: PEFT saves the keys and values
    themselves (`prompt_embeddings`), whatever its `prefix_projection`."""
    from glmcore.models.checkpoint import read_weights

    config_path = checkpoint / PEFT_CONFIG
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GlmError(f"{config_path} is not readable JSON ({error}); save the adapter again.") from error
    kind = config.get("peft_type") if isinstance(config, dict) else None
    if kind != "PREFIX_TUNING":
        raise GlmError(
            f"{config_path} describes a PEFT {kind} adapter, not prefix tuning (PREFIX_TUNING): it is not a "
            "P-tuning checkpoint."
        )
    path = checkpoint / PEFT_WEIGHTS
    if not path.is_file():
        raise GlmError(f"{checkpoint} has {PEFT_CONFIG} but no {PEFT_WEIGHTS}; save the adapter again.")
    state = _shapes_in(path) if shapes_only else read_weights(path)
    if PEFT_PREFIX_KEY not in state or state[PEFT_PREFIX_KEY].dim() != 2:
        raise GlmError(f"{path} holds no {PEFT_PREFIX_KEY} matrix: it is not a PEFT prefix-tuning adapter.")
    embeddings = state[PEFT_PREFIX_KEY]
    return {"embedding.weight": embeddings if shapes_only else embeddings.float()}


def _check_encoder_tensors(checkpoint: Path, state: dict[str, torch.Tensor]) -> None:
    """A prefix is an embedding, plus the two linear layers of the projection when it has one."""
    from glmcore.models.checkpoint import DamagedCheckpoint

    expected = ENCODER_DIMENSIONS | (PROJECTION_DIMENSIONS if "trans.0.weight" in state else {})
    if set(state) != set(expected) or any(state[name].dim() != dims for name, dims in expected.items()):
        shapes = ", ".join(f"{name} {list(state[name].shape)}" for name in sorted(state)[:5])
        raise DamagedCheckpoint(
            f"{checkpoint} holds the prefix tensors {shapes}, not those of a prefix encoder "
            f"({', '.join(expected)}); it is damaged: use another checkpoint."
        )


def _shapes_in(path: Path) -> dict[str, torch.Tensor]:
    """Meta tensors shaped as a safetensors file's, from its checked header."""
    import torch

    from glmcore.models.checkpoint import safetensors_header

    return {
        name: torch.empty(entry["shape"], device="meta")
        for name, entry in safetensors_header(path).items()
        if name != "__metadata__"
    }


def _whole_model_safetensors(checkpoint: Path) -> list[Path]:
    """The safetensors of a checkpoint that saved the whole model (ChatGLM3's fine-tuning demo does)."""
    from glmcore.models.checkpoint import DamagedCheckpoint

    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = {str(name) for key, name in weight_map.items() if key.startswith(KEY_PREFIX)}
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
            raise DamagedCheckpoint(
                f"{index} is damaged (no weight_map of tensor names to files: {error!r}); copy it again."
            ) from None
        return [checkpoint / name for name in sorted(names) if Path(name).name == name]
    single = checkpoint / "model.safetensors"
    return [single] if single.is_file() else []


def _prefix_tensors_of(files: list[Path], *, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """Only the prefix's tensors of safetensors files (the base weights in them are never read)."""
    from safetensors import safe_open

    state = {}
    for path in files:
        shapes = {key: value for key, value in _shapes_in(path).items() if key.startswith(KEY_PREFIX)}
        if shapes_only:
            state.update(shapes)
            continue
        with safe_open(str(path), framework="pt") as weights:
            state.update({key: weights.get_tensor(key) for key in shapes})
    return state


def read_prefix_checkpoint(
    checkpoint: Path, *, shapes_only: bool = False
) -> tuple[PrefixSpec, dict[str, torch.Tensor]]:
    """The prefix's shape (from its tensors, which cannot disagree with themselves) and its weights (with
    `shapes_only`, tensors that only carry their shapes)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise GlmError(f"The prefix checkpoint {checkpoint} does not exist.")
    state = _read_state(checkpoint, shapes_only=shapes_only)
    return spec_of(state), state


def spec_of(state: dict[str, torch.Tensor]) -> PrefixSpec:
    """A prefix encoder's shape, from its tensors: a row per virtual token; the projection when it has one."""
    return PrefixSpec(state["embedding.weight"].shape[0], prefix_projection="trans.0.weight" in state)


def prefix_problem(checkpoint: Path, config) -> str | None:
    """Why the prefix of `checkpoint` cannot go into a model of `config` (files damaged, unsafe, missing or
    made for another model), None when it can; its weights are not read, so every checkpoint of a run can be
    checked before the first is used."""
    try:
        spec, shapes = read_prefix_checkpoint(checkpoint, shapes_only=True)
        check_fits_model(spec, shapes, config, str(checkpoint))
    except GlmError as error:
        return str(error)
    return None


def resolve_spec(
    checkpoint_spec: PrefixSpec | None,
    pre_seq_len: int | None,
    prefix_projection: bool | None,
    where: str = "",
) -> PrefixSpec | None:
    """Merge what the caller asked for with what a checkpoint holds; disagreement is an error naming both."""
    if checkpoint_spec is None:
        if pre_seq_len is None:
            return None
        return PrefixSpec(pre_seq_len, bool(prefix_projection))
    if pre_seq_len is not None and pre_seq_len != checkpoint_spec.pre_seq_len:
        raise PrefixMismatch(
            f"pre_seq_len {pre_seq_len} was asked for, but the checkpoint {where} was trained with "
            f"pre_seq_len {checkpoint_spec.pre_seq_len}; leave it unset to use the checkpoint's."
        )
    if prefix_projection is not None and prefix_projection != checkpoint_spec.prefix_projection:
        raise PrefixMismatch(
            f"prefix_projection {prefix_projection} was asked for, but the checkpoint {where} was trained with "
            f"prefix_projection {checkpoint_spec.prefix_projection}; leave it unset to use the checkpoint's."
        )
    return checkpoint_spec


def check_resumes(checkpoint: Path, pre_seq_len: int, prefix_projection: bool) -> None:
    """A run resumes only while its config still describes the prefix its checkpoint holds: say both values.

    A checkpoint whose prefix cannot be read is left to the training process, which names the problem when it
    loads it (and ``Run.resume_point`` has already passed over checkpoints with cut-short files).
    """
    try:
        spec, _ = read_prefix_checkpoint(checkpoint)
    except GlmError:
        return
    for name, saved, configured in (
        ("pre_seq_len", spec.pre_seq_len, pre_seq_len),
        ("prefix_projection", spec.prefix_projection, prefix_projection),
    ):
        if saved != configured:
            shown = str(saved).lower() if isinstance(saved, bool) else saved
            raise PrefixMismatch(
                f"{checkpoint} was trained with {name} = {shown}, but the run's config.toml now says "
                f"{name} = {str(configured).lower() if isinstance(configured, bool) else configured}; "
                f"set it back to {shown} to resume, or start a new run with the new value."
            )


def check_fits_model(spec: PrefixSpec, state: dict[str, torch.Tensor], config, where: str) -> None:
    """A prefix made for another model shape is refused by name, not by a shape traceback."""
    from glmcore.models import family_of

    expected_width = family_of(config).implementation().prefix_width(config)
    produced = (
        state["trans.2.weight"].shape[0] if spec.prefix_projection else state["embedding.weight"].shape[1]
    )
    if produced != expected_width:
        raise PrefixMismatch(
            f"The prefix {where} produces {produced} values per virtual token, but this model needs "
            f"{expected_width}: it was trained for another model."
        )


def set_prefix(model, spec: PrefixSpec | None, state: dict[str, torch.Tensor] | None = None) -> None:
    """Install a fresh (or given) fp32 prefix encoder in `model`, or remove it with `spec=None`."""
    from glmcore.models import family_of

    transformer = model.transformer
    model.config.pre_seq_len = spec.pre_seq_len if spec else None
    model.config.prefix_projection = spec.prefix_projection if spec else False
    if spec is None:
        transformer.prefix_encoder = None
        return
    device = model.get_input_embeddings().weight.device
    encoder = family_of(model).implementation().new_prefix_encoder(model.config).to(device=device)
    if state is not None:
        encoder.load_state_dict(state)
    transformer.prefix_encoder = encoder.float()


def read_checked_prefix(
    checkpoint: str | Path, config, *, read: PrefixReader | None = None
) -> tuple[PrefixSpec, dict[str, torch.Tensor]]:
    """A prefix checkpoint's shape and weights, refused by name unless they fit the model of `config`.

    `read` replaces reading the files (a cache of checkpoints already read, such as chat's `PrefixCache.get`).
    """
    spec, state = (read or read_prefix_checkpoint)(Path(checkpoint))
    check_fits_model(spec, state, config, str(checkpoint))
    return spec, state


def install_prefix_checkpoint(
    model, checkpoint: str | Path, *, read: PrefixReader | None = None
) -> PrefixSpec:
    """Read → check → install: the one way a prefix checkpoint reaches a loaded model (replacing its prefix)."""
    spec, state = read_checked_prefix(checkpoint, model.config, read=read)
    set_prefix(model, spec, state)
    return spec


def encode_prefix(
    prefix: str | Path | dict[str, torch.Tensor], config, *, dtype: torch.dtype, device: torch.device | str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A prefix's keys and values per layer, each [heads, pre_seq_len, channels] as a decoder's cache holds
    them, made apart from the model of `config`, which is not touched.

    `prefix` is a checkpoint folder (read and checked against `config`) or its prefix encoder's tensors. They
    are computed as the model computes them in evaluation: the family's prefix encoder in fp32 on `device`,
    its rows then cast to `dtype`. So a server makes a new request's prefix while the model it shares goes
    on serving the others.
    """
    import copy

    import torch

    from glmcore.models import family_of
    from glmcore.models.head import prefix_layers

    state = prefix if isinstance(prefix, dict) else read_checked_prefix(prefix, config)[1]
    spec = spec_of(state)
    encoder_config = copy.deepcopy(config)
    encoder_config.pre_seq_len, encoder_config.prefix_projection = spec.pre_seq_len, spec.prefix_projection
    with torch.device("meta"):  # no initialisation: every weight is the checkpoint's
        encoder = family_of(config).implementation().new_prefix_encoder(encoder_config)
    encoder = encoder.to_empty(device=device).float()
    encoder.load_state_dict(state)  # copied into fresh tensors, as `set_prefix` does: the same kernels' results
    with torch.no_grad():
        rows = encoder().to(dtype)
    return [(key[0], value[0]) for key, value in prefix_layers(rows[None], encoder.layers, encoder.heads)]


def save_prefix_checkpoint(model, directory: Path) -> Path:
    """Write the prefix in our format and in the published one; files appear whole or not at all."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    encoder = model.transformer.prefix_encoder
    if encoder is None:
        raise GlmError("This model has no prefix to save.")
    tensors = {
        KEY_PREFIX + name: value.detach().float().cpu().contiguous()
        for name, value in encoder.state_dict().items()
    }
    spec = {
        "pre_seq_len": model.config.pre_seq_len,
        "prefix_projection": bool(model.config.prefix_projection),
    }
    writes = {
        PREFIX_WEIGHTS: lambda path: save_file(tensors, str(path), metadata={"format": "pt"}),
        PUBLISHED_WEIGHTS: lambda path: torch.save(tensors, path),
        PREFIX_CONFIG: lambda path: path.write_text(json.dumps(spec, indent=2), encoding="utf-8"),
        "config.json": lambda path: model.config.to_json_file(str(path)),
    }
    from glmcore.models import family_of

    peft_config = getattr(family_of(model).implementation(), "peft_prefix_config", None)
    if peft_config is not None:  # the family's published P-tuning is PEFT's: the keys and values PEFT saves
        with torch.no_grad():
            keys_values = {PEFT_PREFIX_KEY: encoder().detach().float().cpu().contiguous()}
        adapter = json.dumps(peft_config(model.config), indent=2)
        writes[PEFT_WEIGHTS] = lambda path: save_file(keys_values, str(path), metadata={"format": "pt"})
        writes[PEFT_CONFIG] = lambda path: path.write_text(adapter, encoding="utf-8")
    for name, write in writes.items():
        temporary = directory / (name + ".tmp")
        write(temporary)
        os.replace(temporary, directory / name)
    return directory
