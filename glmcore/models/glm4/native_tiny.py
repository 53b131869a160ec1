"""Tiny checkpoints of transformers' GLM-4 layouts (`glm`: glm-4-9b-chat-hf; `glm4`: GLM-4-9B-0414), random
weights in the real on-disk layout: safetensors shards and their index under transformers' tensor names (the
published index's, tests/test_glm4_hf.py checks), config.json with the published keys at tiny sizes,
generation_config.json, tokenizer_config.json (the published added tokens and chat template) and a
tokenizer.json.

The real tokenizer.json is not in ../shared/reference, so this one is built on the spot with the `tokenizers`
library: byte-level BPE learnt from a built-in corpus, split first by GLM-4's published pre-tokenization
pattern; the 14 specials are added tokens. With `real_special_ids` they keep their real ids (151329..) and the
vocabulary its real 151552 rows (the GLM-4 demo's code names ids such as 151337); otherwise they follow the
learnt vocabulary, which keeps the model tiny. Everything is deterministic for the arguments.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from glmcore.models.chatglm2.tiny import CHAT_CORPUS, check_grouped_shape
from glmcore.models.chatglm6b.tiny import BUILTIN_CORPUS
from glmcore.models.glm4.published import CHAT_TEMPLATE, FIRST_SPECIAL_ID, PRETOKENIZE_PATTERN, SPECIAL_TOKENS
from glmcore.models.glm4.tiny import GLM4_CORPUS, PADDED_VOCAB_SIZE, STOP_TOKENS, TinyCheckpointError
from glmcore.models.shards import contiguous_groups, random_state, write_shards

ARCHITECTURES = {"glm": "GlmForCausalLM", "glm4": "Glm4ForCausalLM"}


def write_native_checkpoint(
    directory: str | Path,
    model_type: str,
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
    chat_template: str = CHAT_TEMPLATE,
) -> Path:
    """Write a complete tiny folder of `model_type` ("glm" or "glm4") and return it (bfloat16 weights). The
    options are layout 1's writer's (glmcore.models.glm4.tiny), so the demo's shape serves every layout."""
    check_grouped_shape(hidden_size, num_attention_heads, multi_query_group_num)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [line for line in (BUILTIN_CORPUS if corpus is None else corpus) if line.strip()]
    bpe = train_bpe([*lines, *CHAT_CORPUS, *GLM4_CORPUS], sp_vocab_size)
    first_special = FIRST_SPECIAL_ID if real_special_ids else len(bpe["vocab"])
    stops = [first_special + SPECIAL_TOKENS.index(token) for token in STOP_TOKENS]
    config = native_config_json(
        model_type,
        {
            "vocab_size": PADDED_VOCAB_SIZE if real_special_ids else first_special + len(SPECIAL_TOKENS),
            "hidden_size": hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_attention_heads,
            "num_key_value_heads": multi_query_group_num,
            "head_dim": hidden_size // num_attention_heads,
            "intermediate_size": ffn_hidden_size,
            "max_position_embeddings": seq_length,
            "eos_token_id": stops,
            "pad_token_id": first_special,
        },
    )
    write_json(folder / "config.json", config)
    write_json(
        folder / "generation_config.json",
        {"_from_model_config": True, "eos_token_id": stops, "pad_token_id": first_special},
    )
    write_tokenizer(folder, bpe, first_special, chat_template)
    tensors = random_tensors(model_type, config, seed=seed, init_std=init_std)
    names = sorted(tensors)
    if not 1 <= num_shards <= len(names):
        raise TinyCheckpointError(f"num_shards must be between 1 and {len(names)}, not {num_shards}.")
    write_shards(folder, tensors, contiguous_groups(names, num_shards), "safetensors", sort_index=True)
    return folder


def train_bpe(lines: list[str], size: int) -> dict:
    """Byte-level BPE (the `tokenizers` trainer) over the lines split by GLM-4's pattern: the model's
    description (`vocab`, `merges`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenization()
    trainer = trainers.BpeTrainer(
        vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([without_specials(line) for line in lines], trainer)
    return json.loads(tokenizer.to_str())["model"]


def without_specials(line: str) -> str:
    """The line with the special tokens' texts cut out: they are added tokens, never learnt pieces."""
    for token in SPECIAL_TOKENS:
        line = line.replace(token, "")
    return line


