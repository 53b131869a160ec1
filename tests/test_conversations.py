"""Conversation data (ChatGLM3's finetune_demo `conversations`, OpenAI's `messages`) against the values ChatGLM3's
published code computes (tests/golden/chatglm3/conversations.json; its README says how they were made), and data
files that used to fail late or with the wrong sentence, refused by the real CLI before a run exists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tomli_w
from conftest import GOLDEN

import glmcore
from glmcore.data import (
    DataError,
    Example,
    chat_messages,
    conversation_example,
    conversation_features,
    evaluation_prompt_ids,
    load_examples,
    training_features,
)
from glmcore.models import CHATGLM2_6B, CHATGLM3_6B, CHATGLM_6B
from glmcore.models.chatglm3 import family_impl
from glmtui.cli import main

CHATGLM3 = GOLDEN / "chatglm3" / "tiny-chatglm3"
CHATGLM2 = GOLDEN / "chatglm2" / "tiny-chatglm2"


@pytest.fixture(scope="module")
def goldens() -> dict:
    return json.loads((GOLDEN / "chatglm3" / "conversations.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer():
    return glmcore.load_tokenizer(CHATGLM3)


def cases(goldens: dict):
    for size in ("long", "short"):
        lengths = {key: goldens[size][key] for key in ("max_input_length", "max_output_length")}
        for case in goldens[size]["cases"]:
            yield case, lengths


def test_conversation_features_equal_the_published_finetune_demo_tool_calls_included(tokenizer, goldens):
    tool_rows = cut_rows = 0
    for case, lengths in cases(goldens):
        row = case["row"]
        features = conversation_features(tokenizer, row["conversations"], tools=row.get("tools"), **lengths)
        published = case["multi_turn_dataset"]  # padded to input + output + 1
        length = len(features["input_ids"])
        assert features == {
            "input_ids": published["input_ids"][:length],
            "labels": published["labels"][:length],
        }
        assert set(published["input_ids"][length:]) <= {tokenizer.pad_token_id}
        assert set(published["labels"][length:]) <= {-100}
        if "process_batch" in case:  # finetune_hf.py, for the conversations it takes (no tools)
            assert features == case["process_batch"]
        tool_rows += any(message["role"] == "tool" for message in row["conversations"])
        cut_rows += length == sum(lengths.values()) + 1
    assert tool_rows >= 4 and cut_rows >= 3


def test_openai_messages_with_tool_calls_are_read_as_the_published_tool_messages(tokenizer, goldens):
    case, lengths = next(
        (case, lengths)
        for case, lengths in cases(goldens)
        if "tools" in case["row"] and lengths["max_input_length"] > 100
    )
    openai = [
        {"role": "user", "content": "北京天气如何？"},
        {
            "role": "assistant",
            "content": "我来查询。",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "北京"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 22, "sky": "晴"}'},
        {"role": "assistant", "content": "北京22度，晴。"},
    ]
    features = conversation_features(tokenizer, openai, tools=case["row"]["tools"], **lengths)
    published = case["multi_turn_dataset"]
    assert features["input_ids"] == published["input_ids"][: len(features["input_ids"])]
    assert features["labels"] == published["labels"][: len(features["labels"])]


def test_a_conversation_file_trains_and_evaluates_as_the_published_rows(tokenizer, goldens, tmp_path: Path):
    """Rows of a file go through the same features as training takes them (padded), and each conversation's
    evaluation prompt is `process_batch_eval`'s for its last answer."""
    (case_lengths,) = [goldens["long"]]
    lengths = (case_lengths["max_input_length"], case_lengths["max_output_length"])
    rows = [case["row"] for case in case_lengths["cases"]]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")

    loaded = load_examples(data, family=CHATGLM3_6B)

    assert len(loaded.examples) == len(rows)
    for example, case in zip(loaded.examples, case_lengths["cases"], strict=True):
        features = training_features(tokenizer, example, *lengths)
        assert features == case["multi_turn_dataset"]
        published_eval = case.get("process_batch_eval")
        if published_eval:
            assert evaluation_prompt_ids(tokenizer, example, lengths[0]) == published_eval["input_ids"][-1]
            assert (
                family_impl.reference_ids(tokenizer, example.response, lengths[1])
                == published_eval["output_ids"][-1]
            )


