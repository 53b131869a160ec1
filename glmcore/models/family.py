"""The model-family interface: what glmcore needs from a family, and how a model folder finds its family.

A family (ChatGLM-6B, ...) lives in one package, `glmcore/models/<family>/`, and is named in the registry,
`FAMILIES` in `glmcore/models/__init__.py`. Generic code (data, training, evaluation, chat, the estimate, the
bench) reaches a family only through a `ModelFamily` and the names below, never through a family's modules.

A family package provides, in its `__init__.py` and without importing torch:

    FAMILY: ModelFamily                                        # everything generic code knows of the family
    detect(config_json: dict, model_dir: Path) -> str | None   # why this folder is this family, or None
    shape(config_json: dict) -> ModelShape                     # the sizes the VRAM estimate needs

and a module `<package>/family_impl.py` whose module-level names are the implementation
(`FamilyImplementation`): `config_class`, `model_class`, `tokenizer_class`, `training_features`,
`conversation_features`, `evaluation_prompt_ids`, `reference_text`, `chat_prompt_ids`, `stop_token_ids`,
`clean_response`, `new_decoder`, `new_prefix_encoder`, `prefix_width`, `write_tiny_checkpoint` and
`write_random_checkpoint`. docs/architecture.md says what each one does.

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Protocol

from glmcore.errors import GlmError


class UnsupportedModel(GlmError):
    """A model folder is not one of the families glmcore implements, or its family cannot be told."""


class ModelShapeError(GlmError):
    """A model folder's config.json cannot be read as its family's shape."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a model that its memory depends on (read from config.json, no torch)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    inner_hidden_size: int
    tie_word_embeddings: bool = True
    key_value_width: int = 0
    """Values one token keeps per layer in the KV cache (keys and values); 0 means 2 × hidden_size, as in
    multi-head attention. Grouped-query families give 2 × groups × kv_channels. A prefix has the same width."""
    mlp_values_per_inner: int = 1
    """Values per inner unit the MLP keeps for its backward pass: a GELU keeps its input (1); a SwiGLU whose
    three ffn-wide matrices are counted as an inner size of 1.5 × ffn keeps 3 × ffn values (2 per unit)."""
    positions: int = 2048
    """Positions the model has (ChatGLM-6B's max_sequence_length, ChatGLM2/3's seq_length): a run's prefix,
    prompt and answer share them."""
    vector_parameters_per_layer: int = 0
    """Norm weights and biases in one block; 0 means ChatGLM-6B's: two LayerNorms with biases and a bias on
    every Linear. ChatGLM2/3 have two RMSNorms and a bias on query_key_value only."""
    final_norm_parameters: int = 0
    """The final norm's weights; 0 means a LayerNorm with a bias (2 × hidden_size)."""

    @classmethod
    def from_model_dir(cls, path: Path, family: str | None = None) -> ModelShape:
        """The shape of the model folder `path`, as its family (`family_for`: `family` wins) reads its
        config.json."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelShapeError(f"{path / 'config.json'} does not exist; is {path} a model folder?")
        model_family, _ = family_for(path, family)
        return model_family.shape(read_config_json(path))

    @property
    def cache_values_per_token(self) -> int:
        """Values the KV cache (or a prefix) holds for one token, over all layers."""
        return self.num_layers * (self.key_value_width or 2 * self.hidden_size)

    @property
    def linear_parameters(self) -> int:
        """Weights of the Linear layers inside the transformer blocks (what 8- and 4-bit quantize)."""
        hidden, inner = self.hidden_size, self.inner_hidden_size
        query_key_value = hidden * (hidden + (self.key_value_width or 2 * hidden))
        per_layer = query_key_value + hidden * hidden + 2 * hidden * inner
        return self.num_layers * per_layer

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def other_parameters(self) -> int:
        """Embeddings, output layer, LayerNorms and biases: what stays 16-bit under quantization."""
        hidden, inner = self.hidden_size, self.inner_hidden_size
        embeddings = self.vocab_size * hidden * (1 if self.tie_word_embeddings else 2)
        per_layer = self.vector_parameters_per_layer or 2 * 2 * hidden + 3 * hidden + hidden + inner + hidden
        return embeddings + self.num_layers * per_layer + (self.final_norm_parameters or 2 * hidden)

    @property
    def parameters(self) -> int:
        return self.linear_parameters + self.other_parameters


class FamilyImplementation(Protocol):
    """The names a family's `family_impl` module defines (torch-dependent; imported on first use)."""

    config_class: type
    model_class: type
    tokenizer_class: type

    def training_features(
        self, tokenizer, example, max_source_length: int, max_target_length: int
    ) -> dict[str, list[int]]: ...

    def conversation_features(
        self, tokenizer, messages: list[dict], tools: object, max_input_length: int, max_output_length: int
    ) -> dict[str, list[int]]: ...

    def evaluation_prompt_ids(self, tokenizer, example, max_source_length: int) -> list[int]: ...

    def reference_text(self, tokenizer, response: str, max_target_length: int) -> str: ...

    def chat_prompt_ids(
        self, tokenizer, query: str, history: list[tuple[str, str]], system: str | None = None
    ) -> list[int]: ...

    def stop_token_ids(self, tokenizer) -> list[int]: ...

    def clean_response(self, text: str) -> str: ...

    def new_decoder(
        self, model, batch: int, capacity: int, *, use_graph: bool | None = None, prediction: bool = False
    ): ...

    def new_prefix_encoder(self, config): ...

    def prefix_width(self, config) -> int: ...

    def write_tiny_checkpoint(self, path: Path, **options) -> Path: ...

    def write_random_checkpoint(self, path: Path, config_values: dict) -> Path: ...


