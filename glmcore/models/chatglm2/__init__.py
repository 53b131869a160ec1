"""ChatGLM2-6B: the architecture ChatGLM3-6B shares, its tokenizer and its prompt; and the family rule.

Importing this package does not import torch (the app decides on families before loading anything).

How a ChatGLM2/3 folder is told apart (the two differ on disk only in config.json's `_name_or_path`,
`seq_length` and `transformers_version`, and in their `tokenization_chatglm.py`, which is never run):
1. config.json's `_name_or_path` names `chatglm2-6b` or `chatglm3-6b` (any owner, `-base` included);
2. else the sha256 of `tokenization_chatglm.py` is one of the published files of a family;
3. else `seq_length`: 32768 is ChatGLM2-6B's, 8192 ChatGLM3-6B's, unless config.json sets a `rope_ratio` other
   than 1: then it is a -32k model (chatglm2-6b-32k, chatglm3-6b-32k: 32768 positions either way) and says
   nothing, nor does it with GLM-4's vocabulary of 151552 (glm-4-9b has seq_length 8192 too).
   (`save_pretrained`, as `glmtui export` uses it, drops `_name_or_path`.)
The first signal present decides; a later signal that names the other family makes the folder refused
with both reasons, asking for a `family = ...` setting, which always wins over the rule.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.models.family import (
    SET_FAMILY_ADVICE,
    DemoModel,
    Download,
    ModelFamily,
    ModelShape,
    ModelShapeError,
)

NAME = "chatglm2-6b"
TITLE = "ChatGLM2-6B"
TOKENIZER_FILE = "tokenizer.model"

PUBLISHED_CONFIG = {
    "_name_or_path": "THUDM/chatglm2-6b",
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True,
    "ffn_hidden_size": 13696,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "hidden_size": 4096,
    "kv_channels": 128,
    "layernorm_epsilon": 1e-05,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "num_layers": 28,
    "original_rope": True,
    "padded_vocab_size": 65024,
    "post_layer_norm": True,
    "rmsnorm": True,
    "seq_length": 32768,
    "use_cache": True,
    "torch_dtype": "float16",
    "transformers_version": "4.27.1",
    "tie_word_embeddings": False,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
"""THUDM/chatglm2-6b's config.json (its `auto_map` left out: nothing from a checkpoint is imported)."""

# sha256 of the published tokenization_chatglm.py files (THUDM/chatglm2-6b, THUDM/chatglm3-6b on the hub,
# as read from the mirrors named in tests/golden/chatglm2/README.md and tests/golden/chatglm3/README.md).
PUBLISHED_TOKENIZER_CODE = {
    "b7441a9f557de4292720baec6dc4d1d55bdaca99d26f5501c27afe86825da67c": "chatglm2-6b",
    "f3e7e26af20b222d107f888a3db305a1a25ea74c16952d36257e0e606d1780f6": "chatglm3-6b",
}
PUBLISHED_SEQ_LENGTH = {32768: "chatglm2-6b", 8192: "chatglm3-6b"}
SEQ_LENGTH_WHEN_UNSET = 8192
"""The positions of a model whose config.json gives no seq_length (ChatGLM2Config's default, what it loads with)."""
NAME_PATTERN = re.compile(r"chatglm([23])-6b", re.IGNORECASE)
"""Matches the -base and -32k names too: chatglm3-6b-32k is a ChatGLM3-6B with a longer rotary base."""
# Keys only the ChatGLM2/3 configs carry (ChatGLM-6B's has none of them).
GENERATION_KEYS = ("padded_vocab_size", "multi_query_group_num", "kv_channels", "ffn_hidden_size")


class FamilySignalsDisagree(GlmError):
    pass


def family_signals(config_json: dict, model_dir: Path) -> list[tuple[str, str]]:
    """(family name, reason) for every signal of the rule present in the folder, in the rule's order."""
    signals = []
    name_match = NAME_PATTERN.search(str(config_json.get("_name_or_path", "")))
    if name_match:
        signals.append(
            (
                f"chatglm{name_match.group(1)}-6b",
                f"config.json _name_or_path is {config_json['_name_or_path']}",
            )
        )
    code = Path(model_dir) / "tokenization_chatglm.py"
    if code.is_file():
        digest = hashlib.sha256(code.read_bytes()).hexdigest()
        if digest in PUBLISHED_TOKENIZER_CODE:
            family = PUBLISHED_TOKENIZER_CODE[digest]
            signals.append(
                (family, f"tokenization_chatglm.py is the published {family} file (sha256 {digest[:12]}…)")
            )
    seq_length = config_json.get("seq_length")
    glm4_vocabulary = config_json.get("padded_vocab_size") == 151552  # glm-4-9b: seq_length 8192 too
    if seq_length in PUBLISHED_SEQ_LENGTH and config_json.get("rope_ratio", 1) == 1 and not glm4_vocabulary:
        signals.append((PUBLISHED_SEQ_LENGTH[seq_length], f"config.json seq_length is {seq_length}"))
    return signals


