"""GLM-4-9B-0414's (and GLM-Z1-9B-0414's) classes: transformers' Glm4Config, Glm4ForCausalLM and fast
tokenizer, each with only what glmtui adds (glmcore/models/glm4/native.py). They live in this package so that
the family owns them."""

from __future__ import annotations

from transformers import Glm4Config, Glm4ForCausalLM, PreTrainedTokenizerFast
from transformers.models.glm4.modeling_glm4 import Glm4RMSNorm

from glmcore.models.glm4.native import (
    CheckedConfigMixin,
    InferenceRMSNorm,
    NativeTokenizerMixin,
    PrefixCausalLM,
)


class GLM40414Config(CheckedConfigMixin, Glm4Config):
    """Glm4Config, its config.json's keys checked (YaRN, which the release uses beyond 32K, is transformers'
    own rope); `pre_seq_len` / `prefix_projection` for a prefix."""

    family_title = "GLM-4-0414 (transformers' glm4)"
    rope_types = ("default", "yarn")


class GLM40414RMSNorm(InferenceRMSNorm, Glm4RMSNorm):
    pass


class GLM40414ForCausalLM(PrefixCausalLM, Glm4ForCausalLM):
    config_class = GLM40414Config
    rms_norm_class = GLM40414RMSNorm


class GLM40414Tokenizer(NativeTokenizerMixin, PreTrainedTokenizerFast):
    pass
