"""ChatGLM-6B (v1.1) as a transformers model, written from the published architecture.

Read top to bottom: positions and masks (what makes GLM a prefix-LM), the 2D rotary embedding,
the P-tuning v2 prefix encoder, attention, the MLP, the block, the stack, and the LM head.

The published checkpoint's tensor names are kept (`transformer.layers.N.attention.query_key_value`,
...), so its `.bin` shards and ChatGLM-6B's own P-tuning checkpoints load without renaming. Unlike the
published code, hidden states are laid out [batch, seq, hidden] and attention runs through
`scaled_dot_product_attention`; the published per-layer query scaling (divide by `layer_id + 1`,
multiply the scores back in fp32) is plain scaled attention with an fp32 softmax, which SDPA gives.

The prefix-LM rule: every token before `<sop>` (the context: prompt and `[gMASK]`) sees the whole
context; from `<sop>` on, attention is causal. Positions are two-dimensional: `position_ids` count
over the context and then stay at the `[gMASK]` index; `block_position_ids` are 0 over the context and
count 1, 2, ... from `<sop>`. Left padding is invisible: positions start at each row's first real token
and padded keys are masked, so a padded row gets the logits it gets alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from glmcore.models.chatglm6b.configuration import ChatGLMConfig
from glmcore.models.fused import expanded_dropout
from glmcore.models.head import CACHE_FIELD, PositionsGenerationMixin, causal_lm_output, prefix_layers

ROTARY_BASE = 10000


# --- positions and masks ---------------------------------------------------------------------------


def first_index(input_ids: torch.Tensor, token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first `token_id` in each row, and whether the row holds it at all."""
    hits = input_ids == token_id
    return hits.int().argmax(dim=-1), hits.any(dim=-1)


def context_lengths(input_ids: torch.Tensor, bos_token_id: int) -> torch.Tensor:
    """Where each row's context ends: the index of its `<sop>`, or the row length when it has none."""
    index, present = first_index(input_ids, bos_token_id)
    return torch.where(present, index, input_ids.shape[1])


def glm_position_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: ChatGLMConfig,
    *,
    mask_first: bool = False,
) -> torch.Tensor:
    """The 2D positions [batch, 2, seq] of whole sequences, as the published model assigns them.

    The mask position is the first `[gMASK]`, else the first `[MASK]`, else the token before `<sop>`. With
    `mask_first` a `[MASK]` comes before `[gMASK]`, as in the published prediction path (ptuning/main.py pads
    its prompts through the tokenizer, whose padding builds the positions that way).
    Positions count from each row's first real token, so left padding does not shift them.
    """
    batch, length = input_ids.shape
    steps = torch.arange(length, device=input_ids.device).expand(batch, length)
    context_end = context_lengths(input_ids, config.bos_token_id)
    gmask_index, has_gmask = first_index(input_ids, config.gmask_token_id)
    mask_index, has_mask = first_index(input_ids, config.mask_token_id)
    fallback = (context_end - 1).clamp(min=0)
    if mask_first:
        mask_position = torch.where(has_mask, mask_index, torch.where(has_gmask, gmask_index, fallback))
    else:
        mask_position = torch.where(has_gmask, gmask_index, torch.where(has_mask, mask_index, fallback))
    first_real = (
        attention_mask.long().argmax(dim=-1) if attention_mask is not None else torch.zeros_like(context_end)
    )
    in_context = steps < context_end[:, None]
    positions = torch.where(in_context, steps, mask_position[:, None]) - first_real[:, None]
    block_positions = torch.where(in_context, 0, steps - context_end[:, None] + 1)
    return torch.stack((positions.clamp(min=0), block_positions), dim=1)


def glm_attention_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    past_length: int,
    prefix_length: int,
    config: ChatGLMConfig,
) -> torch.Tensor:
    """Boolean mask [batch, 1, queries, prefix + past + queries]; True where a query may attend.

    Context tokens see the whole context, later tokens are causal, padded keys are hidden, every
    query sees every prefix position, and each query always sees itself (so rows of left padding
    never attend to nothing, which would give NaN).
    """
    batch, length = input_ids.shape
    device = input_ids.device
    query_index = torch.arange(past_length, past_length + length, device=device)
    key_index = torch.arange(past_length + length, device=device)
    allowed = key_index[None, :] <= query_index[:, None]
    allowed = allowed.expand(batch, length, past_length + length)
    if past_length == 0:
        context_end = context_lengths(input_ids, config.bos_token_id)
        allowed = allowed | (key_index[None, None, :] < context_end[:, None, None])
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, : past_length + length].bool()
    allowed = allowed | (key_index[None, None, :] == query_index[None, :, None])
    if prefix_length:
        allowed = torch.cat([allowed.new_ones(batch, length, prefix_length), allowed], dim=-1)
    return allowed[:, None]


