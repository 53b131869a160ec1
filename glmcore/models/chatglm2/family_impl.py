"""ChatGLM2-6B's implementation of the family interface (glmcore/models/family.py; every family passes
tests/test_family_contract.py, and docs/architecture.md lists what each name does): classes, the training rows
and evaluation prompts of the published `ptuning/main.py`, the chat prompt, the prefix encoder."""

from __future__ import annotations

from glmcore.examples import IGNORE_INDEX, conversation_example, turns_example
from glmcore.models.chatglm2 import TITLE
from glmcore.models.chatglm2.configuration import ChatGLM2Config
from glmcore.models.chatglm2.modeling import ChatGLM2ForConditionalGeneration, PrefixEncoder, prefix_width
from glmcore.models.chatglm2.tiny import write_random_checkpoint as write_random
from glmcore.models.chatglm2.tiny import write_tiny_checkpoint as write_tiny
from glmcore.models.chatglm2.tokenization import ChatGLM2Tokenizer

TRAINING_TIME_PLACEHOLDER = "[[训练时间]]"

config_class = ChatGLM2Config
model_class = ChatGLM2ForConditionalGeneration
tokenizer_class = ChatGLM2Tokenizer

__all__ = ["prefix_width"]


def training_features(
    tokenizer, example, max_source_length: int, max_target_length: int
) -> dict[str, list[int]]:
    """As `preprocess_function_train`: `[gMASK] sop` + the round prompt cut to max_source_length, the answer
    cut to max_target_length, `</s>`; right-padded with 0 to source + target + 1; labels -100 on the prompt
    and wherever the label equals the pad id."""
    example = turns_example(example, TITLE)
    prompt = tokenizer.build_prompt(example.query, list(example.history))
    source = tokenizer.encode(prompt, add_special_tokens=True, truncation=True, max_length=max_source_length)
    target = tokenizer.encode(
        example.response, add_special_tokens=False, truncation=True, max_length=max_target_length
    )
    input_ids = source + target + [tokenizer.eos_token_id]
    labels = [tokenizer.pad_token_id] * len(source) + target + [tokenizer.eos_token_id]
    padding = max_source_length + max_target_length + 1 - len(input_ids)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": input_ids + [pad] * padding,
        "labels": [label if label != pad else IGNORE_INDEX for label in labels + [pad] * padding],
    }


def conversation_features(
    tokenizer, messages: list[dict], tools: object, max_input_length: int, max_output_length: int
) -> dict[str, list[int]]:
    """A conversation of user/assistant turns as the training row of its last answer, the turns before it as
    history: the only conversation ptuning/main.py knows (anything more is refused)."""
    return training_features(
        tokenizer, conversation_example(messages, tools), max_input_length, max_output_length
    )


def evaluation_prompt_ids(tokenizer, example, max_source_length: int) -> list[int]:
    """As `preprocess_function_eval`: the round prompt with `[gMASK] sop`, cut to max_source_length in all."""
    example = turns_example(example, TITLE)
    prompt = tokenizer.build_prompt(example.query, list(example.history))
    return tokenizer.encode(prompt, add_special_tokens=True, truncation=True, max_length=max_source_length)


def reference_text(tokenizer, response: str, max_target_length: int) -> str:
    """The label as `ptuning/main.py` scores it: tokenized with specials, cut, pads dropped, decoded."""
    ids = tokenizer.encode(response, add_special_tokens=True, truncation=True, max_length=max_target_length)
    return tokenizer.decode(ids, skip_special_tokens=True)


def chat_prompt_ids(
    tokenizer, query: str, history: list[tuple[str, str]], system: str | None = None
) -> list[int]:
    """The published `chat()` prompt; ChatGLM2 has no system prompt, so one is written as a first round."""
    if system:
        history = [(system, ""), *history]
    return tokenizer.encode(tokenizer.build_prompt(query, list(history)))


def stop_token_ids(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id]


def clean_response(text: str) -> str:
    """The published `process_response`: stripped, the training-time placeholder filled in."""
    return text.strip().replace(TRAINING_TIME_PLACEHOLDER, "2023年")


def new_prefix_encoder(config) -> PrefixEncoder:
    return PrefixEncoder(config)


def write_tiny_checkpoint(path, **options):
    return write_tiny(path, **{"flavour": "chatglm2", **options})


def write_random_checkpoint(path, config_values: dict):
    """A random checkpoint of `config_values`' shape (the bench's, at the real size)."""
    return write_random(path, config_values, flavour="chatglm2")


def new_decoder(model, batch: int, capacity: int, *, use_graph: bool | None = None, prediction: bool = False):
    """The static-cache decoder (glmcore.decoding's, with this family's cache and positions); `prediction`
    changes nothing (positions here are plain, with no `[MASK]` rule to follow)."""
    from glmcore.models.chatglm2.decoding import new_decoder as make

    return make(model, batch, capacity, use_graph=use_graph)