def test_families_without_conversations_take_user_assistant_turns_and_refuse_more(tmp_path: Path):
    chatglm2 = glmcore.load_tokenizer(CHATGLM2)
    turns = [
        {"role": "user", "content": "你是谁"},
        {"role": "assistant", "content": "我是助手。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好👋！"},
    ]
    example = Example("你好", "你好👋！", (("你是谁", "我是助手。"),))
    assert conversation_features(chatglm2, turns, max_input_length=24, max_output_length=16) == (
        training_features(chatglm2, example, 24, 16)
    )
    with pytest.raises(
        DataError, match="ChatGLM2-6B's published fine-tuning takes only user/assistant turns"
    ):
        conversation_features(
            chatglm2, [{"role": "system", "content": "s"}, *turns], max_input_length=24, max_output_length=16
        )
    with_system = conversation_example(chat_messages([{"role": "system", "content": "s"}, *turns]))
    with pytest.raises(DataError, match="ChatGLM2-6B's published fine-tuning takes only"):
        evaluation_prompt_ids(chatglm2, with_system, 24)
    data = tmp_path / "train.jsonl"
    data.write_text(
        json.dumps({"messages": turns})
        + "\n"
        + json.dumps({"conversations": [{"role": "system", "content": "s"}, *turns]})
        + "\n",
        encoding="utf-8",
    )
    assert len(load_examples(data, family=CHATGLM3_6B).examples) == 2
    for family in (CHATGLM_6B, CHATGLM2_6B):
        with pytest.raises(DataError) as refused:
            load_examples(data, family=family)
        assert str(refused.value).startswith(f"{data}:2: {family.title}'s published fine-tuning takes only")


# --- bad files, through `glmtui train` ----------------------------------------------------------------------

DEEP = 200_000
TURNS = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def jsonl(*rows: object) -> bytes:
    return b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows)


GOOD = {"content": "类型#裙", "summary": "红色的裙子"}
REFUSED = {
    "a line nested 200,000 deep": (
        "train.jsonl",
        jsonl(GOOD) + b'{"content": ' + b"[" * DEEP + b"]" * DEEP + b', "summary": "b"}\n',
        ":2: the JSON there is nested deeper than Python's JSON reader allows (RecursionError); a row is one "
        "object of text values, so fix or remove it",
    ),
    "an array item nested 200,000 deep": (
        "train.json",
        b"[\n" + json.dumps(GOOD).encode() + b",\n" + b"[" * DEEP + b"]" * DEEP + b"\n]\n",
        ":3: the JSON there is nested deeper than Python's JSON reader allows",
    ),
    "a CSV history cell nested 50,000 deep": (
        "train.csv",
        b'content,summary,history\nq,a,"' + b"[" * 50_000 + b"]" * 50_000 + b'"\n',
        ":2: 'history' must be a list of [query, response] pairs of text",
        {"history_column": "history"},
    ),
    "a lone surrogate": (
        "train.jsonl",
        jsonl(GOOD) + b'{"content": "a\\ud800b", "summary": "b"}\n',
        ":2: \\ud800 is half of a UTF-16 surrogate pair with no other half, so it is not text; fix that escape "
        "or remove it",
    ),
    "a lone surrogate in a conversation": (
        "train.json",
        b'[{"conversations": [{"role": "user", "content": "q"},\n {"role": "assistant", "content": "\\udfff"}]}]',
        ":1: \\udfff is half of a UTF-16 surrogate pair",
    ),
    "a pretty-printed JSON object": (
        "train.json",
        json.dumps({"content": "a", "summary": "b"}, indent=2).encode(),
        ":1: one JSON object is spread over lines 1-4, but each line of a .json/.jsonl file must hold a whole "
        "row; write one object per line (JSON lines) or put the objects in a JSON array [...]",
    ),
    "a conversation without an answer": (
        "train.jsonl",
        jsonl({"conversations": [{"role": "user", "content": "q"}]}),
        ":1: the conversation has no assistant message, so there is nothing to learn",
    ),
    "an unknown role": (
        "train.jsonl",
        jsonl({"messages": [{"role": "bot", "content": "q"}, *TURNS]}),
        ":1: 'messages', message 1 has the role 'bot'; use one of system, user, assistant, observation, tool",
    ),
    "a tool message without parameters": (
        "train.jsonl",
        jsonl({"conversations": [*TURNS, {"role": "tool", "name": "f", "observation": 1}]}),
        ":1: 'conversations', message 3: a tool message needs a text 'name' and an object 'parameters'",
    ),
    "a tool result with no call": (
        "train.jsonl",
        jsonl({"messages": [*TURNS, {"role": "tool", "tool_call_id": "x", "content": "1"}]}),
        ":1: 'messages', message 3 is a tool result with no tool call before it",
    ),
    "a number as content": (
        "train.jsonl",
        jsonl({"conversations": [{"role": "user", "content": 5}, TURNS[1]]}),
        ":1: 'conversations', message 1: 'content' holds a number (5), not text",
    ),
}


def refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, model: Path, name: str, content: bytes, **extra
) -> str:
    """What `glmtui train` prints refusing a config (its settings and `extra`) over the data file `content`, with
    no run created."""
    workspace = tmp_path / "ws"
    monkeypatch.setenv("GLMTUI_HOME", str(workspace))
    monkeypatch.setenv("COLUMNS", "400")
    data = tmp_path / name
    data.write_bytes(content)
    config = tmp_path / "run.toml"
    settings = {
        "name": "bad",
        "model_path": str(model),
        "train_file": str(data),
        "quantization_bit": 16,
        **extra,
    }
    config.write_text(
        tomli_w.dumps({**settings, "max_source_length": 16, "max_target_length": 16, "gpus": []})
    )
    code = main(["train", str(config)])
    printed = capsys.readouterr().err
    assert code == 2 and "Traceback" not in printed
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())
    return printed.replace(str(data), "DATA")


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_bad_data_file_is_refused_in_one_sentence_with_its_line(case, tmp_path, monkeypatch, capsys):
    name, content, sentence, *extra = REFUSED[case]
    printed = refusal(tmp_path, monkeypatch, capsys, CHATGLM3, name, content, **(extra[0] if extra else {}))
    assert f"  • train_file: DATA{sentence}" in printed


def test_a_chatglm_6b_run_on_chatglm3_conversations_is_refused_before_it_exists(
    tmp_path, monkeypatch, capsys, tiny_model_dir: Path
):
    content = jsonl({"conversations": TURNS}, {"conversations": [{"role": "system", "content": "s"}, *TURNS]})
    printed = refusal(tmp_path, monkeypatch, capsys, tiny_model_dir, "train.jsonl", content)
    assert (
        "  • train_file: DATA:2: ChatGLM-6B's published fine-tuning takes only user/assistant turns"
        in printed
    )


@pytest.mark.parametrize("name", ["train.csv", "train.jsonl"])
def test_a_byte_order_mark_is_not_part_of_the_first_column(name: str, tmp_path: Path):
    data = tmp_path / name
    text = "content,summary\nq,a\n" if name.endswith(".csv") else json.dumps({"content": "q", "summary": "a"})
    data.write_text("\ufeff" + text, encoding="utf-8")
    loaded = load_examples(data)
    assert loaded.columns_found == ["content", "summary"]
    assert loaded.examples == [Example("q", "a")]


async def test_the_data_screen_previews_a_conversation_file_as_training_builds_it(tmp_path: Path) -> None:
    from support.app import make_app, make_workspace, settle
    from textual.widgets import Input, Static

    workspace = make_workspace(tmp_path / "ws", with_model=False)
    model_dir = workspace.models_dir / "tiny-chatglm3"
    shutil.copytree(CHATGLM3, model_dir)
    data = workspace.data_dir / "chats" / "train.jsonl"
    data.parent.mkdir(parents=True)
    call = {"role": "tool", "name": "get_weather", "parameters": {"city": "北京"}, "observation": "晴"}
    data.write_text(
        "".join(
            json.dumps(row, ensure_ascii=False) + "\n"
            for row in (
                {"conversations": [{"role": "system", "content": "s"}, *TURNS, call, TURNS[1]]},
                {"messages": TURNS},
            )
        ),
        encoding="utf-8",
    )
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f3")
        await pilot.pause()
        app.screen.query_one("#data-file", Input).value = str(data)
        app.screen.query_one("#data-model", Input).value = str(model_dir)
        await pilot.press("ctrl+g")
        await settle(pilot)
        preview = str(app.screen.query_one("#data-preview-text", Static).render())
    assert "2 examples" in preview
    assert "1. [gMASK] sop <|system|>" in preview and "<|observation|>" in preview
