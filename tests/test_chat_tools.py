"""Tools and a thinking model's reasoning in chat (glmcore.chat, `glmtui chat`), and the tools of the -hf and 0414
GLM-4 layouts.

A random tiny model never emits a call or a `</think>`, so the chat runs on the tiny models support.tool_models
trains once per session (shared with tests/test_serve_tools.py): a GLM-4 that answers the weather question with
the published call and the tool's result with the answer, and a GLM-4-0414 with a thinking template that reasons
before it answers.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from support.tool_models import (
    ANSWER,
    ARGUMENTS,
    QUESTION,
    RESULT,
    WEATHER,
    Z1_ANSWER,
    Z1_QUESTION,
    Z1_REASONING,
    conversation,
)

from glmcore.chat import ChatError, ChatSession, ChatSettings, check_tools_family
from glmcore.models import family_named
from glmcore.reasoning import ReplyStream
from glmcore.serve import openai_api as api
from glmcore.tool_calls import ToolCall, ToolsFileError, read_tools_file

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
GREEDY = ChatSettings(sampling=False, max_new_tokens=40)
CALL = ToolCall("get_weather", json.dumps(ARGUMENTS))


@pytest.fixture(scope="module")
def tool_session(tool_call_model):
    """`tool_session(name)`: a chat with the trained tiny model of family `name`, made once."""
    import glmcore

    sessions: dict[str, ChatSession] = {}

    def session(name: str) -> ChatSession:
        if name not in sessions:
            folder = tool_call_model(name)
            sessions[name] = ChatSession(glmcore.load_model(folder), glmcore.load_tokenizer(folder))
        return sessions[name]

    return session


@pytest.fixture(scope="module")
def z1_session(z1_model: Path):
    import glmcore

    return ChatSession(glmcore.load_model(z1_model), glmcore.load_tokenizer(z1_model))


@pytest.mark.parametrize(
    ("name", "arguments"),
    [("glm-4-9b-chat", '{"city": "Paris"}'), ("chatglm3-6b", "tool_call(city='Paris')")],
    ids=["glm-4-9b-chat", "chatglm3-6b"],
)
def test_a_call_shows_as_a_call_and_its_result_goes_back_as_the_observation(tool_session, name, arguments):
    """The call parsed as the family's demo parses it, its arguments as the family writes them; the next message is
    its result, in the prompt as the server builds it."""
    session = tool_session(name)
    session.clear()
    session.use_tools([WEATHER])
    asked, answered, _ = conversation(CALL)
    family = session.family

    turn = session.stream(QUESTION, GREEDY)
    assert list(turn) == [] and turn.response == ""  # held while it may be a call: no text of it streams
    assert turn.prompt_ids == family.tool_prompt_ids(session.tokenizer, asked, [WEATHER])
    assert turn.call == CALL and session.pending_call == CALL
    assert session.arguments_text(turn.call) == arguments

    turn = session.ask(RESULT, GREEDY)  # the next message answers the call
    assert turn.message == {"role": "observation", "content": RESULT}
    assert turn.prompt_ids == family.tool_prompt_ids(session.tokenizer, answered, [WEATHER])
    assert (turn.response, turn.call, session.pending_call) == (ANSWER, None, None)
    assert session.messages == [*answered, {"role": "assistant", "content": ANSWER}]
    assert session.history == [(QUESTION, ANSWER)]


def test_an_answer_that_does_not_parse_as_a_call_stays_text(tool_session):
    """The call cut short by the answer length is no call: its text is the answer, and the next message is the
    user's again."""
    session = tool_session("glm-4-9b-chat")
    session.clear()
    session.use_tools([WEATHER])
    turn = session.ask(QUESTION, ChatSettings(sampling=False, max_new_tokens=4))
    assert turn.call is None and session.pending_call is None
    assert turn.response and 'get_weather\n{"city": "Paris"}'.startswith(turn.response)
    assert session.stream("?", GREEDY).message["role"] == "user"


def test_tools_are_refused_for_a_family_whose_chat_format_has_none(
    tiny_model, tiny_tokenizer, tiny_model_dir
):
    with pytest.raises(ChatError, match="^ChatGLM-6B's chat format has no tools: chat without them"):
        ChatSession(tiny_model, tiny_tokenizer).use_tools([WEATHER])
    with pytest.raises(ChatError, match="^ChatGLM-6B's chat format has no tools: chat without --tools"):
        check_tools_family(tiny_model_dir, None)


