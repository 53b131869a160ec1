"""glmcore.sample_data: the AdvertiseGen-form sample is well formed, learnable, deterministic and split cleanly."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glmcore import sample_data
from glmcore.errors import GlmError


def read_json_lines(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_examples_are_in_the_advertisegen_form() -> None:
    for example in sample_data.generate_examples(300, seed=1):
        assert set(example) == {"content", "summary"}
        pairs = sample_data.parse_content(example["content"])
        garment = next(g for g in sample_data.GARMENT_TYPES if g.name == pairs[0][1])
        assert pairs[0][0] == "类型"
        expected_order = [
            *(a.key for a in sample_data.SHARED_ATTRIBUTES),
            garment.noun_key,
            *(a.key for a in garment.attributes),
        ]
        keys = [key for key, _ in pairs[1:]]
        assert keys == [key for key in expected_order if key in keys]
        assert garment.noun_key in keys
        assert len(keys) >= 3
        assert example["summary"].endswith("。")


def test_every_attribute_shows_in_the_copy_with_one_of_its_own_selling_points() -> None:
    noun_keys = {garment.noun_key for garment in sample_data.GARMENT_TYPES}
    for example in sample_data.generate_examples(300, seed=2):
        summary = example["summary"]
        pairs = sample_data.parse_content(example["content"])
        for key, value in pairs[1:]:  # 类型 shows through the noun, as in AdvertiseGen
            assert value in summary, (value, summary)
            if key in noun_keys:
                continue
            selling_points = sample_data.vocabulary(key).selling_points[value]
            assert any(point in summary for point in selling_points), (key, value, summary)


def test_copy_varies_for_the_same_attributes() -> None:
    examples = sample_data.generate_examples(2000, seed=0)
    openings = {example["summary"].split("，", 1)[0] for example in examples}

    assert len(openings) > 40  # several openings for each of the 19 nouns
    assert len({example["summary"] for example in examples}) == len(examples)


def test_same_seed_gives_the_same_examples_and_another_seed_others() -> None:
    assert sample_data.generate_examples(50, seed=7) == sample_data.generate_examples(50, seed=7)
    assert sample_data.generate_examples(50, seed=7) != sample_data.generate_examples(50, seed=8)


def test_contents_are_distinct() -> None:
    contents = [example["content"] for example in sample_data.generate_examples(3000, seed=3)]

    assert len(set(contents)) == len(contents)


def test_dataset_files_are_json_lines_with_disjoint_splits(tmp_path: Path) -> None:
    train_path, dev_path = sample_data.write_sample_dataset(tmp_path / "sample")

    assert (train_path.name, dev_path.name) == ("train.json", "dev.json")
    train, dev = read_json_lines(train_path), read_json_lines(dev_path)
    assert (len(train), len(dev)) == (sample_data.DEFAULT_TRAIN_COUNT, sample_data.DEFAULT_DEV_COUNT)
    assert not {row["content"] for row in train} & {row["content"] for row in dev}
    text = train_path.read_text(encoding="utf-8")
    assert "\\u" not in text and "类型#" in text
    assert sorted(path.name for path in train_path.parent.iterdir()) == ["dev.json", "train.json"]


def dataset_digest_in_fresh_process(directory: Path, hash_seed: str) -> str:
    script = (
        "import sys\n"
        "from glmcore.sample_data import write_sample_dataset\n"
        "write_sample_dataset(sys.argv[1], train_count=300, dev_count=20, seed=5)\n"
    )
    environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
    subprocess.run([sys.executable, "-c", script, str(directory)], env=environment, check=True)
    return hashlib.sha256(
        (directory / "train.json").read_bytes() + (directory / "dev.json").read_bytes()
    ).hexdigest()


def test_same_seed_writes_the_same_bytes_in_any_process(tmp_path: Path) -> None:
    first = dataset_digest_in_fresh_process(tmp_path / "a", "1")
    second = dataset_digest_in_fresh_process(tmp_path / "b", "2")
    sample_data.write_sample_dataset(tmp_path / "c", train_count=300, dev_count=20, seed=5)
    here = hashlib.sha256(
        (tmp_path / "c" / "train.json").read_bytes() + (tmp_path / "c" / "dev.json").read_bytes()
    )

    assert first == second == here.hexdigest()


def test_rewriting_replaces_the_files(tmp_path: Path) -> None:
    sample_data.write_sample_dataset(tmp_path, train_count=30, dev_count=5, seed=0)
    train_path, dev_path = sample_data.write_sample_dataset(tmp_path, train_count=10, dev_count=2, seed=1)

    assert len(read_json_lines(train_path)) == 10 and len(read_json_lines(dev_path)) == 2


def test_datasets_loads_the_files_with_the_advertisegen_columns(tmp_path: Path) -> None:
    from datasets import load_dataset

    train_path, dev_path = sample_data.write_sample_dataset(tmp_path, train_count=40, dev_count=8)

    loaded = load_dataset("json", data_files={"train": str(train_path), "validation": str(dev_path)})

    assert loaded["train"].column_names == ["content", "summary"]
    assert (loaded.num_rows["train"], loaded.num_rows["validation"]) == (40, 8)
    assert loaded["train"][0] == read_json_lines(train_path)[0]


def test_ad_copy_corpus_is_plain_copy_in_the_same_style() -> None:
    corpus = sample_data.ad_copy_corpus(500, seed=0)
    paired = {example["summary"] for example in sample_data.generate_examples(500, seed=0)}

    assert len(corpus) == 500
    assert corpus == sample_data.ad_copy_corpus(500, seed=0)
    assert not any("#" in text for text in corpus)
    assert all(text.endswith("。") for text in corpus)
    assert not set(corpus) & paired


@pytest.mark.parametrize(("train_count", "dev_count"), [(0, 10), (10, 0)])
def test_empty_split_is_refused_with_a_user_error(tmp_path: Path, train_count: int, dev_count: int) -> None:
    with pytest.raises(GlmError, match="both splits need at least 1"):
        sample_data.write_sample_dataset(tmp_path, train_count=train_count, dev_count=dev_count)

    assert list(tmp_path.iterdir()) == []


def test_zero_examples_is_refused() -> None:
    with pytest.raises(sample_data.SampleDataError, match="at least 1"):
        sample_data.generate_examples(0, seed=0)


def test_unknown_key_has_no_vocabulary() -> None:
    with pytest.raises(KeyError):
        sample_data.vocabulary("鞋型")