@dataclass(frozen=True)
class DemoModel:
    """A family's demo model (glmcore.demo): a tiny model of it pretrained on ad copy, built on the CPU."""

    folder: str
    """Its folder under the workspace's models/ ("demo-chatglm-tiny")."""
    shape: Mapping[str, int]
    """The size options its `write_tiny_checkpoint` takes (hidden_size, num_layers, ...)."""
    key: str
    """The Welcome screen's key that builds it ("d")."""
    configs: str
    """The stem of its run configs' names: "demo" gives configs/demo-ptuning.toml and demo-lora.toml."""


@dataclass(frozen=True)
class Download:
    """Where the family's published checkpoint is fetched from (glmcore.catalog lists it under the family's
    name and title)."""

    hub_repo: str
    """Its current Hugging Face Hub id (THUDM's repositories now live under zai-org/; both owners are accepted)."""
    manifest_name: str | None
    """Its file manifest, glmcore/assets/manifests/<manifest_name>.json (sizes and sha256 of every file; a
    null size or sha256 is taken from the source's listing); None where glmtui knows no file list at all."""
    modelscope_repo: str | None = None
    """Its ModelScope id (ZhipuAI/...), where the family's README publishes one."""
    tsinghua_share: str | None = None
    """A Tsinghua Cloud (Seafile) share holding the weights, where the family's README publishes one."""
    tsinghua_folder: str = "/"
    """The folder of the share that holds this model's files."""
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class ModelFamily:
    """One model family: what generic code knows of it (names, published config, tiny and demo shapes, special
    ids, LoRA targets, download), and the lazily imported implementation. Each family's package defines one,
    `FAMILY`; the registry lists them."""

    name: str
    """The value of the `family = ...` setting: "chatglm-6b", ..."""
    title: str
    """The name shown to users: "ChatGLM-6B"."""
    package: str
    """The family's package, "glmcore.models.chatglm6b"."""
    tokenizer_file: str
    """The tokenizer file a complete model folder holds."""
    published: Mapping[str, object] = field(compare=False, repr=False)
    """The published checkpoint's config.json (its `auto_map` left out: nothing from a checkpoint is
    imported)."""
    special_ids: Mapping[str, int] = field(compare=False, repr=False)
    """The published model's `gmask_token_id`, `bos_token_id` (sop), `eos_token_id` and `pad_token_id`: what
    the bench builds its rows of token ids with (its config.json need not name them all)."""
    tiny_config: Mapping[str, object] = field(compare=False, repr=False)
    """The whole config.json the bench's toy model (`glmtui bench --tiny`) is written with: toy sizes, and the toy
    ids of every special token its config names."""
    tiny_special_ids: Mapping[str, int] = field(compare=False, repr=False)
    """`special_ids` of the toy model."""
    demo: DemoModel = field(compare=False, repr=False)
    lora_target_modules: tuple[str, ...] = ("query_key_value",)
    """The modules a LoRA run adapts (PEFT's `target_modules`)."""
    download: Download | None = field(default=None, compare=False, repr=False)
    """Its catalog entry, when glmtui can fetch the published checkpoint."""
    system_role: bool = False
    """Whether the family's chat format has a system role (ChatGLM3's `<|system|>` message), so that a system
    prompt is its own message; the Chat screen offers one only then."""
    conversations: bool = False
    """Whether its published fine-tuning reads whole conversations (ChatGLM3's finetune_demo: system messages,
    tool calls, observations); otherwise a conversation must be user/assistant turns (glmcore.data)."""
    aliases: tuple[str, ...] = ()
    """Other names every `family` setting and `--family` option accepts for it ("chatglm3")."""
    metric_mode: str = "ptuning"
    """How its evaluations score by default (glmcore.metrics): the way its published fine-tuning script does,
    "ptuning" (ChatGLM-6B's and ChatGLM2-6B's ptuning/main.py) or "finetune-demo" (ChatGLM3's and GLM-4's)."""

    @property
    def short_name(self) -> str:
        """The shortest name it answers to ("chatglm" for chatglm-6b), as the Welcome screen shows it."""
        return min((self.name, *self.aliases), key=len)

    def _package(self) -> ModuleType:
        return importlib.import_module(self.package)

    def implementation(self) -> FamilyImplementation:
        """The family's `family_impl` module (imports torch and transformers)."""
        return importlib.import_module(f"{self.package}.family_impl")  # type: ignore[return-value]

    def detect(self, config_json: dict, model_dir: Path) -> str | None:
        """Why `model_dir` holds this family, or None when it does not."""
        return self._package().detect(config_json, model_dir)

    def shape(self, config_json: dict) -> ModelShape:
        """The sizes of the model `config_json` describes, for the VRAM estimate."""
        return self._package().shape(config_json)

    def published_config(self) -> dict:
        """The published checkpoint's config.json: what the real model needs (bench, estimate)."""
        return dict(self.published)

    def published_shape(self) -> ModelShape:
        return self.shape(self.published_config())

    def owns(self, obj: object) -> bool:
        """Whether `obj` (a model, config or tokenizer) is an instance of a class of this family."""
        module = type(obj).__module__
        return module == self.package or module.startswith(self.package + ".")


