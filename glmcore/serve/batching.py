"""Continuous batching over one base model: many requests, each with its own prefix, decoded in one step.

The decoder holds `slots` rows of a static KV cache of `capacity` columns. A P-tuning v2 prefix is nothing but
keys and values in front of the prompt, so each row's prefix is written into the row's first columns; the model
itself runs without a prefix encoder, and rows with different prefixes (or none) share every decoding step.
A row's columns are `[prefix | prompt | generated]`; its mask shows those, its positions are its own.

The scheduler is one thread that owns the model. Between two steps it drops the rows of cancelled requests,
gives waiting ones the free rows (continuous batching: a new request never waits for a batch to end) and runs one
prefill pass: every prompt being written goes into it, each row with its own prefix, positions and mask, up to
`prefill_budget` tokens. A causal family's long prompt is cut into chunks across passes, so the decoding rows
keep stepping between them; a prompt the family reads both ways (ChatGLM-6B's context) goes whole. The shortest
remainders go first, so a request that arrives during a long prefill gets its first token before it ends.
A row may instead apply a LoRA adapter: its low-rank update is added to the target layers' outputs for that row
alone, in the same passes and steps (`glmcore.serve.adapters`: adapters loaded on first use, least recently used
evicted under a budget; a request whose adapter finds no free slot waits, as for a row).
A causal prompt whose first blocks were written before over the same prefix checkpoint (or adapter) copies their
keys and values instead of prefilling them (`glmcore.serve.shared_prompts`: one system prompt, written once).
`record` keeps the latest passes, steps and first tokens, in order.
A failure that belongs to one request (its prefix, its sampling, next-token scores that are not numbers) fails
that request alone, and a prefill pass that fails fails only the requests in it; every request taken from the
waiting queue is answered: admitted, or failed with a reason.
A step runs only the rows up to the highest one in use, rounded up to a power of two; on a GPU each such width
is captured once as a CUDA graph and replayed. Tokens go to each request's `deliver` callback, which must not
block (the HTTP side hands them to its event loop), so a slow client never slows the others.

Memory: every row and column is allocated when the engine starts, from a budget (`plan_slots`: the GPU's free
memory after loading, the KV cache's bytes per token from the model's shape), so serving allocates nothing per
request beyond a prefill pass's activations and a copy of its rows' columns: a request that does not fit a row is refused, one that finds no free
row waits, and one that finds the waiting queue full is refused with a retry time (HTTP 429).
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from glmcore.errors import GlmError
from glmcore.generation import Sampling, pick_tokens
from glmcore.serve.adapters import MIB, AdapterBank
from glmcore.serve.servers import DEFAULT_ADAPTER_MEMORY_MIB
from glmcore.serve.shared_prompts import BLOCK, SharedPrompts
from glmcore.units import GIB

log = logging.getLogger("glmcore.serve")


class QueueFull(GlmError):
    """Every row is busy and the waiting queue is full: the client should come back after `retry_after`."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTooLong(GlmError):
    """A request whose prefix, prompt and answer budget do not fit one row of the cache."""


class EngineStopped(GlmError):
    """The engine has shut down (the server is stopping)."""


STOPPED = "The server is stopping, so this answer ends unfinished; send the request again once it runs."
FAILED_STEP = "The server failed while decoding; its log says why."


