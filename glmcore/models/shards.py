"""Writing weight files: the shard writer every family's tiny checkpoint goes through, and random weights.

The ground floor a family's tiny.py builds on: it imports nothing of glmcore (glmcore.models.checkpoint reads
what this writes, and reaches the registry to find a folder's family).
"""

from __future__ import annotations

import json
from pathlib import Path

BIN_INDEX = "pytorch_model.bin.index.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SINGLE_BIN = "pytorch_model.bin"
SINGLE_SAFETENSORS = "model.safetensors"


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
