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

FAMILIES: tuple[ModelFamily, ...] = (CHATGLM_6B, CHATGLM2_6B, CHATGLM3_6B, GLM_4_9B_CHAT)
"""Every family, each its package's `FAMILY` (imported above)."""
DEFAULT_FAMILY = FAMILIES[0]
"""The family a command means when none is named (the demo, the bench)."""

__all__ = [
    "CHATGLM2_6B",
    "CHATGLM3_6B",
    "CHATGLM_6B",
    "DEFAULT_FAMILY",
    "FAMILIES",
    "GLM_4_9B_CHAT",
    "ModelFamily",
    "ModelShape",
    "UnsupportedModel",
    "family_for",
    "family_named",
    "family_names",
    "family_of",
    "read_config_json",
]
