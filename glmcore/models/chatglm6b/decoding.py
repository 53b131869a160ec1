"""ChatGLM-6B's decoding fast path: a preallocated KV cache and, on a GPU, each step replayed as one CUDA graph.

A decoding step of a 6B model at small batch reads every weight once; what makes it slow in eager PyTorch
is launching a few hundred kernels from Python for every token. Here the step has fixed shapes (keys
and values live in buffers of a fixed capacity, the attention mask marks which slots are filled), so it
is captured once as a CUDA graph and replayed for every token: the GPU then runs at its memory bandwidth.
On the CPU, or when capture fails, the same step runs eagerly.

Greedy decoding here gives the same tokens as `model.generate()` (tested on the CPU); evaluation and
chat use this path through `glmcore.generation.generate` and the family's `new_decoder`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import torch

from glmcore.generation import Sampling, _pick
from glmcore.models.chatglm6b.modeling import glm_attention_mask, glm_position_ids


class StaticKVCache:
    """Keys and values [batch, heads, capacity, head_dim] per layer, written at `write_index`."""

    def __init__(self, config, batch: int, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, config.num_attention_heads, capacity, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.write_index = torch.zeros(1, dtype=torch.long, device=device)
        self.length = 0

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer_idx].index_copy_(2, self.write_index, key)
        self.values[layer_idx].index_copy_(2, self.write_index, value)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length


class StaticDecoder:
    """Decodes a batch of left-padded prompts with a static cache; reusable across batches of one shape.

    `capacity` bounds prompt length plus new tokens. The CUDA graph is captured on the first step and
    kept for later batches of the same batch size and capacity (evaluation feeds many such batches).
    `mask_first` places the answer at a prompt's `[MASK]` before its `[gMASK]` (see `glm_position_ids`).
    """

    def __init__(
        self, model, batch: int, capacity: int, *, use_graph: bool | None = None, mask_first: bool = False
    ) -> None:
        self.model = model
        self.mask_first = mask_first
        self.config = model.config
        parameter = next(model.parameters())
        self.device = parameter.device
        self.dtype = model.transformer.word_embeddings.weight.dtype
        self.batch = batch
        self.capacity = capacity
        self.prefix_length = model.config.pre_seq_len or 0
        self.cache = StaticKVCache(self.config, batch, capacity, self.dtype, self.device)
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self.step_index = torch.zeros(1, dtype=torch.long, device=self.device)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(batch, 2, 1, dtype=torch.long, device=self.device)
        # An additive mask (0 where a key may be seen), so attention takes it as it is: nothing is
        # converted inside the captured step.
        self.hidden = torch.finfo(self.dtype).min
        self.mask = torch.full(
            (batch, 1, 1, self.prefix_length + capacity), self.hidden, dtype=self.dtype, device=self.device
        )
        self.logits: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_error: str | None = None

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
        full_mask = glm_attention_mask(input_ids, attention_mask, 0, prefix, self.config)
        prompt_mask = torch.full(
            (batch, 1, length, prefix + self.capacity), self.hidden, dtype=self.dtype, device=self.device
        )
        prompt_mask[..., : prefix + length].masked_fill_(full_mask, 0.0)
        positions = glm_position_ids(input_ids, attention_mask, self.config, mask_first=self.mask_first)
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
        self.positions.copy_(positions[:, :, -1:])
        return logits

    @torch.no_grad()
    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        *,
        eos_token_id: int,
        sampling: Sampling = Sampling(),
        should_stop: Callable[[], bool] | None = None,
        check_finished_every: int = 1,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token of every row [batch] until all rows ended or `max_new_tokens` were made.

        Whether all rows ended is read from the GPU every `check_finished_every` steps: each reading waits
        for the GPU, which then idles while the next step is launched. With a larger value the host queues
        steps ahead of the GPU, and up to that many steps of `eos_token_id` may follow the end of every row.
        """
        length = input_ids.shape[1]
        max_new_tokens = min(max_new_tokens, self.capacity - length)
        generator = None
        if sampling.do_sample and sampling.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        logits = self.prefill(input_ids, attention_mask)
        finished = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        for step in range(max_new_tokens):
            token = _pick(logits, sampling, generator)
            token = token.masked_fill(finished, eos_token_id)
            yield token
            finished |= token == eos_token_id
            if step == max_new_tokens - 1 or (should_stop and should_stop()):
                return
            if (step + 1) % check_finished_every == 0 and bool(finished.all()):
                return
            index = length + step
            self.token.copy_(token[:, None])
            self.positions[:, 1] += 1
            self.cache.write_index.fill_(index)
            self.mask[:, 0, 0, self.prefix_length + index] = 0.0
            logits = self._step()
