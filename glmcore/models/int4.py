"""int4 weight-only 4-bit weights through torchao: a 4-bit backend for inference meant to decode faster than NF4
(not yet measured on a GPU: docs/benchmarks.md, int4).

4-bit decoding through bitsandbytes' NF4 is bound by its matrix–vector kernels, not by the bytes it reads
(issue 36). torchao's int4 weight-only layouts run PyTorch core's tinygemm kernels instead: on CUDA the
tile-packed layout (`aten._weight_int4pack_mm`, bf16), on the CPU the prototype opaque layout
(`aten._weight_int4pack_mm_for_cpu`), neither needing torchao's own C++ extensions. The weights are quantized
from the 16-bit checkpoint at load, asymmetric per group of input columns.

What is quantized: every `nn.Linear` of the transformer blocks. The embedding and the output layer stay as
NF4 leaves them (int8 rows, glmcore/models/quantized_embedding.py) and the prefix encoder in full precision,
so int4 and NF4 differ only in the blocks' matrices. The group is 128 input columns wherever the width allows
(every published model: 4,096, 13,696 and 16,384 all divide by 128), else 64 or 32 (the tiny test models).

int4 is for inference only (decoding, chat, evaluation, serving): torchao's weight-only tensors have no
backward through the frozen base that P-tuning v2 needs, so training's 4-bit stays NF4 (docs/decisions.md).
"""

from __future__ import annotations

import importlib.util

from glmcore.errors import GlmError

NF4 = "nf4"
INT4 = "int4"
FOUR_BIT_FORMATS = (NF4, INT4)
"""How 4-bit weights are stored: bitsandbytes' NF4 (the default, and training's) or torchao's int4."""
GROUP_SIZES = (128, 64, 32)
"""Input columns per quantization group, the largest that divides a layer's width."""
MISSING_TORCHAO = (
    "The int4 4-bit backend needs torchao, which is not installed: install it with pip install 'glmtui[int4]', "
    "or use NF4 4-bit weights (--four-bit nf4, the default)."
)
NEEDS_BF16 = (
    "int4 4-bit weights need a GPU that runs bf16 (Ampere or newer), but this one loads in {dtype}: use "
    "--four-bit nf4."
)


def check_four_bit(four_bit: str, quantization_bit: int) -> None:
    """GlmError, before anything loads, when `four_bit` is not a known format, names int4 for weights that are
    not 4-bit, or names int4 where torchao is not installed."""
    if four_bit not in FOUR_BIT_FORMATS:
        raise GlmError(f"four_bit must be nf4 or int4, not {four_bit!r}.")
    if four_bit != INT4:
        return
    if quantization_bit != 4:
        raise GlmError(
            f"int4 is a 4-bit format, but the weights were asked for at {quantization_bit}-bit: give "
            "--quantization-bit 4 or leave it out."
        )
    if importlib.util.find_spec("torchao") is None:
        raise GlmError(MISSING_TORCHAO)


def resolve_bits(quantization_bit: int | None, four_bit: str, default: int) -> int:
    """The bits to load at: as asked, else 4 when int4 is asked for, else `default` (a run's, or 16)."""
    if quantization_bit:
        return quantization_bit
    return 4 if four_bit == INT4 else default


def group_size(in_features: int) -> int | None:
    """The quantization group of a layer `in_features` wide, None when no supported group divides it."""
    return next((size for size in GROUP_SIZES if in_features % size == 0), None)


def quantize_blocks(model, device: str, not_quantized: list[str]) -> None:
    """Replace the weights of the transformer blocks' linear layers (every `nn.Linear` whose name holds none of
    `not_quantized`) by torchao int4 weight-only tensors, in place.

    CUDA takes the tile-packed layout, in bf16 (its kernel's only activation type: `load_model` checks the
    dtype first); the CPU takes the opaque layout, in the model's dtype."""
    from torch import nn
    from torchao.quantization import quantize_

    cuda = device.startswith("cuda")
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or any(part in name for part in not_quantized):
            continue
        size = group_size(module.in_features)
        if size is None:
            raise GlmError(
                f"{name} is {module.in_features} columns wide, which no int4 group ({', '.join(map(str, GROUP_SIZES))}) "
                "divides: load this model with --four-bit nf4."
            )
        quantize_(module, _config(size, cuda))


def _config(size: int, cuda: bool):
    if cuda:
        from torchao.quantization import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(
            group_size=size, int4_packing_format="tile_packed_to_4d", set_inductor_config=False
        )
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=size, set_inductor_config=False)
