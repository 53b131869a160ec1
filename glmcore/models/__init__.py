"""The registry of model families glmcore implements; a folder's family is found from its `config.json` alone.

Adding a family is its package under glmcore/models/, whose `FAMILY` says everything generic code needs, plus
its line here (see glmcore/models/family.py for the interface and docs/architecture.md for the list of files).
Importing this imports no torch.
"""

from __future__ import annotations

from glmcore.models.chatglm2 import FAMILY as CHATGLM2_6B
from glmcore.models.chatglm3 import FAMILY as CHATGLM3_6B
from glmcore.models.chatglm6b import FAMILY as CHATGLM_6B
from glmcore.models.family import (
    ModelFamily,
    ModelShape,
    UnsupportedModel,
    family_for,
    family_named,
    family_names,
    family_of,
    read_config_json,
)
from glmcore.models.glm4 import FAMILY as GLM_4_9B_CHAT
from glmcore.models.glm4.hf import FAMILY as GLM_4_9B_CHAT_HF
from glmcore.models.glm4.v0414 import FAMILY as GLM_4_0414

FAMILIES: tuple[ModelFamily, ...] = (
    CHATGLM_6B,
    CHATGLM2_6B,
    CHATGLM3_6B,
    GLM_4_9B_CHAT,
    GLM_4_9B_CHAT_HF,
    GLM_4_0414,
)
"""Every family, each its package's `FAMILY` (imported above)."""
DEFAULT_FAMILY = FAMILIES[0]
"""The family a command means when none is named (the demo, the bench)."""

__all__ = [
    "CHATGLM2_6B",
    "CHATGLM3_6B",
    "CHATGLM_6B",
    "DEFAULT_FAMILY",
    "FAMILIES",
    "GLM_4_0414",
    "GLM_4_9B_CHAT",
    "GLM_4_9B_CHAT_HF",
    "ModelFamily",
    "ModelShape",
    "UnsupportedModel",
    "family_for",
    "family_named",
    "family_names",
    "family_of",
    "read_config_json",
]
