"""ChatGLM2-6B and ChatGLM3-6B (one architecture) as a transformers model, written from the published one.

Read top to bottom: the rotary embedding, the mask, the P-tuning v2 prefix, attention, the MLP, the
block, the stack and the LM head. The published tensor names are kept (`transformer.embedding.
word_embeddings`, `transformer.encoder.layers.N.self_attention.query_key_value`, `transformer.
output_layer`, ...), so the published `.bin` shards and P-tuning checkpoints load without renaming.

Differences from the published code, none visible in the logits: hidden states are [batch, seq, hidden]
instead of [seq, batch, hidden]; the cache is transformers' (keys [batch, groups, seq, channels]);
rotary angles are computed from the position ids directly rather than gathered from a table of
`seq_length` rows (the same products, so the same values); the published per-layer query scaling is plain
scaled attention with an fp32 softmax, which SDPA gives. Without gradients (decoding, evaluation, serving),
RMSNorm is one fused kernel and a one-token step (`SelfAttention.decoding_step`) rotates, caches and attends in
fewer kernels, the same arithmetic up to fp32 rounding; training keeps the published chain and its gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from glmcore.models.chatglm2.configuration import ChatGLM2Config
from glmcore.models.head import CACHE_FIELD, PositionsGenerationMixin, causal_lm_output, prefix_layers

ROTARY_BASE = 10000


# --- rotary embedding ------------------------------------------------------------------------------


def rotary_cos_sin(
    position_ids: torch.Tensor, kv_channels: int, dtype: torch.dtype, rope_ratio: float = 1.0
) -> tuple[torch.Tensor, ...]:
    """cos and sin [batch, 1, seq, kv_channels/4] for positions [batch, seq].

    Only the first half of each head rotates (kv_channels/2 dims, as kv_channels/4 pairs); the
    frequencies are 1/base^(2i/(kv_channels/2)) with base = 10000 × rope_ratio (the -32k models' and GLM-4's
    longer wavelengths), computed in fp32 as the published code does.
    """
    rotary_dims = kv_channels // 2
    exponents = torch.arange(0, rotary_dims, 2, device=position_ids.device, dtype=torch.float32) / rotary_dims
    angles = position_ids[..., None].float() * (1.0 / (ROTARY_BASE * rope_ratio) ** exponents)
    return angles.cos()[:, None].to(dtype), angles.sin()[:, None].to(dtype)


def rotary_tables(
    position_ids: torch.Tensor, kv_channels: int, dtype: torch.dtype, rope_ratio: float = 1.0
) -> tuple[torch.Tensor, ...]:
    """cos and a signed sin [batch, seq, 1, kv_channels/2] for heads laid out [batch, seq, heads, kv_channels].

    `rotary_cos_sin`'s values (the same numbers) arranged for the pairs (2i, 2i+1) of the rotated half: each
    pair gets its angle's cos twice and (-sin, +sin), which carries the rotation's sign. Built once a forward.
    """
    cos, sin = (
        table[:, 0, :, None] for table in rotary_cos_sin(position_ids, kv_channels, dtype, rope_ratio)
    )
    return pair_tables(cos, sin)


def pair_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tables of `apply_rotary` from each pair's angle's cos and sin [..., pairs]: [..., 2·pairs] each (GLM-4's
    -hf and 0414 layouts rotate the same interleaved pairs: glmcore/models/glm4/native.py builds theirs here)."""
    return torch.stack((cos, cos), dim=-1).flatten(-2), torch.stack((-sin, sin), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, tables: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Rotate the interleaved pairs (2i, 2i+1) of the first half of each head [batch, seq, heads, channels].

    Queries and keys together in five kernels (swap the pairs, two products, their sum, the unrotated half
    beside them), where rotating each half of each tensor apart took sixteen. The same products and sum as the
    published `x_even·cos - x_odd·sin`, `x_odd·cos + x_even·sin` (the sign is in the sin table), each rounded
    alike, so the same values in every dtype and the same gradients.
    """
    cos, signed_sin = tables
    rotated = x[..., : cos.shape[-1]]
    swapped = rotated.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return torch.cat((rotated * cos + swapped * signed_sin, x[..., cos.shape[-1] :]), dim=-1)


def rotate_in_place(x: torch.Tensor, tables: tuple[torch.Tensor, ...]) -> None:
    """`apply_rotary` written into x, in three kernels (swap, multiply, multiply-add), for paths without
    gradients; the multiply-add rounds once where `apply_rotary` rounds twice (in fp32, 1e-7 apart)."""
    cos, signed_sin = tables
    rotated = x[..., : cos.shape[-1]]
    swapped = rotated.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    rotated.mul_(cos).addcmul_(swapped, signed_sin)


# --- attention mask --------------------------------------------------------------------------------


def attention_mask_for(
    attention_mask: torch.Tensor | None, batch: int, length: int, past_length: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """(boolean mask [batch, 1, queries, past + queries] where True may attend, or None; is_causal).

    The published rule: causal over the past (prefix and cache) and the new tokens, padded keys hidden;
    without any past, rows of padding attend to everything (so they never attend to nothing). A batch
    without padding needs no mask: SDPA's causal flag, or nothing for a single new token.
    """
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded:
        if past_length == 0:
            return None, length > 1
        if length == 1:
            return None, False
    query_index = torch.arange(past_length, past_length + length, device=device)
    key_index = torch.arange(past_length + length, device=device)
    allowed = (key_index[None, :] <= query_index[:, None]).expand(batch, length, past_length + length)
    if padded:
        allowed = allowed & attention_mask[:, None, :].bool()
        if past_length == 0:
            allowed = allowed | ~attention_mask[:, :, None].bool()
    return allowed[:, None], False


# --- P-tuning v2 prefix ----------------------------------------------------------------------------


class PrefixEncoder(nn.Module):
    """`pre_seq_len` trained virtual tokens that are the attention cache of every layer.

    Each row holds layers·2·groups·kv_channels values, read as [layer, key/value, group, channel]. With
    projection, an embedding of that width goes through Linear(width, hidden) → tanh → Linear(hidden,
    width), as published. Parameter names match the published ones.
    """

    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        self.prefix_projection = config.prefix_projection
        width = prefix_width(config)
        self.embedding = nn.Embedding(config.pre_seq_len, width)
        if self.prefix_projection:
            self.trans = nn.Sequential(
                nn.Linear(width, config.hidden_size), nn.Tanh(), nn.Linear(config.hidden_size, width)
            )
        self.layers, self.heads = config.num_layers, config.multi_query_group_num
        """The cache its rows fill: each row is [layer, key/value, group, kv_channels]."""
        for part in self.modules():
            part.is_prefix_part = hasattr(part, "reset_parameters")

    def forward(self) -> torch.Tensor:
        """Keys and values [pre_seq_len, layers·2·groups·kv_channels]."""
        weight = self.embedding.weight
        return self.trans(weight) if self.prefix_projection else weight


def prefix_width(config) -> int:
    """Values per virtual token: layers × 2 × groups × kv_channels."""
    return config.num_layers * 2 * config.multi_query_group_num * config.kv_channels


# --- the transformer -------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The published x·rsqrt(mean(x²) + eps)·weight in fp32, rounded once to x's dtype.

        Without gradients (decoding, evaluation, serving) it is `F.rms_norm`: one kernel on the GPU instead of
        seven, the same arithmetic (on the CPU the same values; on the GPU its fp32 reduction may round an
        element of a 16-bit result the other way). Training keeps the published chain and its gradients.
        """
        if torch.is_grad_enabled():
            variance = hidden_states.float().pow(2).mean(-1, keepdim=True)
            return (self.weight * (hidden_states * torch.rsqrt(variance + self.eps))).to(hidden_states.dtype)
        return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.eps)


