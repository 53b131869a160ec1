"""A tiny ChatGLM-6B checkpoint with random weights, written in the published on-disk layout.

Tests, demos and golden values need a checkpoint that loads through exactly the same code paths as the
real 13 GB one (sharded `pytorch_model-0000N-of-0000M.bin` files, their index, `config.json`,
`tokenizer_config.json` and a SentencePiece `ice_text.model`), yet is small enough to build in a second
on a CPU. This module writes such a folder from torch, sentencepiece and json alone.

The SentencePiece model mimics the real `ice_text.model`: ids 0..4 are `<unk> <s> </s> <pad> <n>`, then
the trained pieces, then (as in the real model, where they are ids 130000..130007) the eight GLM specials
`[MASK] [gMASK] [sMASK] <unused_0> <sop> <eop> <ENC> <dBLOCK>` as control pieces, then `<|tab|>` and
`<|blank_2|>` .. `<|blank_80|>` as user-defined pieces, and last the 256 byte pieces used for byte
fallback (336 pieces after the specials, the same count as the real model's 130008..130343).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
import torch

from glmcore.errors import GlmError
from glmcore.models.shards import contiguous_groups, random_state, write_shards

GLM_SPECIAL_PIECES = ("[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>")
MAX_BLANK_LENGTH = 80
WHITESPACE_PIECES = ("<|tab|>", *(f"<|blank_{length}|>" for length in range(2, MAX_BLANK_LENGTH + 1)))
BYTE_PIECES = tuple(f"<0x{value:02X}>" for value in range(256))
APPENDED_PIECE_COUNT = len(GLM_SPECIAL_PIECES) + len(WHITESPACE_PIECES) + len(BYTE_PIECES)
SENTENCEPIECE_FILE = "ice_text.model"
# Two LayerNorms, rotary inv_freq, query_key_value, dense and the two MLP projections (weights and biases).
TENSORS_PER_LAYER = 13

# Mixed Chinese/English text in the style of the AdvertiseGen data and of chat prompts, so the trained
# pieces cover the characters tests use ("问", "答", "[Round 0]", clothing attributes, code-ish English).
BUILTIN_CORPUS = (
    "[Round 0] 问：你好 答：你好，我是人工智能助手 ChatGLM-6B，很高兴见到你。",
    "[Round 1] 问：你是谁 答：我是一个语言模型，可以回答问题、写作和翻译。",
    "类型#裙*版型#显瘦*风格#文艺*风格#简约*图案#印花*裙长#连衣裙",
    "这款连衣裙采用简约的设计，文艺的印花图案，显瘦的版型，穿上它让你美美的。",
    "类型#上衣*材质#牛仔布*颜色#白色*风格#简约*图案#刺绣*衣样式#外套",
    "白色的牛仔外套，简约又百搭，刺绣的图案增添了几分精致感，时尚又有个性。",
    "类型#裤*版型#宽松*风格#休闲*裤长#九分裤*裤型#阔腿裤",
    "宽松的阔腿裤，休闲舒适，九分的长度露出脚踝，显得腿部更加修长。",
    "今天天气很好，我们一起去公园散步吧。晚上想吃什么？北京的秋天很美。",
    "请帮我写一首关于春天的诗。春风吹过山岗，花开满地，鸟儿在唱歌。",
    "机器学习是人工智能的一个分支，深度学习使用神经网络来学习数据中的规律。",
    "中文和英文混合的句子：我喜欢用 Python 写代码，也喜欢 machine learning。",
    "The quick brown fox jumps over the lazy dog. Hello world, this is a test.",
    "def train(model, data): return model.fit(data, epochs=3, learning_rate=0.02)",
    "P-tuning v2 trains a small prefix encoder while the base model stays frozen.",
    "Fine-tuning ChatGLM-6B on a terminal: prompts, responses, loss, checkpoints and metrics.",
    "A dress with a simple design, a literary print and a slimming cut for summer days.",
    "import torch; x = torch.zeros(4, 8); print(x.shape, x.dtype, x.sum())",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789",
)


class TinyCheckpointError(GlmError):
    """The requested tiny checkpoint cannot be built with these arguments."""


def write_tiny_checkpoint(
    directory: str | Path,
    *,
    corpus: Iterable[str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_attention_heads: int = 4,
    inner_hidden_size: int = 256,
    sp_vocab_size: int = 640,
    seed: int = 0,
    num_shards: int = 8,
    weight_format: str = "bin",
    init_std: float = 0.02,
) -> Path:
    """Write a complete tiny ChatGLM-6B checkpoint folder and return its path.

    `sp_vocab_size` is an upper bound of the SentencePiece vocabulary (it includes the 344 appended
    special, whitespace and byte pieces); a small corpus may yield fewer pieces, and `config.json`'s
    `vocab_size` is always the size actually written. Weights are float16 like the real checkpoint and
    deterministic for a given `seed`; `lm_head.weight` equals `transformer.word_embeddings.weight`.
    """
    _check_arguments(hidden_size, num_attention_heads, num_layers, sp_vocab_size, num_shards, weight_format)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [line for line in (BUILTIN_CORPUS if corpus is None else corpus) if line.strip()]
    if not lines:
        raise TinyCheckpointError("The corpus for the tiny tokenizer is empty: pass some non-blank lines.")
    processor = _write_sentencepiece_model(folder / SENTENCEPIECE_FILE, lines, sp_vocab_size)
    special_ids = {piece: processor.piece_to_id(piece) for piece in ("<pad>", *GLM_SPECIAL_PIECES)}
    vocab_size = processor.get_piece_size()
    _write_json(
        folder / "config.json",
        {
            "_name_or_path": "THUDM/chatglm-6b",
            "architectures": ["ChatGLMModel"],
            "auto_map": {
                "AutoConfig": "configuration_chatglm.ChatGLMConfig",
                "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
            },
            "bos_token_id": special_ids["<sop>"],
            "eos_token_id": special_ids["<eop>"],
            "mask_token_id": special_ids["[MASK]"],
            "gmask_token_id": special_ids["[gMASK]"],
            "pad_token_id": special_ids["<pad>"],
            "hidden_size": hidden_size,
            "inner_hidden_size": inner_hidden_size,
            "layernorm_epsilon": 1e-05,
            "max_sequence_length": 2048,
            "model_type": "chatglm",
            "num_attention_heads": num_attention_heads,
            "num_layers": num_layers,
            "position_encoding_2d": True,
            "torch_dtype": "float16",
            "transformers_version": "4.27.1",
            "use_cache": True,
            "vocab_size": vocab_size,
        },
    )
    _write_json(
        folder / "tokenizer_config.json",
        {
            "name_or_path": "THUDM/chatglm-6b",
            "bos_token": "<sop>",
            "eos_token": "<eop>",
            "end_token": "</s>",
            "gmask_token": "[gMASK]",
            "mask_token": "[MASK]",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "remove_space": False,
            "do_lower_case": False,
            "tokenizer_class": "ChatGLMTokenizer",
            "num_image_tokens": 0,
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
        },
    )
    tensors = random_state_dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_attention_heads=num_attention_heads,
        inner_hidden_size=inner_hidden_size,
        seed=seed,
        init_std=init_std,
    )
    write_shards(folder, tensors, _shard_groups(list(tensors), num_shards), weight_format, sort_index=True)
    return folder


def random_state_dict(
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_attention_heads: int,
    inner_hidden_size: int,
    seed: int,
    init_std: float,
) -> dict[str, torch.Tensor]:
    """Random float16 weights under the published names, in the published module order.

    LayerNorm weights are 1 plus noise and biases are non-zero, so a native implementation that forgets
    a bias or a LayerNorm affine term gives different logits.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, mean: float = 0.0, std: float = init_std) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * std + mean).to(torch.float16)

    rotary_dim = hidden_size // num_attention_heads // 2
    inv_freq = (1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))).half()
    word_embeddings = normal(vocab_size, hidden_size)
    tensors = {"transformer.word_embeddings.weight": word_embeddings}
    for layer in range(num_layers):
        prefix = f"transformer.layers.{layer}."
        tensors.update(
            {
                prefix + "input_layernorm.weight": normal(hidden_size, mean=1.0, std=0.1),
                prefix + "input_layernorm.bias": normal(hidden_size),
                prefix + "attention.rotary_emb.inv_freq": inv_freq.clone(),
                prefix + "attention.query_key_value.weight": normal(3 * hidden_size, hidden_size),
                prefix + "attention.query_key_value.bias": normal(3 * hidden_size),
                prefix + "attention.dense.weight": normal(hidden_size, hidden_size),
                prefix + "attention.dense.bias": normal(hidden_size),
                prefix + "post_attention_layernorm.weight": normal(hidden_size, mean=1.0, std=0.1),
                prefix + "post_attention_layernorm.bias": normal(hidden_size),
                prefix + "mlp.dense_h_to_4h.weight": normal(inner_hidden_size, hidden_size),
                prefix + "mlp.dense_h_to_4h.bias": normal(inner_hidden_size),
                prefix + "mlp.dense_4h_to_h.weight": normal(hidden_size, inner_hidden_size),
                prefix + "mlp.dense_4h_to_h.bias": normal(hidden_size),
            }
        )
    tensors["transformer.final_layernorm.weight"] = normal(hidden_size, mean=1.0, std=0.1)
    tensors["transformer.final_layernorm.bias"] = normal(hidden_size)
    tensors["lm_head.weight"] = word_embeddings.clone()
    return tensors


