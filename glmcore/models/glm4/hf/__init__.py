"""glm-4-9b-chat-hf: GLM-4-9B-chat in transformers' own `glm` layout (GlmForCausalLM, a tokenizer.json).

Its config.json says `model_type "glm"`, which names this layout alone. The model and tokenizer are
transformers' classes (glmcore/models/glm4/native.py says what glmtui adds). Importing this imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from glmcore.models.chatglm2 import TINY_SIZES
from glmcore.models.family import DemoModel, ModelFamily, ModelShape, ModelShapeError
from glmcore.models.glm4 import DEMO_SHAPE, SPECIAL_IDS

__all__ = ["FAMILY", "PUBLISHED_CONFIG", "detect", "native_shape", "shape"]

PUBLISHED_CONFIG = {
    "architectures": ["GlmForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": [151329, 151336, 151338],
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 13696,
    "max_position_embeddings": 131072,
    "model_type": "glm",
    "num_attention_heads": 32,
    "num_hidden_layers": 40,
    "num_key_value_heads": 2,
    "pad_token_id": 151329,
    "rms_norm_eps": 1.5625e-07,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.0.dev0",
    "use_cache": True,
    "vocab_size": 151552,
}
"""THUDM/glm-4-9b-chat-hf's config.json (../shared/reference/glm-4-9b-chat-hf, sha256 8ec64bc0…)."""

TINY_CONFIG_SIZES = {
    "vocab_size": TINY_SIZES["padded_vocab_size"],
    "hidden_size": TINY_SIZES["hidden_size"],
    "num_hidden_layers": TINY_SIZES["num_layers"],
    "num_attention_heads": TINY_SIZES["num_attention_heads"],
    "num_key_value_heads": TINY_SIZES["multi_query_group_num"],
    "head_dim": TINY_SIZES["kv_channels"],
    "intermediate_size": TINY_SIZES["ffn_hidden_size"],
    "max_position_embeddings": 2048,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
"""The bench's toy model: ChatGLM2/3's sizes and ids under this layout's keys (it feeds ids, no tokenizer)."""
TINY_SPECIAL_IDS = {"gmask_token_id": 990, "bos_token_id": 992, "eos_token_id": 2, "pad_token_id": 0}


def detect(config_json: dict, model_dir: Path) -> str | None:
    """The reason `model_dir` holds glm-4-9b-chat-hf, or None."""
    return (
        'config.json model_type is "glm" (GlmForCausalLM)' if config_json.get("model_type") == "glm" else None
    )


def native_shape(config_json: dict, norms_per_layer: int) -> ModelShape:
    """The sizes of a model in transformers' GLM layouts (`norms_per_layer` RMSNorms in a block: 2 for `glm`,
    4 for `glm4`); the SwiGLU's three ffn-wide matrices as an inner size of 1.5 × ffn."""

    def value(name: str) -> int:
        found = config_json.get(name)
        if not isinstance(found, int) or isinstance(found, bool) or found < 1:
            raise ModelShapeError(f"config.json gives no {name}; is it a GLM-4 model config?")
        return found

    hidden = value("hidden_size")
    heads = value("num_attention_heads")
    head_dim = config_json.get("head_dim") or hidden // heads
    key_value_width = 2 * value("num_key_value_heads") * head_dim
    bias = heads * head_dim + key_value_width if config_json.get("attention_bias", True) else 0
    return ModelShape(
        vocab_size=value("vocab_size"),
        hidden_size=hidden,
        num_layers=value("num_hidden_layers"),
        num_heads=heads,
        inner_hidden_size=value("intermediate_size") * 3 // 2,
        tie_word_embeddings=bool(config_json.get("tie_word_embeddings", False)),
        key_value_width=key_value_width,
        mlp_values_per_inner=2,
        positions=value("max_position_embeddings"),
        vector_parameters_per_layer=norms_per_layer * hidden + bias,
        final_norm_parameters=hidden,
    )


def shape(config_json: dict) -> ModelShape:
    return native_shape(config_json, norms_per_layer=2)


FAMILY = ModelFamily(
    name="glm-4-9b-chat-hf",
    title="GLM-4-9B (hf)",
    package=__name__,
    tokenizer_file="tokenizer.json",
    published=PUBLISHED_CONFIG,
    special_ids=SPECIAL_IDS,
    tiny_config={**PUBLISHED_CONFIG, **TINY_CONFIG_SIZES},
    tiny_special_ids=TINY_SPECIAL_IDS,
    demo=DemoModel(folder="demo-glm4-hf-tiny", shape=DEMO_SHAPE, key="h", configs="demo-glm4-hf"),
    lora_target_modules=("q_proj", "k_proj", "v_proj"),
    system_role=True,
    conversations=True,
    metric_mode="finetune-demo",
)
