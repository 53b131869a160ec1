"""The glm-4-9b-chat configuration: ChatGLM2/3's, which reads the published keys and refuses what it does not
implement, with GLM-4's values as defaults and the two keys GLM-4's config.json adds."""

from __future__ import annotations

from glmcore.models.chatglm2.configuration import ChatGLM2Config, UnsupportedArchitecture
from glmcore.models.glm4 import PUBLISHED_CONFIG

# The sizes and values a config.json may leave out, as glm-4-9b-chat's gives them.
DEFAULTS = {
    key: PUBLISHED_CONFIG[key]
    for key in (
        "padded_vocab_size",
        "hidden_size",
        "num_layers",
        "num_attention_heads",
        "kv_channels",
        "multi_query_group_num",
        "ffn_hidden_size",
        "layernorm_epsilon",
        "seq_length",
        "rope_ratio",
        "eos_token_id",
        "pad_token_id",
    )
}
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
"""The published code's attention choices; each computes the same attention, which glmtui does with SDPA."""


class GLM4Config(ChatGLM2Config):
    """Hyper-parameters of glm-4-9b-chat (and glm-4-9b, glm-4-9b-chat-1m) under the published key names."""

    family_title = "GLM-4"

    def __init__(self, **kwargs) -> None:
        layers = kwargs.pop("num_hidden_layers", None)
        if layers is not None and layers != kwargs.get("num_layers", DEFAULTS["num_layers"]):
            raise UnsupportedArchitecture(
                f"config.json gives num_hidden_layers {layers} but num_layers {kwargs.get('num_layers')}; the "
                "published code builds num_layers layers, so make the two agree."
            )
        attention = kwargs.pop("attn_implementation", None)
        if attention is not None and attention not in ATTENTION_IMPLEMENTATIONS:
            raise UnsupportedArchitecture(
                f"config.json sets attn_implementation {attention!r}, which the published GLM-4 code does not "
                f"have; use one of {', '.join(ATTENTION_IMPLEMENTATIONS)}."
            )
        super().__init__(**{**DEFAULTS, **kwargs})