def _check_arguments(
    hidden_size: int,
    num_attention_heads: int,
    num_layers: int,
    sp_vocab_size: int,
    num_shards: int,
    weight_format: str,
) -> None:
    """Reject sizes the published architecture cannot run, before anything is written."""
    if weight_format not in ("bin", "safetensors"):
        raise TinyCheckpointError(f"Unknown weight format {weight_format!r}: use 'bin' or 'safetensors'.")
    if hidden_size % (4 * num_attention_heads) != 0:
        raise TinyCheckpointError(
            f"hidden_size {hidden_size} must be a multiple of 4 x num_attention_heads ({num_attention_heads}), "
            "because ChatGLM's 2D rotary embedding splits each head in two even halves."
        )
    minimum_vocab = APPENDED_PIECE_COUNT + 64
    if sp_vocab_size < minimum_vocab:
        raise TinyCheckpointError(
            f"sp_vocab_size {sp_vocab_size} is too small: it must be at least {minimum_vocab}, since "
            f"{APPENDED_PIECE_COUNT} pieces are special, whitespace and byte pieces."
        )
    if num_shards < 1:
        raise TinyCheckpointError(f"num_shards must be at least 1, not {num_shards}.")
    tensor_count = TENSORS_PER_LAYER * num_layers + 4
    if num_shards > tensor_count:
        raise TinyCheckpointError(
            f"num_shards {num_shards} is too many for {tensor_count} tensors: use at most {tensor_count}."
        )


