"""A thinking model's output, parted into its reasoning and its answer.

A thinking model (GLM-Z1-9B-0414) writes its reasoning between `<think>` and `</think>` and its answer after
them. Where its chat prompt already opened the block (the prompt ends in `<think>`), the output begins inside the
reasoning and only `</think>` appears. The split is keyed by the markers alone, not by the family: GLM-4-9B-0414
and GLM-Z1-9B-0414 are one family with different chat templates. The markers are read in text decoded with
special tokens skipped, so they count where the tokenizer keeps them as text. As the published chat templates do
when they feed an assistant turn back, the answer is what follows the last `</think>`.

Evaluation scores the answer alone (the reasoning is no part of what a label describes) and keeps the reasoning
beside it; a family without thinking, whose output holds no marker, comes back as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class Reply:
    """A model's output, parted."""

    answer: str
    reasoning: str | None
    """What came before the answer inside the think markers; None when the output had none. Reasoning that
    never closed (the token limit came first) leaves an empty answer."""


def prompt_opens_reasoning(prompt_end: str) -> bool:
    """Whether a prompt ending in ``prompt_end`` leaves the model inside a `<think>` block."""
    return prompt_end.rstrip().endswith(THINK_OPEN)


def split_reasoning(text: str, *, opened: bool = False) -> Reply:
    """``text`` parted into reasoning and answer; ``opened``: the prompt ended inside a `<think>` block."""
    if THINK_CLOSE in text:
        reasoning, _, answer = text.rpartition(THINK_CLOSE)
        reasoning = reasoning.strip()
        if reasoning.startswith(THINK_OPEN):
            reasoning = reasoning[len(THINK_OPEN) :].strip()
        return Reply(answer=answer.strip(), reasoning=reasoning)
    stripped = text.strip()
    if stripped.startswith(THINK_OPEN):
        return Reply(answer="", reasoning=stripped[len(THINK_OPEN) :].strip())
    if opened:
        return Reply(answer="", reasoning=stripped)
    return Reply(answer=text, reasoning=None)
