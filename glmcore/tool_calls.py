"""Tool calls in a family's chat format: the messages a tool conversation is written from, and a parsed call.

A family whose chat format has tools (ChatGLM3, GLM-4) defines in its `family_impl` (its `tools` module):

    tool_prompt_ids(tokenizer, messages, tools) -> list[int]   # the chat prompt, tools described, `<|assistant|>` last
    may_be_tool_call(text, names) -> bool                      # whether an answer so far may still become a call
    parse_tool_call(text, names) -> ParsedAnswer | None        # the call in a finished answer, as its demo parses it

`messages` are dicts in one form for every family: `{"role": "system" | "user" | "assistant" | "observation",
"content": str}`, and a call the assistant made, `{"role": "assistant", "tool_call": ToolCall}`. `tools` are the
OpenAI API's tool definitions (`{"type": "function", "function": {"name", "description", "parameters"}}`), each
family describing them as its published format does. `text` is the answer decoded as the engine decodes it
(`skip_special_tokens`: GLM-4's role tokens vanish, as in its published server; ChatGLM3's stay, as in its
published chat). Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import json
from typing import NamedTuple


class ToolCall(NamedTuple):
    """One call: the tool's name and its arguments as a JSON object's text (what the OpenAI API carries)."""

    name: str
    arguments: str


class ParsedAnswer(NamedTuple):
    """A finished answer that is a call: what the model said before it (ChatGLM3 may think aloud first; empty
    when nothing), and the call."""

    content: str
    call: ToolCall


def arguments_object(call: ToolCall) -> dict:
    """A call's arguments as a dict; ValueError when they are not a JSON object (a client sent them so)."""
    try:
        value = json.loads(call.arguments)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
