"""Examples, the ground floor the model families build on: what one training example is, the ignored label,
ChatGLM-6B's round prompt, and the two forms a family's published fine-tuning reads (turns only, or whole
conversations). Families import this module, never glmcore.data, so imports go family → generic only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from glmcore.errors import GlmError

IGNORE_INDEX = -100
"""The label of a position the loss skips (the prompt, the padding)."""


class DataError(GlmError):
    pass


@dataclass(frozen=True)
class Example:
    """One training example: a query, its answer and earlier turns, or a whole conversation.

    A conversation row keeps its `messages` (in ChatGLM3's form, see `chat_messages`) and `tools`; its `query`
    and `response` are then the last user message and the last assistant answer (what evaluation scores), and
    `history` the turns before them when the conversation is nothing but user/assistant turns."""

    query: str
    response: str
    history: tuple[tuple[str, str], ...] = ()
    messages: tuple[dict, ...] = ()
    tools: object = None

    @property
    def prompt(self) -> str:
        return build_prompt(self.query, self.history)

    @property
    def turns_only(self) -> bool:
        """Whether the example says nothing the query/response/history form cannot (no system, tools, ...)."""
        return not self.messages or plain_turns(self.messages, self.tools) is not None


def build_prompt(query: str, history: tuple[tuple[str, str], ...] | list = ()) -> str:
    """The bare query, or ChatGLM-6B's rounds: `[Round i]\\n问：q\\n答：r\\n` per past turn, then the query's."""
    if not history:
        return query
    rounds = "".join(
        f"[Round {index}]\n问：{old_query}\n答：{old_response}\n"
        for index, (old_query, old_response) in enumerate(history)
    )
    return rounds + f"[Round {len(history)}]\n问：{query}\n答："


def plain_turns(messages: Sequence[dict], tools: object) -> tuple[tuple[str, str], ...] | None:
    """The (user, assistant) turns of a conversation with nothing else in it (no system, tools or loss
    flags), ending on an answer; None for any other conversation."""
    if (
        tools is not None
        or len(messages) % 2
        or any(set(message) != {"role", "content"} for message in messages)
    ):
        return None
    roles = [message["role"] for message in messages]
    if roles != ["user", "assistant"] * (len(messages) // 2):
        return None
    return tuple((messages[i]["content"], messages[i + 1]["content"]) for i in range(0, len(messages), 2))


def turns_only_refusal(family_title: str) -> str:
    return (
        f"{family_title}'s published fine-tuning takes only user/assistant turns, and this conversation has more "
        "(a system message, tools, observations or loss flags); train a ChatGLM3-6B or GLM-4-9B model on it, "
        "or keep only its user and assistant turns."
    )


def turns_example(example: Example, family_title: str) -> Example:
    """`example` for a family whose published fine-tuning knows only a query, its answer and earlier turns
    (ChatGLM-6B's and ChatGLM2-6B's ptuning/main.py); DataError for a conversation with more in it."""
    if not example.turns_only:
        raise DataError(turns_only_refusal(family_title))
    return example


def conversation_example(
    messages: list[dict], tools: object = None, where: str = "the conversation"
) -> Example:
    """A conversation (checked `chat_messages`) as an Example: its messages and tools, its last answer and the
    user message before that; DataError (starting with `where`) when it has no answer to learn."""
    answers = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    if not answers:
        raise DataError(
            f"{where}: the conversation has no assistant message, so there is nothing to learn; "
            'add the answer as {"role": "assistant", "content": "..."}.'
        )
    queries = [message["content"] for message in messages[: answers[-1]] if message["role"] == "user"]
    turns = plain_turns(messages, tools)
    return Example(
        query=queries[-1] if queries else "",
        response=messages[answers[-1]]["content"],
        history=turns[:-1] if turns else (),
        messages=tuple(messages),
        tools=tools,
    )
