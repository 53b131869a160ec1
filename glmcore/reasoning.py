"""A thinking model's output, parted into its reasoning and its answer.

A thinking model (GLM-Z1-9B-0414) writes its reasoning between `<think>` and `</think>` and its answer after
them. Where its chat prompt already opened the block (the prompt ends in `<think>`), the output begins inside the
reasoning and only `</think>` appears. The split is keyed by the markers alone, not by the family: GLM-4-9B-0414
and GLM-Z1-9B-0414 are one family with different chat templates. The markers are read in text decoded with
special tokens skipped, so they count where the tokenizer keeps them as text. As the published chat templates do
when they feed an assistant turn back, the answer is what follows the last `</think>`.

Evaluation scores the answer alone (the reasoning is no part of what a label describes) and keeps the reasoning
beside it; a family without thinking, whose output holds no marker, comes back as it was. Chat shows the reasoning
apart from the answer as both stream (`ReplyStream`), and keeps only the answer in its history, as those templates
do.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
PROMPT_END_TOKENS = 16
"""The prompt's last tokens decoded to see whether it ends in `<think>` (with any newline after it, however the
tokenizer cuts them)."""


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


def prompt_ids_open_reasoning(tokenizer, prompt_ids: list[int]) -> bool:
    """Whether the prompt `prompt_ids` leaves the model inside a `<think>` block (its last tokens decoded as the
    output is, special tokens skipped)."""
    return prompt_opens_reasoning(tokenizer.decode(prompt_ids[-PROMPT_END_TOKENS:], skip_special_tokens=True))


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


def unfinished_marker(text: str) -> int:
    """How many characters at the end of ``text`` may be the start of a marker still being written (held back
    while streaming, so that a marker never shows as text)."""
    for size in range(min(len(THINK_CLOSE) - 1, len(text)), 0, -1):
        tail = text[-size:]
        if THINK_CLOSE.startswith(tail) or THINK_OPEN.startswith(tail):
            return size
    return 0


def settled_length(family, cleaned: str) -> int:
    """How much of an unfinished cleaned chat answer can no longer change: the family's rule (else all of it but
    trailing whitespace), less a half-written marker at its end, which waits."""
    rule = getattr(family, "settled_length", None)
    settled = rule(cleaned) if rule is not None else len(cleaned.rstrip())
    return settled - unfinished_marker(cleaned[:settled])


class ReplyStream:
    """A streamed output parted as it grows: `advance(text so far)` gives the reasoning and the answer added
    since the last call. The text must not end inside a marker (`unfinished_marker`)."""

    def __init__(self, *, opened: bool) -> None:
        self.opened = opened
        self.reasoning = ""
        self.answer = ""

    def advance(self, text: str) -> tuple[str, str]:
        reply = split_reasoning(text, opened=self.opened)
        reasoning, answer = reply.reasoning or "", reply.answer
        added = (_added(self.reasoning, reasoning), _added(self.answer, answer))
        self.reasoning, self.answer = reasoning, answer
        return added


def _added(before: str, now: str) -> str:
    """What `now` adds to `before`; all of it when the split moved (text first shown as an answer turned out to
    be reasoning), so that nothing goes unshown."""
    return now[len(before) :] if now.startswith(before) else now
