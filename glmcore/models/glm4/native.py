"""What glmtui adds to transformers' own GLM-4 classes (layouts 2 and 3: `glm` GlmForCausalLM for
glm-4-9b-chat-hf, `glm4` Glm4ForCausalLM for GLM-4-9B-0414 / GLM-Z1-9B-0414), shared by both layouts.

The models are transformers' classes; each layout's `modeling.py` subclasses them with `PrefixCausalLM`, which
adds only: a P-tuning v2 prefix (an fp32 encoder under `transformer.prefix_encoder`, its keys and values held
in the first columns of glmtui's static cache, else put in front of every layer's cache), positions that count
real tokens (after the prefix, as PEFT's prefix tuning counts them, so a PEFT adapter over transformers' class
gives the same logits) rather than left pads, glmtui's static-cache decoder, the fused loss of
glmcore.models.head and, without gradients, RMSNorm's normalisation as one `F.rms_norm` (`InferenceRMSNorm`)
and a one-token step in few kernels (`PrefixCausalLM.decoding_step`, layout 1's fused step over transformers'
modules). Refused: a config key neither transformers' class nor the published config has, and a rope type
other than the layout's.
"""

from __future__ import annotations

import torch
import transformers
from torch import nn
from torch.nn import functional as F
from transformers.modeling_layers import GradientCheckpointingLayer

from glmcore.decoding import StaticDecoder, StaticKVCache
from glmcore.errors import GlmError
from glmcore.models.chatglm2.configuration import UnsupportedArchitecture
from glmcore.models.chatglm2.modeling import PrefixEncoder, attend_one_token, pair_tables
from glmcore.models.family import read_config_json
from glmcore.models.head import CACHE_FIELD, causal_lm_output, peft_prefix_tuning_config, prefix_layers

KEEPS_READ_ONLY_CACHE = hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache")
"""Whether this transformers lets a layer keep a cache it only reads under gradient checkpointing (the prefix's);
older releases drop it, which would train without the prefix."""

COMMON_KEYS = {
    "_name_or_path",
    "_from_model_config",
    "architectures",
    "auto_map",
    "model_type",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "partial_rotary_factor",
    "pre_seq_len",
    "prefix_projection",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
}
"""Keys every layout's config.json may carry besides its class's sizes (`auto_map` is never imported)."""


def check_config_keys(
    config: dict, known: set[str], rope_types: tuple[str, ...], title: str, where: str
) -> None:
    """Refuse, with a sentence, a config key that neither transformers' class nor the published config has,
    and a rope type the layout does not implement."""
    unknown = sorted(set(config) - known - COMMON_KEYS)
    if unknown:
        raise UnsupportedArchitecture(
            f"{where} has keys glmtui's {title} does not know ({', '.join(unknown)}); remove them, or set the "
            "family of a model that has them."
        )
    for key in ("rope_scaling", "rope_parameters"):
        rope = config.get(key)
        if isinstance(rope, dict):
            kind = rope.get("rope_type", rope.get("type", "default"))
            if kind not in rope_types:
                raise UnsupportedArchitecture(
                    f"{where} sets {key} type {kind!r}, which {title} does not use; glmtui implements "
                    f"{', '.join(rope_types)}: remove it or use one of those."
                )


class CheckedConfigMixin:
    """`from_pretrained` reads config.json as data and checks its keys first (`known_keys`, `rope_types`)."""

    family_title = "GLM-4"
    rope_types: tuple[str, ...] = ("default",)
    pre_seq_len = None
    prefix_projection = False

    @classmethod
    def known_keys(cls) -> set[str]:
        return set(cls().to_dict())

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        from pathlib import Path

        if Path(path).is_dir():
            check_config_keys(
                read_config_json(Path(path)),
                cls.known_keys(),
                cls.rope_types,
                cls.family_title,
                str(Path(path) / "config.json"),
            )
        return super().from_pretrained(path, **kwargs)

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def multi_query_group_num(self) -> int:
        return self.num_key_value_heads

    @property
    def kv_channels(self) -> int:
        return getattr(self, "head_dim", None) or self.hidden_size // self.num_attention_heads


def prefix_width(config) -> int:
    """Values per virtual token: layers × (key + value) × key/value heads × head_dim."""
    return config.num_hidden_layers * 2 * config.num_key_value_heads * config.kv_channels


def new_prefix_encoder(config) -> PrefixEncoder:
    """ChatGLM2/3's prefix encoder (published parameter names), sized by this config's heads."""
    return PrefixEncoder(config)