def test_a_tools_file_in_either_published_form_reads_as_openais(tmp_path: Path):
    """OpenAI's definitions as they are; ChatGLM3's tools demo's bare functions wrapped as OpenAI's."""
    (tmp_path / "openai.json").write_text(json.dumps([WEATHER]))
    (tmp_path / "bare.json").write_text(json.dumps([WEATHER["function"]]))
    assert read_tools_file(tmp_path / "openai.json") == read_tools_file(tmp_path / "bare.json") == [WEATHER]


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ('[\n{"name": "get_weather",\n}]', "bad.json:3: not valid JSON (Expecting property name"),
        ('{"name": "get_weather"}', "bad.json: it is not a non-empty JSON list"),
        ('[{"type": "function", "function": {"name": ""}}]', "bad.json: tool 0's function needs a name"),
        ('[{"name": "x", "parameters": []}]', "bad.json: tool 0's function parameters must be a JSON object"),
        (None, "bad.json cannot be read (No such file or directory)"),
    ],
    ids=["json", "not-a-list", "no-name", "parameters", "missing"],
)
def test_a_bad_tools_file_gets_one_sentence_saying_where_and_what_to_give(tmp_path: Path, content, said):
    if content is not None:
        (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ToolsFileError) as refused:
        read_tools_file(tmp_path / "bad.json")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path}/{said}") and message.endswith("}}.") and "\n" not in message
    assert "give a JSON list of tools" in message


def test_a_thinking_models_reasoning_comes_apart_from_its_answer_and_the_history_keeps_the_answer(z1_session):
    session = z1_session
    session.clear()
    turn = session.stream(Z1_QUESTION, GREEDY)
    assert turn.opens_reasoning  # the template's generation prompt ends in <think>
    parts = ReplyStream(opened=turn.opens_reasoning)
    streamed = [parts.advance(turn.response) for _ in turn]
    assert "".join(reasoning for reasoning, _ in streamed) == Z1_REASONING
    assert "".join(answer for _, answer in streamed) == Z1_ANSWER
    assert all("<" not in reasoning for reasoning, _ in streamed)  # no marker shows, even half-written
    assert (turn.reply.reasoning, turn.reply.answer) == (Z1_REASONING, Z1_ANSWER)
    assert session.history == [(Z1_QUESTION, Z1_ANSWER)]
    following = session.tokenizer.decode(session.stream("?", GREEDY).prompt_ids)
    assert f"<|user|>\n{Z1_QUESTION}<|assistant|>\n{Z1_ANSWER}<|user|>" in following
    assert "four" not in following


@pytest.mark.parametrize(
    ("output", "opened", "parts"),
    [
        ("<think>Two and two.</think>4", False, ("Two and two.", "4")),
        ("Two and two.\n</think>\n\n4", True, ("Two and two.", "4")),
        ("4 < 5, so <b>yes</b>", False, ("", "4 < 5, so <b>yes</b>")),
    ],
    ids=["opened-by-the-model", "opened-by-the-prompt", "no-markers"],
)
def test_streamed_output_parts_into_reasoning_and_answer_without_showing_half_a_marker(output, opened, parts):
    """Fed one character at a time, as settled (a possible half-written marker held back), then whole."""
    from glmcore.reasoning import unfinished_marker

    stream = ReplyStream(opened=opened)
    reasoning, answer = "", ""
    for end in [*range(1, len(output)), len(output)]:
        text = output[:end]
        settled = text if end == len(output) else text[: len(text) - unfinished_marker(text)]
        more_reasoning, more_answer = stream.advance(settled)
        assert "<think" not in more_reasoning + more_answer and "</" not in more_reasoning
        reasoning, answer = reasoning + more_reasoning, answer + more_answer
    assert (reasoning, answer) == parts


def test_glmtui_chat_writes_the_call_then_the_answer_to_its_result(
    tool_call_model, tmp_path, monkeypatch, capsys
):
    """From a pipe: the call as one line, the next line read as its result, the answer."""
    from glmtui.cli import main

    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER["function"]]))
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "ws"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\n{RESULT}\n"))
    model = tool_call_model("glm-4-9b-chat")
    assert (
        main(["chat", "--model", str(model), "--tools", str(tools), "--greedy", "--max-new-tokens", "40"])
        == 0
    )
    out, err = capsys.readouterr()
    assert out == f'tool call get_weather {{"city": "Paris"}}\n{ANSWER}\n', err


@pytest.mark.parametrize("hidden", [False, True], ids=["shown", "hidden"])
def test_glmtui_chat_writes_the_reasoning_apart_unless_hidden(
    z1_model, tmp_path, monkeypatch, capsys, hidden
):
    """From a pipe the answer goes to stdout and the reasoning, labelled, to stderr."""
    from glmtui.cli import main

    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "ws"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{Z1_QUESTION}\n"))
    options = ["--hide-reasoning"] if hidden else []
    assert main(["chat", "--model", str(z1_model), "--greedy", "--max-new-tokens", "40", *options]) == 0
    out, err = capsys.readouterr()
    assert out == f"{Z1_ANSWER}\n"
    assert (f"(thinking) {Z1_REASONING}" in err) is not hidden and ("four" in err) is not hidden


