"""Tools over the OpenAI API: each family's parser on its published demos' sample outputs, its prompt with tools
against the published builders, and a round trip through `glmtui serve` with the official `openai` client.

A random tiny model never emits a call, so the round trip runs on a tiny ChatGLM3 and a tiny GLM-4 trained
in-process once per session (support.tool_models, shared with the chat tests) on one tool-call conversation (the
prompt with tools as the server builds it, the call in the family's published format, the tool's result, the
answer) until greedy decoding says it back.
"""

from __future__ import annotations

import json
import subprocess

import openai
import pytest
from support.serving import start_glmtui
from support.tool_models import ANSWER, ARGUMENTS, QUESTION, RESULT, TOOL_FAMILIES, WEATHER, conversation

from glmcore.models import family_named
from glmcore.serve import openai_api as api
from glmcore.serve.servers import Server
from glmcore.tool_calls import ParsedAnswer, ToolCall
from glmcore.workspace import Workspace

FAMILIES = TOOL_FAMILIES


def implementation(name: str):
    return family_named(name).implementation()


# The parsers, on the published demos' outputs.

CHATGLM3_SAMPLES = [
    # PROMPT_en.md's tool-calling example: a thought, then the call in a second <|assistant|> part.
    (
        "\nOkay, let's look up the weather in Bejing today.<|assistant|>get_current_weather\n```python\n"
        'tool_call(location="beijing", unit="celsius")\n```',
        ParsedAnswer(
            "Okay, let's look up the weather in Bejing today.",
            ToolCall("get_current_weather", '{"location": "beijing", "unit": "celsius"}'),
        ),
    ),
    # tools_using_demo/README's stock example, as the fine-tuning demo writes a call (repr of each value).
    (
        "track\n```python\ntool_call(symbol='10111')\n```",
        ParsedAnswer("", ToolCall("track", '{"symbol": "10111"}')),
    ),
    ("\nHello, I'm ChatGLM3. What can I assist you today?", None),  # blank metadata: an answer
    ("interpreter\n```python\nimport json\ndata[:5]\n```", None),  # the code interpreter: not a tool_call
    ("get_weather\n```python\n__import__('os').system('touch x')\n```", None),  # never evaluated
    ("get_weather\n```python\ntool_call(city=open('/etc/passwd').read())\n```", None),  # only literals
    ("get_weather\n```python\ntool_call('Paris')\n```", None),  # positional: not the published form
    ("get_weather", None),  # cut short
    ("get_weather\n```python\ntool_call(city=" + "-" * 100_000 + "1)\n```", None),  # past the parser's depth
]


@pytest.mark.parametrize(("output", "parsed"), CHATGLM3_SAMPLES, ids=range(len(CHATGLM3_SAMPLES)))
def test_chatglm3_reads_a_call_as_its_published_process_response_does_without_running_it(output, parsed):
    assert implementation("chatglm3-6b").parse_tool_call(output, {"get_weather"}) == parsed


GLM4_SAMPLES = [
    # What glm-4-9b-chat writes after `<|assistant|>` (role tokens skipped, as its published server decodes).
    ('get_weather\n{"city": "Paris"}', ParsedAnswer("", ToolCall("get_weather", '{"city": "Paris"}'))),
    (
        '\nget_weather\n{"city": "北京", "days": [1, 2]}\n',
        ParsedAnswer("", ToolCall("get_weather", '{"city": "北京", "days": [1, 2]}')),
    ),
    ('get_time\n{"zone": "UTC"}', None),  # not one of the request's tools
    ('get_weather\n {"city": "Paris"}', None),  # the second line must start with "{"
    ('get_weather\n{"city": "Paris"', None),  # not JSON
    ("你好👋！我是人工智能助手 GLM-4，很高兴见到你。", None),
]


@pytest.mark.parametrize(("output", "parsed"), GLM4_SAMPLES, ids=range(len(GLM4_SAMPLES)))
def test_glm4_reads_a_call_as_its_published_openai_server_does(output, parsed):
    assert implementation("glm-4-9b-chat").parse_tool_call(output, {"get_weather"}) == parsed


