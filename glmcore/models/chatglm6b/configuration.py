"""The ChatGLM-6B configuration, reading the published `config.json` as it is."""

from __future__ import annotations

from transformers import PretrainedConfig

from glmcore.models.chatglm6b import PUBLISHED_CONFIG as PUBLISHED


class ChatGLMConfig(PretrainedConfig):
    """Hyper-parameters of ChatGLM-6B under the published key names; the defaults are the published model's.

    `attribute_map` exposes the names transformers' generic code looks for (num_hidden_layers,
    intermediate_size, ...), so caches and Trainer utilities work without renaming the published keys.
    `pre_seq_len` and `prefix_projection` describe an optional P-tuning v2 prefix.
    """

    model_type = "chatglm"
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "intermediate_size": "inner_hidden_size",
        "max_position_embeddings": "max_sequence_length",
        "layer_norm_eps": "layernorm_epsilon",
    }

    def __init__(
        self,
        vocab_size: int = PUBLISHED["vocab_size"],
        hidden_size: int = PUBLISHED["hidden_size"],
        num_layers: int = PUBLISHED["num_layers"],
        num_attention_heads: int = PUBLISHED["num_attention_heads"],
        inner_hidden_size: int = PUBLISHED["inner_hidden_size"],
        layernorm_epsilon: float = PUBLISHED["layernorm_epsilon"],
        max_sequence_length: int = PUBLISHED["max_sequence_length"],
        position_encoding_2d: bool = PUBLISHED["position_encoding_2d"],
        bos_token_id: int = PUBLISHED["bos_token_id"],
        eos_token_id: int = PUBLISHED["eos_token_id"],
        mask_token_id: int = PUBLISHED["mask_token_id"],
        gmask_token_id: int = PUBLISHED["gmask_token_id"],
        pad_token_id: int = PUBLISHED["pad_token_id"],
        pre_seq_len: int | None = None,
        prefix_projection: bool = False,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_attention_heads = num_attention_heads
        self.inner_hidden_size = inner_hidden_size
        self.layernorm_epsilon = layernorm_epsilon
        self.max_sequence_length = max_sequence_length
        self.position_encoding_2d = position_encoding_2d
        self.mask_token_id = mask_token_id
        self.gmask_token_id = gmask_token_id
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        self.use_cache = use_cache
        # The published code reads these keys but never needs the auto_map: drop it, since nothing from a
        # checkpoint folder is ever imported here.
        kwargs.pop("auto_map", None)
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
