"""The OpenAI API as clients use it, mapped onto glmtui's engine: request bodies, prompts, answers, errors.

Chat messages become the family's chat prompt (`chat_prompt_ids`): the system messages joined, then
user/assistant pairs as history, the last user message as the query. A family without a system role
(ChatGLM-6B) gets the system text before the first user message, separated by a blank line. A completion's
prompt is encoded as the tokenizer encodes any text (ChatGLM-6B's `[gMASK] <sop>` after it), so the model
continues from it.

Sampling: `temperature` 0 (or below `GREEDY_BELOW`) is greedy; otherwise the published chat's sampling (top-k 50) with the request's
temperature and top_p, ChatGLM's defaults (0.95 and 0.7) where the request gives none.

Text: the answer streams as chat streams it (`AnswerText`): only what the family's clean-up can no longer
change is sent, and text that may be the start of a `stop` string is held back until it is known not to be.

Tools: where the family's chat format has them (glmcore.tool_calls), `tools` and the conversation's calls and
`role: tool` results become the family's prompt with tools (`request_prompt`); the answer is held while it may
still be a call, and parsed when it ends as the family's published demo parses it (`ToolAnswer`): a call is
returned as `tool_calls` (finish reason `tool_calls`), anything else as text. `tool_choice` "none" leaves the tools
out of the prompt; a named function leaves only that one in (as GLM-4's published server does); "auto" and
"required" show them all, and the model decides.

Reasoning: a thinking model's (GLM-Z1's) chat answer carries its reasoning apart, as `reasoning_content` beside
`content` on the message and on each delta (the field vLLM's and DeepSeek's OpenAI-compatible servers use);
`content` is the answer after `</think>` (glmcore.reasoning). Other models' answers have no such field.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from glmcore.errors import GlmError
from glmcore.generation import Sampling
from glmcore.reasoning import Reply, ReplyStream, prompt_ids_open_reasoning, settled_length, split_reasoning
from glmcore.tool_calls import ParsedAnswer, ToolCall, arguments_object, definition_problem, has_tools

DEFAULT_TEMPERATURE = 0.95
DEFAULT_TOP_P = 0.7
CHAT_TOP_K = 50
"""transformers 4.27, under which ChatGLM-6B's chat was published, applied top-k 50 when sampling."""
COMPLETION_DEFAULT_MAX_TOKENS = 16
"""The OpenAI API's default for /v1/completions."""
GREEDY_BELOW = 1e-5
"""A temperature below this decodes greedily: dividing the scores by it overflows, and the most likely token
is what such a temperature picks anyway."""
MAX_STOPS = 4
SEED_RANGE = (-(2**63), 2**64 - 1)
"""Signed and unsigned 64-bit seeds: clients send hashes."""


class BadRequest(GlmError):
    """A request body the API refuses: `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class _Body(BaseModel):
    """Fields clients send that this server does not use (user, penalties, logit_bias...) are ignored."""

    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str = Field(min_length=1)
    arguments: str


class ToolCallPart(_Body):
    """A call the assistant made, as the client sends it back in the conversation."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallPart] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is served")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOPS:
            raise ValueError(f"give at most {MAX_STOPS} stop strings, not {len(value)}")
        return value

    @property
    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [stop for stop in stops if stop]

    def sampling(self) -> Sampling:
        temperature = DEFAULT_TEMPERATURE if self.temperature is None else self.temperature
        if temperature < GREEDY_BELOW:
            return Sampling()
        top_p = DEFAULT_TOP_P if self.top_p is None else self.top_p
        return Sampling(
            do_sample=True, temperature=temperature, top_p=top_p, top_k=CHAT_TOP_K, seed=self.seed
        )


class NamedFunction(_Body):
    name: str = Field(min_length=1)


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict] | None = None
    """Kept as sent (checked below): a family's prompt shows each definition as the client wrote it."""
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None

    @field_validator("tools")
    @classmethod
    def _function_tools(cls, value: list[dict] | None) -> list[dict] | None:
        for index, tool in enumerate(value or []):
            if problem := definition_problem(index, tool):
                raise ValueError(problem)
        return value

    @property
    def answer_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Generation):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(f"give 1 prompt (a string, or a list of 1 string), not {len(value)}")
        return value

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def answer_budget(self) -> int:
        return self.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS


