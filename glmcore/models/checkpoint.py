"""What is in a model folder on disk, and the one-time conversion of `.bin` shards to safetensors.

A model folder is usable when it has `config.json`, the tokenizer file and every weight shard its index
names. Pickled `.bin` shards are only ever read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.models import family_for
from glmcore.workspace import atomic_write_text

BIN_INDEX = "pytorch_model.bin.index.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SINGLE_BIN = "pytorch_model.bin"
SINGLE_SAFETENSORS = "model.safetensors"


@dataclass
class ModelFolder:
    """A model folder's state: which weight format it has and what is missing."""

    path: Path
    weight_format: str | None  # "safetensors", "bin" or None when no weights are present
    weight_files: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.weight_format is not None and not self.missing

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.path.iterdir() if path.is_file())


def _indexed_shards(index_path: Path) -> list[str]:
    index = json.loads(index_path.read_text(encoding="utf-8"))
    return sorted(set(index["weight_map"].values()))


def inspect_model_folder(path: Path, family: str | None = None) -> ModelFolder:
    """Find the weight format (safetensors preferred) and list what a complete folder would still need."""
    path = Path(path)
    model_family, _ = family_for(path, family)
    missing = [name for name in ("config.json", model_family.tokenizer_file) if not (path / name).is_file()]
    for weight_format, index_name, single_name in (
        ("safetensors", SAFETENSORS_INDEX, SINGLE_SAFETENSORS),
        ("bin", BIN_INDEX, SINGLE_BIN),
    ):
        if (path / index_name).is_file():
            shards = _indexed_shards(path / index_name)
            present = [path / shard for shard in shards if (path / shard).is_file()]
            absent = [shard for shard in shards if not (path / shard).is_file()]
            return ModelFolder(path, weight_format, present, missing + absent)
        if (path / single_name).is_file():
            return ModelFolder(path, weight_format, [path / single_name], missing)
    return ModelFolder(path, None, [], [*missing, "weights (pytorch_model*.bin or *.safetensors)"])


def require_complete(path: Path, family: str | None = None) -> ModelFolder:
    folder = inspect_model_folder(path, family)
    if not folder.complete:
        raise GlmError(
            f"The model folder {path} is incomplete: missing {', '.join(folder.missing)}. "
            "Finish its download (glmtui download) or point to another folder."
        )
    return folder


def unreadable_weights_message(shard: Path, error: BaseException) -> str:
    """One sentence for a weight file that failed to load: code refused, or a damaged or truncated file."""
    if isinstance(error, pickle.UnpicklingError) and "weights only load failed" in str(error).lower():
        return (
            f"{shard} holds pickled code besides tensors, so glmtui did not load it (code in a checkpoint never "
            "runs); use weights from a source you trust, or in safetensors."
        )
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    return f"{shard} is truncated or damaged ({reason}); copy or download it again."


def read_bin_shard(shard: Path) -> dict:
    """A pickled shard's tensors, loaded without running any code it may carry."""
    import torch

    try:
        try:
            return torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap can only be used" not in str(error):
                raise
            # A pickle in torch's legacy (pre-zip) format cannot be memory-mapped; read it whole.
            return torch.load(shard, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged or unsafe pickles
        raise GlmError(unreadable_weights_message(shard, error)) from error


def read_weights(shard: Path) -> dict:
    """The tensors of one weight file, either format."""
    if shard.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(shard))
        except Exception as error:  # safetensors raises its own error type for a damaged file
            raise GlmError(unreadable_weights_message(shard, error)) from error
    return read_bin_shard(shard)


def find_unreadable_weights(path: Path) -> str | None:
    """The sentence for the first weight file of a model folder that cannot be read, or None when all can.

    Used after a load failed, to name the file: safetensors headers are read, pickles loaded (memory-mapped).
    """
    for shard in inspect_model_folder(path).weight_files:
        try:
            if shard.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(shard), framework="pt") as handle:
                    handle.keys()
            else:
                read_bin_shard(shard)
        except GlmError as error:
            return str(error)
        except Exception as error:  # safetensors raises its own error type for a damaged header
            return unreadable_weights_message(shard, error)
    return None


