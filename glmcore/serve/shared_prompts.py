"""Keys and values of prompt beginnings that many requests share (a system prompt, a few-shot preamble), kept so
a later request with the same prefix checkpoint and the same leading tokens copies them into its row instead of
prefilling them again.

They are kept in blocks of `BLOCK` tokens (the KV cache's block), in a pool of their own allocated when the
engine starts, and copied into a row's blocks (a row's prompt starts after its prefix, so its blocks need not line
up with the pool's). A block is known by the
block before it (its serial, or the prefix checkpoint for a prompt's first block), its tokens and their positions,
so a match is exact: the same checkpoint, the same tokens at the same positions, all the way from the prompt's
start. This is only valid where a prompt's tokens see none of the tokens after them (a causal prompt, as
ChatGLM2/3 read theirs): ChatGLM-6B's context is read both ways, so the keys of its first tokens depend on the
tokens that follow, and its prompts are never shared (`PromptLayout.causal` decides, prompt by prompt).
The least recently used block makes room for a new one; a block's ancestors are always used more recently than
it is (a chain is touched from its end back), so a chain loses its end first.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

BLOCK = 16
"""Tokens per shared block: a shorter common beginning is not worth a copy."""


@dataclass(eq=False)
class _Block:
    """One held block: `key` finds it, `serial` names it as the parent of the next block, `slot` is its place in
    the pool."""

    key: tuple
    serial: int
    slot: int
    checkpoint: Path | None


class SharedPrompts:
    """A pool of `tokens // BLOCK` blocks of keys and values beside the rows of `decoder` (a `PagedDecoder`)."""

    def __init__(self, decoder, tokens: int) -> None:
        heads, channels = decoder.row_decoder.cache_heads_and_channels()
        blocks = tokens // BLOCK
        shape = (blocks * BLOCK, heads, channels)
        self.decoder = decoder
        self.layers = [
            torch.zeros(shape, dtype=decoder.dtype, device=decoder.device) for _ in decoder.flat_layers()
        ]
        """Every layer's keys, then every layer's values, as the decoder's `flat_layers`."""
        self._blocks: collections.OrderedDict[tuple, _Block] = collections.OrderedDict()
        self._free = list(range(blocks))
        self._serials = itertools.count(1)

    def reuse(
        self, checkpoint: Path | None, prompt: list[int], positions: torch.Tensor, row: int, start: int, *,
        copied: int = 0,
    ) -> int:
        """Copy the longest run of held blocks that begins `prompt` into `row` from column `start` (after its
        prefix), past the `copied` tokens already there, leaving at least the prompt's last token to prefill (its
        scores give the first answer token); the number of prompt tokens the row now holds from the pool."""
        chain = self._held_chain(checkpoint, prompt, positions, len(prompt) - 1)
        new = chain[copied // BLOCK :]
        if not new:
            return len(chain) * BLOCK
        pool = self._places(new)
        places = self.decoder.column_slots(row, start + copied, start + len(chain) * BLOCK).to(self.decoder.device)
        for row_layer, pool_layer in zip(self.decoder.flat_layers(), self.layers, strict=True):
            row_layer[places] = pool_layer[pool]
        return len(chain) * BLOCK

    def keep(
        self, checkpoint: Path | None, prompt: list[int], positions: torch.Tensor, row: int, start: int, *,
        written: int,
    ) -> None:
        """Hold the whole blocks among the first `written` tokens of `prompt`, whose keys and values are in `row`
        from column `start`, as far as the pool has room."""
        chain = self._held_chain(checkpoint, prompt, positions, written)
        first = len(chain) * BLOCK
        parent: object = chain[-1].serial if chain else _first_parent(checkpoint)
        added = []
        for begin in range(first, written - BLOCK + 1, BLOCK):
            slot = self._take_slot(protected=chain + added)
            if slot is None:
                break
            block = _Block(_key(parent, prompt, positions, begin), next(self._serials), slot, checkpoint)
            self._blocks[block.key] = block
            added.append(block)
            parent = block.serial
        if not added:
            return
        places = self.decoder.column_slots(row, start + first, start + first + len(added) * BLOCK)
        pool = self._places(added)
        for row_layer, pool_layer in zip(self.decoder.flat_layers(), self.layers, strict=True):
            pool_layer[pool] = row_layer[places.to(self.decoder.device)]
        self._touch(chain + added)

    def _places(self, blocks: list[_Block]) -> torch.Tensor:
        """The places of `blocks`' tokens in a layer of the pool, in order."""
        slots = torch.tensor([block.slot for block in blocks])
        return (slots[:, None] * BLOCK + torch.arange(BLOCK)).flatten().to(self.decoder.device)

    def forget(self, checkpoint: Path) -> None:
        """Drop the blocks made over `checkpoint`'s prefix (its keys and values are no longer held)."""
        for block in [block for block in self._blocks.values() if block.checkpoint == checkpoint]:
            del self._blocks[block.key]
            self._free.append(block.slot)

    def _held_chain(self, checkpoint: Path | None, prompt: list[int], positions: torch.Tensor, limit: int):
        """The held blocks that begin `prompt`, in order, none going past its first `limit` tokens."""
        chain: list[_Block] = []
        parent: object = _first_parent(checkpoint)
        for begin in range(0, limit - BLOCK + 1, BLOCK):
            block = self._blocks.get(_key(parent, prompt, positions, begin))
            if block is None:
                break
            chain.append(block)
            parent = block.serial
        self._touch(chain)
        return chain

    def _touch(self, chain: list[_Block]) -> None:
        """Mark `chain` as used now, its end first, so its beginning is the last to go."""
        for block in reversed(chain):
            self._blocks.move_to_end(block.key)

    def _take_slot(self, protected: list[_Block]) -> int | None:
        """A free slot, made by dropping the least recently used block unless that one is `protected`."""
        if self._free:
            return self._free.pop()
        if not self._blocks:
            return None
        block = next(iter(self._blocks.values()))
        if block in protected:
            return None
        del self._blocks[block.key]
        return block.slot


def _first_parent(checkpoint: Path | None) -> tuple:
    """The parent of a prompt's first block: which prefix its keys and values were made over."""
    return ("prefix checkpoint", checkpoint)


def _key(parent: object, prompt: list[int], positions: torch.Tensor, begin: int) -> tuple:
    end = begin + BLOCK
    return parent, tuple(prompt[begin:end]), tuple(positions[..., begin:end].flatten().tolist())
