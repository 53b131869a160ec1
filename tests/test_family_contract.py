"""The family contract: every family in `glmcore.models.FAMILIES` passes the same checks, through the family
interface only (glmcore/models/family.py). A new family is its package plus one registry line; this suite is
what proves it works (docs/architecture.md, "Adding a model family").

Each family's tiny checkpoint is its own `write_tiny_checkpoint` (ChatGLM-6B's is the session's
`tiny_model_dir`, whose weights are large enough that greedy decoding does not repeat one token).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

import glmcore
from glmcore.catalog import MODELS, UNREGISTERED_DOWNLOADS
from glmcore.estimate import estimate_vram
from glmcore.examples import IGNORE_INDEX, Example
from glmcore.generation import generate
from glmcore.models import FAMILIES, ModelFamily, ModelShape, family_for, family_named, family_of
from glmcore.models.checkpoint import read_weights
from glmcore.models.loading import load_model
from glmcore.prefix import save_prefix_checkpoint

PROMPT = "类型#上衣*材质#牛仔布*颜色#白色"
EXAMPLE = Example(query="类型#裤*颜色#蓝色", response="简约的牛仔裤")
HISTORY = [("你好", "你好!")]
NEW_TOKENS = 8


@pytest.fixture(scope="module", params=FAMILIES, ids=[family.name for family in FAMILIES])
def family(request) -> ModelFamily:
    return request.param


@pytest.fixture(scope="module")
def tiny_dir(family: ModelFamily, request, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if family.name == "chatglm-6b":
        return request.getfixturevalue("tiny_model_dir")
    folder = tmp_path_factory.mktemp("contract") / family.name
    return family.implementation().write_tiny_checkpoint(folder, init_std=0.5, seed=2)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    return glmcore.load_model(tiny_dir), glmcore.load_tokenizer(tiny_dir)


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_the_published_config_is_detected_as_itself_by_config_and_by_name(family, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(family.published_config()), encoding="utf-8")
    found, reason = family_for(tmp_path)
    assert found is family and reason
    for name in (family.name, *family.aliases, family.name.upper()):
        assert family_named(name) is family
    assert [other.name for other in FAMILIES if other.detect(family.published_config(), tmp_path)] == [
        family.name
    ]


def test_a_config_saved_by_save_pretrained_is_still_its_family(family, tmp_path: Path) -> None:
    """What `glmtui export` and a full fine-tune write: `_name_or_path` dropped, every default written."""
    family.implementation().config_class(**family.published_config()).save_pretrained(tmp_path)
    assert family_for(tmp_path)[0] is family


def test_the_shape_of_the_published_config_counts_the_published_models_weights_and_cache(
    family, tmp_path: Path
) -> None:
    """The estimate's shape against the family's own model of the published config, built on the meta device
    (no memory): the same weights (a tied matrix counted once) and the prefix's width as the cache's."""
    (tmp_path / "config.json").write_text(json.dumps(family.published_config()), encoding="utf-8")
    shape = ModelShape.from_model_dir(tmp_path)
    assert shape == family.published_shape()
    implementation = family.implementation()
    config = implementation.config_class(**family.published_config())
    with torch.device("meta"):
        model = implementation.model_class(config)
    assert shape.parameters == sum(parameter.numel() for parameter in model.parameters())
    assert shape.cache_values_per_token == implementation.prefix_width(config)


def test_the_tiny_checkpoint_loads_as_its_family_and_saved_again_gives_the_same_logits(
    family, tiny_dir: Path, tiny, tmp_path: Path
) -> None:
    model, tokenizer = tiny
    assert family_for(tiny_dir)[0] is family
    assert family_of(model) is family and family_of(tokenizer) is family
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    # The tiny ChatGLM2/3's only family signal is its _name_or_path, which save_pretrained drops.
    reloaded = glmcore.load_model(saved, family=family.name)
    assert family_of(reloaded) is family
    ids = tokenizer.encode(PROMPT)
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), atol=0, rtol=0)


def test_a_saved_prefix_loads_back_with_identical_logits(
    family, tiny_dir: Path, tiny, tmp_path: Path
) -> None:
    _, tokenizer = tiny
    torch.manual_seed(0)
    prefixed = glmcore.load_model(tiny_dir, pre_seq_len=3)
    save_prefix_checkpoint(prefixed, tmp_path / "checkpoint-1")
    reloaded = glmcore.load_model(tiny_dir, prefix_checkpoint=tmp_path / "checkpoint-1")
    assert reloaded.config.pre_seq_len == 3
    ids = tokenizer.encode(PROMPT)
    torch.testing.assert_close(logits(reloaded, ids), logits(prefixed, ids), atol=0, rtol=0)
    assert (logits(reloaded, ids) - logits(tiny[0], ids)).abs().max() > 1e-3, "the prefix must count"


def test_a_row_becomes_a_training_row_whose_labels_are_the_answer_after_its_evaluation_prompt(
    family, tiny
) -> None:
    _, tokenizer = tiny
    implementation = family.implementation()
    features = implementation.training_features(tokenizer, EXAMPLE, 64, 32)
    input_ids, labels = features["input_ids"], features["labels"]
    assert len(input_ids) == len(labels) > 64
    short = implementation.training_features(tokenizer, Example("短", "好"), 64, 32)
    assert len(short["labels"]) == len(labels)  # every row is padded to one length
    prompt = implementation.evaluation_prompt_ids(tokenizer, EXAMPLE, 64)
    assert input_ids[: len(prompt)] == prompt
    assert set(labels[: len(prompt) - 1]) == {IGNORE_INDEX}  # ChatGLM-6B labels its last prompt token
    learned = [label for label in labels if label != IGNORE_INDEX]
    assert learned and learned[-1] in implementation.stop_token_ids(tokenizer)
    assert tokenizer.decode(learned, skip_special_tokens=True).strip() == EXAMPLE.response
    assert implementation.reference_text(tokenizer, EXAMPLE.response, 32) == EXAMPLE.response


def test_the_chat_prompt_holds_the_history_and_the_query(family, tiny) -> None:
    _, tokenizer = tiny
    implementation = family.implementation()
    ids = implementation.chat_prompt_ids(tokenizer, EXAMPLE.query, HISTORY)
    text = tokenizer.decode(ids)
    assert text.index(HISTORY[0][0]) < text.index(HISTORY[0][1]) < text.index(EXAMPLE.query)
    assert ids != implementation.chat_prompt_ids(tokenizer, EXAMPLE.query, [])
    if family.system_role:  # the Chat screen offers a System field only then
        system = implementation.chat_prompt_ids(tokenizer, EXAMPLE.query, HISTORY, system="简短回答")
        assert tokenizer.decode(system).index("简短回答") < tokenizer.decode(system).index(HISTORY[0][0])
    assert tokenizer.eos_token_id in implementation.stop_token_ids(tokenizer)


def test_the_familys_cached_decoder_equals_recomputing_the_whole_sequence(family, tiny) -> None:
    model, tokenizer = tiny
    prompt = tokenizer.encode(PROMPT)
    decoder = family.implementation().new_decoder(model, 1, len(prompt) + NEW_TOKENS, use_graph=False)
    with torch.no_grad():
        cached = generate(
            model, [prompt], max_new_tokens=NEW_TOKENS, eos_token_id=-1, pad_token_id=0, decoder=decoder
        )[0]
        sequence = torch.tensor([prompt])
        for _ in range(NEW_TOKENS):
            following = model(sequence, use_cache=False).logits[0, -1].argmax().view(1, 1)
            sequence = torch.cat([sequence, following], dim=1)
    assert cached == sequence[0, len(prompt) :].tolist()
    assert len(set(cached)) > 2, "the tiny model should not repeat one token, or this proves little"


def test_the_estimates_weights_are_the_tiny_checkpoints_tensor_bytes(family, tiny_dir: Path, tiny) -> None:
    """At 16 bits the estimate's weights term is the checkpoint's weights (a tied matrix counted once)."""
    from glmcore.config import RunConfig

    model, _ = tiny
    parameters = dict(model.named_parameters())  # a tied matrix is named once
    stored = {
        name: tensor
        for shard in [*tiny_dir.glob("pytorch_model*.bin"), *tiny_dir.glob("model*.safetensors")]
        for name, tensor in read_weights(shard).items()
    }
    weight_bytes = sum(
        tensor.numel() * tensor.element_size() for name, tensor in stored.items() if name in parameters
    )
    assert {tensor.dtype for tensor in stored.values()} in ({torch.float16}, {torch.bfloat16})
    assert set(parameters) <= set(stored)
    config = RunConfig(
        name="x", model_path=tiny_dir, train_file=tiny_dir, quantization_bit=16, dtype="float16", gpus=[0]
    )
    shape = ModelShape.from_model_dir(tiny_dir)
    assert estimate_vram(shape, config).parts["weights"] == weight_bytes


def test_each_family_is_its_packages_family_object_under_names_of_its_own() -> None:
    """The registry lists the packages' `FAMILY` objects; no two share a name, an alias, a demo key or folder."""
    assert all(importlib.import_module(family.package).FAMILY is family for family in FAMILIES)
    names = [name for family in FAMILIES for name in (family.name, *family.aliases)]
    for taken in (
        names,
        [family.demo.key for family in FAMILIES],
        [family.demo.folder for family in FAMILIES],
    ):
        assert len(set(taken)) == len(taken), taken
    assert len({family.demo.configs for family in FAMILIES}) == len(FAMILIES)


