"""Tiny ChatGLM2-6B / ChatGLM3-6B checkpoints with random weights, in the published on-disk layout.

The folder holds what the real one holds (sharded `pytorch_model-0000N-of-0000M.bin` or safetensors with
their index, `config.json`, `tokenizer_config.json`, a SentencePiece `tokenizer.model`), under the real
tensor names, so tests, demos and golden values go through the same loading paths as the 12 GB folder.

The SentencePiece model is trained on the spot like the real one is built: BPE with byte fallback, no
whitespace normalisation, `<unk> <s> </s>` at ids 0..2 and no pad piece (the published tokenizer pads with
the unk id). The GLM specials (`[MASK] [gMASK] [sMASK] sop eop`, and ChatGLM3's role tokens) are not
SentencePiece pieces: the tokenizer numbers them after the last piece, as the published one does.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
import torch

from glmcore.errors import GlmError
from glmcore.models.chatglm6b.tiny import BUILTIN_CORPUS
from glmcore.models.shards import contiguous_groups, random_state, write_shards

TOKENIZER_FILE = "tokenizer.model"
GLM_SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")

# Chat-shaped lines in both published prompt styles, so the tiny vocabulary has real pieces for them.
CHAT_CORPUS = (
    "[Round 1]\n\n问：你好\n\n答：你好👋！我是人工智能助手 ChatGLM2-6B，很高兴见到你，欢迎问我任何问题。",
    "<|system|>\nYou are ChatGLM3, a large language model trained by Zhipu.AI. Follow the user's instructions.",
    "<|user|>\n晚上睡不着应该怎么办\n<|assistant|>\n以下是一些有助于入睡的建议：\n\n1. 制定规律的睡眠时间表",
    '<|observation|>\n{"temperature": 22, "weather": "晴"}\n\tindented line\n    four spaces',
)

FLAVOURS = {
    "chatglm2": {"name_or_path": "THUDM/chatglm2-6b", "seq_length": 512, "transformers_version": "4.27.1"},
    "chatglm3": {"name_or_path": "THUDM/chatglm3-6b", "seq_length": 256, "transformers_version": "4.30.2"},
}


class TinyCheckpointError(GlmError):
    """The requested tiny checkpoint cannot be built with these arguments."""


def check_grouped_shape(hidden_size: int, num_attention_heads: int, multi_query_group_num: int) -> None:
    """Refuse sizes that do not split into heads, and heads that do not split into key/value groups."""
    if hidden_size % num_attention_heads or num_attention_heads % multi_query_group_num:
        raise TinyCheckpointError(
            f"hidden_size {hidden_size} must divide by num_attention_heads {num_attention_heads}, which must "
            f"divide by multi_query_group_num {multi_query_group_num}."
        )


def rotary_kv_channels(hidden_size: int, num_attention_heads: int, multi_query_group_num: int) -> int:
    """A head's channels for ChatGLM2's rotary (on half a head, in pairs): refused unless a multiple of 4."""
    check_grouped_shape(hidden_size, num_attention_heads, multi_query_group_num)
    kv_channels = hidden_size // num_attention_heads
    if kv_channels % 4:
        raise TinyCheckpointError(
            f"kv_channels {kv_channels} must be a multiple of 4 (rotary on half a head)."
        )
    return kv_channels


def write_tiny_checkpoint(
    directory: str | Path,
    *,
    flavour: str = "chatglm2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_attention_heads: int = 4,
    multi_query_group_num: int = 2,
    ffn_hidden_size: int = 96,
    sp_vocab_size: int = 900,
    corpus: Iterable[str] | None = None,
    seq_length: int | None = None,
    seed: int = 0,
    init_std: float = 0.02,
    num_shards: int = 3,
    weight_format: str = "bin",
) -> Path:
    """Write a complete tiny checkpoint folder of `flavour` ("chatglm2" or "chatglm3") and return it.

    Weights are float16 like the real checkpoint, deterministic for a `seed`. The tokenizer learns from
    `corpus` (default: a built-in mix) and the chat lines of both prompt styles. `seq_length` (the model's
    positions) defaults to a small one per flavour; the demo asks for room for a 512-token answer. `padded_vocab_size` is the
    SentencePiece size plus the specials, not rounded up as the real 65024 is: random weights must never
    pick an id the tokenizer cannot decode.
    """
    if flavour not in FLAVOURS:
        raise TinyCheckpointError(f"Unknown flavour {flavour!r}: use 'chatglm2' or 'chatglm3'.")
    if weight_format not in ("bin", "safetensors"):
        raise TinyCheckpointError(f"Unknown weight format {weight_format!r}: use 'bin' or 'safetensors'.")
    kv_channels = rotary_kv_channels(hidden_size, num_attention_heads, multi_query_group_num)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    processor = _write_sentencepiece_model(folder / TOKENIZER_FILE, sp_vocab_size, corpus)
    specials = len(GLM_SPECIAL_TOKENS) + (len(ROLE_TOKENS) if flavour == "chatglm3" else 0)
    padded_vocab_size = processor.get_piece_size() + specials
    details = {**FLAVOURS[flavour], **({"seq_length": seq_length} if seq_length else {})}
    _write_json(folder / "config.json", _config_json(details, locals()))
    _write_json(
        folder / "tokenizer_config.json",
        {
            "name_or_path": details["name_or_path"],
            "remove_space": False,
            "do_lower_case": False,
            "tokenizer_class": "ChatGLMTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
        },
    )
    tensors = random_state_dict(
        padded_vocab_size=padded_vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_attention_heads=num_attention_heads,
        multi_query_group_num=multi_query_group_num,
        ffn_hidden_size=ffn_hidden_size,
        seed=seed,
        init_std=init_std,
    )
    _write_contiguous_shards(folder, tensors, num_shards, weight_format)
    return folder


REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
}
"""The published config.json's `auto_map` (ChatGLM2/3 and glm-4-9b-chat name the same remote code): written into
tiny folders so they look like the real ones; glmtui never runs it."""


def _config_json(details: dict, sizes: dict) -> dict:
    """The real config.json's keys, in its order, with the tiny sizes."""
    return {
        "_name_or_path": details["name_or_path"],
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": REMOTE_CODE_AUTO_MAP,
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": sizes["ffn_hidden_size"],
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": sizes["hidden_size"],
        "kv_channels": sizes["kv_channels"],
        "layernorm_epsilon": 1e-05,
        "multi_query_attention": True,
        "multi_query_group_num": sizes["multi_query_group_num"],
        "num_attention_heads": sizes["num_attention_heads"],
        "num_layers": sizes["num_layers"],
        "original_rope": True,
        "padded_vocab_size": sizes["padded_vocab_size"],
        "post_layer_norm": True,
        "rmsnorm": True,
        "seq_length": details["seq_length"],
        "use_cache": True,
        "torch_dtype": "float16",
        "transformers_version": details["transformers_version"],
        "tie_word_embeddings": False,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }


