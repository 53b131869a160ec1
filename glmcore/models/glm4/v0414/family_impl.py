"""GLM-4-9B-0414's (and GLM-Z1-9B-0414's) implementation of the family interface: transformers' own classes
(v0414/modeling.py), and layout 1's training rows, evaluation prompts and chat prompt through the folder's own
chat template (Z1's writes the reasoning, kept as published); tools as layout 1 writes and parses them
(glmcore/models/glm4/tools.py), rendered by the folder's template."""

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
from glmcore.models.glm4.native import new_decoder, new_prefix_encoder, peft_prefix_config, prefix_width
from glmcore.models.glm4.native_tiny import write_native_checkpoint, write_random_native_checkpoint
from glmcore.models.glm4.tools import arguments_text, may_be_tool_call, parse_tool_call, tool_prompt_ids
from glmcore.models.glm4.v0414.modeling import GLM40414Config, GLM40414ForCausalLM, GLM40414Tokenizer

config_class = GLM40414Config
model_class = GLM40414ForCausalLM
tokenizer_class = GLM40414Tokenizer

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
    return write_native_checkpoint(path, "glm4", **options)


def write_random_checkpoint(path: Path, config_values: dict) -> Path:
    return write_random_native_checkpoint(path, "glm4", config_values)
