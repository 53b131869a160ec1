"""How much GPU memory a run will need, per GPU, before it starts; and how much disk its checkpoints take.

The estimate models glmtui's own training, part by part, as nvidia-smi will show it for the training process
(PyTorch's reserved memory plus the CUDA context):

- the CUDA context;
- the frozen or trained base weights at their quantization bit (LLM.int8 and NF4 quantize the Linear layers,
  the tied embedding/output matrix is stored in int8, LayerNorms and biases stay 16-bit);
- the trained parameters' fp32 copy, gradients and AdamW states (a prefix, LoRA adapters, or every weight,
  sharded by DeepSpeed ZeRO over the GPUs);
- activations kept for the backward pass (all of them, or with gradient checkpointing only each layer's input
  plus one layer's working set), the prefix's keys and values and its dropout;
- one chunk of logits of the labelled positions (glmcore.models.fused computes the loss a chunk at a time);
- what the process holds beyond its live tensors: the caching allocator's slack over the per-step tensors and
  the blocks that loading (and quantizing) left cached.

Every constant lives in ``Calibration``, counted from what glmcore's training keeps (the tensors autograd saves
per layer) and calibrated against NVML readings of real runs on an H200 (docs/benchmarks.md has the grid).

Chat and serving size a KV cache row for a context (``context_cache``: DEFAULT_CONTEXT tokens, capped by the
model's positions), not for the positions themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from glmcore.models.family import ModelShape
from glmcore.units import GIB

if TYPE_CHECKING:
    from glmcore.config import RunConfig


@dataclass(frozen=True)
class Calibration:
    """The estimate's constants, in one place, to be calibrated against measured runs.

    Bytes are per element unless the name says otherwise.
    """

    cuda_context_bytes: int = GIB // 2
    """What the CUDA context and cuBLAS workspaces take before any tensor (0.5 GiB on recent drivers)."""
    nf4_bytes_per_param: float = 0.5 + 1 / 64 + 4 / (64 * 256)
    """NF4 packs two weights a byte; with double quantization each block of 64 adds an 8-bit absmax, and each
    256 of those an fp32 scale."""
    int8_bytes_per_param: float = 1.0 + 4 / 4096
    """LLM.int8 stores a byte a weight plus an fp32 scale per output row."""
    trainable_bytes_per_param: int = 16
    """fp32 weight (4) + fp32 gradient (4) + AdamW's two fp32 moments (8)."""
    zero_master_bytes_per_param: int = 12
    """DeepSpeed's fp32 master weight and two fp32 moments, sharded from ZeRO stage 1 up."""
    activation_bytes_per_hidden: float = 8
    """Bytes kept per token and layer per hidden unit: four 16-bit tensors of the hidden size (both LayerNorm
    inputs, the query, attention's output), besides the 16-bit key and value (the KV cache's width, which is two
    hidden sizes in multi-head attention). Frozen linears keep no input, and fused attention keeps no scores."""
    activation_bytes_per_inner: float = 2
    """Bytes kept per token and layer per value the MLP keeps per inner unit (`ModelShape.mlp_values_per_inner`):
    16-bit each. ChatGLM-6B's GELU keeps its input (one); ChatGLM2/3's SwiGLU keeps both halves of its
    up-projection and the gated product (two per unit of its 1.5 × ffn inner size)."""
    lora_bytes_per_hidden: float = 3
    """LoRA's extra per token and layer: its dropped-out 16-bit input and the dropout mask."""
    int8_input_bytes: float = 1.5
    """LLM.int8's per-matmul state kept for the backward pass, per input element of each linear: its int8 copy of
    the input and the rest (calibrated)."""
    prefix_copies: float = 2.5
    """The prefix's keys and values at the step's peak, in units of one 16-bit copy: the copy inside each layer's
    keys, the dropped-out batch (alive until the last layer) and its mask (a byte an element)."""
    checkpointed_input_bytes_per_hidden: float = 2
    """With gradient checkpointing each layer keeps only its 16-bit input."""
    logits_bytes: float = 2 + 4
    """Per logit of the chunk being computed: the 16-bit output (overwritten by its gradient) and an fp32 copy."""
    logits_per_chunk: int = 2**25
    """Logits computed at once by the fused loss (glmcore.models.fused.LOGITS_PER_CHUNK)."""
    fragmentation: float = 1.30
    """Reserved over allocated memory for the per-step tensors (activations, logits); the weights are allocated
    once, in large blocks, and add none."""
    loading_cache_bytes_16bit: int = round(1.1 * GIB)
    """Blocks that loading a 16-bit ChatGLM-6B leaves in the allocator's cache (measured; scaled by parameters)."""
    loading_cache_family: str = "chatglm-6b"
    """The family whose published model the loading caches were measured on: other sizes scale from its
    parameters."""
    loading_cache_bytes_quantized: int = round(1.6 * GIB)
    """The same after quantizing it to 4 or 8 bits at load (measured on ChatGLM-6B; scaled by parameters)."""
    host_optimizer_state_when_quantized: bool = True
    """Quantized P-tuning keeps AdamW's two moments in host memory between steps (glmcore.train)."""
    ptuning_checkpoint_bytes_per_param: float = 16
    """Disk per prefix parameter: fp32 twice (safetensors and ChatGLM's pytorch_model.bin) + AdamW's moments."""
    lora_checkpoint_bytes_per_param: float = 12
    """Disk per adapter parameter: fp32 weights + AdamW's two fp32 moments."""
    full_checkpoint_bytes_per_param: float = 14
    """Disk per weight: 16-bit weights + fp32 AdamW moments (8) + DeepSpeed's fp32 master (4)."""
    auto_checkpointing_share: float = 0.25
    """Automatic gradient checkpointing turns on when activations would exceed this share of the estimate."""

    def checkpoint_bytes(self, method: str) -> float:
        """Disk bytes per trained parameter in one checkpoint of a run of ``method``."""
        return {
            "ptuning-v2": self.ptuning_checkpoint_bytes_per_param,
            "lora": self.lora_checkpoint_bytes_per_param,
            "full": self.full_checkpoint_bytes_per_param,
        }[method]