def test_a_bad_tools_file_is_refused_before_anything_loads(tmp_path, monkeypatch, capsys):
    """The model named does not even exist: the tools file is the first thing read."""
    from glmtui.cli import main

    (tmp_path / "tools.json").write_text("[")
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "ws"))
    arguments = ["chat", "--model", str(tmp_path / "no-model"), "--tools", str(tmp_path / "tools.json")]
    assert main(arguments) == 1
    _, err = capsys.readouterr()
    assert " ".join(err.split()).startswith(f"error: {tmp_path}/tools.json:1: not valid JSON")


# glm-4-9b-chat-hf and GLM-4-0414: the tools prompt through transformers' own apply_chat_template.

PUBLISHED_SERVER_MESSAGES = [
    {"role": "system", "content": None, "tools": [WEATHER]},
    {"role": "user", "content": QUESTION},
    {"role": "assistant", "metadata": "get_weather", "content": json.dumps(ARGUMENTS)},
    {"role": "observation", "content": RESULT},
]
"""The messages GLM-4's published OpenAI server (`process_messages`) renders for the conversation so far."""


@pytest.mark.parametrize("name", ["glm-4-9b-chat-hf", "glm-4-0414"])
def test_the_hf_and_0414_layouts_take_tools_as_the_published_template_renders_them(
    tiny_family_dir, name: str
):
    """The -hf folder's published chat template (tests/fixtures/reference/glm-4-9b-chat-hf/tokenizer_config.json,
    which 0414's tiny folders ship too) rendered by transformers over the published server's messages gives the prompt;
    the server accepts tools for these layouts and the call parses as GLM-4's."""
    import glmcore

    reference = json.loads((REFERENCE / "glm-4-9b-chat-hf" / "tokenizer_config.json").read_text())
    tokenizer = glmcore.load_tokenizer(tiny_family_dir(family_named(name)))
    published = tokenizer.apply_chat_template(
        PUBLISHED_SERVER_MESSAGES,
        chat_template=reference["chat_template"],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    implementation = family_named(name).implementation()
    _, answered, _ = conversation(CALL)
    assert implementation.tool_prompt_ids(tokenizer, answered, [WEATHER]) == list(published)

    body = api.ChatCompletionRequest(
        model="m",
        messages=[
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "tool_calls": [{"id": "c", "function": CALL._asdict()}]},
            {"role": "tool", "tool_call_id": "c", "content": RESULT},
        ],
        tools=[WEATHER],
    )
    assert api.request_prompt(implementation, tokenizer, body, family_named(name).title) == list(published)
    parsed = implementation.parse_tool_call('get_weather\n{"city": "Paris"}', {"get_weather"})
    assert parsed is not None and parsed.call == CALL


async def test_served_z1_answers_carry_the_reasoning_apart_as_reasoning_content(
    z1_model: Path, tmp_path: Path
):
    """As vLLM's and DeepSeek's OpenAI-compatible servers do: `content` is the answer, `reasoning_content` the
    reasoning, on the whole message and across the streamed deltas."""
    import httpx2
    import openai

    import glmcore
    from glmcore.runs import RunStore
    from glmcore.serve.batching import Engine
    from glmcore.serve.http import Service
    from glmcore.serve.registry import ModelRegistry

    engine = Engine(glmcore.load_model(z1_model), glmcore.load_tokenizer(z1_model), slots=2, capacity=96)
    service = Service(engine, ModelRegistry(z1_model, RunStore(tmp_path / "runs")), max_request_bytes=2**20)
    client = openai.AsyncOpenAI(
        base_url="http://serve.test/v1",
        api_key="none",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=service.app(None))),
    )
    question = {
        "model": z1_model.name,
        "messages": [{"role": "user", "content": Z1_QUESTION}],
        "temperature": 0,
    }
    try:
        whole = (await client.chat.completions.create(**question, max_tokens=40)).choices[0].message
        assert (whole.content, whole.reasoning_content) == (Z1_ANSWER, Z1_REASONING)
        fields = {"content": "", "reasoning_content": ""}
        async for chunk in await client.chat.completions.create(**question, max_tokens=40, stream=True):
            for choice in chunk.choices:
                for field in fields:
                    fields[field] += getattr(choice.delta, field, None) or ""
        assert fields == {"content": Z1_ANSWER, "reasoning_content": Z1_REASONING}
    finally:
        await client.close()
        engine.shutdown()
