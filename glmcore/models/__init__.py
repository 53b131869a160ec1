"""The registry of model families glmcore implements; a folder's family is found from its `config.json` alone.

Adding a family is its package under glmcore/models/ plus one entry in `FAMILIES` (see glmcore/models/family.py
for the interface and docs/architecture.md for the list of files). Importing this imports no torch.
"""

from __future__ import annotations

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

CHATGLM_6B = ModelFamily(
    name="chatglm-6b",
    title="ChatGLM-6B",
    package="glmcore.models.chatglm6b",
    tokenizer_file="ice_text.model",
    aliases=("chatglm", "chatglm6b"),
)

CHATGLM2_6B = ModelFamily(
    name="chatglm2-6b",
    title="ChatGLM2-6B",
    package="glmcore.models.chatglm2",
    tokenizer_file="tokenizer.model",
    aliases=("chatglm2",),
)
CHATGLM3_6B = ModelFamily(
    name="chatglm3-6b",
    title="ChatGLM3-6B",
    package="glmcore.models.chatglm3",
    tokenizer_file="tokenizer.model",
    system_role=True,
    conversations=True,
    aliases=("chatglm3",),
)

FAMILIES: tuple[ModelFamily, ...] = (CHATGLM_6B, CHATGLM2_6B, CHATGLM3_6B)

__all__ = [
    "CHATGLM2_6B",
    "CHATGLM3_6B",
    "CHATGLM_6B",
    "FAMILIES",
    "ModelFamily",
    "ModelShape",
    "UnsupportedModel",
    "family_for",
    "family_named",
    "family_names",
    "family_of",
    "read_config_json",
]
