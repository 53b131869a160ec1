"""Model families glmcore knows, found from a checkpoint's `config.json` (never by running its Python files).

ChatGLM-6B (v1.1), ChatGLM2-6B and ChatGLM3-6B. ChatGLM2/3 share `model_type: chatglm` with ChatGLM-6B but
not the architecture; their packages' `detect` tells them apart (the rule is in glmcore/models/chatglm2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from glmcore.errors import GlmError


class UnsupportedModel(GlmError):
    pass


@dataclass(frozen=True)
class ModelFamily:
    name: str
    module: str
    tokenizer_file: str

    def classes(self):
        """(config class, model class, tokenizer class), imported on demand so the UI starts without torch."""
        import importlib

        module = importlib.import_module(self.module)
        if hasattr(module, "config_class"):  # a family_impl module of the family contract
            return module.config_class, module.model_class, module.tokenizer_class
        return module.ChatGLMConfig, module.ChatGLMForConditionalGeneration, module.ChatGLMTokenizer


CHATGLM_6B = ModelFamily(
    name="chatglm-6b", module="glmcore.models.chatglm6b", tokenizer_file="ice_text.model"
)

CHATGLM2_6B = ModelFamily(
    name="chatglm2-6b", module="glmcore.models.chatglm2.family_impl", tokenizer_file="tokenizer.model"
)
CHATGLM3_6B = ModelFamily(
    name="chatglm3-6b", module="glmcore.models.chatglm3.family_impl", tokenizer_file="tokenizer.model"
)
FAMILIES = (CHATGLM_6B, CHATGLM2_6B, CHATGLM3_6B)

# Keys only the ChatGLM2/3 configs carry.
_LATER_GENERATION_KEYS = {"padded_vocab_size", "multi_query_attention", "kv_channels", "ffn_hidden_size"}


def read_config_json(model_dir: Path) -> dict:
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise GlmError(
            f"{model_dir} has no config.json: it is not a model folder (or its download is incomplete)."
        )
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise GlmError(f"{config_path} is not valid JSON ({error}); download the model again.") from error


def family_for(model_dir: Path, override: str | None = None) -> ModelFamily:
    return choose_family(model_dir, override)[0]


def choose_family(model_dir: Path, override: str | None = None) -> tuple[ModelFamily, str]:
    """(family, why it was chosen): the `family = ...` setting when given, else the folder's signals."""
    if override is not None:
        by_name = {family.name: family for family in FAMILIES}
        if override not in by_name:
            raise UnsupportedModel(
                f'family = "{override}" is not a family glmtui knows; use one of {", ".join(by_name)}.'
            )
        return by_name[override], f'family = "{override}" was set'
    config = read_config_json(model_dir)
    model_type = config.get("model_type")
    if model_type != "chatglm":
        raise UnsupportedModel(
            f"{model_dir} holds a '{model_type}' model; glmtui works with the ChatGLM-6B family."
        )
    if _LATER_GENERATION_KEYS & config.keys():
        from glmcore.models import chatglm2, chatglm3

        for family, package in ((CHATGLM2_6B, chatglm2), (CHATGLM3_6B, chatglm3)):
            reason = package.detect(config, Path(model_dir))
            if reason:
                return family, reason
        raise UnsupportedModel(
            f"{model_dir} holds a ChatGLM2/ChatGLM3 checkpoint, but nothing says which (no _name_or_path, "
            'known tokenization_chatglm.py or seq_length); set family = "chatglm2-6b" or "chatglm3-6b".'
        )
    return CHATGLM_6B, "config.json has ChatGLM-6B's keys (no padded_vocab_size)"