def families() -> tuple[ModelFamily, ...]:
    """The registry (`glmcore.models.FAMILIES`)."""
    from glmcore.models import FAMILIES

    return FAMILIES


def __getattr__(name: str):
    # `FAMILIES` is defined by the registry in glmcore/models/__init__.py; reading it here resolves there.
    if name == "FAMILIES":
        return families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def family_named(name: str) -> ModelFamily:
    """The family a `family` setting or `--family` option names, by its name or one of its aliases."""
    wanted = name.strip().lower()
    for family in families():
        if wanted == family.name or wanted in family.aliases:
            return family
    raise UnsupportedModel(
        f'family = "{name}" is not a model family glmtui knows; use one of: {family_names()}.'
    )


def family_names() -> str:
    """The accepted family names as one line: "chatglm-6b (or chatglm, chatglm6b), chatglm2-6b (or ...)"."""
    return ", ".join(
        family.name + (f" (or {', '.join(family.aliases)})" if family.aliases else "")
        for family in families()
    )


def family_titles(listed: Iterable[ModelFamily], last: str = "and") -> str:
    """The families' titles as words of a sentence: "ChatGLM-6B, ChatGLM2-6B and ChatGLM3-6B" (`last` "or":
    "... or ChatGLM3-6B")."""
    titles = [family.title for family in listed]
    return f"{', '.join(titles[:-1])} {last} {titles[-1]}" if len(titles) > 1 else "".join(titles)


def read_config_json(model_dir: Path) -> dict:
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise GlmError(
            f"{model_dir} has no config.json: it is not a model folder (or its download is incomplete)."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GlmError(f"{config_path} is not valid JSON ({error}); download the model again.") from error
    if not isinstance(config, dict):
        raise GlmError(f"{config_path} does not hold a JSON object; download the model again.")
    return config


def family_for(model_dir: Path, override: str | None = None) -> tuple[ModelFamily, str]:
    """The family of the model in `model_dir`, and why it was chosen (shown to users).

    `override` (the `family = ...` setting, a `--family` option) wins over everything; then the family
    remembered for the folder in the workspace (`glmtui models --family`, see `remembered_family`). Otherwise
    exactly one family must recognise the folder's config.json; none, or more than one, is refused with a
    sentence that says how to set the family.
    """
    from glmcore.workspace import remembered_family

    model_dir = Path(model_dir)
    config = read_config_json(model_dir)
    if override:
        return family_named(override), f'family = "{override}" is set'
    remembered = remembered_family(model_dir)
    if remembered is not None:
        name, where = remembered
        return family_named(name), f'family "{name}" was set for this folder ({where})'
    matches = [
        (family, reason) for family in families() if (reason := family.detect(config, model_dir)) is not None
    ]
    if not matches:
        names = ", ".join(family.name for family in families())
        raise UnsupportedModel(
            f"{model_dir} holds {described_model(config)} that none of glmtui's families ({names}) recognises; "
            f"if it is one of them, {SET_FAMILY_ADVICE}."
        )
    if len(matches) > 1:
        found = "; ".join(f"{family.title}: {reason}" for family, reason in matches)
        raise UnsupportedModel(f"{model_dir} could be several families ({found}); {SET_FAMILY_ADVICE}.")
    return matches[0]


SET_FAMILY_ADVICE = (
    'set family = "..." in the run config, or remember it for the folder with '
    "`glmtui models --family NAME MODEL_DIR` (f on the Models screen)"
)
"""How to name a folder's family, wherever detection cannot: every way the advice names exists."""


def described_model(config: dict) -> str:
    """ "a 'qwen2' model", or "a model" when config.json names no model_type."""
    model_type = config.get("model_type")
    return f"a '{model_type}' model" if model_type else "a model"


def family_of(obj: object) -> ModelFamily:
    """The family a loaded model, its config or its tokenizer belongs to (a PEFT wrapper is looked through).

    A model from `load_model` carries its family (`model_family`), since two families may share a model
    class (ChatGLM3-6B runs ChatGLM2-6B's); otherwise the family is the package the object's class comes from.
    """
    base = obj.get_base_model() if hasattr(obj, "get_base_model") else obj
    marked = getattr(base, "model_family", None)
    if isinstance(marked, ModelFamily):
        return marked
    owners = [family for family in families() if family.owns(base)]
    if owners:  # a family's package may hold another's (glm4 holds glm4.hf): the innermost owns the class
        return max(owners, key=lambda family: len(family.package))
    raise UnsupportedModel(f"{type(base).__name__} does not belong to any of glmtui's model families.")