CALIBRATION = Calibration()


@dataclass(frozen=True)
class VramEstimate:
    """Bytes per GPU, part by part, as nvidia-smi will show them for the training process."""

    parts: dict[str, int]
    gradient_checkpointing: bool

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def fits(self, free_bytes: int) -> bool:
        """Whether the run fits in a GPU with ``free_bytes`` free."""
        return self.total <= free_bytes


@dataclass(frozen=True)
class GpuFit:
    """Whether a run's VRAM estimate fits one of its GPUs as free as it is now: the answer `glmtui train` and
    the config editor both give, in the same words."""

    gpu: int
    need_bytes: int
    free_bytes: int | None
    """None: no driver answered for this GPU."""

    @property
    def fits(self) -> bool | None:
        """None when the free memory is unknown."""
        return None if self.free_bytes is None else self.need_bytes <= self.free_bytes


def gpu_fits(estimate: VramEstimate, gpus: Sequence[int], free: Mapping[int, int]) -> list[GpuFit]:
    """`estimate` against each of `gpus`' free bytes (`free`, by GPU index; a GPU missing from it is unknown)."""
    return [GpuFit(gpu, estimate.total, free.get(gpu)) for gpu in gpus]


@cache
def _published_parameters(family: str) -> int:
    """Parameters of `family`'s published model (the loading caches scale from the one they were measured on)."""
    from glmcore.models import family_named

    return family_named(family).published_shape().parameters


def trainable_parameter_count(shape: ModelShape, config: RunConfig) -> int:
    """Parameters the optimizer updates: the prefix encoder, the LoRA adapters on query_key_value, or all."""
    hidden, layers = shape.hidden_size, shape.num_layers
    if config.method == "ptuning-v2":
        prefix_width = shape.cache_values_per_token
        if config.prefix_projection:
            # Embedding(pre_seq_len, hidden) -> Linear(hidden, hidden) -> Tanh -> Linear(hidden, prefix_width)
            return (
                config.pre_seq_len * hidden + hidden * hidden + hidden + hidden * prefix_width + prefix_width
            )
        return config.pre_seq_len * prefix_width
    if config.method == "lora":
        return layers * config.lora_rank * (hidden + 3 * hidden)
    return shape.parameters


def resolve_gradient_checkpointing(
    shape: ModelShape,
    config: RunConfig,
    calibration: Calibration = CALIBRATION,
    free_bytes: int | None = None,
) -> bool:
    """The config's choice, or when automatic: recompute activations only where memory requires it.

    Recomputation costs a third more compute per step, so it is off whenever the run fits without it: in
    ``free_bytes`` (the GPU's free memory) when that is known; otherwise (planning, or the CPU) while the
    activations stay under ``calibration.auto_checkpointing_share`` of the total.
    """
    if config.gradient_checkpointing is not None:
        return config.gradient_checkpointing
    without = _parts(shape, config, calibration, checkpointing=False)
    if free_bytes is not None:
        return sum(without.values()) > free_bytes
    return without["activations"] > calibration.auto_checkpointing_share * sum(without.values())


