"""Keys and values of prompt beginnings that many requests share (a system prompt, a few-shot preamble), kept so
a later request with the same prefix checkpoint and the same leading tokens takes them instead of prefilling them
again.

They are whole blocks of the KV cache's pool (`BLOCK` tokens), up to a quota of them beside the rows'. Where a
row's prompt starts on a block's edge (no prefix, or a prefix of whole blocks) a kept block is the row's own block,
named by the pool too, and a later row's table names it as well: nothing is copied. Elsewhere (a prefix of 4
tokens puts the prompt mid-block) a kept block is a copy in a block of its own, and a later row copies it into its
own blocks. A block is known by the block before it (its serial, or the prefix checkpoint for a prompt's first
block), its tokens and their positions, so a match is exact: the same checkpoint, the same tokens at the same
positions, all the way from the prompt's start. This is only valid where a prompt's tokens see none of the tokens
after them (a causal prompt, as ChatGLM2/3 read theirs): ChatGLM-6B's context is read both ways, so the keys of
its first tokens depend on the tokens that follow, and its prompts are never shared (`PromptLayout.causal`
decides, prompt by prompt). The least recently used block makes room for a new one; a block's ancestors are
always used more recently than it is (a chain is touched from its end back), so a chain loses its end first. A
block let go goes back to the pool once no row names it either.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

BLOCK = 16
"""Tokens per block of the KV cache, and so per shared block: a shorter common beginning is not worth sharing."""


@dataclass(eq=False)
class _Block:
    """One held block: `key` finds it, `serial` names it as the parent of the next block, `block` is its block of
    the decoder's pool."""

    key: tuple
    serial: int
    block: int
    checkpoint: Path | None


class SharedPrompts:
    """Up to `tokens // BLOCK` blocks of the pool of `decoder` (a `PagedDecoder`), held beside its rows'."""

    def __init__(self, decoder, tokens: int) -> None:
        self.decoder = decoder
        self.quota = tokens // BLOCK
        self._blocks: collections.OrderedDict[tuple, _Block] = collections.OrderedDict()
        self._serials = itertools.count(1)

    def reuse(
        self, checkpoint: Path | None, prompt: list[int], positions: torch.Tensor, row: int, start: int, *,
        copied: int = 0,
    ) -> int:
        """Give `row` the longest run of held blocks that begins `prompt`, its columns from `start` (after its
        prefix), past the `copied` tokens it has already, leaving at least the prompt's last token to prefill (its
        scores give the first answer token): named in its table where they line up with its blocks, else copied;
        the number of prompt tokens the row now holds from them."""
        chain = self._held_chain(checkpoint, prompt, positions, len(prompt) - 1)
        new = chain[copied // BLOCK :]
        if not new:
            return len(chain) * BLOCK
        if self._lines_up(row, start, copied):
            self.decoder.append_shared(row, [block.block for block in new])
        else:
            places = self.decoder.column_slots(row, start + copied, start + len(chain) * BLOCK)
            self._copy(self._places(new), places.to(self.decoder.device))
        return len(chain) * BLOCK

    def keep(
        self, checkpoint: Path | None, prompt: list[int], positions: torch.Tensor, row: int, start: int, *,
        written: int,
    ) -> None:
        """Hold the whole blocks among the first `written` tokens of `prompt`, whose keys and values are in `row`
        from column `start`, as far as the quota has room."""
        chain = self._held_chain(checkpoint, prompt, positions, written)
        first = len(chain) * BLOCK
        parent: object = chain[-1].serial if chain else _first_parent(checkpoint)
        added: list[_Block] = []
        for begin in range(first, written - BLOCK + 1, BLOCK):
            if not self._make_room(protected=chain + added):
                break
            if (start + begin) % BLOCK == 0:  # the row's own block: named by the pool too
                block = self.decoder.tables[row][(start + begin) // BLOCK]
                self.decoder.hold(block)
            else:
                block = self.decoder.take_block()
                self._copy(self.decoder.column_slots(row, start + begin, start + begin + BLOCK), _places_of(block))
            held = _Block(_key(parent, prompt, positions, begin), next(self._serials), block, checkpoint)
            self._blocks[held.key] = held
            added.append(held)
            parent = held.serial
        self._touch(chain + added)

    def forget(self, checkpoint: Path) -> None:
        """Let go of the blocks made over `checkpoint`'s prefix (its keys and values are no longer held)."""
        for block in [block for block in self._blocks.values() if block.checkpoint == checkpoint]:
            del self._blocks[block.key]
            self.decoder.let_go(block.block)

    def _lines_up(self, row: int, start: int, copied: int) -> bool:
        """Whether `row`'s next prompt block, after `copied` tokens from `start`, is a whole block of its table."""
        return start % BLOCK == 0 and len(self.decoder.tables[row]) * BLOCK == start + copied

    def _copy(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Copy the pool's places `source` to its places `target`, every layer's keys and values."""
        source, target = source.to(self.decoder.device), target.to(self.decoder.device)
        for layer in self.decoder.flat_layers():
            layer[target] = layer[source]

    def _places(self, blocks: list[_Block]) -> torch.Tensor:
        """The places of `blocks`' tokens in a layer of the pool, in order."""
        return torch.cat([_places_of(block.block) for block in blocks])

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

    def _make_room(self, protected: list[_Block]) -> bool:
        """Room for one more block under the quota, made by letting go of the least recently used block unless
        that one is `protected`."""
        if len(self._blocks) < self.quota:
            return True
        if not self._blocks:
            return False
        block = next(iter(self._blocks.values()))
        if block in protected:
            return False
        del self._blocks[block.key]
        self.decoder.let_go(block.block)
        return True


def _places_of(block: int) -> torch.Tensor:
    """The places of a block's tokens in a layer of the pool flattened to [blocks × BLOCK, heads, channels]."""
    return block * BLOCK + torch.arange(BLOCK)


def _first_parent(checkpoint: Path | None) -> tuple:
    """The parent of a prompt's first block: which prefix its keys and values were made over."""
    return ("prefix checkpoint", checkpoint)


def _key(parent: object, prompt: list[int], positions: torch.Tensor, begin: int) -> tuple:
    end = begin + BLOCK
    return parent, tuple(prompt[begin:end]), tuple(positions[..., begin:end].flatten().tolist())
