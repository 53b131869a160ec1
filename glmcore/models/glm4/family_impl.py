"""glm-4-9b-chat's implementation of the family interface: ChatGLM2/3's model with GLM-4's config and
tokenizer, training rows and evaluation prompts as GLM-4's fine-tuning demo builds them from `messages`
(THUDM/GLM-4 `finetune_demo/finetune.py`, `process_batch` with `combine: true` as every demo config sets it),
and the chat prompt of the published chat template."""

from __future__ import annotations

import json

from glmcore.examples import IGNORE_INDEX
from glmcore.models.chatglm2.family_impl import new_decoder, new_prefix_encoder
from glmcore.models.chatglm2.modeling import prefix_width
from glmcore.models.chatglm3.family_impl import conversation
from glmcore.models.glm4.configuration import GLM4Config
from glmcore.models.glm4.modeling import GLM4ForConditionalGeneration
from glmcore.models.glm4.tiny import STOP_TOKENS, write_random_checkpoint, write_tiny_checkpoint
from glmcore.models.glm4.tokenization import ChatGLM4Tokenizer
from glmcore.models.glm4.tools import arguments_text, may_be_tool_call, parse_tool_call, tool_prompt_ids
from glmcore.models.head import peft_prefix_tuning_config

config_class = GLM4Config
model_class = GLM4ForConditionalGeneration
tokenizer_class = ChatGLM4Tokenizer

__all__ = [
    "arguments_text",
    "may_be_tool_call",
    "new_decoder",
    "new_prefix_encoder",
    "parse_tool_call",
    "prefix_width",
    "tool_prompt_ids",
    "write_random_checkpoint",
    "write_tiny_checkpoint",
]


def demo_messages(messages: list[dict], tools: object) -> list[dict]:
    """A conversation (glmcore's checked form) as the demo's `messages`: the row's `tools` on a first system
    message; a tool call as the assistant's `{"name": ..., "arguments": ...}` JSON (the demo's data format),
    its observation as an observation message."""
    result = [{"role": "system", "content": "", "tools": tools}] if tools is not None else []
    for message in messages:
        if message["role"] != "tool":
            result.append(
                {key: message[key] for key in ("role", "content", "metadata", "tools") if key in message}
            )
            continue
        call = {"name": message["name"], "arguments": message["parameters"]}
        result.append({"role": "assistant", "content": json.dumps(call, ensure_ascii=False)})
        observation = message.get("observation")
        if observation is not None:
            text = (
                observation if isinstance(observation, str) else json.dumps(observation, ensure_ascii=False)
            )
            result.append({"role": "observation", "content": text})
    return result


def last_answer_start(tokenizer, input_ids: list[int]) -> int:
    """The index of the last `<|assistant|>` token (the demo's `last_assistant_index`)."""
    assistant = tokenizer.get_command("<|assistant|>")
    return len(input_ids) - 1 - input_ids[::-1].index(assistant)


def conversation_features(
    tokenizer, messages: list[dict], tools: object, max_input_length: int, max_output_length: int
) -> dict[str, list[int]]:
    """As `process_batch` with `combine`: the chat template's ids, then `<|user|>` (the demo's end of a chat);
    learned are the tokens after the last `<|assistant|>` and its newline, through that `<|user|>` (the
    demo's loss mask shifted by one); cut to input + output + 1 tokens, unpadded."""
    input_ids = tokenizer.chat_ids(demo_messages(messages, tools))
    start = last_answer_start(tokenizer, input_ids)
    input_ids.append(tokenizer.get_command("<|user|>"))
    labels = [token if index > start + 1 else IGNORE_INDEX for index, token in enumerate(input_ids)]
    length = max_input_length + max_output_length + 1
    return {"input_ids": input_ids[:length], "labels": labels[:length]}


def training_features(
    tokenizer, example, max_source_length: int, max_target_length: int
) -> dict[str, list[int]]:
    """`conversation_features` of the example's conversation (an AdvertiseGen row is its content as the user's
    message, its summary as the answer), right-padded to source + target + 1 with the pad id / -100 for the
    collator (the demo pads to the longest row instead, which changes no loss)."""
    features = conversation_features(
        tokenizer, conversation(example), example.tools, max_source_length, max_target_length
    )
    padding = max_source_length + max_target_length + 1 - len(features["input_ids"])
    return {
        "input_ids": features["input_ids"] + [tokenizer.pad_token_id] * padding,
        "labels": features["labels"] + [IGNORE_INDEX] * padding,
    }


def evaluation_prompt_ids(tokenizer, example, max_source_length: int) -> list[int]:
    """As `process_batch_eval` makes the row of the example's answer (its last assistant message) from the
    messages before it: their chat-template ids cut to max_source_length, then `<|assistant|>`.

    That is the demo's row without `combine`; with it, the demo evaluates on the whole conversation, the answer
    included, followed by `[gMASK]` (docs/decisions.md), which glmtui does not copy."""
    messages = demo_messages(conversation(example), example.tools)
    answer = max(index for index, message in enumerate(messages) if message["role"] == "assistant")
    input_ids = tokenizer.chat_ids(messages[:answer])
    return input_ids[:max_source_length] + [tokenizer.get_command("<|assistant|>")]


def reference_ids(tokenizer, response: str, max_target_length: int) -> list[int]:
    """The demo's `output_ids`: the answer's message after its role token, then `<|user|>`, cut to
    max_target_length."""
    ids = tokenizer.chat_ids([{"role": "assistant", "content": response}])[3:]
    return (ids + [tokenizer.get_command("<|user|>")])[:max_target_length]


def reference_text(tokenizer, response: str, max_target_length: int) -> str:
    """The label as the demo's `compute_metrics` scores it (decoded and stripped), without the `<|user|>` its
    decode keeps at the end: glmtui's predictions stop before a stop token."""
    return tokenizer.decode(
        reference_ids(tokenizer, response, max_target_length), skip_special_tokens=True
    ).strip()


def chat_prompt_ids(
    tokenizer, query: str, history: list[tuple[str, str]], system: str | None = None
) -> list[int]:
    """The published chat template with a generation prompt for a system prompt and (query, answer) turns."""
    messages = [{"role": "system", "content": system}] if system else []
    for old_query, response in history:
        messages += [{"role": "user", "content": old_query}, {"role": "assistant", "content": response}]
    messages.append({"role": "user", "content": query})
    return tokenizer.chat_ids(messages, add_generation_prompt=True)


def stop_token_ids(tokenizer) -> list[int]:
    return [tokenizer.get_command(token) for token in STOP_TOKENS]


def peft_prefix_config(config) -> dict:
    """The adapter_config.json of PEFT prefix tuning over this model, as the GLM-4 demo's `ptuning_v2.yaml`
    configures it (`num_attention_heads` the key/value groups, `token_dim` their channels), in inference mode:
    PEFT then reads the saved keys and values as they are."""
    return peft_prefix_tuning_config(
        config, config.multi_query_group_num, config.kv_channels, config.num_layers
    )


def clean_response(text: str) -> str:
    """As the published basic demo (`trans_cli_demo.py`) shows an answer: decoded without specials, stripped
    (the model writes its empty metadata line, a newline, first)."""
    return text.strip()
