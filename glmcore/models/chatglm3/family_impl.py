"""ChatGLM3-6B's implementation of the family interface: ChatGLM2's classes with ChatGLM3's tokenizer,
the role-token conversations of the published fine-tuning demo (`finetune_demo/finetune_hf.py`, and for tool
calls the demo's earlier `finetune_chatmodel_demo/preprocess_utils.py`, which its README still describes) and
the published chat prompt and answer clean-up."""

from __future__ import annotations

import json

from glmcore.examples import IGNORE_INDEX
from glmcore.models.chatglm2.configuration import ChatGLM2Config
from glmcore.models.chatglm2.family_impl import (
    TRAINING_TIME_PLACEHOLDER,
    new_decoder,
    new_prefix_encoder,
)
from glmcore.models.chatglm2.modeling import ChatGLM2ForConditionalGeneration, prefix_width
from glmcore.models.chatglm2.tiny import write_random_checkpoint as write_random
from glmcore.models.chatglm2.tiny import write_tiny_checkpoint as write_tiny
from glmcore.models.chatglm3.tokenization import ChatGLM3Tokenizer
from glmcore.models.chatglm3.tools import (
    TOOL_DEFINITION_PREFIX,
    arguments_text,
    may_be_tool_call,
    parse_tool_call,
    tool_call_text,
    tool_prompt_ids,
)

config_class = ChatGLM2Config
model_class = ChatGLM2ForConditionalGeneration
tokenizer_class = ChatGLM3Tokenizer

__all__ = [
    "arguments_text",
    "may_be_tool_call",
    "new_decoder",
    "new_prefix_encoder",
    "parse_tool_call",
    "prefix_width",
    "tool_prompt_ids",
]


def conversation(example) -> list[dict]:
    """An example as the demo's `conversations`: its own messages, or its history turns, the query and the
    response."""
    if example.messages:
        return list(example.messages)
    messages = []
    for query, response in example.history:
        messages += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
    return [
        *messages,
        {"role": "user", "content": example.query},
        {"role": "assistant", "content": example.response},
    ]


def message_ids(tokenizer, message: dict) -> list[tuple[list[int], bool]]:
    """A message's ids, each part with whether it is learned, as the demo's `format_conversation`: system and
    user never, any other role unless its `loss` is false; a tool message is the assistant's call (the tool's
    name as metadata), learned, then its observation (text, or JSON), never learned."""
    learned = message.get("loss", True) and message["role"] not in ("system", "user")
    if message["role"] != "tool":
        return [(tokenizer.build_single_message(message["role"], "", message["content"]), learned)]
    observation = message["observation"]
    if not isinstance(observation, str):
        observation = json.dumps(observation, ensure_ascii=False)
    call = tokenizer.build_single_message("assistant", message["name"], tool_call_text(message["parameters"]))
    return [(call, learned), (tokenizer.build_single_message("observation", "", observation), False)]


def conversation_ids(tokenizer, messages: list[dict], tools: object) -> tuple[list[int], list[bool]]:
    """`[gMASK] sop`, the tools as a first system message (when the row has `tools`), then every message; and
    for each token whether it is learned."""
    if tools is not None:
        described = TOOL_DEFINITION_PREFIX + json.dumps(tools, indent=4, ensure_ascii=False)
        messages = [{"role": "system", "content": described}, *messages]
    input_ids = [tokenizer.get_command("[gMASK]"), tokenizer.get_command("sop")]
    learned = [False, False]
    for message in messages:
        for ids, learn in message_ids(tokenizer, message):
            input_ids += ids
            learned += [learn] * len(ids)
    return input_ids, learned


