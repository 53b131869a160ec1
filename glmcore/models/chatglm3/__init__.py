"""ChatGLM3-6B (and -base): ChatGLM2-6B's architecture with its own tokenizer, roles and examples.

The detection rule is ChatGLM2's (glmcore/models/chatglm2/__init__.py), since it has to tell the two
apart. Importing this package does not import torch.
"""

from __future__ import annotations

from pathlib import Path

from glmcore.models.chatglm2 import DEMO_SHAPE, SPECIAL_IDS, TINY_SIZES, TINY_SPECIAL_IDS, identify, shape
from glmcore.models.chatglm2 import PUBLISHED_CONFIG as CHATGLM2_PUBLISHED_CONFIG
from glmcore.models.family import DemoModel, Download, ModelFamily

__all__ = ["FAMILY", "PUBLISHED_CONFIG", "detect", "shape"]

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


FAMILY = ModelFamily(
    name=NAME,
    title=TITLE,
    aliases=("chatglm3",),
    package=__name__,
    tokenizer_file=TOKENIZER_FILE,
    published=PUBLISHED_CONFIG,
    special_ids=SPECIAL_IDS,
    tiny_config={**PUBLISHED_CONFIG, **TINY_SIZES},
    tiny_special_ids=TINY_SPECIAL_IDS,
    demo=DemoModel(folder="demo-chatglm3-tiny", shape=DEMO_SHAPE, key="3", configs="demo-chatglm3"),
    download=Download(
        hub_repo="zai-org/chatglm3-6b",
        manifest_name="chatglm3-6b",
        modelscope_repo="ZhipuAI/chatglm3-6b",
        # ChatGLM3-6B's README publishes no Tsinghua Cloud share (the hub, ModelScope and others only).
        note="ChatGLM2-6B's architecture with roles and a system prompt (8K positions); 12 GB of FP16 "
        "weights in 7 shards; its manifest comes from a mirror, so the hub may have moved on",
    ),
    system_role=True,
    conversations=True,
    metric_mode="finetune-demo",
)
