"""glm-4-9b-chat's tool calls (glmcore.tool_calls): its chat template's tools and its published server's parser.

The prompt is the published chat template over the messages the published OpenAI server builds
(basic_demo/openai_api_server.py, `process_messages`): the tools on a system message of their own, which the
template writes as its `# 可用工具` section (each function's definition as indented JSON); a call as the assistant's
message with the tool's name as metadata and the arguments' JSON as content; a tool's result as an observation.
The published server drops the client's own system message when there are tools; here it follows the tools' one,
as glmcore's GLM-4 training rows keep it.

An answer is parsed as that server's `process_response` parses it: stripped, its first line a tool's name of the
request and its second line starting with `{`, the lines from there a JSON object. The published server also takes
its built-in `simple_browser` and `cogview` tools, which the OpenAI API cannot declare; a name not declared is
text here.

glm-4-9b-chat-hf and the 0414 models (GLM-4-9B-0414, GLM-Z1-9B-0414) use these functions too: the -hf folder's
published template is this one, character for character, and glmtui renders 0414's prompts with the folder's
own template given the same messages (the form its training rows already take); see docs/decisions.md.
"""

from __future__ import annotations

import json

from glmcore.tool_calls import ParsedAnswer, ToolCall


def tool_prompt_ids(tokenizer, messages: list[dict], tools: list[dict] | None) -> list[int]:
    """The chat template's ids for the tools (when there are any) and every message, `<|assistant|>` last."""
    rendered: list[dict] = [{"role": "system", "content": "", "tools": tools}] if tools else []
    for message in messages:
        call = message.get("tool_call")
        if call is not None:
            rendered.append({"role": "assistant", "metadata": call.name, "content": call.arguments})
        else:
            rendered.append({"role": message["role"], "content": message["content"]})
    return tokenizer.chat_ids(rendered, add_generation_prompt=True)


def arguments_text(call: ToolCall) -> str:
    """A call's arguments as the model writes them: the JSON object on the line after the tool's name."""
    return call.arguments


def may_be_tool_call(text: str, names: set[str]) -> bool:
    """Whether the answer so far may still be `name\\n{...`: its first line (so far) begins a tool's name, and once
    that line has ended, it is a name and the next line is empty so far or starts with `{`."""
    first, newline, rest = text.lstrip().partition("\n")
    if not newline:
        return any(name.startswith(first.strip()) for name in names)
    return first.strip() in names and (rest == "" or rest.startswith("{"))


def parse_tool_call(text: str, names: set[str]) -> ParsedAnswer | None:
    """The call `text` is, or None: as published, the stripped text's first line names a tool of `names`, its
    second line starts with `{`, and the rest is a JSON object."""
    lines = text.strip().split("\n")
    if len(lines) < 2 or not lines[1].startswith("{") or lines[0].strip() not in names:
        return None
    try:
        arguments = json.loads("\n".join(lines[1:]).strip())
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(arguments, dict):
        return None
    return ParsedAnswer("", ToolCall(lines[0].strip(), json.dumps(arguments, ensure_ascii=False)))
