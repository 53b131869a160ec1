"""Tool calls in a family's chat format: the messages a tool conversation is written from, and a parsed call.

A family whose chat format has tools (ChatGLM3, GLM-4) defines in its `family_impl` (its `tools` module):

    tool_prompt_ids(tokenizer, messages, tools) -> list[int]   # the chat prompt, tools described, `<|assistant|>` last
    may_be_tool_call(text, names) -> bool                      # whether an answer so far may still become a call
    parse_tool_call(text, names) -> ParsedAnswer | None        # the call in a finished answer, as its demo parses it
    arguments_text(call) -> str                                # a call's arguments as the family writes them

`messages` are dicts in one form for every family: `{"role": "system" | "user" | "assistant" | "observation",
"content": str}`, and a call the assistant made, `{"role": "assistant", "tool_call": ToolCall}`. `tools` are the
OpenAI API's tool definitions (`{"type": "function", "function": {"name", "description", "parameters"}}`), each
family describing them as its published format does. `text` is the answer decoded as the engine decodes it
(`skip_special_tokens`: GLM-4's role tokens vanish, as in its published server; ChatGLM3's stay, as in its
published chat). Importing this module imports neither torch nor transformers.

A tools file (`glmtui chat --tools FILE`, the Chat screen's Tools field) is a JSON list of either form a user
meets: the OpenAI API's definitions, or the bare functions ChatGLM3's tools demo lists (`{"name", "description",
"parameters"}`), which are wrapped as OpenAI's (`read_tools_file`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from glmcore.errors import GlmError

TOOLS_FILE_FORM = (
    'a JSON list of tools, each {"type": "function", "function": {"name": ..., "parameters": {...}}} '
    'or a bare {"name": ..., "parameters": {...}}'
)


class ToolsFileError(GlmError):
    """A tools file that cannot be read as a list of function tools."""


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


def has_tools(implementation) -> bool:
    """Whether a family's implementation (its `family_impl` module) has tools in its chat format."""
    return hasattr(implementation, "tool_prompt_ids")


def definition_problem(index: int, tool: object) -> str | None:
    """What is wrong with an OpenAI tool definition (the API's own rule: a function with a name and object
    parameters), or None."""
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
        return f'tool {index} must be {{"type": "function", "function": {{...}}}}'
    if not isinstance(function.get("name"), str) or not function["name"]:
        return f"tool {index}'s function needs a name"
    if not isinstance(function.get("parameters", {}), dict):
        return f"tool {index}'s function parameters must be a JSON object"
    return None


def function_tools(tools: object) -> list[dict]:
    """`tools` as OpenAI definitions: a bare function (one without `type`) wrapped as one; ValueError naming the
    first item that is neither."""
    if not isinstance(tools, list) or not tools:
        raise ValueError("it is not a non-empty JSON list")
    wrapped = [
        {"type": "function", "function": tool} if isinstance(tool, dict) and "type" not in tool else tool
        for tool in tools
    ]
    for index, tool in enumerate(wrapped):
        if problem := definition_problem(index, tool):
            raise ValueError(problem)
    return wrapped


def read_tools_file(path: str | Path) -> list[dict]:
    """The tools a JSON file lists, as OpenAI definitions; ToolsFileError with one sentence (the file, the line
    where its JSON breaks) when it cannot be read as such."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ToolsFileError(f"{path} cannot be read ({reason}); give {TOOLS_FILE_FORM}.") from None
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as error:
        raise ToolsFileError(
            f"{path}:{error.lineno}: not valid JSON ({error.msg}); give {TOOLS_FILE_FORM}."
        ) from None
    except RecursionError:
        raise ToolsFileError(f"{path}: nested too deeply; give {TOOLS_FILE_FORM}.") from None
    try:
        return function_tools(tools)
    except ValueError as error:
        raise ToolsFileError(f"{path}: {error}; give {TOOLS_FILE_FORM}.") from None