def test_the_bench_toy_model_is_its_family_and_learns_from_a_row_of_its_special_ids(
    family, tmp_path: Path
) -> None:
    """`glmtui bench --tiny`'s random checkpoint: detected as the family, and a training row made of its
    special ids (as the bench makes them) gives a finite loss; the published ids lie inside the published
    vocabulary."""
    folder = family.implementation().write_random_checkpoint(tmp_path / "toy", dict(family.tiny_config))
    assert family_for(folder)[0] is family
    ids = family.tiny_special_ids
    row = [10, 11, ids["gmask_token_id"], ids["bos_token_id"], 20, 21, ids["eos_token_id"]]
    model = load_model(folder, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        loss = model(torch.tensor([row]), labels=torch.tensor([[IGNORE_INDEX] * 4 + row[4:]])).loss
    assert torch.isfinite(loss)
    vocabulary = family.published_shape().vocab_size
    assert all(0 <= value < vocabulary for value in family.special_ids.values())
    assert (
        set(family.special_ids)
        == set(ids)
        == {"gmask_token_id", "bos_token_id", "eos_token_id", "pad_token_id"}
    )


def test_the_demo_shape_makes_a_tiny_checkpoint_of_the_family(family, tmp_path: Path) -> None:
    folder = family.implementation().write_tiny_checkpoint(tmp_path / family.demo.folder, **family.demo.shape)
    assert family_for(folder)[0] is family
    shape = ModelShape.from_model_dir(folder)
    assert (shape.hidden_size, shape.num_layers) == (
        family.demo.shape["hidden_size"],
        family.demo.shape["num_layers"],
    )


def test_the_lora_targets_are_linear_layers_of_every_block(family, tiny) -> None:
    model, _ = tiny
    for target in family.lora_target_modules:
        found = [module for name, module in model.named_modules() if name.rpartition(".")[2] == target]
        assert len(found) == model.config.num_layers and all(isinstance(m, torch.nn.Linear) for m in found)


def test_the_download_manifest_holds_a_complete_model_folder(family) -> None:
    if family.download is None:  # at most the catalog's own entry of a layout registered after it
        assert family.name not in MODELS or family.name in UNREGISTERED_DOWNLOADS
        return
    manifest = MODELS[family.name].manifest
    if manifest is None:  # no reference gives its file list: a download takes the source's whole listing
        return
    paths = {file.path for file in manifest.files}
    assert {"config.json", family.tokenizer_file} <= paths
    assert any(path.endswith(".index.json") for path in paths)
