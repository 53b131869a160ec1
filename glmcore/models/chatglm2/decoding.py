"""ChatGLM2/3's static-cache decoder: ChatGLM-6B's, with a cache of the key/value groups and 1D positions.

The CUDA graph capture and the step are ChatGLM-6B's StaticDecoder's, sampling is glmcore.generation's; what differs is the
cache's shape ([batch, groups, capacity, kv_channels]), the positions (one per token, counting real
tokens from 0) and the mask (causal after the prompt, as the published rule gives for real rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from glmcore.generation import Sampling, _pick
from glmcore.models.chatglm2.modeling import attention_mask_for

# The step, its CUDA graph capture and the cache's update are ChatGLM-6B's decoder's, unchanged; only the
# shapes, positions and masks below differ. (They could move to glmcore.generation as a shared base.)
from glmcore.models.chatglm6b.decoding import StaticDecoder, StaticKVCache

DEFAULT_SAMPLING = Sampling()


class GroupedStaticKVCache(StaticKVCache):
    """Keys and values [batch, groups, capacity, kv_channels] per layer."""

    def __init__(self, config, batch: int, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, config.multi_query_group_num, capacity, config.kv_channels)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.write_index = torch.zeros(1, dtype=torch.long, device=device)
        self.length = 0


class ChatGLM2StaticDecoder(StaticDecoder):
    def __init__(self, model, batch: int, capacity: int, *, use_graph: bool | None = None) -> None:
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device
        self.dtype = model.get_input_embeddings().weight.dtype
        if not self.dtype.is_floating_point:
            self.dtype = torch.float16
        self.batch = batch
        self.capacity = capacity
        self.prefix_length = model.config.pre_seq_len or 0
        self.cache = GroupedStaticKVCache(self.config, batch, capacity, self.dtype, self.device)
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self.step_index = torch.zeros(1, dtype=torch.long, device=self.device)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.hidden = torch.finfo(self.dtype).min
        self.mask = torch.full(
            (batch, 1, 1, self.prefix_length + capacity), self.hidden, dtype=self.dtype, device=self.device
        )
        self.logits: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_error: str | None = None

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the prompts (left-padded, [batch, length]) and return the logits of their last position."""
        batch, length = input_ids.shape
        if batch != self.batch or length >= self.capacity:
            raise ValueError(f"this decoder holds {self.batch} rows of up to {self.capacity} tokens")
        prefix = self.prefix_length
        padding = torch.cat((attention_mask.new_ones(batch, prefix), attention_mask), dim=-1)
        allowed, _ = attention_mask_for(padding, batch, length, prefix, self.device)
        if allowed is None:  # no padding: causal over the prompt, the prefix seen by all
            allowed = torch.ones(length, prefix + length, dtype=torch.bool, device=self.device)
            allowed[:, prefix:] = allowed[:, prefix:].tril()
            allowed = allowed.expand(batch, 1, length, prefix + length)
        prompt_mask = torch.full(
            (batch, 1, length, prefix + self.capacity), self.hidden, dtype=self.dtype, device=self.device
        )
        prompt_mask[..., : prefix + length].masked_fill_(allowed, 0.0)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        self.cache.write_index = torch.arange(length, device=self.device)
        self.cache.length = length
        logits = self.model(
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=prompt_mask,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        self.cache.write_index = self.step_index
        self.mask.fill_(self.hidden)
        self.mask[:, 0, 0, :prefix] = 0.0
        self.mask[:, 0, 0, prefix : prefix + length].masked_fill_(attention_mask.bool(), 0.0)
        self.positions.copy_(positions[:, -1:])
        return logits

    @torch.no_grad()
    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        *,
        eos_token_id: int | list[int],
        sampling: Sampling = DEFAULT_SAMPLING,
        should_stop: Callable[[], bool] | None = None,
        check_finished_every: int = 1,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token of every row [batch] until every row met a stop id or `max_new_tokens` were made;
        a finished row repeats its stop id."""
        stops = torch.tensor(
            [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=self.device
        )
        length = input_ids.shape[1]
        max_new_tokens = min(max_new_tokens, self.capacity - length)
        generator = None
        if sampling.do_sample and sampling.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        logits = self.prefill(input_ids, attention_mask)
        finished = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        last = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        for step in range(max_new_tokens):
            token = torch.where(finished, last, _pick(logits, sampling, generator))
            yield token
            finished |= torch.isin(token, stops)
            last = token
            if step == max_new_tokens - 1 or (should_stop and should_stop()):
                return
            if (step + 1) % check_finished_every == 0 and bool(finished.all()):
                return
            index = length + step
            self.token.copy_(token[:, None])
            self.positions += 1
            self.cache.write_index.fill_(index)
            self.mask[:, 0, 0, self.prefix_length + index] = 0.0
            logits = self._step()


def new_decoder(model, batch: int, capacity: int, *, use_graph: bool | None = None) -> ChatGLM2StaticDecoder:
    return ChatGLM2StaticDecoder(model, batch, capacity, use_graph=use_graph)
