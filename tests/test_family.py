"""The model-family seam: which family a folder is, why, and what the family gives generic code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from glmcore.estimate import evaluation_batch_size
from glmcore.models import CHATGLM_6B, FAMILIES, ModelShape, UnsupportedModel, family_for, family_of
from glmcore.models.family import FAMILIES as FAMILIES_FROM_FAMILY_MODULE

REFERENCE = Path(__file__).parent / "fixtures" / "reference" / "chatglm-6b"
GIB = 2**30


def model_folder(tmp_path: Path, config: dict) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_the_published_chatglm_6b_config_is_recognised_and_says_why(tmp_path: Path) -> None:
    published = json.loads((REFERENCE / "config.json").read_text(encoding="utf-8"))
    family, why = family_for(model_folder(tmp_path, published))
    assert family is CHATGLM_6B
    assert "position_encoding_2d" in why and "THUDM/chatglm-6b" in why


def test_the_family_keeps_the_published_config() -> None:
    published = json.loads((REFERENCE / "config.json").read_text(encoding="utf-8"))
    del published["auto_map"], published["transformers_version"]  # code to import, and who wrote the file
    assert CHATGLM_6B.published_config() == published
    assert CHATGLM_6B.published_shape() == ModelShape(130528, 4096, 28, 32, 16384)


def test_a_later_generation_or_another_model_is_refused_with_what_to_do(tmp_path: Path) -> None:
    later = {"model_type": "chatglm", "padded_vocab_size": 65024, "kv_channels": 128, "hidden_size": 4096}
    with pytest.raises(UnsupportedModel, match='none of glmtui\'s families .*set family = "..."'):
        family_for(model_folder(tmp_path, later))
    with pytest.raises(UnsupportedModel, match="holds a 'llama' model"):
        family_for(model_folder(tmp_path, {"model_type": "llama"}))


def test_the_family_setting_wins_and_an_unknown_one_lists_the_known(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, {"model_type": "chatglm"})
    with pytest.raises(UnsupportedModel):
        family_for(folder)
    assert family_for(folder, "chatglm-6b") == (CHATGLM_6B, 'family = "chatglm-6b" is set')
    with pytest.raises(UnsupportedModel, match='family = "chatglm5" .* use one of: chatglm-6b'):
        family_for(folder, "chatglm5")


def test_the_registry_is_one_tuple_seen_from_both_modules() -> None:
    assert FAMILIES_FROM_FAMILY_MODULE is FAMILIES
    assert CHATGLM_6B in FAMILIES
    assert len({family.name for family in FAMILIES}) == len(FAMILIES)


def test_loaded_parts_know_their_family(tiny_model, tiny_tokenizer) -> None:
    assert family_of(tiny_model) is tiny_model.model_family is CHATGLM_6B
    assert family_of(tiny_tokenizer) is CHATGLM_6B
    assert family_of(tiny_model.config) is CHATGLM_6B
    with pytest.raises(UnsupportedModel):
        family_of(object())
    implementation = CHATGLM_6B.implementation()
    assert isinstance(tiny_model, implementation.model_class)
    assert implementation.prefix_width(tiny_model.config) == 2 * 2 * 64  # layers × 2 × hidden


def test_finding_a_family_and_its_shape_imports_no_torch(tiny_model_dir: Path) -> None:
    script = (
        "import sys\n"
        "from glmcore.models import family_for, ModelShape\n"
        f"family, why = family_for({str(tiny_model_dir)!r})\n"
        f"print(ModelShape.from_model_dir({str(tiny_model_dir)!r}).num_layers)\n"
        "print(family.published_shape().num_layers)\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:3] == ["2", "28", "[]"]


def test_the_evaluation_batch_follows_memory_and_the_cache_width_the_family_gives() -> None:
    shape = CHATGLM_6B.published_shape()
    settings = {"element_bytes": 2, "sequence_length": 128}
    small = evaluation_batch_size(shape, free_bytes=2 * GIB, **settings)
    large = evaluation_batch_size(shape, free_bytes=8 * GIB, **settings)
    assert 1 <= small < large <= 128
    assert evaluation_batch_size(shape, free_bytes=0, **settings) == 1
    assert evaluation_batch_size(shape, free_bytes=10**15, **settings) == 128
    with_prefix = evaluation_batch_size(shape, free_bytes=8 * GIB, pre_seq_len=128, **settings)
    assert with_prefix < large
    # A grouped-query family's cache is narrower, so more prompts fit.
    grouped = ModelShape(65024, 4096, 28, 32, 13696, key_value_width=2 * 2 * 128)
    assert grouped.cache_values_per_token == 28 * 512 < shape.cache_values_per_token == 28 * 2 * 4096
    assert evaluation_batch_size(grouped, free_bytes=8 * GIB, **settings) > evaluation_batch_size(
        ModelShape(65024, 4096, 28, 32, 13696), free_bytes=8 * GIB, **settings
    )
