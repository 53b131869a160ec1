"""The tiny checkpoint writer produces the published ChatGLM-6B on-disk layout, deterministically."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file

from glmcore.models.chatglm6b.tiny import (
    BYTE_PIECES,
    GLM_SPECIAL_PIECES,
    WHITESPACE_PIECES,
    TinyCheckpointError,
    write_tiny_checkpoint,
)
from glmcore.models.checkpoint import read_weights
from glmcore.models.shards import write_shards

GOLDEN = Path(__file__).parent / "golden"
REFERENCE = Path(__file__).parent / "fixtures" / "reference" / "chatglm-6b"
"""The published THUDM/chatglm-6b's config.json, tokenizer_config.json and weight index (metadata only)."""
REAL_LAYER_SUFFIXES = {
    "input_layernorm.weight",
    "input_layernorm.bias",
    "attention.rotary_emb.inv_freq",
    "attention.query_key_value.weight",
    "attention.query_key_value.bias",
    "attention.dense.weight",
    "attention.dense.bias",
    "post_attention_layernorm.weight",
    "post_attention_layernorm.bias",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",
    "mlp.dense_4h_to_h.weight",
    "mlp.dense_4h_to_h.bias",
}
REAL_TOP_LEVEL = {
    "transformer.word_embeddings.weight",
    "transformer.final_layernorm.weight",
    "transformer.final_layernorm.bias",
    "lm_head.weight",
}


def expected_names(num_layers: int) -> set[str]:
    layers = {f"transformer.layers.{n}.{suffix}" for n in range(num_layers) for suffix in REAL_LAYER_SUFFIXES}
    return REAL_TOP_LEVEL | layers


def load_bin_checkpoint(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        loaded = torch.load(folder / shard, weights_only=True)
        assert all(index["weight_map"][name] == shard for name in loaded)
        tensors.update(loaded)
    return index, tensors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "chatglm-6b", seed=7)


def test_names_match_the_real_checkpoint_scaled_to_the_layer_count(tiny: Path) -> None:
    index, tensors = load_bin_checkpoint(tiny)
    assert set(tensors) == set(index["weight_map"]) == expected_names(2)
    real = json.loads((REFERENCE / "pytorch_model.bin.index.json").read_text())["weight_map"]
    assert len(real) == 4 + 28 * len(REAL_LAYER_SUFFIXES)
    real_two_layers = {name for name in real if not re.match(r"transformer\.layers\.([2-9]|\d\d)\.", name)}
    assert real_two_layers == set(tensors)


def test_index_is_consistent_with_the_shards(tiny: Path) -> None:
    index, tensors = load_bin_checkpoint(tiny)
    shard_files = sorted(path.name for path in tiny.glob("pytorch_model-*.bin"))
    assert shard_files == [f"pytorch_model-{n:05d}-of-00008.bin" for n in range(1, 9)]
    assert sorted(set(index["weight_map"].values())) == shard_files
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    # Like the real checkpoint: word embeddings in the first shard, lm_head alone in the last one.
    assert index["weight_map"]["transformer.word_embeddings.weight"] == shard_files[0]
    assert [name for name, shard in index["weight_map"].items() if shard == shard_files[-1]] == [
        "lm_head.weight"
    ]
    assert not list(tiny.glob("*.py"))


def test_tensors_have_the_published_shapes_and_values(tiny: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    _, tensors = load_bin_checkpoint(tiny)
    hidden, inner, vocab = config["hidden_size"], config["inner_hidden_size"], config["vocab_size"]
    assert tensors["transformer.word_embeddings.weight"].shape == (vocab, hidden)
    assert tensors["transformer.layers.1.attention.query_key_value.weight"].shape == (3 * hidden, hidden)
    assert tensors["transformer.layers.1.mlp.dense_h_to_4h.weight"].shape == (inner, hidden)
    assert tensors["transformer.layers.1.mlp.dense_4h_to_h.weight"].shape == (hidden, inner)
    assert all(tensor.dtype == torch.float16 for tensor in tensors.values())
    assert torch.equal(tensors["lm_head.weight"], tensors["transformer.word_embeddings.weight"])
    rotary_dim = hidden // config["num_attention_heads"] // 2
    expected_inv_freq = (1.0 / 10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)).half()
    assert torch.equal(tensors["transformer.layers.0.attention.rotary_emb.inv_freq"], expected_inv_freq)
    layernorm = tensors["transformer.layers.0.input_layernorm.weight"].float()
    assert (layernorm - 1).abs().max() < 1 and layernorm.std() > 0
    assert tensors["transformer.layers.0.attention.dense.bias"].abs().max() > 0


