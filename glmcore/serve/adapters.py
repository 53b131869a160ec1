"""The LoRA adapters a server holds beside its base: loaded on first use, least recently used evicted.

Each held adapter takes a slot of the stacks `glmcore.adapters.LowRankUpdates` gathers from; each row of the
cache points at its adapter's slot (or none: scale 0). The stacks are sized from the budget (`--adapter-memory`)
at the largest rank held, and counted whole against it. An adapter that some row decodes with is never evicted:
a request whose adapter finds no slot free waits for one, as it waits for a row. When a larger rank or a new
target module arrives the stacks are made again (`version` changes, so the decoder captures its graphs again);
otherwise loading an adapter only writes its slot, in place.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from glmcore.adapters import (
    AdapterError,
    AdapterShape,
    LowRankUpdates,
    model_compute_dtype,
    read_adapter_shape,
    read_adapter_weights,
)

MIB = 2**20


@dataclass
class _Held:
    slot: int
    shape: AdapterShape
    users: int = 0
    """Rows decoding with it now."""


class AdapterBank:
    """Adapters held on the model's device for per-row LoRA updates, under `budget` bytes."""

    def __init__(
        self, model, rows: int, budget: int, *, on_evict: Callable[[Path], None] | None = None
    ) -> None:
        self.model = model
        self.budget = budget
        self.on_evict = on_evict
        """Told each adapter that leaves (the shared prompt beginnings made over it go with it)."""
        self.dtype = model_compute_dtype(model)
        self.device = next(model.parameters()).device
        self.element_size = torch.empty((), dtype=self.dtype).element_size()
        self.updates = LowRankUpdates(model)
        self.rank = 0
        self.modules: dict[str, tuple[int, int]] = {}
        self.capacity = 0
        self.version = 0
        """Changes whenever the stacks are made again: graphs captured over the old ones are stale."""
        self.row_slots = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.row_scales = torch.zeros(rows, dtype=self.dtype, device=self.device)
        self._held: collections.OrderedDict[Path, _Held] = collections.OrderedDict()
        self._row_owner: dict[int, Path] = {}
        self._shapes: dict[Path, AdapterShape] = {}
        self._lock = threading.Lock()
        self.loads = 0
        """Adapters read from disk so far (a held one is not read again)."""

    @property
    def held(self) -> list[Path]:
        """The adapters held, least recently used first."""
        return list(self._held)

    def check(self, checkpoint: Path) -> AdapterShape:
        """The adapter's shape, checked against the base and the budget (any thread); AdapterError if refused."""
        with self._lock:
            if checkpoint in self._shapes:
                return self._shapes[checkpoint]
        shape = read_adapter_shape(checkpoint, self.model)
        needs = shape.bytes_at(shape.rank, self.element_size)
        if needs > self.budget:
            raise AdapterError(
                f"The adapter {checkpoint.parent.parent.name}/{checkpoint.name} needs {needs / MIB:.1f} MiB and "
                f"this server holds adapters in {self.budget / MIB:.1f} MiB: restart it with a larger "
                "--adapter-memory."
            )
        with self._lock:
            self._shapes[checkpoint] = shape
            while len(self._shapes) > 64:
                self._shapes.pop(next(iter(self._shapes)))
        return shape

    def assign(self, row: int, checkpoint: Path) -> bool:
        """Point `row` at `checkpoint`'s adapter, loading it if needed (engine thread); False when every slot is
        taken by adapters rows decode with: the request waits."""
        held = self._hold(checkpoint)
        if held is None:
            return False
        held.users += 1
        self._row_owner[row] = checkpoint
        self.row_slots[row] = held.slot
        self.row_scales[row] = held.shape.scale
        return True

    def clear(self, row: int) -> None:
        """`row` no longer uses an adapter."""
        owner = self._row_owner.pop(row, None)
        if owner is not None:
            self._held[owner].users -= 1
            self.row_scales[row] = 0.0

    def use_rows(self, rows: torch.Tensor, row_list: list[int]) -> None:
        """The next forward pass runs `rows` (a prefill pass's, in order)."""
        self.updates.active = any(row in self._row_owner for row in row_list)
        self.updates.row_slots = self.row_slots.index_select(0, rows)
        self.updates.row_scales = self.row_scales.index_select(0, rows)

    def use_width(self, width: int) -> bool:
        """The next forward pass runs the first `width` rows (a decoding step, maybe captured); whether any of them
        has an adapter."""
        self.updates.active = any(row < width for row in self._row_owner)
        self.updates.row_slots = self.row_slots[:width]
        self.updates.row_scales = self.row_scales[:width]
        return self.updates.active

    def _hold(self, checkpoint: Path) -> _Held | None:
        if checkpoint in self._held:
            self._held.move_to_end(checkpoint)
            return self._held[checkpoint]
        shape = self.check(checkpoint)
        while True:
            rank, modules = self._stack_shape_with(shape)
            capacity = self.budget // self._slot_bytes(rank, modules)
            if len(self._held) < capacity:
                break
            unused = next((path for path, held in self._held.items() if not held.users), None)
            if unused is None:
                return None
            self._evict(unused)
        if (rank, modules) != (self.rank, self.modules):
            self._make_stacks(rank, modules, capacity)
        taken = {held.slot for held in self._held.values()}
        slot = next(slot for slot in range(self.capacity) if slot not in taken)
        self._write(slot, shape)
        self.loads += 1
        self._held[checkpoint] = _Held(slot, shape)
        return self._held[checkpoint]

    def _stack_shape_with(self, shape: AdapterShape) -> tuple[int, dict[str, tuple[int, int]]]:
        """The stacks' rank and modules once `shape` joins the adapters held (only its own when none are)."""
        if not self._held:
            return shape.rank, dict(shape.modules)
        return max(self.rank, shape.rank), {**self.modules, **shape.modules}

    def _slot_bytes(self, rank: int, modules: dict[str, tuple[int, int]]) -> int:
        return rank * sum(inputs + outputs for inputs, outputs in modules.values()) * self.element_size

    def _evict(self, checkpoint: Path) -> None:
        del self._held[checkpoint]
        if self.on_evict is not None:
            self.on_evict(checkpoint)

    def _make_stacks(self, rank: int, modules: dict[str, tuple[int, int]], capacity: int) -> None:
        """New stacks for `capacity` slots; the adapters held move to the first slots, their rows follow."""
        old_stacks, old_rank = self.updates.stacks, self.rank
        stacks = {
            module: (
                torch.zeros(capacity, inputs, rank, dtype=self.dtype, device=self.device),
                torch.zeros(capacity, rank, outputs, dtype=self.dtype, device=self.device),
            )
            for module, (inputs, outputs) in modules.items()
        }
        for slot, held in enumerate(self._held.values()):
            for module, (a, b) in old_stacks.items():
                stacks[module][0][slot, :, :old_rank] = a[held.slot]
                stacks[module][1][slot, :old_rank] = b[held.slot]
            held.slot = slot
        for row, owner in self._row_owner.items():
            self.row_slots[row] = self._held[owner].slot
        self.updates.stacks = stacks
        self.updates.hook(modules)
        self.rank, self.modules, self.capacity = rank, dict(modules), capacity
        self.version += 1

    def _write(self, slot: int, shape: AdapterShape) -> None:
        weights = read_adapter_weights(shape, self.dtype, self.device)
        for module, (a_stack, b_stack) in self.updates.stacks.items():
            a_stack[slot].zero_()
            b_stack[slot].zero_()
            if module in weights:
                a, b = weights[module]
                a_stack[slot, :, : shape.rank] = a
                b_stack[slot, : shape.rank] = b
