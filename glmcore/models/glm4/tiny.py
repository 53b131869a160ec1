"""Tiny glm-4-9b-chat checkpoints with random weights, in the published on-disk layout.

The folder holds what the real one holds: safetensors shards and their index under the real tensor names
(`transformer.rotary_pos_emb.inv_freq` included), `config.json` (the real keys, tiny sizes, the real
`rope_ratio`, qkv bias and epsilon), `generation_config.json`, `tokenizer_config.json` (the published added
tokens and chat template) and a tiktoken ranks file `tokenizer.model` ("base64-bytes rank" per line).

The ranks are learnt on the spot by byte-level BPE over a built-in corpus, split by the published
pre-tokenization pattern: the 256 bytes first, then each merge as the next rank. Everything is deterministic
for the arguments, so tests can build the folder the golden values were made from.

The 14 specials follow the ranks and `padded_vocab_size` is ranks + 14 (not rounded up as the real 151552 is:
random weights must never pick an id the tokenizer cannot decode), which keeps the tiny model tiny. With
`real_special_ids` they keep their real ids (151329..151342) and the vocabulary its real 151552 rows: the
published fine-tuning demo writes ids such as 151331 `[gMASK]` and 151337 `<|assistant|>` into its code, so the
golden values are made on such a folder. The ids between the last rank and 151329 then decode to nothing.
"""

from __future__ import annotations

import base64
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from operator import itemgetter
from pathlib import Path

import regex
import torch

from glmcore.models.chatglm2.tiny import (
    CHAT_CORPUS,
    REMOTE_CODE_AUTO_MAP,
    TinyCheckpointError,
    rotary_kv_channels,
)
from glmcore.models.chatglm6b.tiny import BUILTIN_CORPUS
from glmcore.models.glm4 import PUBLISHED_CONFIG
from glmcore.models.glm4.published import CHAT_TEMPLATE, FIRST_SPECIAL_ID, PRETOKENIZE_PATTERN, SPECIAL_TOKENS
from glmcore.models.shards import contiguous_groups, random_state, write_shards

TOKENIZER_FILE = "tokenizer.model"
PADDED_VOCAB_SIZE = 151552
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
"""generation_config.json's eos_token_id: the published chat stops at the end of text or the next role."""

# GLM-4's chat format and a few lines in the languages tests use, so the tiny ranks have real merges for them.
GLM4_CORPUS = (
    "[gMASK]<sop><|system|>\n你是一个名为 ChatGLM 的人工智能助手。<|user|>\n你好<|assistant|>\n你好👋！我是人工智能助手",
    '<|observation|>\n{"temperature": 22, "weather": "晴"}\n\n## get_weather\n\n{\n    "name": "get_weather"\n}',
    "GLM-4-9B is the open-source version of the latest generation of pre-trained models in the GLM-4 series.",
    "Numbers 2024 12345 3.14159 and tabs\tbetween\twords, runs of   spaces and\n\nblank lines.",
)


