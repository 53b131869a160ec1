"""ChatGLM3-6B (and -base): ChatGLM2-6B's architecture with its own tokenizer, roles and examples.

The detection rule is ChatGLM2's (glmcore/models/chatglm2/__init__.py), since it has to tell the two
apart. Importing this package does not import torch.
"""

from __future__ import annotations

from pathlib import Path

from glmcore.models.chatglm2 import PUBLISHED_CONFIG as CHATGLM2_PUBLISHED_CONFIG
from glmcore.models.chatglm2 import identify, shape

__all__ = ["PUBLISHED_CONFIG", "detect", "shape"]

NAME = "chatglm3-6b"
TITLE = "ChatGLM3-6B"
TOKENIZER_FILE = "tokenizer.model"

PUBLISHED_CONFIG = {
    **CHATGLM2_PUBLISHED_CONFIG,
    "_name_or_path": "THUDM/chatglm3-6b",
    "seq_length": 8192,
    "transformers_version": "4.30.2",
}
"""THUDM/chatglm3-6b's config.json: ChatGLM2-6B's but for these three keys (`auto_map` left out)."""


def detect(config_json: dict, model_dir: Path) -> str | None:
    """The reason `model_dir` is a ChatGLM3-6B folder, or None."""
    found = identify(config_json, model_dir)
    return found[1] if found and found[0] == NAME else None
