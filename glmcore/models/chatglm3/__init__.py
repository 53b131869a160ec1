"""ChatGLM3-6B (and -base): ChatGLM2-6B's architecture with its own tokenizer, roles and examples.

The detection rule is ChatGLM2's (glmcore/models/chatglm2/__init__.py), since it has to tell the two
apart. Importing this package does not import torch.
"""

from __future__ import annotations

from pathlib import Path

from glmcore.models.chatglm2 import identify

NAME = "chatglm3-6b"
TITLE = "ChatGLM3-6B"
TOKENIZER_FILE = "tokenizer.model"


def detect(config_json: dict, model_dir: Path) -> str | None:
    """The reason `model_dir` is a ChatGLM3-6B folder, or None."""
    found = identify(config_json, model_dir)
    return found[1] if found and found[0] == NAME else None
