"""glm-4-9b-chat-hf's implementation of the family interface: transformers' own classes (hf/modeling.py), and
layout 1's training rows, evaluation prompts and chat prompt, which are those of the published chat template
(the same template: tests/test_glm4_hf.py holds the rows to the GLM-4 demo's on this layout), and so its tools:
layout 1's prompt with tools and its published server's parser (glmcore/models/glm4/tools.py)."""

from __future__ import annotations

from pathlib import Path

from glmcore.models.glm4.family_impl import (
    chat_prompt_ids,
    clean_response,
    conversation_features,
    evaluation_prompt_ids,
    reference_text,
    stop_token_ids,
    training_features,
)
from glmcore.models.glm4.hf.modeling import GLM4HFConfig, GLM4HFForCausalLM, GLM4HFTokenizer
from glmcore.models.glm4.native import new_decoder, new_prefix_encoder, peft_prefix_config, prefix_width
from glmcore.models.glm4.native_tiny import write_native_checkpoint, write_random_native_checkpoint
from glmcore.models.glm4.tools import arguments_text, may_be_tool_call, parse_tool_call, tool_prompt_ids

config_class = GLM4HFConfig
model_class = GLM4HFForCausalLM
tokenizer_class = GLM4HFTokenizer

__all__ = [
    "arguments_text",
    "chat_prompt_ids",
    "clean_response",
    "conversation_features",
    "evaluation_prompt_ids",
    "may_be_tool_call",
    "new_decoder",
    "new_prefix_encoder",
    "parse_tool_call",
    "peft_prefix_config",
    "prefix_width",
    "reference_text",
    "stop_token_ids",
    "tool_prompt_ids",
    "training_features",
]


def write_tiny_checkpoint(path: Path, **options) -> Path:
    return write_native_checkpoint(path, "glm", **options)


def write_random_checkpoint(path: Path, config_values: dict) -> Path:
    return write_random_native_checkpoint(path, "glm", config_values)