def random_state_dict(
    *,
    padded_vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_attention_heads: int,
    multi_query_group_num: int,
    ffn_hidden_size: int,
    seed: int,
    init_std: float,
) -> dict[str, torch.Tensor]:
    """Random float16 weights under the published names; RMSNorm weights are 1 plus noise."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, mean: float = 0.0, std: float = init_std) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * std + mean).to(torch.float16)

    kv_channels = hidden_size // num_attention_heads
    qkv_size = hidden_size + 2 * multi_query_group_num * kv_channels
    rotary_dim = kv_channels // 2
    inv_freq = (1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))).half()
    tensors = {"transformer.embedding.word_embeddings.weight": normal(padded_vocab_size, hidden_size)}
    tensors["transformer.rotary_pos_emb.inv_freq"] = inv_freq
    for layer in range(num_layers):
        prefix = f"transformer.encoder.layers.{layer}."
        tensors.update(
            {
                prefix + "input_layernorm.weight": normal(hidden_size, mean=1.0, std=0.1),
                prefix + "self_attention.query_key_value.weight": normal(qkv_size, hidden_size),
                prefix + "self_attention.query_key_value.bias": normal(qkv_size),
                prefix + "self_attention.dense.weight": normal(hidden_size, hidden_size),
                prefix + "post_attention_layernorm.weight": normal(hidden_size, mean=1.0, std=0.1),
                prefix + "mlp.dense_h_to_4h.weight": normal(2 * ffn_hidden_size, hidden_size),
                prefix + "mlp.dense_4h_to_h.weight": normal(hidden_size, ffn_hidden_size),
            }
        )
    tensors["transformer.encoder.final_layernorm.weight"] = normal(hidden_size, mean=1.0, std=0.1)
    tensors["transformer.output_layer.weight"] = normal(padded_vocab_size, hidden_size)
    return tensors


def _write_sentencepiece_model(
    path: Path, sp_vocab_size: int, corpus: Iterable[str] | None = None
) -> spm.SentencePieceProcessor:
    lines = [line for line in (BUILTIN_CORPUS if corpus is None else corpus) if line.strip()]
    trained = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([*lines, *CHAT_CORPUS]),
            model_writer=trained,
            model_type="bpe",
            vocab_size=sp_vocab_size,
            hard_vocab_limit=False,
            character_coverage=0.9995,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise TinyCheckpointError(
            f"Could not train the tiny tokenizer ({error}); change sp_vocab_size."
        ) from error
    path.write_bytes(trained.getvalue())
    return spm.SentencePieceProcessor(model_file=str(path))


def _write_contiguous_shards(
    folder: Path, tensors: dict[str, torch.Tensor], num_shards: int, weight_format: str
) -> None:
    """`num_shards` contiguous shards, the index in shard order (as the fixtures were written)."""
    names = list(tensors)
    if not 1 <= num_shards <= len(names):
        raise TinyCheckpointError(f"num_shards must be between 1 and {len(names)}, not {num_shards}.")
    write_shards(folder, tensors, contiguous_groups(names, num_shards), weight_format, sort_index=False)


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_random_checkpoint(directory: str | Path, config_values: dict, *, flavour: str = "chatglm2") -> Path:
    """A checkpoint of any size (the real one's, for the bench) with random weights, built on the GPU when
    there is one: seven `.bin` shards under the published names, `config.json` from `config_values` (a
    published config.json's keys), and a tiny checkpoint's tokenizer files (the bench feeds ids directly)."""
    from glmcore.models.chatglm2.configuration import ChatGLM2Config
    from glmcore.models.chatglm2.modeling import ChatGLM2ForConditionalGeneration

    folder = write_tiny_checkpoint(directory, flavour=flavour, num_shards=1)
    for stale in folder.glob("pytorch_model*"):
        stale.unlink()
    tensors = random_state(ChatGLM2ForConditionalGeneration, ChatGLM2Config(**config_values))
    _write_contiguous_shards(folder, tensors, min(7, len(tensors)), "bin")
    _write_json(folder / "config.json", dict(config_values))
    return folder