def write_tiny_checkpoint(
    directory: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_attention_heads: int = 4,
    multi_query_group_num: int = 2,
    ffn_hidden_size: int = 96,
    sp_vocab_size: int = 856,
    corpus: Iterable[str] | None = None,
    seq_length: int = 1024,
    seed: int = 0,
    init_std: float = 0.02,
    num_shards: int = 2,
    real_special_ids: bool = False,
) -> Path:
    """Write a complete tiny glm-4-9b-chat folder and return it (bfloat16 weights, as the real checkpoint's).

    The tokenizer learns `sp_vocab_size` − 256 BPE merges (its ranks: the 256 bytes, then the merges; the name
    is the other families' writers') from `corpus` (default: a built-in mix) and GLM-4's chat lines.
    """
    kv_channels = rotary_kv_channels(hidden_size, num_attention_heads, multi_query_group_num)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [line for line in (BUILTIN_CORPUS if corpus is None else corpus) if line.strip()]
    if sp_vocab_size <= 256:
        raise TinyCheckpointError(f"sp_vocab_size {sp_vocab_size} leaves no merges: give more than 256.")
    ranks = train_ranks([*lines, *CHAT_CORPUS, *GLM4_CORPUS], sp_vocab_size - 256)
    write_ranks(folder / TOKENIZER_FILE, ranks)
    first_special = FIRST_SPECIAL_ID if real_special_ids else len(ranks)
    stops = [first_special + SPECIAL_TOKENS.index(token) for token in STOP_TOKENS]
    sizes = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_attention_heads": num_attention_heads,
        "multi_query_group_num": multi_query_group_num,
        "ffn_hidden_size": ffn_hidden_size,
        "kv_channels": kv_channels,
        "seq_length": seq_length,
        "padded_vocab_size": PADDED_VOCAB_SIZE if real_special_ids else first_special + len(SPECIAL_TOKENS),
        "eos_token_id": stops,
        "pad_token_id": first_special,
    }
    _write_json(folder / "config.json", config_json(sizes))
    _write_json(
        folder / "generation_config.json",
        {"eos_token_id": stops, "pad_token_id": first_special, "transformers_version": "4.44.0"},
    )
    _write_json(folder / "tokenizer_config.json", tokenizer_config_json(first_special))
    tensors = random_state_dict(sizes, seed=seed, init_std=init_std)
    names = list(tensors)
    if not 1 <= num_shards <= len(names):
        raise TinyCheckpointError(f"num_shards must be between 1 and {len(names)}, not {num_shards}.")
    write_shards(folder, tensors, contiguous_groups(names, num_shards), "safetensors", sort_index=True)
    return folder


def train_ranks(lines: list[str], merges: int) -> dict[bytes, int]:
    """Byte-level BPE: the 256 bytes as ranks 0..255, then up to `merges` merges, each the most frequent
    adjacent pair within the pre-tokenized pieces (ties: the greater pair of bytes), as the next rank. Pair
    counts are kept up to date by re-counting only the pieces a merge changes."""
    counts = Counter(piece.encode() for line in lines for piece in regex.findall(PRETOKENIZE_PATTERN, line))
    words = {word: [bytes([byte]) for byte in word] for word in counts}
    ranks = {bytes([byte]): byte for byte in range(256)}
    pairs: Counter[tuple[bytes, bytes]] = Counter()
    holders: defaultdict[tuple[bytes, bytes], set[bytes]] = defaultdict(set)
    for word, parts in words.items():
        for pair in zip(parts, parts[1:], strict=False):
            pairs[pair] += counts[word]
            holders[pair].add(word)
    for _ in range(merges):
        if not pairs:
            break
        best = max(pairs.items(), key=itemgetter(1, 0))[0]
        merged = best[0] + best[1]
        ranks.setdefault(merged, len(ranks))
        for word in holders.pop(best):
            parts = words[word]
            for pair in zip(parts, parts[1:], strict=False):
                pairs[pair] -= counts[word]
                if pairs[pair] == 0:
                    del pairs[pair]
            joined, index = [], 0
            while index < len(parts):
                if index + 1 < len(parts) and (parts[index], parts[index + 1]) == best:
                    joined.append(merged)
                    index += 2
                else:
                    joined.append(parts[index])
                    index += 1
            words[word] = joined
            for pair in zip(joined, joined[1:], strict=False):
                pairs[pair] += counts[word]
                holders[pair].add(word)
    return ranks


def write_ranks(path: Path, ranks: dict[bytes, int]) -> None:
    """The published format: one "base64(token) rank" line per rank, in rank order."""
    lines = (f"{base64.b64encode(token).decode('ascii')} {rank}\n" for token, rank in sorted_ranks(ranks))
    path.write_text("".join(lines), encoding="ascii")


def sorted_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, int]]:
    return sorted(ranks.items(), key=lambda item: item[1])