def conversation_features(
    tokenizer, messages: list[dict], tools: object, max_input_length: int, max_output_length: int
) -> dict[str, list[int]]:
    """As `process_batch`: the conversation's ids, `</s>`; the loss mask shifted by one, so `<|assistant|>`
    itself gets no label and the token after an answer (`</s>` or the next role token) does; cut to input +
    output + 1 tokens, unpadded. Tools, tool calls and `loss` flags as `format_conversation` reads them
    (finetune_hf.py refuses them, though its README documents them)."""
    input_ids, learned = conversation_ids(tokenizer, messages, tools)
    input_ids.append(tokenizer.eos_token_id)
    labels = [
        token if learn else IGNORE_INDEX for token, learn in zip(input_ids, [False, *learned], strict=True)
    ]
    length = max_input_length + max_output_length + 1
    return {"input_ids": input_ids[:length], "labels": labels[:length]}


def training_features(
    tokenizer, example, max_source_length: int, max_target_length: int
) -> dict[str, list[int]]:
    """`conversation_features` of the example's conversation, right-padded to source + target + 1 with
    0 / -100 for the collator (the demo pads to the longest row instead, which changes no loss)."""
    features = conversation_features(
        tokenizer, conversation(example), example.tools, max_source_length, max_target_length
    )
    padding = max_source_length + max_target_length + 1 - len(features["input_ids"])
    return {
        "input_ids": features["input_ids"] + [tokenizer.pad_token_id] * padding,
        "labels": features["labels"] + [IGNORE_INDEX] * padding,
    }


def evaluation_prompt_ids(tokenizer, example, max_source_length: int) -> list[int]:
    """As `process_batch_eval` for the example's answer (its last assistant message): everything before it cut
    to max_source_length, then `<|assistant|>`."""
    messages = conversation(example)
    answer = max(index for index, message in enumerate(messages) if message["role"] == "assistant")
    input_ids, _ = conversation_ids(tokenizer, messages[:answer], example.tools)
    return input_ids[:max_source_length] + [tokenizer.get_command("<|assistant|>")]


def reference_ids(tokenizer, response: str, max_target_length: int) -> list[int]:
    """The demo's `output_ids`: the answer's message after its role token, `</s>`, cut to max_target_length."""
    ids = tokenizer.build_single_message("assistant", "", response)[1:] + [tokenizer.eos_token_id]
    return ids[:max_target_length]


def reference_text(tokenizer, response: str, max_target_length: int) -> str:
    """The label as the demo's `compute_metrics` scores it: decoded and stripped."""
    return tokenizer.decode(reference_ids(tokenizer, response, max_target_length)).strip()


def chat_prompt_ids(
    tokenizer, query: str, history: list[tuple[str, str]], system: str | None = None
) -> list[int]:
    """The published `chat()` prompt (`build_chat_input`) for a system prompt and (query, answer) turns."""
    messages = [{"role": "system", "content": system}] if system else []
    for old_query, response in history:
        messages += [{"role": "user", "content": old_query}, {"role": "assistant", "content": response}]
    return tokenizer.build_chat_input(query, history=messages, role="user")["input_ids"][0].tolist()


def stop_token_ids(tokenizer) -> list[int]:
    """The published `chat()` stops on `</s>`, `<|user|>` and `<|observation|>`."""
    return [
        tokenizer.eos_token_id,
        tokenizer.get_command("<|user|>"),
        tokenizer.get_command("<|observation|>"),
    ]


def clean_response(text: str) -> str:
    """The published `process_response` without tools: the last `<|assistant|>` part, its metadata line
    dropped when blank, stripped, the training-time placeholder filled in."""
    content = ""
    for part in text.split("<|assistant|>"):
        metadata, content = part.split("\n", maxsplit=1) if "\n" in part else ("", part)
        if not metadata.strip():
            content = content.strip().replace(TRAINING_TIME_PLACEHOLDER, "2023年")
    return content


def write_tiny_checkpoint(path, **options):
    return write_tiny(path, **{"flavour": "chatglm3", **options})


def write_random_checkpoint(path, config_values: dict):
    """A random checkpoint of `config_values`' shape (the bench's, at the real size)."""
    return write_random(path, config_values, flavour="chatglm3")
