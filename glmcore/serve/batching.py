"""Continuous batching over one base model: many requests, each with its own prefix, decoded in one step.

The decoder holds `slots` rows over a paged KV cache: one pool of blocks of `BLOCK` columns, each row holding
the blocks its block table names, up to `capacity` columns. A P-tuning v2 prefix is nothing but keys and values in
front of the prompt, so each row's prefix is written into the row's first columns; the model itself runs without
a prefix encoder, and rows with different prefixes (or none) share every decoding step. A row's columns are
`[prefix | prompt | generated]`; its mask shows those, its positions are its own. A prefix's whole blocks are
written once and named by the tables of every row of its checkpoint decoding now (its last partial block is each
row's own).

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

Memory: the pool is allocated when the engine starts, from a budget (`plan_memory`: the GPU's free memory after
loading, the KV cache's bytes per token from the model's shape), so serving allocates nothing per request beyond
a pass's activations and the keys and values it gathers through the tables. A row takes blocks as its prefix,
prompt and answer are written and gives them back when it ends; a request reserves the blocks its prefix, prompt
and `max_new_tokens` can take before it takes a row, so a row never runs out of blocks while it decodes. A
request that does not fit a row (or the pool) is refused, one that finds no free row or too few unreserved blocks
waits, first come first served, and one that finds the waiting queue full is refused with a retry time (HTTP 429).
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
    blocks: int = 0
    """The KV blocks this request reserves when it takes a row: its prefix, prompt and answer budget, less the
    prefix's shared blocks (set when it is submitted)."""
    shared_blocks: int = 0
    """The whole blocks of its prefix, which every row of its prefix checkpoint shares: reserved once, by the row
    that writes them."""
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


