"""ChatGLM3-6B's tool calls (glmcore.tool_calls): its published chat format and its published parser, without eval.
The fine-tuning rows (family_impl) write tools and calls with the same `TOOL_DEFINITION_PREFIX` and `tool_call_text`.

The prompt is the published `build_chat_input` over the OpenAI demo's history (openai_api_demo/utils.py): the
tools as a first system message (`Answer the following questions as best as you can. You have access to the
following tools:` and the function definitions as indented JSON: the OpenAI API's `function` objects unwrapped, the
form tools_using_demo/README says the model was trained on), then each message as `<|role|>metadata\\ncontent`.
A call is the assistant's message with the tool's name as its metadata and ```` ```python\\ntool_call(k=v, ...)\\n```
```` as its content (`tool_call_text`, as the fine-tuning demo writes one); a tool's result is an observation.

An answer is parsed as the published `process_response` parses it: its last `<|assistant|>` part is a call when
its metadata line is not blank, the lines between the fence being `tool_call(...)`. The published code evaluates that
line; here it is parsed (`ast`) and only a call of `tool_call` with keyword arguments whose values are Python
literals is read, so nothing the model writes ever runs. Anything else is not a call.
"""

from __future__ import annotations

import ast
import json

from glmcore.tool_calls import ParsedAnswer, ToolCall, arguments_object

ASSISTANT = "<|assistant|>"
TOOL_DEFINITION_PREFIX = (
    "Answer the following questions as best as you can. You have access to the following tools:\n"
)
"""The system message the demo writes before a conversation's `tools` (as indented JSON)."""
INFINITY_LITERAL = "1e309"
"""How the demo's astunparse writes an infinite float (a decimal literal that overflows)."""


def tool_call_text(parameters: dict) -> str:
    """The demo's tool call as the assistant writes it: ```python\ntool_call(city='北京')\n``` (its
    `format_function_call` unparses each value with astunparse, which writes the value's repr)."""

    def literal(value: object) -> str:
        return repr(value).replace("inf", INFINITY_LITERAL) if isinstance(value, float) else repr(value)

    arguments = ", ".join(f"{name}={literal(value)}" for name, value in parameters.items())
    return f"```python\ntool_call({arguments})\n```"


def arguments_text(call: ToolCall) -> str:
    """A call's arguments as the assistant writes them: `tool_call(city='Paris')`, without the fence."""
    return tool_call_text(arguments_object(call)).split("\n")[1]


def tool_prompt_ids(tokenizer, messages: list[dict], tools: list[dict] | None) -> list[int]:
    """`[gMASK] sop`, the tools' system message (when there are tools), every message, then `<|assistant|>`."""
    input_ids = [tokenizer.get_command("[gMASK]"), tokenizer.get_command("sop")]
    if tools:
        functions = [tool["function"] for tool in tools]
        described = TOOL_DEFINITION_PREFIX + json.dumps(functions, indent=4, ensure_ascii=False)
        input_ids += tokenizer.build_single_message("system", "", described)
    for message in messages:
        call = message.get("tool_call")
        if call is not None:
            text = tool_call_text(arguments_object(call))
            input_ids += tokenizer.build_single_message("assistant", call.name, text)
        else:
            input_ids += tokenizer.build_single_message(message["role"], "", message["content"])
    return input_ids + [tokenizer.get_command(ASSISTANT)]


def may_be_tool_call(text: str, names: set[str]) -> bool:
    """Always, until the answer ends: a call may follow a thought (`<|assistant|>` and the call after some text,
    as in the published PROMPT.md), so a streamed answer with tools is held to its end."""
    return True


def parse_tool_call(text: str, names: set[str]) -> ParsedAnswer | None:
    """The call in the last `<|assistant|>` part of `text`, with the text of the parts before it; None when that
    part's metadata line is blank (an answer) or its content is not a `tool_call(...)` of literals. The tool's name is
    not checked against `names`, as published."""
    *before, last = text.split(ASSISTANT)
    metadata, _, content = last.partition("\n")
    if not metadata.strip():
        return None
    arguments = _tool_call_arguments("\n".join(content.split("\n")[1:-1]))
    if arguments is None:
        return None
    said = "\n".join(part.partition("\n")[2].strip() for part in before if part.strip())
    return ParsedAnswer(said.strip(), ToolCall(metadata.strip(), json.dumps(arguments, ensure_ascii=False)))


def _tool_call_arguments(source: str) -> dict | None:
    """The keyword arguments of `tool_call(k=v, ...)` whose values are literals, or None."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "tool_call"):
        return None
    if call.args or any(keyword.arg is None for keyword in call.keywords):
        return None
    try:
        arguments = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
        json.dumps(arguments)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None
    return arguments