def config_json(sizes: dict) -> dict:
    """glm-4-9b-chat's config.json, key for key (its `auto_map` too, which PUBLISHED_CONFIG leaves out), with the
    tiny sizes: `sizes` names config keys, and its `num_layers` is also `num_hidden_layers`."""
    config = {}
    for key, value in PUBLISHED_CONFIG.items():
        config[key] = sizes.get("num_layers" if key == "num_hidden_layers" else key, value)
        if key == "architectures":
            config["auto_map"] = REMOTE_CODE_AUTO_MAP
    return config


def tokenizer_config_json(first_special: int) -> dict:
    """glm-4-9b-chat's tokenizer_config.json (the added tokens from `first_special` on, the chat template)."""
    added = {
        str(first_special + index): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for index, token in enumerate(SPECIAL_TOKENS)
    }
    return {
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
        "added_tokens_decoder": added,
        "additional_special_tokens": list(SPECIAL_TOKENS),
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "do_lower_case": False,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 128000,
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "ChatGLM4Tokenizer",
    }


def random_state_dict(sizes: dict, *, seed: int, init_std: float) -> dict[str, torch.Tensor]:
    """Random bfloat16 weights under the published names; RMSNorm weights are 1 plus noise."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, mean: float = 0.0, std: float = init_std) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * std + mean).to(torch.bfloat16)

    hidden, channels = sizes["hidden_size"], sizes["kv_channels"]
    qkv_size = sizes["num_attention_heads"] * channels + 2 * sizes["multi_query_group_num"] * channels
    rotary_dim = channels // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    tensors = {
        "transformer.embedding.word_embeddings.weight": normal(sizes["padded_vocab_size"], hidden),
        "transformer.rotary_pos_emb.inv_freq": inv_freq.to(torch.bfloat16),
    }
    for layer in range(sizes["num_layers"]):
        prefix = f"transformer.encoder.layers.{layer}."
        tensors.update(
            {
                prefix + "input_layernorm.weight": normal(hidden, mean=1.0, std=0.1),
                prefix + "self_attention.query_key_value.weight": normal(qkv_size, hidden),
                prefix + "self_attention.query_key_value.bias": normal(qkv_size),
                prefix + "self_attention.dense.weight": normal(hidden, hidden),
                prefix + "post_attention_layernorm.weight": normal(hidden, mean=1.0, std=0.1),
                prefix + "mlp.dense_h_to_4h.weight": normal(2 * sizes["ffn_hidden_size"], hidden),
                prefix + "mlp.dense_4h_to_h.weight": normal(hidden, sizes["ffn_hidden_size"]),
            }
        )
    tensors["transformer.encoder.final_layernorm.weight"] = normal(hidden, mean=1.0, std=0.1)
    tensors["transformer.output_layer.weight"] = normal(sizes["padded_vocab_size"], hidden)
    return tensors


def write_random_checkpoint(directory: str | Path, config_values: dict) -> Path:
    """A checkpoint of any size (the real one's, for the bench) with random weights, built on the GPU when
    there is one: ten safetensors shards under the published names, `config.json` from `config_values`, and a
    tiny checkpoint's tokenizer files, with the real special ids at the real vocabulary's size (so `glmtui train`,
    `eval` and `serve` run on it: the config's stop ids are the tokenizer's; ids past the ranks decode to nothing)."""
    from glmcore.models.glm4.configuration import GLM4Config
    from glmcore.models.glm4.modeling import GLM4ForConditionalGeneration

    real_ids = config_values["padded_vocab_size"] >= FIRST_SPECIAL_ID + len(SPECIAL_TOKENS)
    folder = write_tiny_checkpoint(directory, num_shards=1, real_special_ids=real_ids)
    for stale in folder.glob("model*.safetensors*"):
        stale.unlink()
    tensors = random_state(GLM4ForConditionalGeneration, GLM4Config(**config_values))
    names = list(tensors)
    write_shards(
        folder, tensors, contiguous_groups(names, min(10, len(names))), "safetensors", sort_index=True
    )
    _write_json(folder / "config.json", dict(config_values))
    return folder


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