def convert_to_safetensors(path: Path, *, progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Write a safetensors copy of the `.bin` shards beside them (they stay, and are no longer read).

    Safetensors load faster (memory-mapped) and cannot carry code. Each shard is written to a temporary
    name and renamed, and the index last, so an interrupted conversion leaves the folder as it was.
    """
    from safetensors.torch import save_file

    folder = require_complete(path)
    if folder.weight_format == "safetensors":
        return path / SAFETENSORS_INDEX
    shards = folder.weight_files
    weight_map: dict[str, str] = {}
    total_size = 0
    for number, shard in enumerate(shards, start=1):
        if progress is not None:
            progress(number - 1, len(shards), shard.name)
        tensors = {}
        seen_storage: set[int] = set()
        for name, tensor in read_bin_shard(shard).items():
            # safetensors refuses tensors that share storage (a pickle may hold views of one buffer).
            storage = tensor.untyped_storage().data_ptr()
            tensors[name] = tensor.clone() if storage in seen_storage else tensor.contiguous()
            seen_storage.add(storage)
        target_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        temporary = path / (target_name + ".tmp")
        save_file(tensors, str(temporary), metadata={"format": "pt"})
        os.replace(temporary, path / target_name)
        for name, tensor in tensors.items():
            weight_map[name] = target_name
            total_size += tensor.numel() * tensor.element_size()
    index_path = path / SAFETENSORS_INDEX
    atomic_write_text(
        index_path, json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2)
    )
    if progress is not None:
        progress(len(shards), len(shards), "done")
    return index_path


def rewrite_weights(path: Path, state: dict) -> None:
    """Replace the tensors of a model folder's weight files in place, keeping its shard layout and index.

    Used to save a model trained in place (the demo) in exactly the layout it was loaded from.
    """
    import torch
    from safetensors.torch import save_file

    folder = require_complete(path)
    index_name = SAFETENSORS_INDEX if folder.weight_format == "safetensors" else BIN_INDEX
    if (path / index_name).is_file():
        weight_map = json.loads((path / index_name).read_text(encoding="utf-8"))["weight_map"]
    else:
        weight_map = dict.fromkeys(state, folder.weight_files[0].name)
    unknown = set(state) - set(weight_map)
    if unknown:
        raise GlmError(f"{path} has no place for the tensors {', '.join(sorted(unknown))}.")
    for shard in sorted(set(weight_map.values())):
        # Tensors the model does not hold as state (the stored rotary frequencies) keep their stored values.
        tensors = read_weights(path / shard)
        tensors.update(
            {
                name: state[name].contiguous()
                for name, file in weight_map.items()
                if file == shard and name in state
            }
        )
        temporary = path / (shard + ".tmp")
        if folder.weight_format == "safetensors":
            save_file(tensors, str(temporary), metadata={"format": "pt"})
        else:
            torch.save(tensors, temporary)
        os.replace(temporary, path / shard)


def contiguous_groups(names: list[str], count: int) -> list[list[str]]:
    """`names` cut in order into `count` runs whose lengths differ by one at most, the longer runs first."""
    size, extra = divmod(len(names), count)
    groups, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        groups.append(names[start:end])
        start = end
    return groups


def write_shards(
    folder: Path, tensors: dict, groups: list[list[str]], weight_format: str, *, sort_index: bool
) -> None:
    """Save `tensors` as one weight file per group of names, under the file names transformers uses for
    `weight_format` ("bin" or "safetensors"), with the index when there is more than one file.

    `sort_index` orders the index's weight map by tensor name, as the published indexes are; without it
    the map follows the shards (the order the ChatGLM2/3 test fixtures were written in).
    """
    import torch
    from safetensors.torch import save_file

    if weight_format == "bin":
        single_name, index_name, shard_name = SINGLE_BIN, BIN_INDEX, "pytorch_model-{:05d}-of-{:05d}.bin"
    else:
        single_name, index_name = SINGLE_SAFETENSORS, SAFETENSORS_INDEX
        shard_name = "model-{:05d}-of-{:05d}.safetensors"
    weight_map: dict[str, str] = {}
    for number, group in enumerate(groups, start=1):
        file_name = single_name if len(groups) == 1 else shard_name.format(number, len(groups))
        shard = {name: tensors[name].contiguous() for name in group}
        if weight_format == "bin":
            torch.save(shard, folder / file_name)
        else:
            save_file(shard, str(folder / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file_name))
    if len(groups) > 1:
        total_size = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        index = {
            "metadata": {"total_size": total_size},
            "weight_map": dict(sorted(weight_map.items())) if sort_index else weight_map,
        }
        (folder / index_name).write_text(
            json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )


def random_state(model_class: type, config) -> dict:
    """The state of a `model_class(config)` with random float16 weights (normal, std 0.02; norm weights 1,
    biases 0), built on the GPU when there is one and returned on the CPU: the bench's checkpoint at the real
    size, whatever the family."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = model_class(config).to(torch.float16)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.02, generator=generator)
            else:
                parameter.fill_(1.0 if "layernorm.weight" in name else 0.0)
    state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the benchmark's own process should not sit on the GPU it measures
    return state
