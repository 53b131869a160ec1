"""glm-4-9b-chat-hf's classes: transformers' GlmConfig, GlmForCausalLM and fast tokenizer, each with only what
glmtui adds (glmcore/models/glm4/native.py). They live in this package so that the family owns them."""

from __future__ import annotations

from transformers import GlmConfig, GlmForCausalLM, PreTrainedTokenizerFast
from transformers.models.glm.modeling_glm import GlmRMSNorm

from glmcore.models.glm4.native import (
    CheckedConfigMixin,
    InferenceRMSNorm,
    NativeTokenizerMixin,
    PrefixCausalLM,
)


class GLM4HFConfig(CheckedConfigMixin, GlmConfig):
    """GlmConfig, its config.json's keys checked; `pre_seq_len` / `prefix_projection` for a prefix."""

    family_title = "GLM-4-9B (hf, transformers' glm)"
    rope_types = ("default",)


class GLM4HFRMSNorm(InferenceRMSNorm, GlmRMSNorm):
    pass


class GLM4HFForCausalLM(PrefixCausalLM, GlmForCausalLM):
    config_class = GLM4HFConfig
    rms_norm_class = GLM4HFRMSNorm


class GLM4HFTokenizer(NativeTokenizerMixin, PreTrainedTokenizerFast):
    pass