class SelfAttention(nn.Module):
    """Multi-query attention: all query heads, then the keys and the values of a few groups, in one projection;
    each group serves that many adjacent query heads."""

    def __init__(self, config: ChatGLM2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.groups = config.multi_query_group_num
        self.kv_channels = config.kv_channels
        projection = self.num_heads * self.kv_channels
        self.query_key_value = nn.Linear(config.hidden_size, projection + 2 * self.groups * self.kv_channels)
        self.dense = nn.Linear(projection, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, ...],
        mask: tuple[torch.Tensor | None, bool],
        prefix: tuple[torch.Tensor, torch.Tensor] | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        heads, groups = self.num_heads, self.groups
        qkv = self.query_key_value(hidden_states).view(batch, length, heads + 2 * groups, self.kv_channels)
        if length == 1 and not torch.is_grad_enabled():
            return self.decoding_step(qkv, rotary, mask[0], prefix, cache)
        query_key = apply_rotary(qkv[:, :, : heads + groups], rotary)
        query, key = query_key[:, :, :heads].transpose(1, 2), query_key[:, :, heads:].transpose(1, 2)
        if query.requires_grad:
            # Attention keeps its query for the backward pass; as a view it would keep the keys' part alive too.
            query = query.contiguous()
        value = qkv[:, :, heads + groups :].transpose(1, 2)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        if prefix is not None:
            key = torch.cat((prefix[0], key), dim=2)
            value = torch.cat((prefix[1], value), dim=2)
        attention_mask, is_causal = mask
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, is_causal=is_causal, enable_gqa=True
        )
        return self.dense(context.transpose(1, 2).reshape(batch, length, -1))

    def decoding_step(
        self,
        qkv: torch.Tensor,
        rotary: tuple[torch.Tensor, ...],
        attention_mask: torch.Tensor | None,
        prefix: tuple[torch.Tensor, torch.Tensor] | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        """Attention for one new token per row without gradients (decoding, serving): queries and keys rotated
        in place in the projection's output (`rotate_in_place`), then `attend_one_token`."""
        rotate_in_place(qkv[:, :, : self.num_heads + self.groups], rotary)
        context = attend_one_token(
            qkv, self.num_heads, self.groups, attention_mask, prefix, cache, self.layer_idx
        )
        return self.dense(context)


def attend_one_token(
    qkv: torch.Tensor,
    heads: int,
    groups: int,
    attention_mask: torch.Tensor | None,
    prefix: tuple[torch.Tensor, torch.Tensor] | None,
    cache: Cache | None,
    layer_idx: int,
) -> torch.Tensor:
    """The attention context [batch, 1, heads·channels] of one new token per row without gradients, from its
    projection `qkv` [batch, 1, heads + 2·groups, channels] (queries and keys rotated, values), in few kernels;
    shared by ChatGLM2/3 and GLM-4's layouts (glmcore/models/glm4/native.py).

    - Queries and keys were rotated in place in `qkv`, so the new keys and values still lie side by side and a
      cache that takes them together (`glmcore.decoding.StaticKVCache.update_keys_values`) writes both in one
      kernel.
    - The query heads of a group are that group's rows of queries, so attention reads the group's keys and
      values as they are, with no grouped-query expansion: on the GPU the memory-efficient kernel, where
      grouped queries with a mask fall back to expanding the cache and unfused attention. The mask
      [batch, 1, 1, keys] is the same for every row.
    - `prefix` is put in front of a cache that does not hold it (transformers'); glmcore's static cache holds the
      prefix's keys and values in its first columns (`holds_prefix`), and the prefix is then None.
    """
    batch, _, _, channels = qkv.shape
    key_value = qkv[:, 0, heads:, None]  # [batch, 2·groups, 1, channels]: the keys, then the values
    if hasattr(cache, "update_keys_values"):
        key, value = cache.update_keys_values(key_value, layer_idx)
    elif cache is not None:
        key, value = cache.update(key_value[:, :groups], key_value[:, groups:], layer_idx)
    else:
        key, value = key_value[:, :groups], key_value[:, groups:]
    if prefix is not None:
        key = torch.cat((prefix[0], key), dim=2)
        value = torch.cat((prefix[1], value), dim=2)
    query = qkv[:, 0, :heads].view(batch, groups, heads // groups, channels)
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
    return context.reshape(batch, 1, -1)


class MLP(nn.Module):
    """SwiGLU: one projection to 2 × ffn_hidden_size, silu(first half) × second half, back to hidden."""

    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 2 * config.ffn_hidden_size, bias=False)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, up = self.dense_h_to_4h(hidden_states).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)


