"""GLM-4-9B-0414 and GLM-Z1-9B-0414: transformers' own `glm4` layout (Glm4ForCausalLM, a tokenizer.json).

GLM-4's block with RMSNorms also after attention and after the MLP, rotary on half of each head, 32K positions
and YaRN beyond them. config.json's `model_type "glm4"` names this layout alone. Z1 is a thinking model: its
published chat template (in its tokenizer_config.json) writes the reasoning, and glmtui keeps the folder's
template as it is. Importing this imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from glmcore.models.family import DemoModel, ModelFamily, ModelShape
from glmcore.models.glm4 import DEMO_SHAPE, SPECIAL_IDS
from glmcore.models.glm4.hf import TINY_CONFIG_SIZES, TINY_SPECIAL_IDS, native_shape

__all__ = ["FAMILY", "PUBLISHED_CONFIG", "detect", "shape"]

PUBLISHED_CONFIG = {
    "architectures": ["Glm4ForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": [151329, 151336, 151338],
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 13696,
    "max_position_embeddings": 32768,
    "model_type": "glm4",
    "num_attention_heads": 32,
    "num_hidden_layers": 40,
    "num_key_value_heads": 2,
    "pad_token_id": 151329,
    "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1.5625e-07,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 151552,
}
"""GLM-4-9B-0414's shape as transformers' Glm4Config defaults give it, with the 32K positions of the release
(no published config.json could be fetched here: tests/golden/glm4_0414/README.md says what that leaves
unverified)."""


def detect(config_json: dict, model_dir: Path) -> str | None:
    """The reason `model_dir` holds GLM-4-9B-0414 or GLM-Z1-9B-0414, or None."""
    if config_json.get("model_type") == "glm4":
        return 'config.json model_type is "glm4" (Glm4ForCausalLM)'
    return None


def shape(config_json: dict) -> ModelShape:
    return native_shape(config_json, norms_per_layer=4)


FAMILY = ModelFamily(
    name="glm-4-0414",
    title="GLM-4-0414",
    aliases=("glm-4-9b-0414", "glm-z1-9b-0414"),
    package=__name__,
    tokenizer_file="tokenizer.json",
    published=PUBLISHED_CONFIG,
    special_ids=SPECIAL_IDS,
    tiny_config={**PUBLISHED_CONFIG, **TINY_CONFIG_SIZES},
    tiny_special_ids=TINY_SPECIAL_IDS,
    demo=DemoModel(folder="demo-glm4-0414-tiny", shape=DEMO_SHAPE, key="z", configs="demo-glm4-0414"),
    lora_target_modules=("q_proj", "k_proj", "v_proj"),
    system_role=True,
    conversations=True,
    metric_mode="finetune-demo",
)