def test_config_ids_come_from_the_sentencepiece_model(tiny: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    real_config = {
        "model_type",
        "architectures",
        "bos_token_id",
        "eos_token_id",
        "mask_token_id",
        "gmask_token_id",
    }
    assert real_config <= set(config)
    assert set(config) == set(json.loads((REFERENCE / "config.json").read_text()))
    real_tokenizer_config = json.loads((REFERENCE / "tokenizer_config.json").read_text())
    assert set(json.loads((tiny / "tokenizer_config.json").read_text())) == set(real_tokenizer_config)
    processor = spm.SentencePieceProcessor(model_file=str(tiny / "ice_text.model"))
    assert config["vocab_size"] == processor.get_piece_size() <= 640
    assert config["bos_token_id"] == processor.piece_to_id("<sop>")
    assert config["eos_token_id"] == processor.piece_to_id("<eop>")
    assert config["mask_token_id"] == processor.piece_to_id("[MASK]")
    assert config["gmask_token_id"] == processor.piece_to_id("[gMASK]")
    assert config["pad_token_id"] == processor.piece_to_id("<pad>") == 3


def test_sentencepiece_model_holds_the_pieces_the_published_tokenizer_needs(tiny: Path) -> None:
    processor = spm.SentencePieceProcessor(model_file=str(tiny / "ice_text.model"))
    assert [processor.id_to_piece(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "<pad>", "<n>"]
    size = processor.get_piece_size()
    appended = [*GLM_SPECIAL_PIECES, *WHITESPACE_PIECES, *BYTE_PIECES]
    assert [processor.id_to_piece(i) for i in range(size - len(appended), size)] == appended
    assert processor.id_to_piece(5) == "▁"
    assert all(processor.is_control(processor.piece_to_id(piece)) for piece in GLM_SPECIAL_PIECES)
    # <n>, <|tab|> and <|blank_N|> are user-defined: matched whole inside text.
    assert processor.encode("a<n>b<|tab|>c<|blank_80|>", out_type=str) == [
        "▁a",
        "<n>",
        "b",
        "<|tab|>",
        "c",
        "<|blank_80|>",
    ]
    # Characters outside the vocabulary fall back to bytes instead of <unk>.
    assert processor.encode("😀", out_type=str)[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert processor.decode(processor.encode("你好 😀 world")) == "你好 😀 world"


def test_same_seed_gives_identical_files_and_another_seed_other_weights(tmp_path: Path, tiny: Path) -> None:
    again = write_tiny_checkpoint(tmp_path / "again", seed=7)
    for path in tiny.iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name
    other = write_tiny_checkpoint(tmp_path / "other", seed=8)
    _, first = load_bin_checkpoint(tiny)
    _, second = load_bin_checkpoint(other)
    assert not torch.equal(
        first["transformer.word_embeddings.weight"], second["transformer.word_embeddings.weight"]
    )


def test_safetensors_format_and_custom_sizes(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(
        tmp_path / "st",
        weight_format="safetensors",
        num_shards=3,
        num_layers=3,
        hidden_size=32,
        num_attention_heads=2,
        inner_hidden_size=64,
        corpus=["hello world, 你好世界", "the cat sat on the mat", "机器学习 machine learning"],
    )
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{n:05d}-of-00003.safetensors" for n in range(1, 4)]
    tensors = {name: t for file in files for name, t in load_file(folder / file).items()}
    assert set(tensors) == expected_names(3) == set(index["weight_map"])
    assert tensors["transformer.layers.2.mlp.dense_h_to_4h.weight"].shape == (64, 32)
    assert not list(folder.glob("*.bin"))


def test_single_shard_is_written_without_an_index(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "one", num_shards=1)
    assert (folder / "pytorch_model.bin").exists()
    assert not (folder / "pytorch_model.bin.index.json").exists()
    assert set(torch.load(folder / "pytorch_model.bin", weights_only=True)) == expected_names(2)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"weight_format": "gguf"}, "Unknown weight format"),
        ({"hidden_size": 36}, "multiple of 4"),
        ({"sp_vocab_size": 100}, "too small"),
        ({"num_shards": 0}, "at least 1"),
        ({"num_shards": 40}, "too many"),
        ({"corpus": ["   ", ""]}, "empty"),
    ],
)
def test_impossible_arguments_raise_a_clear_error(tmp_path: Path, arguments: dict, message: str) -> None:
    with pytest.raises(TinyCheckpointError, match=message):
        write_tiny_checkpoint(tmp_path / "bad", **arguments)


@pytest.mark.parametrize(
    ("fixture", "index_name", "sort_index"),
    [
        ("tiny-chatglm6b", "pytorch_model.bin.index.json", True),
        ("chatglm2/tiny-chatglm2", "pytorch_model.bin.index.json", False),
        ("chatglm3/tiny-chatglm3", "model.safetensors.index.json", False),
    ],
)
def test_the_shard_writer_rewrites_the_committed_fixtures_byte_for_byte(
    tmp_path: Path, fixture: str, index_name: str, sort_index: bool
) -> None:
    """Every family's tiny checkpoint goes through one writer; given a fixture's own tensors and shards it
    writes that fixture's weight files and index again, to the byte."""
    committed = GOLDEN / fixture
    weight_map = json.loads((committed / index_name).read_text())["weight_map"]
    shard_files = sorted(set(weight_map.values()))
    tensors: dict[str, torch.Tensor] = {}
    groups = []
    for shard in shard_files:
        loaded = read_weights(committed / shard)
        # A pickle keeps the order it was written in; safetensors sorts its own header, so take the index's.
        order = list(loaded) if shard.endswith(".bin") else [n for n, f in weight_map.items() if f == shard]
        groups.append(order)
        tensors.update({name: loaded[name] for name in order})
    weight_format = "bin" if index_name.startswith("pytorch_model") else "safetensors"
    write_shards(tmp_path, tensors, groups, weight_format, sort_index=sort_index)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*shard_files, index_name])
    for name in [*shard_files, index_name]:
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name