def pre_tokenization():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def write_tokenizer(folder: Path, bpe: dict, first_special: int, chat_template: str) -> None:
    """tokenizer.json (the BPE, the pattern, byte-level decoding, `[gMASK] <sop>` before a text) and
    tokenizer_config.json as glm-4-9b-chat-hf's, the added tokens at `first_special`.."""
    from tokenizers import Tokenizer, decoders, models, processors

    specials = {token: first_special + index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab = {**bpe["vocab"], **specials}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(merge) for merge in bpe["merges"]]))
    tokenizer.pre_tokenizer = pre_tokenization()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A",
        pair="[gMASK] <sop> $A $B",
        special_tokens=[("[gMASK]", specials["[gMASK]"]), ("<sop>", specials["<sop>"])],
    )
    described = json.loads(tokenizer.to_str())
    described["added_tokens"] = [
        {
            "id": index,
            "content": token,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for token, index in specials.items()
    ]
    write_json(folder / "tokenizer.json", described)
    write_json(
        folder / "tokenizer_config.json",
        {
            "added_tokens_decoder": {
                str(index): {
                    "content": token,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for token, index in specials.items()
            },
            "additional_special_tokens": list(SPECIAL_TOKENS),
            "chat_template": chat_template,
            "clean_up_tokenization_spaces": False,
            "do_lower_case": False,
            "eos_token": "<|endoftext|>",
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 128000,
            "pad_token": "<|endoftext|>",
            "padding_side": "left",
            "remove_space": False,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )


def native_config_json(model_type: str, sizes: dict) -> dict:
    """The published config.json's keys (glm-4-9b-chat-hf's; GLM-4-0414's adds partial_rotary_factor)."""
    config = {
        "architectures": [ARCHITECTURES[model_type]],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": sizes["eos_token_id"],
        "head_dim": sizes["head_dim"],
        "hidden_act": "silu",
        "hidden_size": sizes["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": sizes["intermediate_size"],
        "max_position_embeddings": sizes["max_position_embeddings"],
        "model_type": model_type,
        "num_attention_heads": sizes["num_attention_heads"],
        "num_hidden_layers": sizes["num_hidden_layers"],
        "num_key_value_heads": sizes["num_key_value_heads"],
        "pad_token_id": sizes["pad_token_id"],
        "rms_norm_eps": 1.5625e-07,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": sizes["vocab_size"],
    }
    if model_type == "glm4":
        config["partial_rotary_factor"] = 0.5
    return config


def model_class_of(model_type: str):
    if model_type == "glm":
        from glmcore.models.glm4.hf.modeling import GLM4HFConfig, GLM4HFForCausalLM

        return GLM4HFConfig, GLM4HFForCausalLM
    from glmcore.models.glm4.v0414.modeling import GLM40414Config, GLM40414ForCausalLM

    return GLM40414Config, GLM40414ForCausalLM


def random_tensors(model_type: str, config: dict, *, seed: int, init_std: float) -> dict[str, torch.Tensor]:
    """The model's tensors under transformers' names: normal(0, init_std), RMSNorm weights 1 plus noise,
    biases too; bfloat16 as the real checkpoint's."""
    config_class, model_class = model_class_of(model_type)
    with torch.device("meta"):
        model = model_class(config_class(**config))
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, parameter in model.state_dict().items():
        if name.startswith("transformer."):
            continue
        noise = torch.randn(*parameter.shape, generator=generator)
        tensors[name] = (1.0 + 0.1 * noise if name.endswith("norm.weight") else noise * init_std).to(
            torch.bfloat16
        )
    return tensors


def write_random_native_checkpoint(directory: str | Path, model_type: str, config_values: dict) -> Path:
    """A checkpoint of any size (the real one's, for the bench) with random weights: ten safetensors shards,
    `config.json` from `config_values`, and a tiny checkpoint's tokenizer files (the bench feeds ids)."""
    folder = write_native_checkpoint(directory, model_type, num_shards=1)
    for stale in folder.glob("model*.safetensors*"):
        stale.unlink()
    config_class, model_class = model_class_of(model_type)
    tensors = random_state(model_class, config_class(**config_values))
    names = [name for name in tensors if not name.startswith("transformer.")]
    tensors = {name: tensors[name] for name in names}
    write_shards(
        folder, tensors, contiguous_groups(names, min(10, len(names))), "safetensors", sort_index=True
    )
    write_json(folder / "config.json", dict(config_values))
    return folder


def write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