def _write_sentencepiece_model(
    path: Path, lines: list[str], sp_vocab_size: int
) -> spm.SentencePieceProcessor:
    """Train a unigram model on `lines`, append the GLM pieces like the real ice_text.model, save it."""
    trained = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=trained,
            model_type="unigram",
            vocab_size=sp_vocab_size - APPENDED_PIECE_COUNT,
            hard_vocab_limit=False,
            character_coverage=1.0,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            unk_piece="<unk>",
            bos_piece="<s>",
            eos_piece="</s>",
            pad_piece="<pad>",
            user_defined_symbols=["<n>"],
            split_digits=False,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise TinyCheckpointError(
            f"Could not train the tiny tokenizer ({error}). Raise sp_vocab_size or use a corpus with fewer "
            "distinct characters."
        ) from error
    appended = [
        *((piece, _CONTROL) for piece in GLM_SPECIAL_PIECES),
        *((piece, _USER_DEFINED) for piece in WHITESPACE_PIECES),
        *((piece, _BYTE) for piece in BYTE_PIECES),
    ]
    # Protobuf appends repeated fields in stream order and merges a repeated sub-message field by field,
    # so extra pieces and a partial TrainerSpec can simply follow the trained model's bytes.
    extra = b"".join(_field(1, _sentencepiece_message(piece, kind)) for piece, kind in appended)
    trainer_spec_update = _varint_field(_TRAINER_SPEC_BYTE_FALLBACK, 1)
    path.write_bytes(trained.getvalue() + extra + _field(_MODEL_TRAINER_SPEC, trainer_spec_update))
    return spm.SentencePieceProcessor(model_file=str(path))