@dataclass
class Request:
    """One generation. `deliver(kind, value)` is called from the engine thread with ("token", id) for each new
    token, then ("end", finish_reason) — "stop", "length" or "cancelled" — or ("error", GlmError)."""

    prompt_ids: list[int]
    prefix: Path | None
    max_new_tokens: int
    deliver: Callable[[str, object], None]
    sampling: Sampling = Sampling()
    adapter: Path | None = None
    """A LoRA checkpoint whose low-rank updates this request's row applies (never together with a prefix)."""
    id: int = field(default_factory=itertools.count(1).__next__)
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    generated: int = 0
    reused_tokens: int = 0
    """Prompt tokens whose keys and values were copied from an earlier request's (a shared beginning)."""
    batch: int = 0
    """The most rows that decoded together while this request did (itself included)."""
    finish_reason: str | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)
    _generator: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A seeded request draws from its own generator, so its answer repeats whoever shares its steps."""
        if self.sampling.seed is not None and self._generator is None:
            self._generator = torch.Generator(device=device).manual_seed(self.sampling.seed)
        return self._generator

    @property
    def source(self) -> Path | None:
        """The checkpoint that shapes this request's keys and values beyond the base (its prefix or adapter): the
        key of its shared prompt beginnings."""
        return self.adapter or self.prefix

    def cancel(self) -> None:
        """Stop generating for this request at the next step boundary (a client went away, a stop string)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class _RowCache:
    """The cache as the model sees it: `update` writes the new keys and values at each row's own columns
    (`columns` [rows, 1, tokens, 1]: one per token fed)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], columns: torch.Tensor) -> None:
        self.keys, self.values, self.columns = keys, values, columns

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_, **__
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(transformers' own attention classes pass their keyword arguments too: nothing here needs them)"""
        index = self.columns.expand_as(key)
        self.keys[layer_idx].scatter_(2, index, key)
        self.values[layer_idx].scatter_(2, index, value)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 1  # positions and masks are always given; only "there is a past" is read from this


@dataclass
class _Row:
    request: Request
    column: int
    """The column the next fed token is written to."""
    last_token: int


@dataclass(frozen=True)
class PromptLayout:
    """A prompt's positions ([..., length]) and which of its tokens each one sees ([length, length]), on the CPU;
    `causal` when each token sees only those before it: then a chunk needs nothing of the chunks after it."""

    positions: torch.Tensor
    allowed: torch.Tensor
    causal: bool


@dataclass(frozen=True)
class Chunk:
    """A part of one row's prompt for a prefill pass: `tokens` go to the columns from `start`, `positions` are
    theirs, `sees[i, j]` says whether token i sees column j (the prefix and the earlier chunks included); the last
    chunk of a prompt opens the row for decoding."""

    row: int
    tokens: list[int]
    start: int
    positions: torch.Tensor
    sees: torch.Tensor
    last: bool


@dataclass
class _Prefill:
    """A request whose prompt is being written into its row, a chunk per pass."""

    request: Request
    row: int
    prefix_length: int
    layout: PromptLayout
    done: int = 0
    """Prompt tokens already written."""

    @property
    def remaining(self) -> int:
        return len(self.request.prompt_ids) - self.done

    @property
    def fresh(self) -> bool:
        """Nothing of the prompt written by its own passes yet (only, maybe, a shared beginning copied)."""
        return self.done == self.request.reused_tokens

    def chunk(self, size: int) -> Chunk:
        first, end = self.done, self.done + size
        sees = torch.ones(size, self.prefix_length + end, dtype=torch.bool)
        sees[:, self.prefix_length :] = self.layout.allowed[first:end, :end]
        return Chunk(
            self.row,
            self.request.prompt_ids[first:end],
            self.prefix_length + first,
            self.layout.positions[..., first:end],
            sees,
            last=end == len(self.request.prompt_ids),
        )


@dataclass(frozen=True)
class EngineEvent:
    """One entry of the engine's record: ("reuse", (request id, tokens)) when a prompt's first tokens are copied
    from a shared beginning, ("prefill", ((request id, first token, end), ...)) for a prefill pass, ("step",
    (request ids...)) for a decoding step, ("first token", (request id,))."""

    kind: str
    detail: tuple


def kv_bytes_per_token(model, dtype: torch.dtype) -> int:
    """The KV cache's bytes for one token of one row: every layer's keys and values (the estimate's model)."""
    heads, channels = _row_decoder(model).cache_heads_and_channels()
    return model.config.num_layers * 2 * heads * channels * torch.empty((), dtype=dtype).element_size()


def _row_decoder(model):
    """A one-row, one-column decoder of the model's family: its prompt positions, prompt mask and position
    advance are the family's own (`glmcore.generation.StaticDecoder`), used here row by row."""
    from glmcore.generation import new_decoder

    return new_decoder(model, 1, 1, use_graph=False)


