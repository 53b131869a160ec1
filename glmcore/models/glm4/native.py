"""What glmtui adds to transformers' own GLM-4 classes (layouts 2 and 3: `glm` GlmForCausalLM for
glm-4-9b-chat-hf, `glm4` Glm4ForCausalLM for GLM-4-9B-0414 / GLM-Z1-9B-0414), shared by both layouts.

The models are transformers' classes; each layout's `modeling.py` subclasses them with `PrefixCausalLM`, which
adds only: a P-tuning v2 prefix (an fp32 encoder under `transformer.prefix_encoder`, its keys and values put in
front of every layer's cache), positions that count real tokens (after the prefix, as PEFT's prefix tuning
counts them, so a PEFT adapter over transformers' class gives the same logits) rather than left pads, glmtui's
static-cache decoder, the fused loss of glmcore.models.head and, without gradients, RMSNorm's normalisation as one
`F.rms_norm` (`InferenceRMSNorm`). Refused: a config key neither transformers'
class nor the published config has, and a rope type other than the layout's.
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
from glmcore.models.chatglm2.modeling import PrefixEncoder
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


class PrefixCausalLM:
    """Mixed in front of transformers' `...ForCausalLM`: the prefix, real-token positions and the fused loss
    around transformers' own decoder (`self.model`) and LM head; its RMSNorms become `rms_norm_class`, the
    layout's norm with `InferenceRMSNorm` in front."""

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
        inner = cache
        if prefix or isinstance(cache, StaticKVCache):
            if (
                inner is None
                and (use_cache if use_cache is not None else self.config.use_cache)
                and not (self.training)
            ):
                from transformers import DynamicCache

                inner = DynamicCache(config=self.config)
            keys_values = self.transformer.prefix_keys_values(batch, embedded.dtype) if prefix else None
            cache = PrefixedCache(keys_values, inner)
        outputs = self.model(
            inputs_embeds=embedded,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **{CACHE_FIELD: cache},
        )
        returned = inner if isinstance(cache, PrefixedCache) else getattr(outputs, CACHE_FIELD, None)
        return causal_lm_output(
            outputs.last_hidden_state,
            self.lm_head,
            self.config.vocab_size,
            labels=labels,
            training=self.training,
            logits_to_keep=logits_to_keep,
            num_items_in_batch=num_items_in_batch,
            cache=returned,
            label_count=kwargs.get("label_count"),
        )


class NativeStaticDecoder(StaticDecoder):
    """glmcore.decoding's decoder over transformers' GLM-4 classes: a cache of the key/value heads, positions
    that count real tokens after the prefix (as the forward pass counts them)."""

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
