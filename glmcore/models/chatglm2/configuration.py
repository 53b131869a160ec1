"""The ChatGLM2-6B / ChatGLM3-6B configuration, reading the published `config.json` as it is.

The published code switches parts of the architecture on config keys (`rmsnorm`, `post_layer_norm`,
`add_bias_linear`, ...). Every released checkpoint of both families has the same values; this
implementation builds exactly that architecture and refuses, with one sentence, a config that asks for
anything else or that carries a key it does not know, rather than ignoring it.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from glmcore.errors import GlmError


class UnsupportedArchitecture(GlmError):
    pass


# The architecture switches of the published code, with the one value every released checkpoint has.
FIXED_SWITCHES = {
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_residual_connection_post_layernorm": False,
    "fp32_residual_connection": False,
    "multi_query_attention": True,
    "original_rope": True,
    "post_layer_norm": True,
    "rmsnorm": True,
}
# Keys of the published config.json that do not change what is computed at inference in fp32 or that
# this implementation honours in another way (SDPA scales and softmaxes in fp32 itself).
ACCEPTED_KEYS = {
    "apply_query_key_layer_scaling",
    "attention_softmax_in_fp32",
    "bias_dropout_fusion",
    "attention_dropout",
    "hidden_dropout",
    "classifier_dropout",
}


class ChatGLM2Config(PretrainedConfig):
    """Hyper-parameters of ChatGLM2-6B and ChatGLM3-6B under the published key names."""

    model_type = "chatglm"
    family_title = "ChatGLM2/3"
    """How the refusals below name the family (GLM-4's config builds on this one)."""
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "intermediate_size": "ffn_hidden_size",
        "max_position_embeddings": "seq_length",
        "layer_norm_eps": "layernorm_epsilon",
        "num_key_value_heads": "multi_query_group_num",
        "head_dim": "kv_channels",
    }

    def __init__(
        self,
        padded_vocab_size: int = 65024,
        hidden_size: int = 4096,
        num_layers: int = 28,
        num_attention_heads: int = 32,
        kv_channels: int = 128,
        multi_query_group_num: int = 2,
        ffn_hidden_size: int = 13696,
        layernorm_epsilon: float = 1e-5,
        seq_length: int = 8192,
        pre_seq_len: int | None = None,
        prefix_projection: bool = False,
        quantization_bit: int = 0,
        rope_ratio: float = 1.0,
        use_cache: bool = True,
        eos_token_id: int = 2,
        pad_token_id: int = 0,
        tie_word_embeddings: bool = False,
        **kwargs,
    ) -> None:
        for key, value in FIXED_SWITCHES.items():
            if kwargs.pop(key, value) != value:
                raise UnsupportedArchitecture(
                    f"config.json sets {key} to a value no published {self.family_title} checkpoint has; glmtui "
                    f"implements {key} = {str(value).lower()} only."
                )
        for key in ACCEPTED_KEYS:
            setattr(self, key, kwargs.pop(key, None))
        if isinstance(rope_ratio, bool) or not isinstance(rope_ratio, int | float) or not rope_ratio > 0:
            raise UnsupportedArchitecture(
                f"config.json sets rope_ratio to {rope_ratio!r}; it must be a positive number (the rotary base "
                "is 10000 × rope_ratio)."
            )
        if quantization_bit:
            raise UnsupportedArchitecture(
                f"This checkpoint was saved quantized by the published code (quantization_bit "
                f"{quantization_bit}); download the full-precision model and use glmtui's 4/8-bit loading."
            )
        kwargs.pop("auto_map", None)  # nothing from a checkpoint folder is ever imported
        kwargs.pop("vocab_size", None)  # written by the published code as a copy of padded_vocab_size
        bookkeeping = {key for key in kwargs if key.startswith("_")}  # transformers' own, e.g. _commit_hash
        unknown = set(kwargs) - set(PretrainedConfig().to_dict()) - {"torch_dtype", "dtype"} - bookkeeping
        if unknown:
            raise UnsupportedArchitecture(
                f"config.json has keys glmtui's {self.family_title} does not know ({', '.join(sorted(unknown))}); "
                "they may change the architecture, so the model is not loaded. Remove them if they do not."
            )
        self.padded_vocab_size = padded_vocab_size
        self.vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_attention_heads = num_attention_heads
        self.kv_channels = kv_channels
        self.multi_query_group_num = multi_query_group_num
        self.ffn_hidden_size = ffn_hidden_size
        self.layernorm_epsilon = layernorm_epsilon
        self.seq_length = seq_length
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        self.quantization_bit = 0
        self.rope_ratio = rope_ratio
        self.use_cache = use_cache
        super().__init__(
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