def plan_slots(
    model,
    dtype: torch.dtype,
    capacity: int,
    max_slots: int,
    *,
    shared_tokens: int = 0,
    reserved_bytes: int = 0,
    reserve: float = 0.1,
) -> int:
    """How many rows of `capacity` columns fit: on a GPU, its free memory now (after loading) less a `reserve`
    share for prefills, prefixes and graphs, the pool of `shared_tokens` shared prompt tokens and
    `reserved_bytes` (the LoRA adapters' budget); on the CPU, `max_slots`."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return max_slots
    free, _ = torch.cuda.mem_get_info(device)
    per_token = kv_bytes_per_token(model, dtype)
    per_row = per_token * capacity
    fits = int((free * (1 - reserve) - per_token * shared_tokens - reserved_bytes) // per_row)
    if fits < 1:
        raise GlmError(
            f"The GPU has {free / GIB:.1f} GiB free, less than one row of {capacity} tokens needs "
            f"({per_row / GIB:.2f} GiB): serve with a smaller --context or a lower --quantization-bit."
        )
    return min(max_slots, fits)


def shared_prompt_tokens(model, tokenizer, capacity: int) -> int:
    """The tokens of shared prompt beginnings to keep: a row's worth where the family's chat prompt is causal
    (ChatGLM2/3), none where its first tokens see those after them (ChatGLM-6B's context), which no other
    prompt can share."""
    from glmcore.models import family_of

    prompt = family_of(model).implementation().chat_prompt_ids(tokenizer, "hello", [])
    return capacity if _prompt_layout(_row_decoder(model), prompt).causal else 0


def _prompt_layout(row_decoder, prompt: list[int]) -> PromptLayout:
    """The family's positions and prompt mask for `prompt` (as its chat computes them), on the CPU."""
    input_ids = torch.tensor([prompt], device=row_decoder.device)
    positions, allowed = row_decoder.prompt_positions_and_mask(input_ids, torch.ones_like(input_ids))
    allowed = allowed[0, 0].cpu()
    causal = torch.equal(allowed, torch.ones_like(allowed).tril())
    return PromptLayout(positions[0].cpu(), allowed, causal)


class SlotDecoder:
    """`slots` rows of `capacity` columns over `model`, loaded without a prefix: each row's is in its columns."""

    def __init__(
        self, model, slots: int, capacity: int, *, use_graph: bool | None = None, adapter_memory: int = 0
    ) -> None:
        self.model = model
        self.row_decoder = _row_decoder(model)
        self.device = self.row_decoder.device
        self.dtype = self.row_decoder.dtype
        self.slots, self.capacity = slots, capacity
        heads, channels = self.row_decoder.cache_heads_and_channels()
        shape = (slots, heads, capacity, channels)
        layers = model.config.num_layers
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(layers)]
        self.hidden = torch.finfo(self.dtype).min
        self.mask = torch.full((slots, 1, 1, capacity), self.hidden, dtype=self.dtype, device=self.device)
        self.tokens = torch.zeros(slots, 1, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(
            slots, *self.row_decoder.position_shape, dtype=torch.long, device=self.device
        )
        self.columns = torch.zeros(slots, 1, 1, 1, dtype=torch.long, device=self.device)
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self.graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        """Captured steps by (width, whether the rows' LoRA updates run)."""
        self.adapters = AdapterBank(model, slots, adapter_memory)
        self._adapter_version = self.adapters.version

    def prompt_layout(self, prompt: list[int], prefix_length: int = 0) -> PromptLayout:
        """The family's layout of `prompt` in a row whose prefix has `prefix_length` columns."""
        layout = _prompt_layout(self.row_decoder, prompt)
        if self.row_decoder.positions_after_prefix and prefix_length:
            return replace(layout, positions=layout.positions + prefix_length)
        return layout

    def write_prefix(self, row: int, prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write a prefix (per layer keys and values [heads, P, channels]) into the first columns of `row`."""
        for layer, (key, value) in enumerate(prefix):
            self.keys[layer][row, :, : key.shape[1]] = key
            self.values[layer][row, :, : value.shape[1]] = value

    @torch.no_grad()
    def prefill(self, chunks: list[Chunk]) -> torch.Tensor:
        """Run every chunk in one pass; the logits of each chunk's last token, in order.

        Chunks are right-aligned in a batch padded on the left, so each one's last token is the pass's last
        position. The pass works on a copy of its rows' first columns plus one scratch column, where the padding
        writes; the chunks' own keys and values are copied back into their rows afterwards."""
        count, longest = len(chunks), max(len(chunk.tokens) for chunk in chunks)
        scratch = max(chunk.start + len(chunk.tokens) for chunk in chunks)
        input_ids = torch.zeros(count, longest, dtype=torch.long)
        positions = torch.zeros(count, *chunks[0].positions.shape[:-1], longest, dtype=torch.long)
        columns = torch.full((count, longest), scratch, dtype=torch.long)
        visible = torch.zeros(count, 1, longest, scratch + 1, dtype=torch.bool)
        for index, chunk in enumerate(chunks):
            length = len(chunk.tokens)
            input_ids[index, longest - length :] = torch.tensor(chunk.tokens)
            positions[index, ..., longest - length :] = chunk.positions
            columns[index, longest - length :] = torch.arange(chunk.start, chunk.start + length)
            visible[index, 0, longest - length :, : chunk.start + length] = chunk.sees
            visible[index, 0, : longest - length, scratch] = True  # padding sees its own key: never a NaN softmax
        rows = torch.tensor([chunk.row for chunk in chunks])
        on_device = rows.to(self.device)
        self.adapters.use_rows(on_device, rows.tolist())
        keys = [layer[:, :, : scratch + 1].index_select(0, on_device) for layer in self.keys]
        values = [layer[:, :, : scratch + 1].index_select(0, on_device) for layer in self.values]
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~visible.to(self.device), self.hidden)
        cache = _RowCache(keys, values, columns.to(self.device)[:, None, :, None])
        logits = self.model(
            input_ids=input_ids.to(self.device),
            position_ids=positions.to(self.device),
            attention_mask=mask,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        source, token = (columns != scratch).nonzero(as_tuple=True)
        target_rows, target_columns = rows[source].to(self.device), columns[source, token].to(self.device)
        source = source.to(self.device)
        for layer, copy in zip((*self.keys, *self.values), (*keys, *values), strict=True):
            layer[target_rows, :, target_columns] = copy[source, :, target_columns]
        for chunk in chunks:
            if chunk.last:
                self.mask[chunk.row].fill_(self.hidden)
                self.mask[chunk.row, 0, 0, : chunk.start + len(chunk.tokens)] = 0.0
                self.positions[chunk.row].copy_(chunk.positions[..., -1:])
        return logits

    def release(self, row: int, *, scrub: bool = False) -> None:
        """A free row: nothing visible but its first column, positions and column back to 0. `scrub` zeroes its
        keys and values too, after a failure: a NaN left in a hidden column still spoils the next request's
        attention (NaN times a zero weight is NaN)."""
        self.adapters.clear(row)
        if scrub:
            for layer in (*self.keys, *self.values):
                layer[row].zero_()
        self.mask[row].fill_(self.hidden)
        self.mask[row, 0, 0, 0] = 0.0
        self.positions[row].zero_()
        self.columns[row].zero_()

    @torch.no_grad()
    def step(self, width: int, tokens: dict[int, int], columns: dict[int, int]) -> torch.Tensor:
        """Feed `tokens[row]` at `columns[row]` for the rows decoding (all below `width`); the next logits of the
        first `width` rows. The others (free, or with a prompt half written) are fed at their last column, which no
        request reaches (its last answer token is never fed back), and are ignored."""
        fed = [(tokens.get(row, 0), columns.get(row, self.capacity - 1)) for row in range(width)]
        fed = torch.tensor(fed, dtype=torch.long)  # one copy to the device, not two per row
        self.tokens[:width, 0].copy_(fed[:, 0], non_blocking=True)
        self.columns[:width, 0, 0, 0].copy_(fed[:, 1], non_blocking=True)
        self.row_decoder.positions = self.positions[:width]
        self.row_decoder.advance_positions()
        self.mask[:width].scatter_(3, self.columns[:width], 0.0)
        key = (width, self.adapters.use_width(width))
        if not self.use_graph:
            return self._step_eagerly(width)
        if self.adapters.version != self._adapter_version:  # new stacks: the graphs with updates read the old
            self.graphs = {captured: graph for captured, graph in self.graphs.items() if not captured[1]}
            self._adapter_version = self.adapters.version
        if key not in self.graphs and not self._capture(key):
            return self._step_eagerly(width)
        graph, logits = self.graphs[key]
        graph.replay()
        return logits

    def _step_eagerly(self, width: int) -> torch.Tensor:
        cache = _RowCache(
            [layer[:width] for layer in self.keys],
            [layer[:width] for layer in self.values],
            self.columns[:width],
        )
        return self.model(
            input_ids=self.tokens[:width],
            position_ids=self.positions[:width],
            attention_mask=self.mask[:width],
            cache=cache,
            use_cache=True,
        ).logits[:, -1]

    def _capture(self, key: tuple[int, bool]) -> bool:
        """Capture the step of `width` rows, with or without their LoRA updates (as StaticDecoder does); False,
        and eager steps, where it fails."""
        width = key[0]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: the same writes as the step itself, to the same columns
                self._step_eagerly(width)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                logits = self._step_eagerly(width)
        except RuntimeError as error:
            self.use_graph = False
            warnings.warn(f"serving without CUDA graphs: {str(error).splitlines()[0]}", stacklevel=2)
            return False
        self.graphs[key] = (graph, logits)
        return True


DEFAULT_PREFILL_BUDGET = 2048
"""Prompt tokens one prefill pass takes at most (a prompt that cannot be cut may go past it, alone)."""
RECORD_LENGTH = 4096
"""Events the engine's record keeps."""


class Engine:
    """The scheduler thread over a `SlotDecoder`: submit requests from any thread, tokens come back through each
    request's `deliver`. Prefix checkpoints become per-layer keys and values, made apart from the model
    (`glmcore.prefix.encode_prefix`; cached, `max_prefixes` of them); LoRA checkpoints are held by the decoder's
    `AdapterBank` (`adapter_memory` bytes)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        slots: int,
        capacity: int,
        max_waiting: int = 64,
        max_prefixes: int = 16,
        use_graph: bool | None = None,
        on_finished: Callable[[Request], None] | None = None,
        stop_ids: set[int] | None = None,
        prefill_budget: int = DEFAULT_PREFILL_BUDGET,
        shared_tokens: int = 0,
        adapter_memory: int = DEFAULT_ADAPTER_MEMORY_MIB * MIB,
    ) -> None:
        from glmcore.models import family_of

        self.model = model
        self.tokenizer = tokenizer
        self.family = family_of(model).implementation()
        self.stop_ids = set(self.family.stop_token_ids(tokenizer)) if stop_ids is None else stop_ids
        """The family's stop tokens; the bench gives none, so every answer is as long as it asked."""
        self.decoder = SlotDecoder(model, slots, capacity, use_graph=use_graph, adapter_memory=adapter_memory)
        self.shared = SharedPrompts(self.decoder, shared_tokens) if shared_tokens >= BLOCK else None
        """Shared prompt beginnings (`shared_tokens` of them at most; `shared_prompt_tokens` says how many)."""
        self.adapters = self.decoder.adapters
        """The LoRA adapters held (`adapter_memory` bytes of them at most, least recently used evicted)."""
        if self.shared is not None:
            self.adapters.on_evict = self.shared.forget
        self.max_waiting = max_waiting
        self.max_prefixes = max_prefixes
        self.on_finished = on_finished
        self._prefixes: collections.OrderedDict[Path, list[tuple[torch.Tensor, torch.Tensor]]] = (
            collections.OrderedDict()
        )
        self._weights: dict[Path, tuple] = {}
        self.prefill_budget = prefill_budget
        self._waiting: collections.deque[Request] = collections.deque()
        self._prefilling: dict[int, _Prefill] = {}
        """Rows whose prompt is being written."""
        self._rows: dict[int, _Row] = {}
        """Rows decoding."""
        self._wake = threading.Condition()
        self._stopping = False
        self.steps = 0
        self.record: collections.deque[EngineEvent] = collections.deque(maxlen=RECORD_LENGTH)
        self._thread = threading.Thread(target=self._run, name="glmcore-serve-engine", daemon=True)
        self._thread.start()

    @property
    def slots(self) -> int:
        return self.decoder.slots

    @property
    def capacity(self) -> int:
        return self.decoder.capacity

    def load(self) -> dict[str, int]:
        """Rows in use, requests waiting and rows in all."""
        with self._wake:
            active = len(self._rows) + len(self._prefilling)
            return {"active": active, "waiting": len(self._waiting), "slots": self.slots}

    def prefix_length(self, checkpoint: Path | None) -> int:
        """Virtual tokens of a prefix checkpoint (its files read once, checked against the model)."""
        return self._prefix_weights(checkpoint)[0].pre_seq_len if checkpoint is not None else 0

    def _prefix_weights(self, checkpoint: Path):
        from glmcore.prefix import read_checked_prefix

        with self._wake:
            if checkpoint in self._weights:
                return self._weights[checkpoint]
        weights = read_checked_prefix(checkpoint, self.model.config)
        with self._wake:
            self._weights[checkpoint] = weights
            while len(self._weights) > self.max_prefixes:
                self._weights.pop(next(iter(self._weights)))
        return weights

    def submit(self, request: Request) -> None:
        """Queue `request`; refused at once if it cannot fit a row or the waiting queue is full."""
        if request.adapter is not None:
            self.adapters.check(request.adapter)
        budget = self.capacity - self.prefix_length(request.prefix)
        if len(request.prompt_ids) + request.max_new_tokens > budget:
            raise RequestTooLong(
                f"The prompt takes {len(request.prompt_ids)} tokens and {request.max_new_tokens} more were asked "
                f"for, but this server holds {budget} per request"
                + (" beside this prefix" if request.prefix else "")
                + ": shorten the messages or lower max_tokens."
            )
        with self._wake:
            if self._stopping:
                raise EngineStopped("The server is shutting down.")
            free = self.slots - len(self._rows) - len(self._prefilling)
            if len(self._waiting) >= self.max_waiting + free:
                raise QueueFull(
                    f"All {self.slots} rows are busy and {len(self._waiting)} requests wait; try again shortly.",
                    retry_after=max(1, len(self._waiting) // max(self.slots, 1)),
                )
            self._waiting.append(request)
            self._wake.notify()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Take no more requests, fail those waiting and in flight with `EngineStopped` (each client is told its
        answer ends unfinished) and end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    # the engine thread

    def _prefix(self, checkpoint: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The prefix's keys and values per layer [heads, P, channels], made apart from the served model
        (`glmcore.prefix.encode_prefix`)."""
        from glmcore.prefix import encode_prefix

        if checkpoint in self._prefixes:
            self._prefixes.move_to_end(checkpoint)
            return self._prefixes[checkpoint]
        _, state = self._prefix_weights(checkpoint)
        layers = encode_prefix(state, self.model.config, dtype=self.decoder.dtype, device=self.decoder.device)
        self._prefixes[checkpoint] = layers
        while len(self._prefixes) > self.max_prefixes:
            dropped, _ = self._prefixes.popitem(last=False)
            if self.shared is not None:
                self.shared.forget(dropped)  # its keys and values are made again, maybe from a changed file
        return layers

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._rows and not self._prefilling:
                    self._wake.wait()
                if self._stopping:
                    break
                admitted = []
                free = [row for row in range(self.slots) if row not in self._rows and row not in self._prefilling]
                while self._waiting and free:
                    admitted.append((free.pop(0), self._waiting.popleft()))
            deferred: list[Request] = []
            try:
                for row, request in admitted:
                    if not self._admit(row, request):  # its adapter waits for a slot, at the queue's front
                        with self._wake:
                            self._waiting.insert(len(deferred), request)
                        deferred.append(request)
                self._drop_cancelled()
                if self._prefilling:
                    self._prefill_pass()
                if self._rows:
                    self._step()
            except Exception:  # a bug must not leave a client waiting forever: fail those in flight
                log.exception("the serving engine failed a step")
                taken = [request for _, request in admitted if request not in deferred]
                self._fail_in_flight(GlmError(FAILED_STEP), taken)
        with self._wake:
            waiting = list(self._waiting)
            self._waiting.clear()
        self._fail_in_flight(EngineStopped(STOPPED), waiting)

    def _fail_in_flight(self, error: GlmError, also: list[Request]) -> None:
        """Fail every row, and each request of `also` that has no answer yet."""
        for row in [*self._prefilling, *self._rows]:
            self._end_row(row, error)
        for request in also:
            if request.finish_reason is None:
                self._fail(request, error)

    def _admit(self, row: int, request: Request) -> bool:
        """Give `request` its row: its prefix written or its adapter held, its prompt laid out for the prefill
        passes. Any failure fails this request alone. False when its adapter finds no free slot (every one held
        by an adapter rows decode with): it does not take the row and waits."""
        if request.cancelled:
            self._finish(request, "cancelled")
            return True
        try:
            prefix = self._prefix(request.prefix) if request.prefix else None
            if prefix:
                self.decoder.write_prefix(row, prefix)
            start = prefix[0][0].shape[1] if prefix else 0
            layout = self.decoder.prompt_layout(request.prompt_ids, start)
            if request.adapter is not None and not self.adapters.assign(row, request.adapter):
                return False
        except GlmError as error:
            self._fail(request, error)
            return True
        except Exception:
            log.exception("the serving engine failed to take request %s", request.id)
            self._fail(request, GlmError("The server failed to read this prompt; its log says why."))
            return True
        with self._wake:
            self._prefilling[row] = _Prefill(request, row, start, layout)
        return True

    def _prefill_pass(self) -> None:
        """One pass over the prompts being written, shortest remainder first, up to the budget: a causal prompt is
        cut to what is left of it; one that cannot be cut waits for a pass it fits, or goes alone. The prompts
        written whole begin decoding with their first token."""
        for state in self._prefilling.values():
            if state.fresh:
                self._reuse_shared(state)
        waiting = {row for row, state in self._prefilling.items() if self._waits_for_its_beginning(state)}
        budget, taken = self.prefill_budget, []
        for state in sorted(self._prefilling.values(), key=lambda state: state.remaining):
            if budget <= 0:
                break
            if state.row in waiting:
                continue
            size = min(state.remaining, budget) if state.layout.causal else state.remaining
            if taken and size > budget:
                continue
            taken.append((state, size))
            budget -= size
        chunks = [state.chunk(size) for state, size in taken]
        try:
            logits = self.decoder.prefill(chunks)
        except torch.OutOfMemoryError:
            for state, _ in taken:
                self._end_row(state.row, GlmError("The GPU ran out of memory for this prompt; send a shorter one."))
            return
        except Exception:
            log.exception("the serving engine failed a prefill pass")
            for state, _ in taken:
                self._end_row(state.row, GlmError("The server failed to read this prompt; its log says why."))
            return
        self.record.append(
            EngineEvent("prefill", tuple((state.request.id, state.done, state.done + size) for state, size in taken))
        )
        opened, rows = [], []
        for index, ((state, size), chunk) in enumerate(zip(taken, chunks, strict=True)):
            state.done += size
            if self.shared is not None and state.layout.causal:
                request = state.request
                self.shared.keep(
                    request.source, request.prompt_ids, state.layout.positions, state.row, state.prefix_length,
                    written=state.done,
                )
            if chunk.last:
                with self._wake:
                    del self._prefilling[state.row]
                    self._rows[state.row] = _Row(state.request, chunk.start + size, -1)
                opened.append(index)
                rows.append(state.row)
        if rows:
            self._emit(logits[opened], rows)

    def _reuse_shared(self, state: _Prefill) -> None:
        """Copy the shared beginning of a fresh causal prompt into its row, and start writing after it."""
        if self.shared is None or not state.layout.causal:
            return
        request = state.request
        reused = self.shared.reuse(
            request.source, request.prompt_ids, state.layout.positions, state.row, state.prefix_length,
            copied=request.reused_tokens,
        )
        if reused > state.done:
            state.done = request.reused_tokens = reused
            self.record.append(EngineEvent("reuse", (request.id, reused)))

    def _waits_for_its_beginning(self, state: _Prefill) -> bool:
        """Whether `state`, fresh, should wait for the block it would share next (the same prefix checkpoint, tokens
        and positions from the start) because another prompt is writing it: one further on, one as far that writes
        its own, or else the fresh one in the lowest row. The first of that order never waits, so a burst of requests
        with one system prompt writes it once, the others copying each block as it is done."""
        end = state.done + BLOCK
        request = state.request
        if self.shared is None or not (state.fresh and state.layout.causal) or end >= len(request.prompt_ids):
            return False
        return any(
            other is not state
            and state.done <= other.done < end
            and (other.done > state.done or not other.fresh or other.row < state.row)
            and other.request.source == request.source
            and other.request.prompt_ids[state.done : end] == request.prompt_ids[state.done : end]  # cheap first
            and other.request.prompt_ids[: state.done] == request.prompt_ids[: state.done]
            and torch.equal(other.layout.positions[..., :end], state.layout.positions[..., :end])
            for other in self._prefilling.values()
        )

    def _drop_cancelled(self) -> None:
        with self._wake:
            gone = [request for request in self._waiting if request.cancelled]
            for request in gone:
                self._waiting.remove(request)
        for request in gone:
            self._finish(request, "cancelled")
        for row, state in [*self._prefilling.items(), *self._rows.items()]:
            if state.request.cancelled:
                self._release(row, "cancelled")

    def _step(self) -> None:
        width = min(1 << max(self._rows).bit_length(), self.slots)
        tokens = {row: state.last_token for row, state in self._rows.items()}
        columns = {row: state.column for row, state in self._rows.items()}
        for state in self._rows.values():
            state.column += 1
        try:
            logits = self.decoder.step(width, tokens, columns)
        except torch.OutOfMemoryError:
            self._fail_in_flight(GlmError("The GPU ran out of memory while decoding; try again."), [])
            return
        self.steps += 1
        for state in self._rows.values():
            state.request.batch = max(state.request.batch, len(self._rows))
        rows = list(self._rows)
        self.record.append(EngineEvent("step", tuple(self._rows[row].request.id for row in rows)))
        self._emit(logits[rows], rows)

    def _emit(self, logits: torch.Tensor, rows: list[int]) -> None:
        """Pick the next token of each of `rows` (`logits[i]` is `rows[i]`'s), hand it over, and end the rows that
        stopped or ran out of budget. Greedy rows are picked together, with one read from the device; a row whose
        scores are not all finite (-1 in that read) fails alone, as does a row whose sampling fails."""
        finite = torch.isfinite(logits).all(dim=-1)
        best = torch.where(finite, logits.argmax(dim=-1), -1).tolist()
        picked: dict[int, int] = {}
        for index, row in enumerate(rows):
            request = self._rows[row].request
            if best[index] < 0:
                self._end_row(row, GlmError(_not_finite_message(request)))
            elif not request.sampling.do_sample:
                picked[row] = best[index]
            else:
                try:
                    choice = pick_tokens(
                        logits[index][None], request.sampling, request.generator(logits.device)
                    )
                except Exception:
                    log.exception("the serving engine failed to sample request %s", request.id)
                    self._end_row(row, GlmError("The server failed to sample this answer; its log says why."))
                    continue
                picked[row] = int(choice)
        now = time.monotonic()
        for row, token in picked.items():
            state = self._rows[row]
            request = state.request
            if token in self.stop_ids:
                self._release(row, "stop")
                continue
            request.generated += 1
            if request.first_token_at is None:
                request.first_token_at = now
                self.record.append(EngineEvent("first token", (request.id,)))
            request.deliver("token", token)
            state.last_token = token
            if request.generated >= request.max_new_tokens:
                self._release(row, "length")

    def _take_row(self, row: int) -> Request:
        with self._wake:
            state = self._rows.pop(row, None) or self._prefilling.pop(row)
        return state.request

    def _release(self, row: int, reason: str) -> None:
        request = self._take_row(row)
        self.decoder.release(row)
        self._finish(request, reason)

    def _end_row(self, row: int, error: GlmError) -> None:
        """Fail the request of `row` and free the row, scrubbed of whatever the failure left in it."""
        request = self._take_row(row)
        self.decoder.release(row, scrub=True)
        self._fail(request, error)

    def _finish(self, request: Request, reason: str) -> None:
        request.finish_reason = reason
        self._tell(request, "end", reason)

    def _fail(self, request: Request, error: GlmError) -> None:
        request.finish_reason = "error"
        self._tell(request, "error", error)

    def _tell(self, request: Request, kind: str, value: object) -> None:
        """The request's last word; a callback that fails (its client's loop gone) never stops the engine."""
        try:
            request.deliver(kind, value)
            if self.on_finished is not None:
                self.on_finished(request)
        except Exception:
            log.exception("request %s could not be told it ended", request.id)


def _not_finite_message(request: Request) -> str:
    source = (
        "this request's adapter"
        if request.adapter
        else "this request's prefix checkpoint"
        if request.prefix
        else "the model's weights"
    )
    return (
        "The model's next-token scores for this request are not finite numbers (NaN or infinite), so no token "
        f"can be picked; {source} may hold such values: use another checkpoint or check the weights."
    )
