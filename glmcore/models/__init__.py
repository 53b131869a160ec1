"""Model families glmcore knows, found from a checkpoint's `config.json` (never from its Python files).

Only ChatGLM-6B (v1.1) is implemented. ChatGLM2/3 share `model_type: chatglm` but not the architecture;
they are recognised by their config keys and refused with a clear message until a family is added here.
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
        return module.ChatGLMConfig, module.ChatGLMForConditionalGeneration, module.ChatGLMTokenizer


CHATGLM_6B = ModelFamily(
    name="chatglm-6b", module="glmcore.models.chatglm6b", tokenizer_file="ice_text.model"
)

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


def family_for(model_dir: Path) -> ModelFamily:
    config = read_config_json(model_dir)
    model_type = config.get("model_type")
    if model_type != "chatglm":
        raise UnsupportedModel(f"{model_dir} holds a '{model_type}' model; glmtui works with ChatGLM-6B.")
    if _LATER_GENERATION_KEYS & config.keys():
        raise UnsupportedModel(
            f"{model_dir} holds a ChatGLM2/ChatGLM3 checkpoint; glmtui supports ChatGLM-6B (v1.1) so far."
        )
    return CHATGLM_6B