# Field numbers and enum values of sentencepiece_model.proto (ModelProto, SentencePiece, TrainerSpec),
# written by hand so that writing a model needs no protobuf runtime.
_MODEL_TRAINER_SPEC = 2
_TRAINER_SPEC_BYTE_FALLBACK = 35
_CONTROL, _USER_DEFINED, _BYTE = 3, 4, 6


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while True:
        low_bits, value = value & 0x7F, value >> 7
        encoded.append(low_bits | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _sentencepiece_message(piece: str, kind: int) -> bytes:
    """A ModelProto.SentencePiece with score 0, as icetk-style appended pieces have."""
    score = _varint(2 << 3 | 5) + struct.pack("<f", 0.0)
    return _field(1, piece.encode("utf-8")) + score + _varint_field(3, kind)


def _shard_groups(names: list[str], num_shards: int) -> list[list[str]]:
    """Split names into contiguous shards; like the real checkpoint, lm_head gets the last shard alone."""
    if num_shards == 1:
        return [names]
    body = [name for name in names if name != "lm_head.weight"]
    return [*contiguous_groups(body, num_shards - 1), ["lm_head.weight"]]


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_random_checkpoint(folder: Path, config_values: dict) -> Path:
    """A checkpoint of any size (the real one's, for the bench) with random weights, built on the GPU when
    there is one: eight `.bin` shards with the published names (lm_head stored beside the embedding, as
    published), `config.json` from `config_values`, and a tiny checkpoint's tokenizer files."""
    from glmcore.models.chatglm6b.configuration import ChatGLMConfig
    from glmcore.models.chatglm6b.modeling import ChatGLMForConditionalGeneration, rotary_inverse_frequencies

    # The tokenizer files of a tiny checkpoint complete the folder; the benchmark feeds ids directly.
    write_tiny_checkpoint(folder, num_shards=1)
    for stale in folder.glob("pytorch_model*"):
        stale.unlink()
    config = ChatGLMConfig(**config_values)
    state = random_state(ChatGLMForConditionalGeneration, config)
    state["lm_head.weight"] = state["transformer.word_embeddings.weight"].clone()
    inverse = rotary_inverse_frequencies(config.head_dim // 2).half()
    for layer in range(config.num_layers):
        state[f"transformer.layers.{layer}.attention.rotary_emb.inv_freq"] = inverse.clone()
    names = list(state)
    groups = [names[index::8] for index in range(8)]
    weight_map = {}
    for number, group in enumerate(groups, start=1):
        shard = f"pytorch_model-{number:05d}-of-00008.bin"
        torch.save({name: state[name] for name in group}, folder / shard)
        weight_map.update(dict.fromkeys(group, shard))
    total = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config.to_json_file(str(folder / "config.json"))
    return folder
