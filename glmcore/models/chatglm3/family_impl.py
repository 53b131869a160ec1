"""ChatGLM3-6B's implementation of the family interface: ChatGLM2's classes with ChatGLM3's tokenizer,
the role-token conversations of the published fine-tuning demo (`finetune_demo/finetune_hf.py`) and the
published chat prompt and answer clean-up."""

from __future__ import annotations

from glmcore.models.chatglm2.configuration import ChatGLM2Config
from glmcore.models.chatglm2.family_impl import (
    IGNORE_INDEX,
    TRAINING_TIME_PLACEHOLDER,
    new_decoder,
    new_prefix_encoder,
)
from glmcore.models.chatglm2.modeling import ChatGLM2ForConditionalGeneration, prefix_width
from glmcore.models.chatglm2.tiny import write_random_checkpoint as write_random
from glmcore.models.chatglm2.tiny import write_tiny_checkpoint as write_tiny
from glmcore.models.chatglm3.tokenization import ChatGLM3Tokenizer

config_class = ChatGLM2Config
model_class = ChatGLM2ForConditionalGeneration
tokenizer_class = ChatGLM3Tokenizer

__all__ = ["new_decoder", "new_prefix_encoder", "prefix_width"]


def conversation(example) -> list[dict]:
    """An example as the demo's `conversations`: its history turns, then the query and the response."""
    messages = []
    for query, response in example.history:
        messages += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
    return [
        *messages,
        {"role": "user", "content": example.query},
        {"role": "assistant", "content": example.response},
    ]


def training_features(
    tokenizer, example, max_source_length: int, max_target_length: int
) -> dict[str, list[int]]:
    """As `process_batch`: `[gMASK] sop`, each message, `</s>`; the loss mask (assistant messages) shifted
    by one, so `<|assistant|>` itself gets no label and the token after an answer (`</s>` or the next
    `<|user|>`) does; cut to source + target + 1. Right-padded to that length with 0 / -100 for the
    collator (the demo pads to the longest row instead, which changes no loss)."""
    input_ids = [tokenizer.get_command("[gMASK]"), tokenizer.get_command("sop")]
    loss_mask = [False, False]
    for message in conversation(example):
        ids = tokenizer.build_single_message(message["role"], "", message["content"])
        input_ids += ids
        loss_mask += [message["role"] == "assistant"] * len(ids)
    input_ids.append(tokenizer.eos_token_id)
    loss_mask = [False, *loss_mask]
    labels = [token if masked else IGNORE_INDEX for token, masked in zip(input_ids, loss_mask, strict=False)]
    length = max_source_length + max_target_length + 1
    input_ids, labels = input_ids[:length], labels[:length]
    padding = length - len(input_ids)
    return {
        "input_ids": input_ids + [tokenizer.pad_token_id] * padding,
        "labels": labels + [IGNORE_INDEX] * padding,
    }


def evaluation_prompt_ids(tokenizer, example, max_source_length: int) -> list[int]:
    """As `process_batch_eval` for the example's answer: everything before it cut to max_source_length,
    then `<|assistant|>`."""
    input_ids = [tokenizer.get_command("[gMASK]"), tokenizer.get_command("sop")]
    for message in conversation(example)[:-1]:
        input_ids += tokenizer.build_single_message(message["role"], "", message["content"])
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
