"""GLM-4-9B in its remote-code layout (THUDM/glm-4-9b-chat, glm-4-9b, glm-4-9b-chat-1m: `model_type chatglm`).

ChatGLM3's architecture grown to 40 layers with a 151,552-token tiktoken vocabulary, a rotary base of
10000 × rope_ratio, qkv bias and RMSNorm epsilon 1.5625e-7; its prompt is the chat template in
tokenizer_config.json. Importing this package does not import torch.

A folder is GLM-4 by the first of: config.json's `_name_or_path` names glm-4-9b (any owner or suffix);
tokenizer_config.json's `tokenizer_class` is the published `ChatGLM4Tokenizer`; its `tokenization_chatglm.py`
is a published GLM-4 file (by sha256; it is never run); config.json's `padded_vocab_size` is GLM-4's 151552
(what a config written by `save_pretrained` alone still says). ChatGLM2/3's rule answers none of these.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from glmcore.models.chatglm2 import TINY_SIZES, shape
from glmcore.models.family import DemoModel, Download, ModelFamily

__all__ = ["FAMILY", "PUBLISHED_CONFIG", "detect", "shape"]

NAME = "glm-4-9b-chat"
TITLE = "GLM-4-9B"
TOKENIZER_FILE = "tokenizer.model"

PUBLISHED_CONFIG = {
    "_name_or_path": "THUDM/glm-4-9b-chat",
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "attn_implementation": "sdpa",
    "bias_dropout_fusion": True,
    "ffn_hidden_size": 13696,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "hidden_size": 4096,
    "kv_channels": 128,
    "layernorm_epsilon": 1.5625e-07,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "num_hidden_layers": 40,
    "num_layers": 40,
    "rope_ratio": 500,
    "original_rope": True,
    "padded_vocab_size": 151552,
    "post_layer_norm": True,
    "rmsnorm": True,
    "seq_length": 131072,
    "use_cache": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.44.0",
    "tie_word_embeddings": False,
    "eos_token_id": [151329, 151336, 151338],
    "pad_token_id": 151329,
}
"""THUDM/glm-4-9b-chat's config.json (its `auto_map` left out: nothing from a checkpoint is imported)."""

NAME_PATTERN = re.compile(r"glm-4-9b", re.IGNORECASE)
PUBLISHED_TOKENIZER_CLASS = "ChatGLM4Tokenizer"
PUBLISHED_TOKENIZER_CODE = {"90a9a1b739f834cdf7a2f40959f9eeff2a705b80acefb2cea9c19ff3958a9279"}
"""sha256 of glm-4-9b-chat's tokenization_chatglm.py (tests/golden/glm4/README.md names the mirror read)."""


def detect(config_json: dict, model_dir: Path) -> str | None:
    """The reason `model_dir` is a GLM-4-9B folder in the remote-code layout, or None."""
    if config_json.get("model_type") != "chatglm":
        return None
    name = str(config_json.get("_name_or_path", ""))
    if NAME_PATTERN.search(name):
        return f"config.json _name_or_path is {name}"
    model_dir = Path(model_dir)
    if tokenizer_class(model_dir) == PUBLISHED_TOKENIZER_CLASS:
        return f"tokenizer_config.json names the {PUBLISHED_TOKENIZER_CLASS} tokenizer"
    code = model_dir / "tokenization_chatglm.py"
    if code.is_file() and hashlib.sha256(code.read_bytes()).hexdigest() in PUBLISHED_TOKENIZER_CODE:
        return "tokenization_chatglm.py is the published glm-4-9b-chat file"
    if config_json.get("padded_vocab_size") == PUBLISHED_CONFIG["padded_vocab_size"]:
        return "config.json has GLM-4's padded_vocab_size 151552 (ChatGLM2/3's is 65024)"
    return None


def tokenizer_class(model_dir: Path) -> str | None:
    """tokenizer_config.json's `tokenizer_class`, or None where the file is absent or unreadable."""
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config.get("tokenizer_class") if isinstance(config, dict) else None


SPECIAL_IDS = {
    "gmask_token_id": 151331,
    "bos_token_id": 151333,
    "eos_token_id": 151329,
    "pad_token_id": 151329,
}
"""`[gMASK]`, `<sop>`, `<|endoftext|>` (also the pad) of the published tokenizer_config.json."""
TINY_SPECIAL_IDS = {"gmask_token_id": 990, "bos_token_id": 992, "eos_token_id": 2, "pad_token_id": 0}
"""The bench's toy model: ChatGLM2/3's sizes and ids (it feeds ids, no tokenizer)."""
DEMO_SHAPE = {
    "hidden_size": 128,
    "num_layers": 4,
    "num_attention_heads": 4,
    "ffn_hidden_size": 352,
    "seq_length": 2048,
}
"""The demo model: ChatGLM2/3's demo sizes and 2048 positions."""

FAMILY = ModelFamily(
    name=NAME,
    title=TITLE,
    aliases=("glm-4-9b", "glm-4-9b-chat-1m"),
    package=__name__,
    tokenizer_file=TOKENIZER_FILE,
    published=PUBLISHED_CONFIG,
    special_ids=SPECIAL_IDS,
    tiny_config={
        **PUBLISHED_CONFIG,
        **TINY_SIZES,
        "num_hidden_layers": TINY_SIZES["num_layers"],
        "eos_token_id": TINY_SPECIAL_IDS["eos_token_id"],
        "pad_token_id": TINY_SPECIAL_IDS["pad_token_id"],
    },
    tiny_special_ids=TINY_SPECIAL_IDS,
    demo=DemoModel(folder="demo-glm4-tiny", shape=DEMO_SHAPE, key="4", configs="demo-glm4"),
    download=Download(
        hub_repo="zai-org/glm-4-9b-chat",
        manifest_name="glm-4-9b-chat",
        modelscope_repo="ZhipuAI/glm-4-9b-chat",
        note="ChatGLM3's architecture at 9B with a 151,552-token vocabulary and 128K positions; 19 GB of BF16 "
        "weights in 10 shards; no revision or weight sha256 is published in glmtui's reference: the download "
        "follows main and checks each file against the sha256 its source lists",
    ),
    system_role=True,
    conversations=True,
    metric_mode="finetune-demo",
)