class PrefixSlot(nn.Module):
    """Where the prefix lives, `transformer.prefix_encoder` as in every glmtui family (its checkpoints' keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.prefix_encoder: PrefixEncoder | None = None
        self.prefix_dropout = nn.Dropout(0.1)

    def prefix_keys_values(self, batch: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        encoder = self.prefix_encoder
        flat = encoder().to(dtype).unsqueeze(0).expand(batch, -1, -1)
        return prefix_layers(self.prefix_dropout(flat), encoder.layers, encoder.heads)


class PrefixedCache:
    """A cache seen through the prefix: each layer's keys and values are the prefix's, then the inner cache's
    (transformers' DynamicCache, glmtui's static cache, or none). The prefix itself is never stored, so a
    layer recomputed for gradient checkpointing reads the same keys."""

    def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None, inner) -> None:
        self.prefix = prefix
        self.inner = inner

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.inner is not None:
            key, value = self.inner.update(key, value, layer_idx)
        if self.prefix is None:
            return key, value
        prefix_key, prefix_value = self.prefix[layer_idx]
        return torch.cat((prefix_key, key), dim=2), torch.cat((prefix_value, value), dim=2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.inner.get_seq_length(layer_idx) if self.inner is not None else 0


def real_token_positions(attention_mask: torch.Tensor, length: int, start: int) -> torch.Tensor:
    """Positions of the last `length` tokens of left-padded rows: real tokens counted from `start`, pads at
    `start` + 1 (generate()'s rule; a pad's position changes no real token)."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 1) + start
    return positions[:, -length:]


def additive_mask(
    attention_mask: torch.Tensor | None, batch: int, length: int, past: int, prefix: int, dtype, device
) -> torch.Tensor:
    """[batch, 1, length, prefix + past + length], 0 where a key is seen: the prefix by all, causal over the
    past and the new tokens, padded keys hidden."""
    keys = past + length
    seen = torch.ones(length, keys, dtype=torch.bool, device=device).tril(past)[None, None]
    if attention_mask is not None:
        seen = seen & attention_mask[:, None, None, -keys:].bool()
    seen = torch.cat((seen.new_ones(seen.shape[0], 1, length, prefix), seen.expand(-1, 1, -1, -1)), dim=-1)
    seen = seen.expand(batch, 1, length, prefix + keys)
    return torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill(~seen, torch.finfo(dtype).min)