# --- 2D rotary embedding ---------------------------------------------------------------------------


def rotary_inverse_frequencies(dim: int, device: torch.device | None = None) -> torch.Tensor:
    """1/10000^(2i/dim), rounded to fp16 as the published checkpoint stores them (it shows in the logits)."""
    exponents = torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim
    return (1.0 / ROTARY_BASE**exponents).half().float()


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """cos and a signed sin [batch, seq, 1, 1, head_dim] for 2D positions [batch, 2, seq].

    The first half of a head turns with `position_ids`, the second with `block_position_ids`; each half is
    GPT-NeoX style (its two quarters rotate as a pair), so both tables repeat their frequencies. The sin
    table carries rotate_half's sign ([-sin, +sin] per half), so the rotation needs no negation pass.
    """
    half = head_dim // 2
    angles = position_ids[..., None].float() * rotary_inverse_frequencies(half, position_ids.device)
    angles = torch.cat((angles, angles), dim=-1)  # [batch, 2, seq, half]
    angles = angles.transpose(1, 2).flatten(-2)[:, :, None, None]  # [batch, seq, 1, 1, head_dim]
    sign = torch.ones(2, 2, head_dim // 4, device=position_ids.device)
    sign[:, 0] = -1.0
    return angles.cos().to(dtype), (angles.sin() * sign.flatten()).to(dtype)


def swap_quarters(x: torch.Tensor) -> torch.Tensor:
    """[a, b | c, d] -> [b, a | d, c]: rotate_half within each half of the head, before its sign."""
    return x.unflatten(-1, (2, 2, -1)).flip(-2).flatten(-3)


def apply_2d_rotary(x: torch.Tensor, rotary: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Rotate heads [..., head_dim]: the first half by position, the second half by block position.

    Queries and keys go through together, in three kernels (swap, multiply, multiply-add): a decoding
    step launches hundreds fewer of them than rotating each half and each tensor apart.
    """
    cos, signed_sin = rotary
    return torch.addcmul(x * cos, swap_quarters(x), signed_sin)


# --- P-tuning v2 prefix ----------------------------------------------------------------------------


class PrefixEncoder(nn.Module):
    """`pre_seq_len` trained virtual tokens, turned into past keys and values for every layer.

    Without projection the embedding holds the keys and values directly; with projection a two-layer
    MLP (hidden → hidden → layers·2·hidden) produces them. Parameter names match the published ones.
    """

    def __init__(self, config: ChatGLMConfig) -> None:
        super().__init__()
        self.pre_seq_len = config.pre_seq_len
        self.prefix_projection = config.prefix_projection
        kv_size = config.num_layers * 2 * config.hidden_size
        if self.prefix_projection:
            self.embedding = nn.Embedding(config.pre_seq_len, config.hidden_size)
            self.trans = nn.Sequential(
                nn.Linear(config.hidden_size, config.hidden_size),
                nn.Tanh(),
                nn.Linear(config.hidden_size, kv_size),
            )
        else:
            self.embedding = nn.Embedding(config.pre_seq_len, kv_size)
        self.layers, self.heads = config.num_layers, config.num_attention_heads
        """The cache its rows fill: each row is [layer, key/value, head, head_dim]."""
        for part in self.modules():
            part.is_prefix_part = hasattr(part, "reset_parameters")

    def forward(self) -> torch.Tensor:
        """Keys and values [pre_seq_len, layers·2·hidden]."""
        weight = self.embedding.weight
        return self.trans(weight) if self.prefix_projection else weight


# --- the transformer -------------------------------------------------------------------------------


class ChatGLMAttention(nn.Module):
    def __init__(self, config: ChatGLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, ...],
        attention_mask: torch.Tensor | None,
        prefix: tuple[torch.Tensor, torch.Tensor] | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        # The fused projection is laid out per head as [q | k | v].
        qkv = self.query_key_value(hidden_states).view(batch, length, self.num_heads, 3, self.head_dim)
        query_key = apply_2d_rotary(qkv[..., :2, :], rotary)
        query, key = query_key.permute(3, 0, 2, 1, 4).unbind(0)
        if query.requires_grad:
            # Attention keeps its query for the backward pass; as a view it would keep the rotated keys'
            # half of the storage alive too (28 layers × a query's size: 0.44 GiB at batch 16, 128 tokens).
            query = query.contiguous()
        value = qkv[..., 2, :].transpose(1, 2)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        if prefix is not None:
            key = torch.cat((prefix[0], key), dim=2)
            value = torch.cat((prefix[1], value), dim=2)
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=1.0 / math.sqrt(self.head_dim)
        )
        return self.dense(context.transpose(1, 2).reshape(batch, length, -1))


class ChatGLMMLP(nn.Module):
    def __init__(self, config: ChatGLMConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.inner_hidden_size)
        self.dense_4h_to_h = nn.Linear(config.inner_hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(hidden_states), approximate="tanh"))


# The published block computes alpha from a `num_layers` argument its caller never passes, so it is
# sqrt(2·28) for every model, whatever config.num_layers says. ChatGLM-6B has 28 layers; tiny models
# built for tests keep the published value too, so their logits match the published code's.
PUBLISHED_ALPHA = (2 * 28) ** 0.5


class GLMBlock(GradientCheckpointingLayer):
    """A GLM block: each residual branch adds to its normalised input scaled by alpha = sqrt(2·28)."""

    def __init__(self, config: ChatGLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.alpha = PUBLISHED_ALPHA
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = ChatGLMAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = ChatGLMMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, ...],
        attention_mask: torch.Tensor | None,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        attention_input = self.input_layernorm(hidden_states)
        attention_output = self.attention(attention_input, rotary, attention_mask, prefix, cache)
        # branch + alpha · input in one kernel, rather than a scaling pass and an addition pass.
        hidden_states = torch.add(attention_output, attention_input, alpha=self.alpha)
        mlp_input = self.post_attention_layernorm(hidden_states)
        return torch.add(self.mlp(mlp_input), mlp_input, alpha=self.alpha)


class ChatGLMPreTrainedModel(PreTrainedModel):
    config_class = ChatGLMConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _supports_sdpa = True
    # The checkpoint stores the rotary frequencies; they are recomputed (identically) instead.
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]
    # A prefix is loaded separately from its own checkpoint, never from the base model's shards.
    _keys_to_ignore_on_load_missing = [r"prefix_encoder\."]

    def _init_weights(self, module: nn.Module) -> None:
        # The published prefix starts from PyTorch's default initialisation (an N(0, 1) embedding), and its
        # learning rate of 2e-2 is tuned for that; keep it.
        if getattr(module, "is_prefix_part", False):
            module.reset_parameters()
            return
        super()._init_weights(module)


class ChatGLMModel(ChatGLMPreTrainedModel):
    """The GLM stack: word embeddings, blocks, final LayerNorm; optionally a P-tuning v2 prefix."""

    def __init__(self, config: ChatGLMConfig) -> None:
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GLMBlock(config, index) for index in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.prefix_encoder = PrefixEncoder(config) if config.pre_seq_len else None
        self.prefix_dropout = nn.Dropout(0.1)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def prefix_keys_values(
        self, batch_size: int, dtype: torch.dtype
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (key, value) [batch, heads, pre_seq_len, head_dim], dropout applied in training."""
        encoder = self.prefix_encoder
        rows = encoder()
        if self.prefix_dropout.training and self.prefix_dropout.p:
            # Each row gets its own mask, as published; the backward sums the rows in fp32 (glmcore.models.fused).
            flat = expanded_dropout(rows, batch_size, dtype, self.prefix_dropout.p)
        else:
            flat = rows.unsqueeze(0).expand(batch_size, -1, -1).to(dtype)
        return prefix_layers(flat, encoder.layers, encoder.heads)

    def forward(
        self,
        input_ids: torch.LongTensor,
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
        past_length = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if past_length:
                raise ValueError(
                    "ChatGLM needs explicit position_ids when decoding with a cache; generate() provides them."
                )
            position_ids = glm_position_ids(input_ids, attention_mask, config)

        hidden_states = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        batch = hidden_states.shape[0]
        prefix_length = config.pre_seq_len if self.prefix_encoder is not None else 0
        # Where the cache holds the prefix's keys and values (glmcore's static decoder), they are read there.
        prefix = None
        if prefix_length and not getattr(cache, "holds_prefix", False):
            prefix = self.prefix_keys_values(batch, hidden_states.dtype)
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask  # prepared by the caller, prefix columns included (static decoding)
        else:
            mask = glm_attention_mask(input_ids, attention_mask, past_length, prefix_length, config)
        rotary = rotary_cos_sin(position_ids, config.head_dim, hidden_states.dtype)
        for index, layer in enumerate(self.layers):
            hidden_states = layer(
                hidden_states,
                rotary,
                mask,
                prefix[index] if prefix is not None else None,
                cache if use_cache else None,
            )
        hidden_states = self.final_layernorm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, **{CACHE_FIELD: cache if use_cache else None}
        )


class ChatGLMForConditionalGeneration(ChatGLMPreTrainedModel, PositionsGenerationMixin):
    """ChatGLM-6B with its LM head (tied to the word embeddings), loss and generation hooks."""

    _tied_weights_keys = {"lm_head.weight": "transformer.word_embeddings.weight"}

    def __init__(self, config: ChatGLMConfig) -> None:
        super().__init__(config)
        self.transformer = ChatGLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

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
            self.lm_head,
            self.config.vocab_size,
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
        """GLM's 2D positions of the whole sequence so far."""
        return glm_position_ids(input_ids, attention_mask, self.config)