class GLMBlock(GradientCheckpointingLayer):
    """Pre-norm block: x + attention(norm(x)), then that + mlp(norm(that))."""

    def __init__(self, config: ChatGLM2Config, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.self_attention = SelfAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.mlp = MLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, ...],
        mask: tuple[torch.Tensor | None, bool],
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attention(
            self.input_layernorm(hidden_states), rotary, mask, prefix, cache
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class Embedding(nn.Module):
    """Holds the word embeddings under the published name `transformer.embedding.word_embeddings`."""

    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids)


class Encoder(nn.Module):
    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(GLMBlock(config, index) for index in range(config.num_layers))
        self.final_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)


class ChatGLM2PreTrainedModel(PreTrainedModel):
    config_class = ChatGLM2Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _supports_sdpa = True
    # The checkpoint stores rotary frequencies the published code never reads; they are computed instead.
    _keys_to_ignore_on_load_unexpected = [r"rotary_pos_emb\.inv_freq"]
    # A prefix is loaded separately from its own checkpoint, never from the base model's shards.
    _keys_to_ignore_on_load_missing = [r"prefix_encoder\."]

    def _init_weights(self, module: nn.Module) -> None:
        # The published prefix starts from PyTorch's default initialisation (an N(0, 1) embedding).
        if getattr(module, "is_prefix_part", False):
            module.reset_parameters()
            return
        if isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)
            return
        super()._init_weights(module)