class InferenceRMSNorm:
    """Mixed in front of transformers' RMSNorm: without gradients (decoding, evaluation, serving) the
    normalisation is one `F.rms_norm` (fp32 inside, rounded once, as transformers' chain of two casts and four
    operations rounds it), then transformers' weight product: two operations where the chain runs six (eight in
    16-bit), the same values on the CPU (tests/test_glm4_hf.py). Training keeps the chain and its gradients."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(hidden_states)
        return self.weight * F.rms_norm(hidden_states, self.weight.shape, eps=self.variance_epsilon)


def runs_alone(module: nn.Module) -> bool:
    """Whether calling `module` runs its class's forward alone: no hook and no forward wrapped on the instance
    (accelerate's offloading and DeepSpeed ZeRO-3 bring its weights in that way), so its weights may be read."""
    return not module._forward_hooks and not module._forward_pre_hooks and "forward" not in vars(module)


def fused_rms_norm(norm: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """transformers' RMSNorm as one `F.rms_norm` with its weight, for the one-token step: fp32 inside, rounded
    once where transformers rounds the normalised values, then their product with the weight (the same in fp32;
    in 16-bit an element may round the other way, as layout 1's step's norm does against its published chain).
    A hooked norm runs as it is (`runs_alone`)."""
    if not runs_alone(norm):
        return norm(hidden_states)
    return F.rms_norm(hidden_states, norm.weight.shape, norm.weight, norm.variance_epsilon)


def adjacent_parts(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The tensors (weights [rows, columns] or biases [rows]) as one, a view, where they lie one after another in
    one storage (`share_one_storage`); None where they do not (quantized, moved apart, or never laid out)."""
    if any(type(tensor) not in (torch.Tensor, nn.Parameter) for tensor in tensors):
        return None  # a tensor subclass (torchao's int4 weights) has no storage of its own to view
    first = tensors[0]
    storage, offset = first.untyped_storage().data_ptr(), first.storage_offset()
    for tensor in tensors:
        if (
            tensor.dtype != first.dtype
            or not tensor.is_contiguous()
            or tensor.storage_offset() != offset
            or tensor.untyped_storage().data_ptr() != storage
        ):
            return None
        offset += tensor.numel()
    return first.as_strided((sum(tensor.shape[0] for tensor in tensors), *first.shape[1:]), first.stride())


def share_one_storage(projections: tuple[nn.Module, ...]) -> None:
    """Lay the weights (and the biases) of plain `nn.Linear` projections out one after another in one tensor, so
    that `adjacent_parts` sees them as one matrix: each parameter keeps its identity and name (state_dict, saving,
    PEFT, optimizers) and becomes a view of that tensor, which nothing else holds; no second copy is kept.
    Quantized (bitsandbytes) or wrapped projections are left as they are."""
    if any(type(projection) is not nn.Linear for projection in projections):
        return
    for name in ("weight", "bias"):
        tensors = [getattr(projection, name) for projection in projections]
        if all(tensor is None for tensor in tensors):
            continue
        if any(tensor is None or tensor.is_meta for tensor in tensors):
            return
        if len({(tensor.dtype, tensor.device) for tensor in tensors}) > 1:
            return
        with torch.no_grad():
            if adjacent_parts(tensors) is not None:
                continue
            joined = torch.cat([tensor.detach() for tensor in tensors])
            for tensor, part in zip(tensors, joined.split([t.shape[0] for t in tensors]), strict=True):
                tensor.data = part


def query_key_value(attention: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """transformers' q_proj, k_proj and v_proj side by side [..., queries + keys + values]: one matmul where
    they are plain `nn.Linear`s whose weights and biases lie in one storage and nothing hooks them (glmcore.adapters'
    LoRA updates are forward hooks), else each projection as transformers runs it (PEFT's LoRA layers,
    bitsandbytes' 4/8-bit layers), then joined."""
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    if all(type(projection) is nn.Linear and runs_alone(projection) for projection in projections):
        weight = adjacent_parts([projection.weight for projection in projections])
        biases = [projection.bias for projection in projections]
        bias = None if any(part is None for part in biases) else adjacent_parts(biases)
        if weight is not None and (bias is not None or all(part is None for part in biases)):
            return F.linear(hidden_states, weight, bias)
    return torch.cat([projection(hidden_states) for projection in projections], dim=-1)


def rotate_in_place_as_transformers(x: torch.Tensor, tables: tuple[torch.Tensor, ...]) -> None:
    """transformers' GLM rotary (`apply_rotary_pos_emb`: the interleaved pairs of each head's first
    `partial_rotary_factor`) written into x [..., heads, channels], with `pair_tables`' tables: each product
    rounded, then their sum, as transformers rounds them (the same values), in four kernels where layout 1's
    `rotate_in_place` takes three and rounds once (1e-5 apart in the logits)."""
    cos, signed_sin = tables
    rotated = x[..., : cos.shape[-1]]
    swapped = rotated.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    rotated.mul_(cos).add_(swapped.mul_(signed_sin))


def layer_step(
    layer: nn.Module,
    hidden_states: torch.Tensor,
    rotary: tuple[torch.Tensor, ...],
    attention_mask: torch.Tensor | None,
    prefix: tuple[torch.Tensor, torch.Tensor] | None,
    cache,
) -> torch.Tensor:
    """transformers' decoder layer (`glm`'s, or `glm4`'s with its norms after attention and after the MLP) for
    one new token per row without gradients: its own modules, with layout 1's attention step in between."""
    attention = layer.self_attn
    batch = hidden_states.shape[0]
    qkv = query_key_value(attention, fused_rms_norm(layer.input_layernorm, hidden_states))
    qkv = qkv.view(batch, 1, -1, attention.head_dim)
    heads = attention.config.num_attention_heads
    groups = attention.config.num_key_value_heads
    rotate_in_place_as_transformers(qkv[:, :, : heads + groups], rotary)
    context = attend_one_token(qkv, heads, groups, attention_mask, prefix, cache, attention.layer_idx)
    attended = attention.o_proj(context)
    if hasattr(layer, "post_self_attn_layernorm"):
        attended = fused_rms_norm(layer.post_self_attn_layernorm, attended)
    hidden_states = hidden_states + attended
    transformed = layer.mlp(fused_rms_norm(layer.post_attention_layernorm, hidden_states))
    if hasattr(layer, "post_mlp_layernorm"):
        transformed = fused_rms_norm(layer.post_mlp_layernorm, transformed)
    return hidden_states + transformed


class PrefixCausalLM:
    """Mixed in front of transformers' `...ForCausalLM`: the prefix, real-token positions and the fused loss
    around transformers' own decoder (`self.model`) and LM head; its RMSNorms become `rms_norm_class`, the
    layout's norm with `InferenceRMSNorm` in front. Without gradients, one new token per row takes
    `decoding_step`; each layer's q/k/v weights are laid out in one storage when loaded or moved
    (`share_one_storage`), so that step projects them in one matmul."""

    _keys_to_ignore_on_load_missing = [r"prefix_encoder\."]
    rms_norm_class: type[nn.Module]

    def __init__(self, config) -> None:
        super().__init__(config)
        for module in self.modules():
            if type(module) in self.rms_norm_class.__mro__[1:]:
                module.__class__ = self.rms_norm_class
        self.transformer = PrefixSlot()
        for layer in self.model.layers:  # the prefix's cache is only read: recomputation sees the same keys
            layer._can_checkpoint_with_cache = True
        if getattr(config, "pre_seq_len", None):
            self.transformer.prefix_encoder = new_prefix_encoder(config)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).share_projection_storage()
        return loaded

    def _apply(self, fn, recurse: bool = True):
        """`.to()`, `.half()` and the like give each parameter its own new tensor: lay q/k/v out again."""
        applied = super()._apply(fn, recurse)
        self.share_projection_storage()
        return applied

    def share_projection_storage(self) -> None:
        """Each layer's q_proj, k_proj and v_proj weights (and biases) one after another in one tensor."""
        for layer in getattr(getattr(self, "model", None), "layers", ()):
            attention = layer.self_attn
            share_one_storage((attention.q_proj, attention.k_proj, attention.v_proj))

    def decoding_step(
        self,
        embedded: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache,
        prefix_length: int,
    ) -> torch.Tensor:
        """The final hidden states [batch, 1, hidden] of one new token per row without gradients (decoding,
        evaluation, serving): layout 1's step (glmcore/models/chatglm2/modeling.py) over transformers' modules.

        transformers' rotary (its cos and sin, YaRN's scaling included) rotates the same interleaved pairs of
        the first `partial_rotary_factor` of each head as layout 1's, so its tables are built once a step;
        q/k/v in one matmul (`query_key_value`), queries and keys rotated in place with transformers' rounding
        (`rotate_in_place_as_transformers`), keys and values cached in one write, grouped attention without
        expanding the cache (`attend_one_token`), each RMSNorm one kernel. No mask is made, no
        cache wrapped and nothing read back to the host: a captured CUDA graph replays it as it is.
        `attention_mask` is additive [batch, 1, 1, prefix + keys] (the decoders'), or None.
        """
        batch = embedded.shape[0]
        cos, sin = self.model.rotary_emb(embedded, position_ids)
        pairs = cos.shape[-1] // 2  # transformers' two halves repeat the pairs' angles
        rotary = pair_tables(cos[:, :, None, :pairs], sin[:, :, None, :pairs])
        prefix = self.transformer.prefix_keys_values(batch, embedded.dtype) if prefix_length else None
        hidden_states = embedded
        for index, layer in enumerate(self.model.layers):
            layer_prefix = prefix[index] if prefix is not None else None
            hidden_states = layer_step(layer, hidden_states, rotary, attention_mask, layer_prefix, cache)
        return fused_rms_norm(self.model.norm, hidden_states)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values=None,
        num_items_in_batch=None,
        **kwargs,
    ):
        cache = cache if cache is not None else past_key_values
        embedded = inputs_embeds if inputs_embeds is not None else self.model.embed_tokens(input_ids)
        batch, length = embedded.shape[:2]
        prefix = (self.config.pre_seq_len or 0) if self.transformer.prefix_encoder is not None else 0
        past = cache.get_seq_length() if cache is not None and not isinstance(cache, StaticKVCache) else 0
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = real_token_positions(attention_mask, length, prefix)
            else:
                position_ids = torch.arange(prefix + past, prefix + past + length, device=embedded.device)[
                    None
                ]
        if prefix and (attention_mask is None or attention_mask.dim() == 2):
            attention_mask = additive_mask(
                attention_mask, batch, length, past, prefix, embedded.dtype, embedded.device
            )
        checkpointing = any(layer.gradient_checkpointing for layer in self.model.layers)
        if not KEEPS_READ_ONLY_CACHE and prefix and self.training and checkpointing:
            raise GlmError(
                f"transformers {transformers.__version__} drops a layer's cache under gradient checkpointing, "
                "and with it the prefix; set gradient_checkpointing = false for this run, or update transformers."
            )
        # The prefix's keys and values: the cache's first columns (glmtui's static decoder), else put in front.
        own_prefix = 0 if getattr(cache, "holds_prefix", False) else prefix
        if length == 1 and labels is None and not torch.is_grad_enabled() and not self.outputs_more(kwargs):
            if attention_mask is not None and attention_mask.dim() == 2:
                attention_mask = additive_mask(
                    attention_mask, batch, length, past, prefix, embedded.dtype, embedded.device
                )
            if cache is None and (use_cache if use_cache is not None else self.config.use_cache):
                from transformers import DynamicCache

                cache = DynamicCache(config=self.config)
            hidden_states = self.decoding_step(embedded, position_ids, attention_mask, cache, own_prefix)
        else:
            hidden_states, cache = self.decoder_forward(
                embedded, attention_mask, position_ids, cache, use_cache, prefix, own_prefix
            )
        return causal_lm_output(
            hidden_states,
            self.lm_head,
            self.config.vocab_size,
            labels=labels,
            training=self.training,
            logits_to_keep=logits_to_keep,
            num_items_in_batch=num_items_in_batch,
            cache=cache,
            label_count=kwargs.get("label_count"),
        )

    def decoder_forward(
        self,
        embedded: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache,
        use_cache: bool | None,
        prefix: int,
        own_prefix: int,
    ) -> tuple[torch.Tensor, object]:
        """The final hidden states through transformers' decoder, and the cache to return: the prefix (`own_prefix`
        of its `prefix` columns, those the cache does not hold) put in front of each layer's keys and values."""
        inner = cache
        if prefix or isinstance(cache, StaticKVCache):
            if (
                inner is None
                and (use_cache if use_cache is not None else self.config.use_cache)
                and not (self.training)
            ):
                from transformers import DynamicCache

                inner = DynamicCache(config=self.config)
            batch = embedded.shape[0]
            keys_values = self.transformer.prefix_keys_values(batch, embedded.dtype) if own_prefix else None
            cache = PrefixedCache(keys_values, inner)
        outputs = self.model(
            inputs_embeds=embedded,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **{CACHE_FIELD: cache},
        )
        returned = inner if isinstance(cache, PrefixedCache) else getattr(outputs, CACHE_FIELD, None)
        return outputs.last_hidden_state, returned

    def outputs_more(self, kwargs: dict) -> bool:
        """Whether the call asks for attentions or hidden states, which only transformers' forward gives."""
        return any(
            kwargs.get(name) or getattr(self.config, name, False)
            for name in ("output_attentions", "output_hidden_states")
        )


class NativeStaticDecoder(StaticDecoder):
    """glmcore.decoding's decoder over transformers' GLM-4 classes: a cache of the key/value heads, positions
    that count real tokens after the prefix (as the forward pass counts them), the prefix's keys and values in
    the cache's first columns (`StaticKVCache.hold_prefix`)."""

    positions_after_prefix = True

    def cache_heads_and_channels(self) -> tuple[int, int]:
        return self.config.num_key_value_heads, self.config.kv_channels

    def prompt_positions_and_mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length = input_ids.shape
        prefix = self.prefix_length
        seen = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()[None, None]
        seen = seen & attention_mask[:, None, None, :].bool()
        seen = torch.cat((seen.new_ones(batch, 1, length, prefix), seen), dim=-1)
        return real_token_positions(attention_mask, length, prefix), seen

    def advance_positions(self) -> None:
        self.positions += 1


def new_decoder(model, batch: int, capacity: int, *, use_graph: bool | None = None, prediction: bool = False):
    """The static-cache decoder; `prediction` changes nothing (plain positions)."""
    return NativeStaticDecoder(model, batch, capacity, use_graph=use_graph)


def peft_prefix_config(config) -> dict:
    """PEFT PREFIX_TUNING's adapter_config.json over transformers' class (the GLM-4 demo's P-tuning v2, in
    inference mode: PEFT reads the saved keys and values as they are)."""
    return peft_prefix_tuning_config(
        config, config.num_key_value_heads, config.kv_channels, config.num_hidden_layers
    )


class NativeTokenizerMixin:
    """transformers' fast tokenizer over the folder's tokenizer.json, with the two names GLM-4's training rows
    use (`get_command`, `chat_ids`: layout 1's family_impl builds the demo's rows with them)."""

    def get_command(self, token: str) -> int:
        """The id of a special token by its published name (`[gMASK]`, `<|user|>`, ...)."""
        index = self.get_added_vocab().get(token)
        if index is None:
            raise KeyError(f"{token} is not a special token of this tokenizer")
        return index

    def chat_ids(self, messages: list[dict], *, add_generation_prompt: bool = False) -> list[int]:
        """The folder's chat template's ids for `messages`."""
        return list(
            self.apply_chat_template(
                messages, tokenize=True, return_dict=False, add_generation_prompt=add_generation_prompt
            )
        )