def parse(kind: type[_Generation], body: bytes) -> _Generation:
    """The request body as `kind`, or a `BadRequest` naming the first field that is wrong."""
    try:
        return kind.model_validate_json(body)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"] if not str(part).startswith(("str", "list[")))
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "json_invalid":
            raise BadRequest(f"The body is not valid JSON: {message}.") from None
        if not where:
            raise BadRequest(f"The body must be a JSON object: {message}.") from None
        raise BadRequest(f"{where}: {message}.", param=where) from None


def chat_prompt(family, tokenizer, messages: list[Message]) -> list[int]:
    """The family's chat prompt for OpenAI messages (see the module docstring for the system message)."""
    system = "\n".join(m.text for m in messages if m.role in ("system", "developer")) or None
    turns = [m for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise BadRequest("messages: the last message must be the user's.", param="messages")
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for index, message in enumerate(turns[:-1]):
        if message.role == "user":
            if pending is not None:  # two user messages in a row: one turn
                pending += "\n" + message.text
            else:
                pending = message.text
        else:
            if pending is None:
                raise BadRequest(
                    f"messages.{index}: an assistant message must follow a user message.", param="messages"
                )
            history.append((pending, message.text))
            pending = None
    query = turns[-1].text if pending is None else pending + "\n" + turns[-1].text
    if system and not accepts_system(family, tokenizer):
        if history:
            history[0] = (f"{system}\n\n{history[0][0]}", history[0][1])
        else:
            query = f"{system}\n\n{query}"
        system = None
    return family.chat_prompt_ids(tokenizer, query, history, system)


def accepts_system(family, tokenizer) -> bool:
    try:
        family.chat_prompt_ids(tokenizer, "", [], system="-")
    except GlmError:
        return False
    return True


def served_tools(body: ChatCompletionRequest) -> list[dict] | None:
    """The tools the prompt shows: none for `tool_choice` "none", only the named one for a named choice."""
    if not body.tools or body.tool_choice == "none":
        return None
    if isinstance(body.tool_choice, NamedToolChoice):
        wanted = body.tool_choice.function.name
        chosen = [tool for tool in body.tools if tool["function"]["name"] == wanted]
        if not chosen:
            raise BadRequest(
                f"tool_choice: names {wanted!r}, which is not one of the tools.", param="tool_choice"
            )
        return chosen
    return body.tools


def request_prompt(family, tokenizer, body: ChatCompletionRequest, title: str) -> list[int]:
    """The prompt of a chat request: with tools or tool messages, the family's prompt with tools (refused with a
    sentence where its chat format has none, `title` naming it); otherwise `chat_prompt`."""
    tools = served_tools(body)
    if not tools and not any(m.role == "tool" or m.tool_calls for m in body.messages):
        return chat_prompt(family, tokenizer, body.messages)
    if not has_tools(family):
        raise BadRequest(
            f"{title}'s chat format has no tools: send the request without tools, tool calls and tool messages.",
            param="tools",
        )
    return family.tool_prompt_ids(tokenizer, tool_messages(body.messages), tools)


def tool_messages(messages: list[Message]) -> list[dict]:
    """OpenAI messages in glmcore.tool_calls' form: an assistant's text, then each of its calls; a tool's result
    as an observation."""
    if messages[-1].role not in ("user", "tool"):
        raise BadRequest(
            "messages: the last message must be the user's or a tool's result.", param="messages"
        )
    result: list[dict] = []
    for index, message in enumerate(messages):
        if message.role in ("system", "developer"):
            result.append({"role": "system", "content": message.text})
        elif message.role == "tool":
            result.append({"role": "observation", "content": message.text})
        elif message.role == "user":
            result.append({"role": "user", "content": message.text})
        else:
            result += assistant_messages(message, index)
    return result


def assistant_messages(message: Message, index: int) -> list[dict]:
    """An assistant's message: its text (when it has text, or no calls), then each call, checked."""
    result = (
        [{"role": "assistant", "content": message.text}] if message.text or not message.tool_calls else []
    )
    for number, part in enumerate(message.tool_calls or []):
        call = ToolCall(part.function.name, part.function.arguments)
        try:
            arguments_object(call)
        except ValueError:
            where = f"messages.{index}.tool_calls.{number}.function.arguments"
            raise BadRequest(f"{where}: is not a JSON object.", param=where) from None
        result.append({"role": "assistant", "tool_call": call})
    return result


class AnswerText:
    """Tokens in, text deltas out: the part of the answer that can no longer change, cut at a stop string."""

    def __init__(
        self, tokenizer, family, stops: list[str], *, clean: bool, prompt: list[int] | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.family = family
        self.stops = stops
        self.clean = clean
        self.opens_reasoning = prompt is not None and prompt_ids_open_reasoning(tokenizer, prompt)
        """Whether the (chat) prompt ends inside a `<think>` block, so the answer begins in the reasoning."""
        self.tokens: list[int] = []
        self.sent = ""
        self.stopped = False
        self.parsed: ParsedAnswer | None = None
        """The call the answer turned out to be (`ToolAnswer`)."""

    def _text(self) -> str:
        text = self.tokenizer.decode(
            self.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return self.family.clean_response(text) if self.clean else text

    def _settled(self, text: str) -> int:
        if not self.clean:
            return len(text.rstrip("\ufffd"))
        return settled_length(self.family, text)

    def reply(self, text: str) -> Reply:
        """A whole chat answer parted into its reasoning (None: the model wrote none) and its answer."""
        return split_reasoning(text, opened=self.opens_reasoning)

    def reply_stream(self) -> ReplyStream:
        """What parts a streamed chat answer's text, as it grows, into reasoning and answer deltas."""
        return ReplyStream(opened=self.opens_reasoning)

    def add(self, token: int) -> str:
        """The new text after `token`; `stopped` turns true when a stop string appeared (it is not sent)."""
        self.tokens.append(token)
        return self._advance(final=False)

    def finish(self) -> str:
        """What was held back, once the answer has ended."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self.stopped:
            return ""
        text = self._text()
        for stop in self.stops:
            if (at := text.find(stop)) >= 0:
                text, final, self.stopped = text[:at], True, True
        end = len(text) if final else self._settled(text)
        if not final:
            for stop in self.stops:  # the start of a stop string waits until it is known not to be one
                for size in range(min(len(stop) - 1, end), 0, -1):
                    if text[:end].endswith(stop[:size]):
                        end -= size
                        break
        if end <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) : end], text[:end]
        return delta


class ToolAnswer(AnswerText):
    """An answer to a request with tools: held while the family says it may still be a call, then streamed as text;
    parsed when it ends (`parsed` is then the call, and what is returned is the text said before it)."""

    def __init__(
        self, tokenizer, family, stops: list[str], tools: list[dict], prompt: list[int] | None = None
    ) -> None:
        super().__init__(tokenizer, family, stops, clean=True, prompt=prompt)
        self.names = {tool["function"]["name"] for tool in tools}
        self.holding = True

    def _raw(self) -> str:
        return self.tokenizer.decode(
            self.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def add(self, token: int) -> str:
        self.tokens.append(token)
        if self.holding and self.family.may_be_tool_call(self._raw(), self.names):
            return ""
        self.holding = False
        return self._advance(final=False)

    def finish(self) -> str:
        if self.holding:
            self.parsed = self.family.parse_tool_call(self._raw(), self.names)
            if self.parsed is not None:
                return self.parsed.content
        return self._advance(final=True)


def tool_call_json(call: ToolCall) -> dict:
    """A call as the API returns it, with a new id."""
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    """The API's usage; `cached_tokens`: the prompt's tokens copied from a shared beginning, not prefilled."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def chat_response(
    response_id: str,
    model: str,
    text: str,
    finish: str,
    usage_: dict,
    call: ToolCall | None = None,
    reasoning: str | None = None,
) -> dict:
    message: dict = {"role": "assistant", "content": text}
    if call is not None:
        message = {"role": "assistant", "content": text or None, "tool_calls": [tool_call_json(call)]}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": usage_,
    }


def chat_chunk(
    response_id: str, model: str, delta: dict, finish: str | None, usage_: dict | None = None
) -> dict:
    chunk = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if usage_ is not None:
        chunk["choices"], chunk["usage"] = [], usage_
    return chunk


def completion_response(
    response_id: str, model: str, text: str, finish: str | None, usage_: dict | None
) -> dict:
    body = {
        "id": response_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def model_list(models) -> dict:
    return {
        "object": "list",
        "data": [
            {
                "id": model.id,
                "object": "model",
                "created": model.created,
                "owned_by": "glmtui",
                "kind": model.kind,
            }
            for model in models
        ],
    }


def error_body(message: str, kind: str, *, param: str | None = None, code: str | None = None) -> dict:
    """The API's error form: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