def estimate_vram(
    shape: ModelShape,
    config: RunConfig,
    calibration: Calibration = CALIBRATION,
    free_bytes: int | None = None,
) -> VramEstimate:
    """Per-GPU memory for ``config`` on a model of ``shape`` (``free_bytes``: see resolve_gradient_checkpointing)."""
    checkpointing = resolve_gradient_checkpointing(shape, config, calibration, free_bytes)
    return VramEstimate(_parts(shape, config, calibration, checkpointing=checkpointing), checkpointing)


def published_estimate(config: RunConfig) -> tuple[str, VramEstimate]:
    """``config``'s estimate on the published checkpoint of its model folder's family, with that family's title:
    what the settings need on the real ChatGLM3-6B when the folder holds a tiny or local ChatGLM3 (the default
    family's, ChatGLM-6B's, while the folder's family cannot be told)."""
    family = _published_family(config)
    return family.title, estimate_vram(family.published_shape(), config)


def _published_family(config: RunConfig):
    """The family of ``config``'s model folder (the default family while it cannot be told)."""
    from glmcore.errors import GlmError
    from glmcore.models import DEFAULT_FAMILY, family_for

    try:
        family, _ = family_for(config.model_path, config.family)
    except GlmError:
        family = DEFAULT_FAMILY
    return family


def _parts(
    shape: ModelShape, config: RunConfig, calibration: Calibration, *, checkpointing: bool
) -> dict[str, int]:
    gpus = max(1, len(config.gpus))
    stage = config.zero_stage
    weight_bytes = 4 if config.dtype == "float32" else 2
    if config.quantization_bit in (4, 8):
        linear_bytes = (
            calibration.nf4_bytes_per_param
            if config.quantization_bit == 4
            else calibration.int8_bytes_per_param
        )
        # The tied embedding is stored in int8 with a 16-bit scale per row (glmcore/models/quantized_embedding.py).
        embedding = shape.embedding_parameters
        weights = (
            shape.linear_parameters * linear_bytes
            + embedding * (1 + 2 / shape.hidden_size)
            + (shape.other_parameters - embedding) * 2
        )
    else:
        weights = shape.parameters * weight_bytes / (gpus if stage == 3 else 1)

    trainable = trainable_parameter_count(shape, config)
    quantized = config.quantization_bit in (4, 8)
    if config.method == "full" and stage:
        gradients = trainable * weight_bytes / (gpus if stage >= 2 else 1)
        states = gradients + trainable * calibration.zero_master_bytes_per_param / gpus
    elif config.method == "full":
        # The weights are the trained parameters: add their gradient and AdamW's two moments in the same dtype.
        states = trainable * weight_bytes * 3
    elif config.method == "ptuning-v2" and quantized and calibration.host_optimizer_state_when_quantized:
        states = trainable * (calibration.trainable_bytes_per_param - 8)  # fp32 weight and gradient only
    else:
        states = trainable * calibration.trainable_bytes_per_param
    if gpus > 1 and not stage:
        states += trainable * 4  # DDP's gradient buckets

    batch, sequence = config.per_device_train_batch_size, config.sequence_length
    tokens = batch * sequence
    prefix = config.pre_seq_len if config.method == "ptuning-v2" else 0
    hidden, inner = shape.hidden_size, shape.inner_hidden_size
    bytes_per_hidden = calibration.activation_bytes_per_hidden
    if config.method == "lora":
        bytes_per_hidden += calibration.lora_bytes_per_hidden
    key_value = shape.key_value_width or 2 * hidden
    mlp = calibration.activation_bytes_per_inner * shape.mlp_values_per_inner * inner
    per_layer = tokens * (bytes_per_hidden * hidden + 2 * key_value + mlp)
    if config.quantization_bit == 8:
        per_layer += tokens * (3 * hidden + inner) * calibration.int8_input_bytes
    prefix_copy = batch * prefix * shape.cache_values_per_token * 2
    if checkpointing:
        stored = shape.num_layers * tokens * calibration.checkpointed_input_bytes_per_hidden * hidden
        activations = stored + per_layer + prefix_copy * calibration.prefix_copies
    else:
        activations = shape.num_layers * per_layer + prefix_copy * calibration.prefix_copies
    if quantized:
        # The largest quantized weight dequantized to 16-bit for one matmul.
        activations += hidden * inner * 2

    # The loss computes logits only where there are labels (the target part of each row), a chunk at a time.
    labelled = batch * config.max_target_length
    logits = min(labelled * shape.vocab_size, calibration.logits_per_chunk) * calibration.logits_bytes
    loading_cache = (
        calibration.loading_cache_bytes_quantized if quantized else calibration.loading_cache_bytes_16bit
    ) * min(1.0, shape.parameters / _published_parameters(calibration.loading_cache_family))
    return {
        "cuda_context": calibration.cuda_context_bytes,
        "weights": round(weights),
        "trainable_states": round(states),
        "activations": round(activations),
        "logits": round(logits),
        "fragmentation": round((activations + logits) * (calibration.fragmentation - 1) + loading_cache),
    }