def test_glm4_streams_text_once_it_cannot_be_a_call_and_holds_what_may_be_one():
    may_be = implementation("glm-4-9b-chat").may_be_tool_call
    names = {"get_weather"}
    assert [may_be(text, names) for text in ("", "\nget_wea", "get_weather\n", 'get_weather\n{"ci')] == [
        True
    ] * 4
    assert [may_be(text, names) for text in ("It", "get_weathers", "get_weather\nIt")] == [False] * 3


# The prompts with tools, against the published demos' own messages.


def tokenizer_of(name: str, tiny_family_dir):
    import glmcore

    return glmcore.load_tokenizer(tiny_family_dir(family_named(name)))


def test_chatglm3s_prompt_with_tools_is_the_published_openai_demos(tiny_family_dir):
    """openai_api_demo/utils.py: a system message with the demo's sentence and `tools` (the functions), the call as
    the assistant's message with its name as metadata, the result as the query under `observation`."""
    tokenizer = tokenizer_of("chatglm3-6b", tiny_family_dir)
    introduction = (
        "Answer the following questions as best as you can. You have access to the following tools:"
    )
    history = [
        {"role": "system", "content": introduction, "tools": [WEATHER["function"]]},
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "metadata": "get_weather",
            "content": "```python\ntool_call(city='Paris')\n```",
        },
    ]
    published = tokenizer.build_chat_input(RESULT, history=history, role="observation")["input_ids"][
        0
    ].tolist()
    call = ToolCall("get_weather", json.dumps(ARGUMENTS))
    _, answered, _ = conversation(call)
    assert implementation("chatglm3-6b").tool_prompt_ids(tokenizer, answered, [WEATHER]) == published


def test_glm4s_prompt_with_tools_is_the_published_servers_through_the_chat_template(tiny_family_dir):
    """basic_demo/openai_api_server.py's `process_messages`: the tools on a system message without content, the call
    as the assistant's metadata and arguments, the tool's result as an observation."""
    tokenizer = tokenizer_of("glm-4-9b-chat", tiny_family_dir)
    published = [
        {"role": "system", "content": None, "tools": [WEATHER]},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "metadata": "get_weather", "content": json.dumps(ARGUMENTS)},
        {"role": "observation", "content": RESULT, "function_call": True},
    ]
    call = ToolCall("get_weather", json.dumps(ARGUMENTS))
    _, answered, _ = conversation(call)
    prompt = implementation("glm-4-9b-chat").tool_prompt_ids(tokenizer, answered, [WEATHER])
    assert prompt == tokenizer.chat_ids(published, add_generation_prompt=True)
    text = tokenizer.decode(prompt)
    assert '## get_weather\n\n{\n    "name": "get_weather",' in text
    assert (
        '<|assistant|> get_weather\n{"city": "Paris"} <|observation|> \n{"temperature": 22} <|assistant|>'
        in text
    )


# Requests the API refuses before any prompt is made.


def test_a_family_without_tools_refuses_them_in_one_sentence():
    body = api.ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER])
    with pytest.raises(
        api.BadRequest, match="^ChatGLM2-6B's chat format has no tools: send the request without"
    ):
        api.request_prompt(implementation("chatglm2-6b"), None, body, "ChatGLM2-6B")


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"tools": [{"type": "code_interpreter"}]}, 'tools: tool 0 must be {"type": "function"'),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice: names 'x'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": QUESTION},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": "Paris"},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c", "content": RESULT},
                ]
            },
            "messages.1.tool_calls.0.function.arguments: is not a JSON object.",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": QUESTION},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "function": {"name": "get_weather", "arguments": "[" * 100_000}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c", "content": RESULT},
                ]
            },
            "messages.1.tool_calls.0.function.arguments: is not a JSON object.",  # nested past any recursion
        ),
    ],
)
def test_bad_tool_fields_are_named(fields: dict, said: str):
    """Each refused with one sentence naming the field (a 400), before any prompt is made."""
    body = {"model": "m", "messages": [{"role": "user", "content": QUESTION}], **fields}
    with pytest.raises(api.BadRequest) as refused:
        parsed = api.parse(api.ChatCompletionRequest, json.dumps(body).encode())
        api.request_prompt(implementation("glm-4-9b-chat"), None, parsed, "GLM-4-9B")
    assert str(refused.value).startswith(said)


