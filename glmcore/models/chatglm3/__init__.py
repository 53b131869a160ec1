"""ChatGLM3-6B (and -base): ChatGLM2-6B's architecture with its own tokenizer, roles and examples.

The detection rule is ChatGLM2's (glmcore/models/chatglm2/__init__.py), since it has to tell the two
apart. Importing this package does not import torch.
"""

from __future__ import annotations

from pathlib import Path

from glmcore.models.chatglm2 import identify, shape

__all__ = ["PUBLISHED_CONFIG", "detect", "shape"]

NAME = "chatglm3-6b"
TITLE = "ChatGLM3-6B"
TOKENIZER_FILE = "tokenizer.model"

PUBLISHED_CONFIG = {
    "_name_or_path": "THUDM/chatglm3-6b",
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True,
    "ffn_hidden_size": 13696,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "hidden_size": 4096,
    "kv_channels": 128,
    "layernorm_epsilon": 1e-05,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "num_layers": 28,
    "original_rope": True,
    "padded_vocab_size": 65024,
    "post_layer_norm": True,
    "rmsnorm": True,
    "seq_length": 8192,
    "use_cache": True,
    "torch_dtype": "float16",
    "transformers_version": "4.30.2",
    "tie_word_embeddings": False,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
"""THUDM/chatglm3-6b's config.json (its `auto_map` left out: nothing from a checkpoint is imported)."""


def detect(config_json: dict, model_dir: Path) -> str | None:
    """The reason `model_dir` is a ChatGLM3-6B folder, or None."""
    found = identify(config_json, model_dir)
    return found[1] if found and found[0] == NAME else None
