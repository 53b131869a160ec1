"""Continuous batching over one base model: many requests, each with its own prefix, decoded in one step.

The decoder holds `slots` rows of a static KV cache of `capacity` columns. A P-tuning v2 prefix is nothing but
keys and values in front of the prompt, so each row's prefix is written into the row's first columns; the model
itself runs without a prefix encoder, and rows with different prefixes (or none) share every decoding step.
A row's columns are `[prefix | prompt | generated]`; its mask shows those, its positions are its own.

The scheduler is one thread that owns the model. Between two steps it drops the rows of cancelled requests and
prefills waiting ones into free rows (continuous batching: a new request never waits for a batch to end).
A failure that belongs to one request (its prefill, its sampling, next-token scores that are not numbers) fails
that request alone; every request taken from the waiting queue is answered: admitted, or failed with a reason.
A step runs only the rows up to the highest one in use, rounded up to a power of two; on a GPU each such width
is captured once as a CUDA graph and replayed. Tokens go to each request's `deliver` callback, which must not
block (the HTTP side hands them to its event loop), so a slow client never slows the others.

Memory: every row and column is allocated when the engine starts, from a budget (`plan_slots`: the GPU's free
memory after loading, the KV cache's bytes per token from the model's shape), so serving allocates nothing per
request beyond a prefill's activations: a request that does not fit a row is refused, one that finds no free
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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from glmcore.errors import GlmError
from glmcore.generation import Sampling, pick_tokens

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
    id: int = field(default_factory=itertools.count(1).__next__)
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    generated: int = 0
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

    def cancel(self) -> None:
        """Stop generating for this request at the next step boundary (a client went away, a stop string)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class _RowCache:
    """The cache as the model sees it: `update` writes the new keys and values at each row's own column(s)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], columns: torch.Tensor) -> None:
        self.keys, self.values, self.columns = keys, values, columns

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.columns.dim() == 1:  # a prefill of one row: its prompt's columns
            self.keys[layer_idx].index_copy_(2, self.columns, key)
            self.values[layer_idx].index_copy_(2, self.columns, value)
        else:  # a step: one column per row, [rows, 1, 1, 1]
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


def kv_bytes_per_token(model, dtype: torch.dtype) -> int:
    """The KV cache's bytes for one token of one row: every layer's keys and values (the estimate's model)."""
    heads, channels = _row_decoder(model).cache_heads_and_channels()
    return model.config.num_layers * 2 * heads * channels * torch.empty((), dtype=dtype).element_size()


def _row_decoder(model):
    """A one-row, one-column decoder of the model's family: its prompt positions, prompt mask and position
    advance are the family's own (`glmcore.generation.StaticDecoder`), used here row by row."""
    from glmcore.generation import new_decoder

    return new_decoder(model, 1, 1, use_graph=False)


def plan_slots(model, dtype: torch.dtype, capacity: int, max_slots: int, *, reserve: float = 0.1) -> int:
    """How many rows of `capacity` columns fit: on a GPU, its free memory now (after loading) less a `reserve`
    share for prefills, prefixes and graphs; on the CPU, `max_slots`."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return max_slots
    free, _ = torch.cuda.mem_get_info(device)
    per_row = kv_bytes_per_token(model, dtype) * capacity
    fits = int(free * (1 - reserve) // per_row)
    if fits < 1:
        raise GlmError(
            f"The GPU has {free / 2**30:.1f} GiB free, less than one row of {capacity} tokens needs "
            f"({per_row / 2**30:.2f} GiB): serve with a smaller --context or a lower --quantization-bit."
        )
    return min(max_slots, fits)


class SlotDecoder:
    """`slots` rows of `capacity` columns over `model` (which has no prefix encoder while serving)."""

    def __init__(self, model, slots: int, capacity: int, *, use_graph: bool | None = None) -> None:
        self.model = model
        self.row_decoder = _row_decoder(model)
        if self.row_decoder.prefix_length:
            raise GlmError(
                "The served model must be loaded without a prefix; prefixes are given per request."
            )
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
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @torch.no_grad()
    def prefill(
        self, row: int, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None, prompt: list[int]
    ) -> torch.Tensor:
        """Write `prefix` (per layer keys and values [heads, P, channels]) and run `prompt` into `row`; the logits
        of the prompt's last position. The row's next column is then P + len(prompt)."""
        length = len(prompt)
        start = prefix[0][0].shape[1] if prefix else 0
        input_ids = torch.tensor([prompt], device=self.device)
        positions, allowed = self.row_decoder.prompt_positions_and_mask(input_ids, torch.ones_like(input_ids))
        keys = [layer[row : row + 1] for layer in self.keys]
        values = [layer[row : row + 1] for layer in self.values]
        if prefix:
            for layer, (key, value) in enumerate(prefix):
                keys[layer][0, :, :start] = key
                values[layer][0, :, :start] = value
        prompt_mask = torch.full(
            (1, 1, length, self.capacity), self.hidden, dtype=self.dtype, device=self.device
        )
        prompt_mask[..., :start] = 0.0  # a prefix is seen by every position
        prompt_mask[..., start : start + length].masked_fill_(allowed, 0.0)
        columns = torch.arange(start, start + length, device=self.device)
        logits = self.model(
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=prompt_mask,
            cache=_RowCache(keys, values, columns),
            use_cache=True,
            logits_to_keep=1,
        ).logits[0, -1]
        self.mask[row].fill_(self.hidden)
        self.mask[row, 0, 0, : start + length] = 0.0
        self.positions[row].copy_(positions[0, ..., -1:])
        return logits

    def release(self, row: int, *, scrub: bool = False) -> None:
        """A free row: nothing visible but its first column, positions and column back to 0. `scrub` zeroes its
        keys and values too, after a failure: a NaN left in a hidden column still spoils the next request's
        attention (NaN times a zero weight is NaN)."""
        if scrub:
            for layer in (*self.keys, *self.values):
                layer[row].zero_()
        self.mask[row].fill_(self.hidden)
        self.mask[row, 0, 0, 0] = 0.0
        self.positions[row].zero_()
        self.columns[row].zero_()

    @torch.no_grad()
    def step(self, width: int, tokens: dict[int, int], columns: dict[int, int]) -> torch.Tensor:
        """Feed `tokens[row]` at `columns[row]` for the rows in use (all below `width`); the next logits of the
        first `width` rows. Rows not in use compute on their first column and are ignored."""
        fed = [(tokens.get(row, 0), columns.get(row, 0)) for row in range(width)]
        fed = torch.tensor(fed, dtype=torch.long)  # one copy to the device, not two per row
        self.tokens[:width, 0].copy_(fed[:, 0], non_blocking=True)
        self.columns[:width, 0, 0, 0].copy_(fed[:, 1], non_blocking=True)
        self.row_decoder.positions = self.positions[:width]
        self.row_decoder.advance_positions()
        self.mask[:width].scatter_(3, self.columns[:width], 0.0)
        if not self.use_graph:
            return self._step_eagerly(width)
        if width not in self.graphs and not self._capture(width):
            return self._step_eagerly(width)
        graph, logits = self.graphs[width]
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

    def _capture(self, width: int) -> bool:
        """Capture the step of `width` rows (as StaticDecoder does); False, and eager steps, where it fails."""
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
        self.graphs[width] = (graph, logits)
        return True


class Engine:
    """The scheduler thread over a `SlotDecoder`: submit requests from any thread, tokens come back through each
    request's `deliver`. `prefix_keys_values(checkpoint)` turns a prefix checkpoint into per-layer keys and
    values (cached, `max_prefixes` of them)."""

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
    ) -> None:
        from glmcore.models import family_of

        self.model = model
        self.tokenizer = tokenizer
        self.family = family_of(model).implementation()
        self.stop_ids = set(self.family.stop_token_ids(tokenizer)) if stop_ids is None else stop_ids
        """The family's stop tokens; the bench gives none, so every answer is as long as it asked."""
        self.decoder = SlotDecoder(model, slots, capacity, use_graph=use_graph)
        self.max_waiting = max_waiting
        self.max_prefixes = max_prefixes
        self.on_finished = on_finished
        self._prefixes: collections.OrderedDict[Path, list[tuple[torch.Tensor, torch.Tensor]]] = (
            collections.OrderedDict()
        )
        self._weights: dict[Path, tuple] = {}
        self._waiting: collections.deque[Request] = collections.deque()
        self._rows: dict[int, _Row] = {}
        self._wake = threading.Condition()
        self._stopping = False
        self.steps = 0
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
            return {"active": len(self._rows), "waiting": len(self._waiting), "slots": self.slots}

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
            free = self.slots - len(self._rows)
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
        """The prefix's keys and values per layer [heads, P, channels], made by the model's own prefix encoder
        (installed for that moment only: this runs on the engine thread, the one that runs the model)."""
        from glmcore.prefix import set_prefix

        if checkpoint in self._prefixes:
            self._prefixes.move_to_end(checkpoint)
            return self._prefixes[checkpoint]
        spec, state = self._prefix_weights(checkpoint)
        with torch.no_grad():
            set_prefix(self.model, spec, state)
            try:
                pairs = self.model.transformer.prefix_keys_values(1, self.decoder.dtype)
                layers = [(key[0].clone(), value[0].clone()) for key, value in pairs]
            finally:
                set_prefix(self.model, None)
        self._prefixes[checkpoint] = layers
        while len(self._prefixes) > self.max_prefixes:
            self._prefixes.popitem(last=False)
        return layers

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._rows:
                    self._wake.wait()
                if self._stopping:
                    break
                admitted = []
                free = [row for row in range(self.slots) if row not in self._rows]
                while self._waiting and free:
                    admitted.append((free.pop(0), self._waiting.popleft()))
            try:
                for row, request in admitted:
                    self._admit(row, request)
                self._drop_cancelled()
                if self._rows:
                    self._step()
            except Exception:  # a bug must not leave a client waiting forever: fail those in flight
                log.exception("the serving engine failed a step")
                self._fail_in_flight(GlmError(FAILED_STEP), [request for _, request in admitted])
        with self._wake:
            waiting = list(self._waiting)
            self._waiting.clear()
        self._fail_in_flight(EngineStopped(STOPPED), waiting)

    def _fail_in_flight(self, error: GlmError, also: list[Request]) -> None:
        """Fail every row, and each request of `also` that has no answer yet."""
        for row in list(self._rows):
            self._end_row(row, error)
        for request in also:
            if request.finish_reason is None:
                self._fail(request, error)

    def _admit(self, row: int, request: Request) -> None:
        """Prefill `request` into `row` and pick its first token; any failure fails this request alone."""
        if request.cancelled:
            self._finish(request, "cancelled")
            return
        try:
            prefix = self._prefix(request.prefix) if request.prefix else None
            logits = self.decoder.prefill(row, prefix, request.prompt_ids)
        except torch.OutOfMemoryError:
            self._fail(request, GlmError("The GPU ran out of memory for this prompt; send a shorter one."))
            self.decoder.release(row, scrub=True)
            return
        except GlmError as error:
            self._fail(request, error)
            return
        except Exception:
            log.exception("the serving engine failed to prefill request %s", request.id)
            self._fail(request, GlmError("The server failed to read this prompt; its log says why."))
            self.decoder.release(row, scrub=True)
            return
        start = prefix[0][0].shape[1] if prefix else 0
        with self._wake:
            self._rows[row] = _Row(request, start + len(request.prompt_ids), -1)
        self._emit(logits[None], [row])

    def _drop_cancelled(self) -> None:
        with self._wake:
            gone = [request for request in self._waiting if request.cancelled]
            for request in gone:
                self._waiting.remove(request)
        for request in gone:
            self._finish(request, "cancelled")
        for row, state in list(self._rows.items()):
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
            request.deliver("token", token)
            state.last_token = token
            if request.generated >= request.max_new_tokens:
                self._release(row, "length")

    def _release(self, row: int, reason: str) -> None:
        with self._wake:
            state = self._rows.pop(row)
        self.decoder.release(row)
        self._finish(state.request, reason)

    def _end_row(self, row: int, error: GlmError) -> None:
        """Fail the request of `row` and free the row, scrubbed of whatever the failure left in it."""
        with self._wake:
            state = self._rows.pop(row)
        self.decoder.release(row, scrub=True)
        self._fail(state.request, error)

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
    source = "this request's prefix checkpoint" if request.prefix else "the model's weights"
    return (
        "The model's next-token scores for this request are not finite numbers (NaN or infinite), so no token "
        f"can be picked; {source} may hold such values: use another checkpoint or check the weights."
    )