# Servers of the tiny models that learned one tool-call conversation (support.tool_models).


def glmtui(workspace: Workspace, *args: str) -> subprocess.Popen:
    return start_glmtui(workspace.root, *args)


@pytest.fixture(scope="module")
def servers(tool_call_model, tmp_path_factory: pytest.TempPathFactory):
    """A detached `glmtui serve` on each family's trained tiny model, by family name (each starts while the next
    model trains); stopped at the end."""
    workspace = Workspace(tmp_path_factory.mktemp("tools") / "ws").ensure()
    starting = {}
    for name in FAMILIES:
        options = ("--port", "0", "--detach", "--context", "512", "--max-batch", "2")
        starting[name] = glmtui(workspace, "serve", "--model", str(tool_call_model(name)), *options)
    started = {}
    for name, process in starting.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err + out
        started[name] = Server(workspace.root / "servers" / out.split("Server ", 1)[1].split()[0])
    yield started
    for server in started.values():
        stopping = glmtui(workspace, "serve", "--stop", server.id)
        out, err = stopping.communicate(timeout=60)
        assert stopping.returncode == 0, err


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.status().url, api_key="none", max_retries=0, timeout=120)


def ask(server: Server, messages: list[dict], *, stream: bool, **options) -> tuple[str | None, list, str]:
    """(content, tool calls as dicts, finish reason) of one greedy request, whole or streamed."""
    reply = client(server).chat.completions.create(
        model=server.status().models[0],
        messages=messages,
        tools=[WEATHER],
        temperature=0,
        stream=stream,
        **options,
    )
    if not stream:
        choice = reply.choices[0]
        calls = [call.model_dump() for call in choice.message.tool_calls or []]
        return choice.message.content, calls, choice.finish_reason
    content, calls, finish = None, [], None
    for chunk in reply:
        for choice in chunk.choices:
            if choice.delta.content:
                content = (content or "") + choice.delta.content
            calls += [call.model_dump(exclude_none=True) for call in choice.delta.tool_calls or []]
            finish = choice.finish_reason or finish
    return content, calls, finish


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("name", FAMILIES)
def test_the_openai_clients_tool_call_round_trip(servers, name: str, stream: bool):
    """The question with tools gives the call as `tool_calls`; the call and the tool's result sent back (`role:
    tool`) give the answer."""
    asked = [{"role": "user", "content": QUESTION}]
    content, calls, finish = ask(servers[name], asked, stream=stream)
    assert (content, finish, len(calls)) == (None, "tool_calls", 1)
    call = calls[0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == ARGUMENTS

    returned = {key: call[key] for key in ("id", "type", "function")}
    answered = [
        *asked,
        {"role": "assistant", "content": None, "tool_calls": [returned]},
        {"role": "tool", "tool_call_id": call["id"], "content": RESULT},
    ]
    assert ask(servers[name], answered, stream=stream) == (ANSWER, [], "stop")


CALLS = {
    "chatglm3-6b": "get_weather\n ```python\ntool_call(city='Paris')\n```",
    "glm-4-9b-chat": 'get_weather\n{"city": "Paris"}',
}
"""The call each trained model writes, decoded (SentencePiece puts a space before ChatGLM3's fence)."""


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("name", FAMILIES)
def test_an_answer_that_does_not_parse_as_a_call_comes_back_as_text(servers, name: str, stream: bool):
    """The call cut in half by max_tokens is no call: its text is the answer, never an error."""
    asked = [{"role": "user", "content": QUESTION}]
    whole = client(servers[name]).chat.completions.create(
        model=f"tiny-{name}", messages=asked, tools=[WEATHER], temperature=0
    )
    assert whole.choices[0].finish_reason == "tool_calls"
    cut = whole.usage.completion_tokens // 2
    content, calls, finish = ask(servers[name], asked, stream=stream, max_tokens=cut)
    assert (calls, finish) == ([], "length")
    assert content.strip() and content in CALLS[name]
