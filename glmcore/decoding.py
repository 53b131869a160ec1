"""The static-cache decoder's family-neutral part, on the ground floor the model families build on: sampling
settings, picking a token, the static KV cache and `StaticDecoder`, whose subclass each family's `decoding.py` is.

The fast path: a decoding step of a 6B model at small batch reads every weight once; what makes it slow in
eager PyTorch is launching a few hundred kernels from Python for every token. `StaticDecoder` gives the step
fixed shapes (keys and values live in buffers of a fixed capacity, an additive mask marks the filled slots),
captures it once as a CUDA graph and replays it for every token; on the CPU, or when capture fails, the same
step runs eagerly. What differs between families (the cache's heads and width, the positions, the prompt's
mask) is a subclass in the family's `decoding.py`, made by `new_decoder` in its `family_impl`. This module
imports no family and no registry (glmcore.generation, above the families, finds a model's decoder).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """Greedy by default; `do_sample` draws with temperature and top-p (ChatGLM-6B's are 0.95 and 0.7)."""

    do_sample: bool = False
    temperature: float = 0.95
    top_p: float = 0.7
    top_k: int = 0
    """0 keeps every token; transformers' default was 50."""
    seed: int | None = None


def pick_tokens(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row: argmax when greedy, else top-k, then nucleus (top-p) sampling."""
    if not sampling.do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = logits.topk(sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probabilities = torch.softmax(logits, dim=-1)
    ordered, order = probabilities.sort(dim=-1, descending=True)
    outside = ordered.cumsum(dim=-1) - ordered > sampling.top_p
    ordered = ordered.masked_fill(outside, 0.0)
    choice = torch.multinomial(ordered, 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


KEY_ALIGNMENT = 16
"""The static cache's columns (prefix included) are a multiple of this: the GPU's memory-efficient attention
copies a mask whose rows are not (two more kernels a layer, every step). The extra columns stay hidden."""


class StaticKVCache:
    """Keys and values [batch, heads, columns, channels] per layer, written at `write_index`.

    Each layer's keys and values are the two halves of one tensor [batch, 2·heads, columns, channels], so a
    step whose new keys and values lie side by side writes both in one kernel (`update_keys_values`).

    With a `prefix_length`, the first columns hold a P-tuning prefix's keys and values, written once before the
    prompt (`hold_prefix`), and `write_index` counts the `capacity` columns after them. The model reads the
    prefix there as ordinary cache columns (`holds_prefix`): a step runs no prefix encoder (with projection, two
    matmuls over its fp32 weights) and copies no layer's cache to put the prefix in front of it (a `cat` of
    keys and of values a layer), so it runs what a step without a prefix runs.
    """

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        capacity: int,
        channels: int,
        dtype: torch.dtype,
        device: torch.device,
        prefix_length: int = 0,
    ) -> None:
        shape = (batch, 2 * heads, prefix_length + capacity, channels)
        self.prefix_length = prefix_length
        whole = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.keys = [layer[:, :heads] for layer in whole]
        self.values = [layer[:, heads:] for layer in whole]
        """What attention reads: the prefix's columns, then the cache's."""
        self.keys_values = [layer[:, :, prefix_length:] for layer in whole]
        """The columns `write_index` counts: those after the prefix, keys then values."""
        self.written = [(layer[:, :heads], layer[:, heads:]) for layer in self.keys_values]
        self.write_index = torch.zeros(1, dtype=torch.long, device=device)
        self.length = 0

    @property
    def holds_prefix(self) -> bool:
        """Whether the model finds its prefix's keys and values here (it then puts none in front)."""
        return self.prefix_length > 0

    def hold_prefix(self, prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write the prefix's keys and values (per layer [batch, heads, prefix_length, channels]) in front."""
        for keys, values, (key, value) in zip(self.keys, self.values, prefix, strict=True):
            keys[:, :, : self.prefix_length].copy_(key)
            values[:, :, : self.prefix_length].copy_(value)

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_, **__
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(transformers' own attention classes pass their keyword arguments too: nothing here needs them)"""
        keys, values = self.written[layer_idx]
        keys.index_copy_(2, self.write_index, key)
        values.index_copy_(2, self.write_index, value)
        return self.keys[layer_idx], self.values[layer_idx]

    def update_keys_values(
        self, key_value: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`update` for keys then values as one tensor [batch, 2·heads, tokens, channels]: one write."""
        self.keys_values[layer_idx].index_copy_(2, self.write_index, key_value)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length


class StaticDecoder:
    """Decodes a batch of left-padded prompts with a static cache; reusable across batches of one shape.

    `capacity` bounds prompt length plus new tokens. The CUDA graph is captured on the first step and kept
    for later batches of the same batch size and capacity (evaluation feeds many such batches). A family
    subclass says what its cache holds and how its positions and prompt mask are made:
    `cache_heads_and_channels()`, `position_shape`, `prompt_positions_and_mask(...)` and `advance_positions()`
    (and `new_cache(...)` where its cache is another `StaticKVCache`).
    The model is called as `model(input_ids=, position_ids=, attention_mask=<additive>, cache=, use_cache=True)`;
    with a prefix, the cache holds the prefix's keys and values in its first columns (written by `prefill` from
    the model's `transformer.prefix_keys_values`, every family's), and the model reads them there.
    """

    position_shape: tuple[int, ...] = (1,)
    """The step's positions per row (after the batch dimension)."""
    positions_after_prefix: bool = False
    """Whether a prompt's positions start after its prefix (PEFT's prefix tuning over transformers' classes)
    rather than at 0 (the published ChatGLM P-tuning v2); serving, whose model holds no prefix, shifts a row's
    positions by its own prefix's length when they do."""

    def __init__(self, model, batch: int, capacity: int, *, use_graph: bool | None = None) -> None:
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device
        self.dtype = model.get_input_embeddings().weight.dtype
        if not self.dtype.is_floating_point:  # an int8 embedding: the model computes in 16-bit
            self.dtype = torch.float16
        self.batch = batch
        self.capacity = capacity
        self.prefix_length = model.config.pre_seq_len or 0
        heads, channels = self.cache_heads_and_channels()
        self.key_columns = -(-(self.prefix_length + capacity) // KEY_ALIGNMENT) * KEY_ALIGNMENT
        """The keys a step attends over: the prefix and the cache's columns."""
        self.cache = self.new_cache(heads, channels)
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self.step_index = torch.zeros(1, dtype=torch.long, device=self.device)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(batch, *self.position_shape, dtype=torch.long, device=self.device)
        # An additive mask (0 where a key may be seen), so attention takes it as it is: nothing is
        # converted inside the captured step.
        self.hidden = torch.finfo(self.dtype).min
        self.mask = torch.full(
            (batch, 1, 1, self.key_columns), self.hidden, dtype=self.dtype, device=self.device
        )
        self.logits: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_error: str | None = None

    def cache_heads_and_channels(self) -> tuple[int, int]:
        """The cache's heads (or key/value groups) and channels per head."""
        raise NotImplementedError

    def new_cache(self, heads: int, channels: int) -> StaticKVCache:
        """The cache: the prefix's columns, then those the prompt and the new tokens are written into."""
        return StaticKVCache(
            self.config.num_layers,
            self.batch,
            heads,
            self.key_columns - self.prefix_length,
            channels,
            self.dtype,
            self.device,
            prefix_length=self.prefix_length,
        )

    def prompt_positions_and_mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt's position ids, and which keys (prefix included) each of its positions may see
        ([batch, 1, length, prefix + length], True where seen)."""
        raise NotImplementedError

    def advance_positions(self) -> None:
        """Move `self.positions` (in place) to the next generated token's."""
        raise NotImplementedError

    @torch.no_grad()
    def _step_eagerly(self) -> torch.Tensor:
        return self.model(
            input_ids=self.token,
            position_ids=self.positions,
            attention_mask=self.mask,
            cache=self.cache,
            use_cache=True,
        ).logits[:, -1]

    def _step(self) -> torch.Tensor:
        if not self.use_graph:
            return self._step_eagerly()
        if self.graph is None:
            self._capture()
            if self.graph is None:
                return self._step_eagerly()
        self.graph.replay()
        return self.logits

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph: kernels chosen, workspaces allocated
                self._step_eagerly()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.logits = self._step_eagerly()
        except RuntimeError as error:
            # Some quantized kernels cannot be captured: decode eagerly, correctly, just slower.
            self.use_graph = False
            self.graph_error = str(error).splitlines()[0] if str(error) else type(error).__name__
            warnings.warn(f"decoding without a CUDA graph: {self.graph_error}", stacklevel=2)
            return
        self.graph = graph

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the prompts (left-padded, [batch, length]) and return the logits of their last position."""
        batch, length = input_ids.shape
        if batch != self.batch or length >= self.capacity:
            raise ValueError(f"this decoder holds {self.batch} rows of up to {self.capacity} tokens")
        prefix = self.prefix_length
        if prefix:  # at every prefill, as the encoder is then: a decoder outlives a batch, a prefix may change
            self.cache.hold_prefix(self.model.transformer.prefix_keys_values(batch, self.dtype))
        positions, allowed = self.prompt_positions_and_mask(input_ids, attention_mask)
        prompt_mask = torch.full(
            (batch, 1, length, self.key_columns), self.hidden, dtype=self.dtype, device=self.device
        )
        prompt_mask[..., : prefix + length].masked_fill_(allowed, 0.0)
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
        # From now on one position at a time; the step's buffers are updated in place, never replaced,
        # since a captured graph holds on to them.
        self.cache.write_index = self.step_index
        self.mask.fill_(self.hidden)
        self.mask[:, 0, 0, :prefix] = 0.0
        self.mask[:, 0, 0, prefix : prefix + length].masked_fill_(attention_mask.bool(), 0.0)
        self.positions.copy_(positions[..., -1:])
        return logits

    @torch.no_grad()
    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        *,
        eos_token_id: int | list[int],
        sampling: Sampling = Sampling(),
        should_stop: Callable[[], bool] | None = None,
        check_finished_every: int = 1,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token of every row [batch] until every row met a stop id (`eos_token_id`, one or
        several) or `max_new_tokens` were made; a finished row repeats its stop id.

        Whether all rows ended is read from the GPU every `check_finished_every` steps: each reading waits
        for the GPU, which then idles while the next step is launched. With a larger value the host queues
        steps ahead of the GPU, and up to that many steps of stop ids may follow the end of every row.
        """
        stops = torch.tensor(stop_ids(eos_token_id), device=self.device)
        length = input_ids.shape[1]
        max_new_tokens = min(max_new_tokens, self.capacity - length)
        generator = None
        if sampling.do_sample and sampling.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        logits = self.prefill(input_ids, attention_mask)
        finished = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        last = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        for step in range(max_new_tokens):
            token = torch.where(finished, last, pick_tokens(logits, sampling, generator))
            yield token
            finished |= torch.isin(token, stops)
            last = token
            if step == max_new_tokens - 1 or (should_stop and should_stop()):
                return
            if (step + 1) % check_finished_every == 0 and bool(finished.all()):
                return
            index = length + step
            self.token.copy_(token[:, None])
            self.advance_positions()
            self.cache.write_index.fill_(index)
            self.mask[:, 0, 0, self.prefix_length + index] = 0.0
            logits = self._step()


def stop_ids(eos_token_id: int | list[int]) -> list[int]:
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
