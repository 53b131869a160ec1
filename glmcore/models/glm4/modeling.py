"""glm-4-9b-chat as a transformers model: ChatGLM2/3's architecture, which it is, with GLM-4's config.

The published modeling_chatglm.py of glm-4-9b-chat computes what ChatGLM3's does with three values changed, all
read from config.json: the rotary base (10000 × rope_ratio, 500 for glm-4-9b-chat), the layer count and the
RMSNorm epsilon. ChatGLM2's modeling takes rope_ratio, so this class only names GLM-4's config; the published
tensor names are the same (tests/test_glm4.py holds it to the published code's logits).
"""

from __future__ import annotations

from glmcore.models.chatglm2.modeling import ChatGLM2ForConditionalGeneration
from glmcore.models.glm4.configuration import GLM4Config


class GLM4ForConditionalGeneration(ChatGLM2ForConditionalGeneration):
    config_class = GLM4Config