def identify(config_json: dict, model_dir: Path) -> tuple[str, str] | None:
    """(family name, reason) of a ChatGLM2/3 folder by the rule above, None when it is not one or no signal
    is present; FamilySignalsDisagree when a later signal names the other family."""
    if config_json.get("model_type") != "chatglm" or not all(key in config_json for key in GENERATION_KEYS):
        return None
    signals = family_signals(config_json, model_dir)
    if not signals:
        return None
    family, reason = signals[0]
    for other, other_reason in signals[1:]:
        if other != family:
            raise FamilySignalsDisagree(
                f"{model_dir} looks like {family} ({reason}) but also like {other} ({other_reason}); "
                f"if it is chatglm2-6b or chatglm3-6b, {SET_FAMILY_ADVICE}."
            )
    return family, reason


def detect(config_json: dict, model_dir: Path) -> str | None:
    """The reason `model_dir` is a ChatGLM2-6B folder, or None."""
    found = identify(config_json, model_dir)
    return found[1] if found and found[0] == NAME else None


def shape(config_json: dict) -> ModelShape:
    """The sizes of a ChatGLM2/3 model from its config.json. The SwiGLU MLP's three ffn-wide matrices are
    given as an `inner_hidden_size` of 1.5 × ffn (ModelShape counts two hidden × inner ones)."""

    def value(name: str) -> int:
        found = config_json.get(name)
        if not isinstance(found, int) or isinstance(found, bool) or found < 1:
            raise ModelShapeError(f"config.json gives no {name}; is it a ChatGLM2/ChatGLM3 model config?")
        return found

    hidden_size = value("hidden_size")
    key_value_width = 2 * value("multi_query_group_num") * value("kv_channels")
    return ModelShape(
        vocab_size=value("padded_vocab_size"),
        hidden_size=hidden_size,
        num_layers=value("num_layers"),
        num_heads=value("num_attention_heads"),
        inner_hidden_size=value("ffn_hidden_size") * 3 // 2,
        tie_word_embeddings=bool(config_json.get("tie_word_embeddings", False)),
        key_value_width=key_value_width,
        mlp_values_per_inner=2,
        positions=value("seq_length") if "seq_length" in config_json else SEQ_LENGTH_WHEN_UNSET,
        # Two RMSNorm weights, and query_key_value's bias: the queries', then the groups' keys and values.
        vector_parameters_per_layer=2 * hidden_size + hidden_size + key_value_width,
        final_norm_parameters=hidden_size,
    )


SPECIAL_IDS = {"gmask_token_id": 64790, "bos_token_id": 64792, "eos_token_id": 2, "pad_token_id": 0}
"""`[gMASK]`, `sop`, `</s>` and pad (config.json has only the last two); ChatGLM3-6B's are the same."""
TINY_SIZES = {
    "padded_vocab_size": 1000,
    "hidden_size": 64,
    "num_layers": 2,
    "num_attention_heads": 4,
    "multi_query_group_num": 2,
    "kv_channels": 16,
    "ffn_hidden_size": 160,
}
"""The bench's toy sizes (over the published config.json); ChatGLM3-6B's are the same."""
TINY_SPECIAL_IDS = {"gmask_token_id": 990, "bos_token_id": 992, "eos_token_id": 2, "pad_token_id": 0}
DEMO_SHAPE = {
    "hidden_size": 128,
    "num_layers": 4,
    "num_attention_heads": 4,
    "ffn_hidden_size": 352,
    "seq_length": 2048,
}
"""The demo model: ChatGLM-6B's demo width and depth, multi-query attention with 2 groups, a SwiGLU MLP with
as many weights as the GELU one (3 × 352 ≈ 2 × 512), and ChatGLM-6B's 2048 positions (room for chat's
512-token answers); ChatGLM3-6B's is the same."""

FAMILY = ModelFamily(
    name=NAME,
    title=TITLE,
    aliases=("chatglm2",),
    package=__name__,
    tokenizer_file=TOKENIZER_FILE,
    published=PUBLISHED_CONFIG,
    special_ids=SPECIAL_IDS,
    tiny_config={**PUBLISHED_CONFIG, **TINY_SIZES},
    tiny_special_ids=TINY_SPECIAL_IDS,
    demo=DemoModel(folder="demo-chatglm2-tiny", shape=DEMO_SHAPE, key="2", configs="demo-chatglm2"),
    download=Download(
        hub_repo="zai-org/chatglm2-6b",
        manifest_name="chatglm2-6b",
        modelscope_repo="ZhipuAI/chatglm2-6b",
        # The ChatGLM2-6B README's "download the parameters by hand" share: THUDM's folder of several
        # models, ChatGLM2-6B's weights and tokenizer model under /chatglm2-6b.
        tsinghua_share="https://cloud.tsinghua.edu.cn/d/674208019e314311ab5c/",
        tsinghua_folder="/chatglm2-6b",
        note="ChatGLM-6B's successor (multi-query attention, 32K positions); 12 GB of FP16 weights in 7 "
        "shards; its manifest comes from a mirror, so the hub may have moved on",
    ),
)