class ChatGLM2Model(ChatGLM2PreTrainedModel):
    """Embedding, the blocks, the final RMSNorm and the untied output layer; optionally a P-tuning v2 prefix."""

    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__(config)
        self.embedding = Embedding(config)
        self.encoder = Encoder(config)
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.prefix_encoder = PrefixEncoder(config) if config.pre_seq_len else None
        self.prefix_dropout = nn.Dropout(0.1)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embedding.word_embeddings = value

    def prefix_keys_values(
        self, batch_size: int, dtype: torch.dtype
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (key, value) [batch, groups, pre_seq_len, kv_channels], dropout applied in training."""
        encoder = self.prefix_encoder
        flat = encoder().to(dtype).unsqueeze(0).expand(batch_size, -1, -1)
        return prefix_layers(self.prefix_dropout(flat), encoder.layers, encoder.heads)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPast:
        config = self.config
        use_cache = config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            cache = DynamicCache()
        cache_length = cache.get_seq_length() if cache is not None else 0
        hidden_states = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length, _ = hidden_states.shape
        if position_ids is None:
            position_ids = torch.arange(cache_length, cache_length + length, device=hidden_states.device)
            position_ids = position_ids.expand(batch, length)
        prefix = None
        prefix_length = 0
        if self.prefix_encoder is not None:
            prefix_length = config.pre_seq_len
            # Where the cache holds the prefix's keys and values (glmcore's static decoder), they are read there.
            if not getattr(cache, "holds_prefix", False):
                prefix = self.prefix_keys_values(batch, hidden_states.dtype)
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = (
                attention_mask,
                False,
            )  # prepared by the caller, prefix columns included (static decoding)
        else:
            if prefix_length and attention_mask is not None:
                attention_mask = torch.cat(
                    (attention_mask.new_ones(batch, prefix_length), attention_mask), dim=-1
                )
            mask = attention_mask_for(
                attention_mask, batch, length, prefix_length + cache_length, hidden_states.device
            )
        rotary = rotary_tables(position_ids, config.kv_channels, hidden_states.dtype, config.rope_ratio)
        for index, layer in enumerate(self.encoder.layers):
            hidden_states = layer(
                hidden_states,
                rotary,
                mask,
                prefix[index] if prefix is not None else None,
                cache if use_cache else None,
            )
        hidden_states = self.encoder.final_layernorm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, **{CACHE_FIELD: cache if use_cache else None}
        )


class ChatGLM2ForConditionalGeneration(ChatGLM2PreTrainedModel, PositionsGenerationMixin):
    """The model with its loss and generation hooks; the LM head is `transformer.output_layer` (untied)."""

    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__(config)
        self.transformer = ChatGLM2Model(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.embedding.word_embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.transformer.output_layer

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.transformer.output_layer = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits, and the loss where there are labels (`glmcore.models.head.causal_lm_output`)."""
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
        )
        return causal_lm_output(
            outputs.last_hidden_state,
            self.transformer.output_layer,
            self.config.padded_vocab_size,
            labels=labels,
            training=self.training,
            logits_to_keep=logits_to_keep,
            num_items_in_batch=kwargs.get("num_items_in_batch"),
            cache=getattr(outputs, CACHE_FIELD),
            label_count=kwargs.get("label_count"),
        )

    def generation_position_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Positions count real tokens from 0 (left padding gets 0), as the published tokenizer gives them."""
        if attention_mask is None:
            return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