def kept_checkpoint_count(config: RunConfig) -> int:
    """How many checkpoints the run holds at its end: one per save_steps plus a final one, capped by
    save_total_limit (plus the best one by eval loss, which pruning spares)."""
    saves = config.max_steps // config.save_steps + 1
    if config.save_total_limit is None:
        return saves
    return min(saves, config.save_total_limit + (1 if config.eval_steps else 0))


def estimate_checkpoint_bytes(
    shape: ModelShape, config: RunConfig, calibration: Calibration = CALIBRATION
) -> int:
    """Disk bytes of one checkpoint of this run."""
    return round(trainable_parameter_count(shape, config) * calibration.checkpoint_bytes(config.method))


# --- evaluation: how many prompts decode at once -------------------------------------------------------

EVALUATION_FREE_MEMORY_SHARE = 0.8
"""Share of the GPU's free memory an automatic evaluation batch plans to use; the rest absorbs allocator slack."""
MAX_EVALUATION_BATCH_SIZE = 128


def evaluation_batch_size(
    shape: ModelShape,
    *,
    free_bytes: int,
    element_bytes: int,
    sequence_length: int,
    pre_seq_len: int = 0,
) -> int:
    """A batch of prompts that fits in `free_bytes` while decoding `sequence_length` positions each.

    Per prompt: its KV cache (the family's width per token, prefix positions included), the prefill's
    activations, its fp32 attention scores and two fp32 rows of logits. A batch that still runs out of memory
    is split and retried by the evaluation, so this only needs to be close.
    """
    keys = sequence_length + pre_seq_len
    cache = keys * shape.cache_values_per_token * element_bytes
    activations = 2 * sequence_length * (5 * shape.hidden_size + shape.inner_hidden_size) * element_bytes
    attention_scores = shape.num_heads * sequence_length * keys * 4
    logits = 2 * shape.vocab_size * 4
    per_example = cache + activations + attention_scores + logits
    fitting = int(free_bytes * EVALUATION_FREE_MEMORY_SHARE // per_example)
    return max(1, min(MAX_EVALUATION_BATCH_SIZE, fitting))


# --- chat and serving: the context a KV cache row is sized for ---------------------------------------------

DEFAULT_CONTEXT = 8192
"""Tokens (prefix + prompt + answer) chat and serving size a KV cache row for unless told otherwise: sizing it to
the model's positions is no option (glm-4-9b-chat's 131,072 take 5 GiB per row in 16 bits)."""


@dataclass(frozen=True)
class ContextCache:
    """One KV cache row: the `context` tokens it holds, its 16-bit bytes, and the model's `positions` (the most
    a context may grow to)."""

    context: int
    row_bytes: int
    positions: int


def context_tokens(positions: int, context: int | None = None) -> int:
    """`context` (DEFAULT_CONTEXT when None) capped by the model's positions."""
    return min(context or DEFAULT_CONTEXT, positions)


def context_cache(shape: ModelShape, context: int | None = None, element_bytes: int = 2) -> ContextCache:
    """The cache row chat and serving start with on a model of `shape` (`context_tokens`)."""
    tokens = context_tokens(shape.positions, context)
    return ContextCache(tokens, tokens * shape.cache_values_per_token * element_bytes, shape.positions)


def published_context_cache(config: RunConfig) -> ContextCache:
    """The cache row chat and serving start with on the published model of ``config``'s family."""
    return context_cache(_published_family(config).published_shape())
