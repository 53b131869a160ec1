"""ChatGLM-6B's implementation of the model-family interface (glmcore/models/family.py).

Every name here is part of the interface; generic glmcore code reaches ChatGLM-6B only through them.
"""

from __future__ import annotations

from glmcore.models.chatglm6b.chat import chat_prompt_ids, clean_response, settled_length, stop_token_ids
from glmcore.models.chatglm6b.configuration import ChatGLMConfig
from glmcore.models.chatglm6b.data import (
    conversation_features,
    evaluation_prompt_ids,
    reference_text,
    training_features,
)
from glmcore.models.chatglm6b.decoding import ChatGLMStaticDecoder
from glmcore.models.chatglm6b.modeling import ChatGLMForConditionalGeneration, PrefixEncoder
from glmcore.models.chatglm6b.tiny import write_random_checkpoint, write_tiny_checkpoint
from glmcore.models.chatglm6b.tokenization import ChatGLMTokenizer

config_class = ChatGLMConfig
model_class = ChatGLMForConditionalGeneration
tokenizer_class = ChatGLMTokenizer


def new_decoder(
    model, batch: int, capacity: int, *, use_graph: bool | None = None, prediction: bool = False
) -> ChatGLMStaticDecoder:
    """The static-cache decoder (CUDA graph on a GPU) for `batch` rows of up to `capacity` positions; for
    `prediction` the answer sits at a `[MASK]` written in the prompt before the `[gMASK]`, as ptuning/main.py's
    prediction path places it."""
    return ChatGLMStaticDecoder(model, batch, capacity, use_graph=use_graph, mask_first=prediction)


def new_prefix_encoder(config: ChatGLMConfig) -> PrefixEncoder:
    """A freshly initialised P-tuning v2 prefix encoder for `config.pre_seq_len` / `config.prefix_projection`."""
    return PrefixEncoder(config)


def prefix_width(config) -> int:
    """Values per virtual token: a key and a value of every layer (layers × 2 × hidden)."""
    return config.num_layers * 2 * config.hidden_size


__all__ = [
    "chat_prompt_ids",
    "clean_response",
    "config_class",
    "conversation_features",
    "evaluation_prompt_ids",
    "model_class",
    "new_decoder",
    "new_prefix_encoder",
    "prefix_width",
    "reference_text",
    "settled_length",
    "stop_token_ids",
    "tokenizer_class",
    "training_features",
    "write_random_checkpoint",
    "write_tiny_checkpoint",
]
