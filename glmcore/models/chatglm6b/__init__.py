"""ChatGLM-6B (v1.1), implemented natively for transformers 5: how a folder is recognised and its shape.

This module imports no torch. The implementation (configuration, model, tokenizer, example and prompt
building, the decoding fast path, the prefix encoder, tiny checkpoints) is reached through `family_impl`.
"""

from __future__ import annotations

from pathlib import Path

from glmcore.models.family import DemoModel, Download, ModelFamily, ModelShape, ModelShapeError

PUBLISHED_CONFIG = {
    "_name_or_path": "THUDM/chatglm-6b",
    "architectures": ["ChatGLMModel"],
    "bos_token_id": 130004,
    "eos_token_id": 130005,
    "mask_token_id": 130000,
    "gmask_token_id": 130001,
    "pad_token_id": 3,
    "hidden_size": 4096,
    "inner_hidden_size": 16384,
    "layernorm_epsilon": 1e-05,
    "max_sequence_length": 2048,
    "model_type": "chatglm",
    "num_attention_heads": 32,
    "num_layers": 28,
    "position_encoding_2d": True,
    "torch_dtype": "float16",
    "use_cache": True,
    "vocab_size": 130528,
}
"""THUDM/chatglm-6b's config.json (its `auto_map` left out: nothing from a checkpoint is imported)."""

SIGNATURE_KEYS = ("inner_hidden_size", "position_encoding_2d")
"""Keys only ChatGLM-6B's config carries."""
LATER_GENERATION_KEYS = ("padded_vocab_size", "multi_query_attention", "kv_channels", "ffn_hidden_size")
"""Keys only the ChatGLM2/3 configs carry."""


def detect(config_json: dict, model_dir: Path) -> str | None:
    """Why `model_dir` holds ChatGLM-6B: its config.json's model_type and keys (and its name, when given)."""
    if config_json.get("model_type") != "chatglm":
        return None
    if any(key in config_json for key in LATER_GENERATION_KEYS):
        return None
    present = [key for key in SIGNATURE_KEYS if key in config_json]
    if not present:
        return None
    name = config_json.get("_name_or_path")
    named = f" and _name_or_path is {name}" if isinstance(name, str) and "chatglm-6b" in name.lower() else ""
    return f"config.json has model_type chatglm with ChatGLM-6B's {' and '.join(present)}{named}"


def shape(config_json: dict) -> ModelShape:
    """The sizes of a ChatGLM-6B model from its config.json, under the published key names."""

    def value(name: str) -> int:
        found = config_json.get(name)
        if not isinstance(found, int) or isinstance(found, bool) or found < 1:
            raise ModelShapeError(f"config.json gives no {name}; is it a ChatGLM-6B model config?")
        return found

    return ModelShape(
        vocab_size=value("vocab_size"),
        hidden_size=value("hidden_size"),
        num_layers=value("num_layers"),
        num_heads=value("num_attention_heads"),
        inner_hidden_size=value("inner_hidden_size"),
        tie_word_embeddings=bool(config_json.get("tie_word_embeddings", True)),
        positions=value("max_sequence_length")
        if "max_sequence_length" in config_json
        else PUBLISHED_CONFIG["max_sequence_length"],
    )


FAMILY = ModelFamily(
    name="chatglm-6b",
    title="ChatGLM-6B",
    aliases=("chatglm", "chatglm6b"),
    package=__name__,
    tokenizer_file="ice_text.model",
    published=PUBLISHED_CONFIG,
    special_ids={
        name: PUBLISHED_CONFIG[name]
        for name in ("gmask_token_id", "bos_token_id", "eos_token_id", "pad_token_id")
    },
    tiny_config={
        "vocab_size": 1000,
        "hidden_size": 64,
        "num_layers": 2,
        "num_attention_heads": 4,
        "inner_hidden_size": 256,
        "mask_token_id": 990,
        "gmask_token_id": 991,
        "bos_token_id": 994,
        "eos_token_id": 995,
        "pad_token_id": 3,
    },
    tiny_special_ids={"gmask_token_id": 991, "bos_token_id": 994, "eos_token_id": 995, "pad_token_id": 3},
    demo=DemoModel(
        folder="demo-chatglm-tiny",
        shape={"hidden_size": 128, "num_layers": 4, "num_attention_heads": 4, "inner_hidden_size": 512},
        key="d",
        configs="demo",
    ),
    download=Download(
        hub_repo="zai-org/chatglm-6b",
        manifest_name="chatglm-6b",
        modelscope_repo="ZhipuAI/ChatGLM-6B",
        # The ChatGLM-6B README's "download the parameters by hand" share (weights and tokenizer model only).
        tsinghua_share="https://cloud.tsinghua.edu.cn/d/fb9f16d6dc8f482596c2/",
        note="the model glmtui fine-tunes; 13 GB of FP16 weights in 8 shards",
    ),
)