class _PagedCache:
    """The cache as the model sees it, read and written through block tables. `update` writes the new keys and
    values at their slots of the pool (`written` [rows, tokens]: each fed token's place in a layer's pool seen
    as one column of `blocks × BLOCK`), then gathers each row's blocks (`table` [rows, blocks]) into the keys and
    values [rows, heads, blocks × BLOCK, channels] attention reads: fixed shapes for fixed table shapes, so a
    step over them is captured as a CUDA graph like the static cache's."""

    def __init__(
        self, keys: list[torch.Tensor], values: list[torch.Tensor], table: torch.Tensor, written: torch.Tensor
    ) -> None:
        self.keys, self.values, self.table, self.written = keys, values, table, written

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_, **__
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(transformers' own attention classes pass their keyword arguments too: nothing here needs them)"""
        slots = self.written.flatten()
        gathered = []
        for pool, new in ((self.keys[layer_idx], key), (self.values[layer_idx], value)):
            pool.flatten(0, 1).index_copy_(0, slots, new.transpose(1, 2).flatten(0, 1))
            gathered.append(pool[self.table].flatten(1, 2).transpose(1, 2))
        return gathered[0], gathered[1]

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


@dataclass(eq=False)
class _PrefixBlocks:
    """A prefix checkpoint's whole blocks of keys and values, written once and named by the tables of the rows of
    that checkpoint decoding now (`rows`); back in the pool when the last of them ends. `layers` is the encoding
    they hold, whose remaining columns each row writes into its own blocks."""

    checkpoint: Path
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    blocks: list[int]
    rows: set[int] = field(default_factory=set)


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


@dataclass(frozen=True)
class MemoryPlan:
    """The rows a step decodes at most and the KV blocks they share."""

    rows: int
    blocks: int


CPU_POOL_ROWS = 16
"""On the CPU (tests, a try-out) the pool holds this many worst-case rows at most, whatever the rows."""
WORKSPACE_SHARE = 0.25
"""The share of the budget the gathered keys and values of the widest step may take (one layer's, every row at
`capacity` columns): more rows than fit it are not planned."""


def plan_memory(
    model,
    dtype: torch.dtype,
    capacity: int,
    max_rows: int,
    *,
    shared_tokens: int = 0,
    reserved_bytes: int = 0,
    reserve: float = 0.1,
) -> MemoryPlan:
    """The rows and the pool of blocks that fit. On a GPU the budget is its free memory now (after loading) less a
    `reserve` share for prefills, prefixes and graphs, the pool of `shared_tokens` shared prompt tokens and
    `reserved_bytes` (the LoRA adapters' budget). A step gathers one layer's keys and values of its rows at a
    time, up to `capacity` columns each: `max_rows` rows, fewer where that workspace would pass WORKSPACE_SHARE
    of the budget; the rest is blocks, at least one row's worth, at most every row's. On the CPU, `max_rows`
    rows and the blocks of CPU_POOL_ROWS worst-case rows at most."""
    row_blocks = blocks_for(capacity)
    device = next(model.parameters()).device
    if device.type != "cuda":
        return MemoryPlan(max_rows, min(max_rows, CPU_POOL_ROWS) * row_blocks)
    free, _ = torch.cuda.mem_get_info(device)
    per_token = kv_bytes_per_token(model, dtype)
    budget = free * (1 - reserve) - per_token * shared_tokens - reserved_bytes
    workspace_per_row = row_blocks * BLOCK * per_token // model.config.num_layers
    rows = max(1, min(max_rows, int(budget * WORKSPACE_SHARE // workspace_per_row)))
    blocks = min(rows * row_blocks, int((budget - rows * workspace_per_row) // (per_token * BLOCK)))
    if blocks < row_blocks:
        row_bytes = per_token * row_blocks * BLOCK + workspace_per_row
        raise GlmError(
            f"The GPU has {free / GIB:.1f} GiB free, less than one request of {capacity} tokens needs "
            f"({row_bytes / GIB:.2f} GiB): serve with a smaller --context or a lower --quantization-bit."
        )
    return MemoryPlan(rows, blocks)


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


OUT_OF_BLOCKS = "The server has no key-value block left for this request; send it again shortly."
"""Never said while the reservations hold (a row grows only into blocks its request reserved)."""
ZERO_BLOCK, TRASH_BLOCK = 0, 1
"""Two blocks beside the pool's: a table's unused entries point at ZERO_BLOCK, which is never written (so a hidden
column is never a NaN left by someone else: NaN times a zero attention weight is NaN); the tokens that belong to no
row (padding, rows not decoding in a step) are written to TRASH_BLOCK, which no table names."""
SPARE_BLOCKS = 2


def blocks_for(tokens: int) -> int:
    """The blocks that hold `tokens` columns."""
    return -(-tokens // BLOCK)


class PagedDecoder:
    """`slots` rows over `model` (loaded without a prefix) sharing one pool of `blocks` KV blocks of `BLOCK`
    columns: a row's columns are `[prefix | prompt | answer]`, held in the blocks its table names, taken from the
    pool as they are written (`grow`) and given back when the row ends (`release`); a row holds `capacity` columns
    at most. The engine reserves a request's blocks before it takes a row, so `grow` always finds them."""

    def __init__(
        self,
        model,
        slots: int,
        capacity: int,
        blocks: int,
        *,
        use_graph: bool | None = None,
        adapter_memory: int = 0,
    ) -> None:
        self.model = model
        self.row_decoder = _row_decoder(model)
        self.device = self.row_decoder.device
        self.dtype = self.row_decoder.dtype
        self.slots, self.capacity, self.blocks = slots, capacity, blocks
        self.row_blocks = blocks_for(capacity)
        heads, channels = self.row_decoder.cache_heads_and_channels()
        shape = (SPARE_BLOCKS + blocks, BLOCK, heads, channels)
        layers = model.config.num_layers
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(layers)]
        self.tables: list[list[int]] = [[] for _ in range(slots)]
        """Each row's blocks, in column order (on the CPU); `table` is their copy on the device."""
        self.table = torch.full((slots, self.row_blocks), ZERO_BLOCK, dtype=torch.long, device=self.device)
        self._free = list(range(SPARE_BLOCKS + blocks - 1, SPARE_BLOCKS - 1, -1))
        self._holders: dict[int, int] = {}
        """Every block out of the pool: how many name it (rows' tables, a prefix's shared blocks, the shared
        prompt beginnings); it goes back when none does."""
        self.shared_blocks = 0
        """Blocks held for prefixes (`take_shared`), apart from any one row."""
        self.most_blocks_used = 0
        """The most blocks out of the pool at once since the engine started."""
        self.hidden = torch.finfo(self.dtype).min
        self.tokens = torch.zeros(slots, 1, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(
            slots, *self.row_decoder.position_shape, dtype=torch.long, device=self.device
        )
        self.written = torch.zeros(slots, 1, dtype=torch.long, device=self.device)
        """Where each row's fed token goes in the pool (TRASH_BLOCK's first slot for a row not decoding)."""
        self.lengths = torch.zeros(slots, dtype=torch.long, device=self.device)
        """Each row's columns its next step sees (its fed token's included)."""
        self.column_numbers = torch.arange(self.row_blocks * BLOCK, device=self.device)
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self.graphs: dict[tuple[int, int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        """Captured steps by (width, table blocks, whether the rows' LoRA updates run)."""
        self._graph_pool = None
        self.adapters = AdapterBank(model, slots, adapter_memory)
        self._adapter_version = self.adapters.version

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def take_block(self) -> int:
        """A block out of the pool, named once (by whoever took it)."""
        if not self._free:
            raise GlmError(OUT_OF_BLOCKS)
        block = self._free.pop()
        self._holders[block] = 1
        self.most_blocks_used = max(self.most_blocks_used, self.blocks - len(self._free))
        return block

    def hold(self, block: int) -> None:
        """One more names `block`."""
        self._holders[block] += 1

    def let_go(self, block: int) -> None:
        """One fewer names `block`: back in the pool when none does."""
        self._holders[block] -= 1
        if not self._holders[block]:
            del self._holders[block]
            self._free.append(block)

    def take_shared(self, prefix: list[tuple[torch.Tensor, torch.Tensor]], count: int) -> list[int]:
        """`count` blocks holding the first `count × BLOCK` columns of `prefix` (per layer keys and values [heads,
        P, channels]), apart from any row: `write_prefix` names them at the start of a row's table."""
        blocks = [self.take_block() for _ in range(count)]
        self.shared_blocks += count
        if blocks:
            places = (torch.tensor(blocks)[:, None] * BLOCK + torch.arange(BLOCK)).flatten().to(self.device)
            for layer, (key, value) in enumerate(prefix):
                self.keys[layer].flatten(0, 1)[places] = key[:, : count * BLOCK].transpose(0, 1)
                self.values[layer].flatten(0, 1)[places] = value[:, : count * BLOCK].transpose(0, 1)
        return blocks

    def give_back_shared(self, blocks: list[int]) -> None:
        """A prefix's shared blocks, no longer held for it (back in the pool once no row names them either)."""
        self.shared_blocks -= len(blocks)
        for block in blocks:
            self.let_go(block)

    def append_shared(self, row: int, blocks: list[int]) -> None:
        """Name held `blocks` next in `row`'s table (whole blocks of its prompt that others hold already)."""
        held = len(self.tables[row])
        for block in blocks:
            self.hold(block)
        self.tables[row].extend(blocks)
        self.table[row, held : held + len(blocks)] = torch.tensor(blocks, device=self.device)

    def prompt_layout(self, prompt: list[int], prefix_length: int = 0) -> PromptLayout:
        """The family's layout of `prompt` in a row whose prefix has `prefix_length` columns."""
        layout = _prompt_layout(self.row_decoder, prompt)
        if self.row_decoder.positions_after_prefix and prefix_length:
            return replace(layout, positions=layout.positions + prefix_length)
        return layout

    def grow(self, row: int, columns: int) -> None:
        """Give `row` the blocks its first `columns` columns need that it does not hold yet."""
        held = len(self.tables[row])
        wanted = blocks_for(columns)
        if wanted <= held:
            return
        if wanted - held > len(self._free):
            raise GlmError(OUT_OF_BLOCKS)
        new = [self.take_block() for _ in range(wanted - held)]
        self.tables[row].extend(new)
        self.table[row, held:wanted] = torch.tensor(new, device=self.device)

    def column_slots(self, row: int, start: int, end: int) -> torch.Tensor:
        """The places in a layer's flattened pool ([blocks × BLOCK, heads, channels]) of `row`'s columns from
        `start` to `end` (on the CPU); the row grows to hold them."""
        self.grow(row, end)
        columns = torch.arange(start, end)
        return torch.tensor(self.tables[row], dtype=torch.long)[columns // BLOCK] * BLOCK + columns % BLOCK

    def flat_layers(self) -> list[torch.Tensor]:
        """Every layer's keys, then every layer's values, each pool flattened to [blocks × BLOCK, heads, channels]."""
        return [pool.flatten(0, 1) for pool in (*self.keys, *self.values)]

    def write_prefix(
        self, row: int, prefix: list[tuple[torch.Tensor, torch.Tensor]], shared: list[int] | None = None
    ) -> None:
        """Give a free `row` a prefix (per layer keys and values [heads, P, channels]) in its first columns: its
        table starts with the `shared` blocks (`take_shared`'s, holding the prefix's first columns already), the
        rest is written into the row's own blocks."""
        shared = shared or []
        if shared:
            self.append_shared(row, shared)
        start, length = len(shared) * BLOCK, prefix[0][0].shape[1]
        if length > start:
            slots = self.column_slots(row, start, length).to(self.device)
            for layer, (key, value) in enumerate(prefix):
                self.keys[layer].flatten(0, 1)[slots] = key[:, start:].transpose(0, 1)
                self.values[layer].flatten(0, 1)[slots] = value[:, start:].transpose(0, 1)

    def _table_of(self, rows: list[int], blocks: int) -> torch.Tensor:
        """`rows`' first `blocks` table entries, ZERO_BLOCK past their own (on the CPU)."""
        return torch.tensor([(self.tables[row] + [ZERO_BLOCK] * blocks)[:blocks] for row in rows], dtype=torch.long)

    @torch.no_grad()
    def prefill(self, chunks: list[Chunk]) -> torch.Tensor:
        """Run every chunk in one pass; the logits of each chunk's last token, in order.

        Chunks are right-aligned in a batch padded on the left, so each one's last token is the pass's last
        position. Each row grows to hold its chunk; the pass reads its rows' blocks through their tables, and
        the padding writes to TRASH_BLOCK and sees its row's first column."""
        count, longest = len(chunks), max(len(chunk.tokens) for chunk in chunks)
        ends = [chunk.start + len(chunk.tokens) for chunk in chunks]
        blocks = blocks_for(max(ends))
        input_ids = torch.zeros(count, longest, dtype=torch.long)
        positions = torch.zeros(count, *chunks[0].positions.shape[:-1], longest, dtype=torch.long)
        written = torch.full((count, longest), TRASH_BLOCK * BLOCK, dtype=torch.long)
        visible = torch.zeros(count, 1, longest, blocks * BLOCK, dtype=torch.bool)
        for index, (chunk, end) in enumerate(zip(chunks, ends, strict=True)):
            padding = longest - len(chunk.tokens)
            input_ids[index, padding:] = torch.tensor(chunk.tokens)
            positions[index, ..., padding:] = chunk.positions
            written[index, padding:] = self.column_slots(chunk.row, chunk.start, end)
            visible[index, 0, padding:, :end] = chunk.sees
            visible[index, 0, :padding, 0] = True  # padding sees a written key: never a NaN softmax
        rows = [chunk.row for chunk in chunks]
        self.adapters.use_rows(torch.tensor(rows, device=self.device), rows)
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~visible.to(self.device), self.hidden)
        cache = _PagedCache(
            self.keys, self.values, self._table_of(rows, blocks).to(self.device), written.to(self.device)
        )
        logits = self.model(
            input_ids=input_ids.to(self.device),
            position_ids=positions.to(self.device),
            attention_mask=mask,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        for chunk in chunks:
            if chunk.last:
                self.positions[chunk.row].copy_(chunk.positions[..., -1:])
        return logits

    def release(self, row: int, *, scrub: bool = False) -> None:
        """A free row: its blocks let go (back in the pool unless others name them), its table empty, positions
        back to 0. `scrub` zeroes the blocks only it names first, after a failure: a NaN left in a hidden column
        still spoils the next owner's attention (NaN times a zero weight is NaN)."""
        self.adapters.clear(row)
        own = [block for block in self.tables[row] if self._holders[block] == 1]
        if scrub and own:
            held = torch.tensor(own, device=self.device)
            for pool in (*self.keys, *self.values):
                pool[held] = 0
        for block in reversed(self.tables[row]):
            self.let_go(block)
        self.tables[row] = []
        self.table[row].fill_(ZERO_BLOCK)
        self.positions[row].zero_()

    @torch.no_grad()
    def step(self, width: int, tokens: dict[int, int], columns: dict[int, int]) -> torch.Tensor:
        """Feed `tokens[row]` at `columns[row]` for the rows decoding (all below `width`); the next logits of the
        first `width` rows. The others (free, or with a prompt half written) are fed to TRASH_BLOCK and ignored.
        The step reads as many table blocks as its longest row holds, rounded up to a power of two: one CUDA
        graph per (width, blocks) seen."""
        fed = []
        for row in range(width):
            if row in tokens:
                column = columns[row]
                self.grow(row, column + 1)
                place = self.tables[row][column // BLOCK] * BLOCK + column % BLOCK
                fed.append((tokens[row], place, column + 1))
            else:
                fed.append((0, TRASH_BLOCK * BLOCK, 1))
        fed = torch.tensor(fed, dtype=torch.long)  # one copy to the device, not three per row
        needed = blocks_for(int(fed[:, 2].max()))
        blocks = min(1 << (needed - 1).bit_length(), self.row_blocks)
        fed = fed.to(self.device, non_blocking=True)
        self.tokens[:width, 0].copy_(fed[:, 0])
        self.written[:width, 0].copy_(fed[:, 1])
        self.lengths[:width].copy_(fed[:, 2])
        self.row_decoder.positions = self.positions[:width]
        self.row_decoder.advance_positions()
        key = (width, blocks, self.adapters.use_width(width))
        if not self.use_graph:
            return self._step_eagerly(width, blocks)
        if self.adapters.version != self._adapter_version:  # new stacks: the graphs with updates read the old
            self.graphs = {captured: graph for captured, graph in self.graphs.items() if not captured[2]}
            self._adapter_version = self.adapters.version
        if key not in self.graphs and not self._capture(key):
            return self._step_eagerly(width, blocks)
        graph, logits = self.graphs[key]
        graph.replay()
        return logits

    def _step_eagerly(self, width: int, blocks: int) -> torch.Tensor:
        seen = self.column_numbers[: blocks * BLOCK] < self.lengths[:width, None]
        mask = torch.full((width, 1, 1, blocks * BLOCK), self.hidden, dtype=self.dtype, device=self.device)
        mask.masked_fill_(seen[:, None, None, :], 0.0)
        cache = _PagedCache(self.keys, self.values, self.table[:width, :blocks], self.written[:width])
        return self.model(
            input_ids=self.tokens[:width],
            position_ids=self.positions[:width],
            attention_mask=mask,
            cache=cache,
            use_cache=True,
        ).logits[:, -1]

    def _capture(self, key: tuple[int, int, bool]) -> bool:
        """Capture the step of `width` rows over `blocks` table blocks, with or without their LoRA updates (as
        StaticDecoder does); False, and eager steps, where it fails. The graphs share one memory pool: they
        replay one at a time, so the widest step's gathered keys and values are all they need."""
        width, blocks, _ = key
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: the same writes as the step itself, to the same slots
                self._step_eagerly(width, blocks)
        torch.cuda.current_stream().wait_stream(side)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._graph_pool):
                logits = self._step_eagerly(width, blocks)
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
    """The scheduler thread over a `PagedDecoder`: submit requests from any thread, tokens come back through each
    request's `deliver`. Prefix checkpoints become per-layer keys and values, made apart from the model
    (`glmcore.prefix.encode_prefix`; cached, `max_prefixes` of them); LoRA checkpoints are held by the decoder's
    `AdapterBank` (`adapter_memory` bytes). `blocks` KV blocks are shared by the `slots` rows (by default as many
    as `slots` rows of `capacity` columns take: the static plan's memory)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        slots: int,
        capacity: int,
        blocks: int | None = None,
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
        self.blocks = slots * blocks_for(capacity) if blocks is None else blocks
        """The blocks requests may reserve; the pool holds the shared prompt beginnings' quota besides."""
        quota = shared_tokens // BLOCK
        self.decoder = PagedDecoder(
            model, slots, capacity, self.blocks + quota, use_graph=use_graph, adapter_memory=adapter_memory
        )
        self.shared = SharedPrompts(self.decoder, shared_tokens) if quota else None
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
        self._reserved: dict[int, int] = {}
        """The blocks each row's request may take (its prefix, prompt and answer budget), reserved before it takes
        the row: the rows' reservations and the shared blocks never pass the pool, so a row always finds the
        blocks it grows into."""
        self._shared_reserved: dict[int, int] = {}
        """Of a row's reservation, the shared prefix blocks it is to write (the first of its checkpoint): they
        leave its reservation once they are held."""
        self._prefix_blocks: dict[Path, _PrefixBlocks] = {}
        """Each prefix checkpoint's shared blocks, while rows of it decode."""
        self._row_prefix: dict[int, _PrefixBlocks] = {}
        """The shared prefix blocks each row names."""
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
        """Rows in use, requests waiting, rows in all, and the KV blocks reserved and in all."""
        with self._wake:
            active = len(self._rows) + len(self._prefilling)
            return {
                "active": active,
                "waiting": len(self._waiting),
                "slots": self.slots,
                "reserved_blocks": sum(self._reserved.values()),
                "shared_blocks": self.decoder.shared_blocks,
                "blocks": self.blocks,
            }

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
        """Queue `request`; refused at once if it cannot fit a row (or the whole pool) or the waiting queue is
        full."""
        if request.adapter is not None:
            self.adapters.check(request.adapter)
        prefix = self.prefix_length(request.prefix)
        budget = min(self.capacity, self.blocks * BLOCK) - prefix
        request.shared_blocks = prefix // BLOCK
        request.blocks = blocks_for(prefix + len(request.prompt_ids) + request.max_new_tokens) - request.shared_blocks
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
            if self._would_wait(request) > self.max_waiting:
                raise QueueFull(
                    f"Every row or the key-value memory is taken and {len(self._waiting)} requests wait; "
                    "try again shortly.",
                    retry_after=max(1, len(self._waiting) // max(self.slots, 1)),
                )
            self._waiting.append(request)
            self._wake.notify()

    def _would_wait(self, request: Request) -> int:
        """How many requests would wait, `request` last, once the next admission gives the waiting ones the free
        rows and unreserved blocks it can (first come, first served: after one waits, all after it wait)."""
        rows = self.slots - len(self._rows) - len(self._prefilling)
        blocks = self._unreserved()
        waiting = 0
        for queued in (*self._waiting, request):
            if not waiting and rows and queued.blocks <= blocks:
                rows, blocks = rows - 1, blocks - queued.blocks
            else:
                waiting += 1
        return waiting

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
                admitted = self._take_waiting()
            deferred: list[Request] = []
            try:
                for row, request in admitted:
                    if not self._admit(row, request):  # its adapter waits for a slot, at the queue's front
                        with self._wake:
                            self._waiting.insert(len(deferred), request)
                        deferred.append(request)
                    if row not in self._prefilling:  # waits again, or was answered without taking the row
                        self._let_go(row)
                self._drop_cancelled()
                if self._prefilling:
                    self._prefill_pass()
                if self._rows:
                    self._step()
            except Exception:  # a bug must not leave a client waiting forever: fail those in flight
                log.exception("the serving engine failed a step")
                taken = [request for _, request in admitted if request not in deferred]
                self._fail_in_flight(GlmError(FAILED_STEP), taken)
                for row, _ in admitted:
                    self._let_go(row)
        with self._wake:
            waiting = list(self._waiting)
            self._waiting.clear()
        self._fail_in_flight(EngineStopped(STOPPED), waiting)

    def _unreserved(self) -> int:
        """Blocks neither reserved by a row nor shared (under `_wake`)."""
        return self.blocks - sum(self._reserved.values()) - self.decoder.shared_blocks

    def _take_waiting(self) -> list[tuple[int, Request]]:
        """The waiting requests that take a free row now, first come first served, each reserving its blocks (and
        its prefix's shared blocks where no row of its checkpoint holds them yet); the first that does not fit
        waits, and those behind it (under `_wake`)."""
        admitted: list[tuple[int, Request]] = []
        free = [row for row in range(self.slots) if row not in self._rows and row not in self._prefilling]
        unreserved = self._unreserved()
        writers: set[Path] = set()
        while self._waiting and free:
            request = self._waiting[0]
            shared = self._prefix_blocks.get(request.prefix) if request.shared_blocks else None
            writes = request.shared_blocks if shared is None and request.prefix not in writers else 0
            if request.blocks + writes > unreserved:
                break
            row = free.pop(0)
            self._waiting.popleft()
            if shared is not None:  # named now, so it stays while this row is admitted
                shared.rows.add(row)
                self._row_prefix[row] = shared
            if writes:
                writers.add(request.prefix)
                self._shared_reserved[row] = writes
            self._reserved[row] = request.blocks + writes
            unreserved -= request.blocks + writes
            admitted.append((row, request))
        return admitted

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
            start = self._write_prefix(row, request.prefix) if request.prefix else 0
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

    def _write_prefix(self, row: int, checkpoint: Path) -> int:
        """Give `row` its prefix: the checkpoint's shared blocks (written now by the first row of it, or again where
        its keys and values were made again since) and its remaining columns in the row's own; its length."""
        shared = self._row_prefix.get(row)
        if shared is None:
            layers = self._prefix(checkpoint)
            shared = self._prefix_blocks.get(checkpoint)
            if shared is None or shared.layers is not layers:
                count = layers[0][0].shape[1] // BLOCK
                with self._wake:
                    writes = self._shared_reserved.pop(row, 0)
                    if count > self._unreserved() + writes:
                        raise GlmError("The server's key-value memory is taken; send this request again shortly.")
                    self._reserved[row] -= writes
                shared = _PrefixBlocks(checkpoint, layers, self.decoder.take_shared(layers, count))
                self._prefix_blocks[checkpoint] = shared
            shared.rows.add(row)
            self._row_prefix[row] = shared
        self.decoder.write_prefix(row, shared.layers, shared.blocks)
        return shared.layers[0][0].shape[1]

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

    def _let_go(self, row: int, *, scrub: bool = False) -> None:
        """Free `row`: its reservation and its own blocks, and its prefix's shared blocks once no row names them."""
        self.decoder.release(row, scrub=scrub)
        shared = self._row_prefix.pop(row, None)
        with self._wake:
            self._reserved.pop(row, None)
            self._shared_reserved.pop(row, None)
            if shared is not None:
                shared.rows.discard(row)
                if not shared.rows:
                    self.decoder.give_back_shared(shared.blocks)
                    if self._prefix_blocks.get(shared.checkpoint) is shared:
                        del self._prefix_blocks[shared.checkpoint]

    def _release(self, row: int, reason: str) -> None:
        request = self._take_row(row)
        self._let_go(row)
        self._finish(request, reason)

    def _end_row(self, row: int, error: GlmError) -> None:
        """Fail the request of `row` and free the row, scrubbed of whatever the failure left in it."""
        request = self._take_row(row)
        self._let_go(row, scrub=True)
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
