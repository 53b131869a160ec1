"""ChatGLM2-6B and ChatGLM3-6B (one architecture) against values from the published code.

tests/golden/chatglm2/README.md and tests/golden/chatglm3/README.md say how the fixtures and values were
made (the published modeling_chatglm.py / tokenization_chatglm.py on transformers 4.30.2, outside this
repository); here only our own code runs. Family-specific prompts and examples are in test_chatglm3.py
and at the end of this file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN
from safetensors.torch import load_file
from support.prefix_training import assert_prefix_steps_change_only_the_prefix

import glmcore
from glmcore.data import Example
from glmcore.prefix import (
    PrefixMismatch,
    PrefixSpec,
    read_prefix_checkpoint,
    save_prefix_checkpoint,
    set_prefix,
)

LOGIT_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5
FAMILIES = {
    "chatglm2": GOLDEN / "chatglm2" / "tiny-chatglm2",
    "chatglm3": GOLDEN / "chatglm3" / "tiny-chatglm3",
}


class Golden:
    def __init__(self, name: str) -> None:
        self.name = name
        self.folder = GOLDEN / name
        self.fixture = FAMILIES[name]
        self.expected = json.loads((self.folder / "expected.json").read_text(encoding="utf-8"))
        self.tensors = load_file(str(self.folder / "expected.safetensors"))
        self.model = glmcore.load_model(self.fixture)
        self.tokenizer = glmcore.load_tokenizer(self.fixture)

    def prefixed_model(self, name: str):
        """The fixture with the golden prefix `name` installed (the published model's, seeded)."""
        projection = name.endswith("true")
        key = f"{name}.transformer.prefix_encoder."
        state = {k[len(key) :]: v for k, v in self.tensors.items() if k.startswith(key)}
        model = glmcore.load_model(self.fixture)
        set_prefix(model, PrefixSpec(4, projection), state)
        return model


_LOADED: dict[str, Golden] = {}


def loaded(name: str) -> Golden:
    """One Golden per family for the whole module (the parametrised and the ChatGLM2-only tests share it)."""
    if name not in _LOADED:
        _LOADED[name] = Golden(name)
    return _LOADED[name]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def golden(request) -> Golden:
    return loaded(request.param)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = LOGIT_TOLERANCE) -> None:
    assert actual.shape == expected.shape
    assert (actual.float() - expected).abs().max().item() <= tolerance


def test_the_family_is_recognised_and_loaded_natively(golden):
    family = glmcore.models.family_for(golden.fixture)
    assert family[0].name == f"{golden.name}-6b"
    assert "_name_or_path" in family[1]
    assert glmcore.models.family_of(golden.model) == family[0]
    assert glmcore.models.family_of(golden.tokenizer) == family[0]
    assert type(golden.model).__module__ == "glmcore.models.chatglm2.modeling"
    assert golden.model.transformer.output_layer.weight.data_ptr() != (
        golden.model.transformer.embedding.word_embeddings.weight.data_ptr()
    )


@pytest.mark.parametrize("case", ["single", "batch"])
def test_logits_and_loss_equal_the_published(golden, case):
    tensors = golden.tensors
    with torch.no_grad():
        output = golden.model(input_ids=tensors[f"{case}.input_ids"], labels=tensors[f"{case}.labels"])
    assert_close(output.logits, tensors[f"{case}.logits"])
    assert abs(output.loss.item() - golden.expected[case]["loss"]) <= LOSS_TOLERANCE


def test_left_padded_batch_equals_the_published_and_each_prompt_alone(golden):
    tensors, tokenizer = golden.tensors, golden.tokenizer
    prompts = golden.expected["left"]["prompts"]
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    assert sorted(batch.keys()) == golden.expected["left"]["keys"]
    for key in batch:
        assert torch.equal(batch[key], tensors[f"left.{key}"])
    with torch.no_grad():
        padded = golden.model(**batch).logits
        assert_close(padded, tensors["left.logits"])
        for index, prompt in enumerate(prompts):
            alone = tokenizer([prompt], return_tensors="pt")
            assert torch.equal(alone["input_ids"], tensors[f"left.alone.{index}.input_ids"])
            logits = golden.model(**alone).logits
            assert_close(logits, tensors[f"left.alone.{index}.logits"])
            assert_close(padded[index, -logits.shape[1] :], logits[0])


def test_greedy_generation_with_the_cache_equals_the_published_and_recomputation(golden):
    tensors, tokenizer = golden.tensors, golden.tokenizer
    batch = tokenizer(golden.expected["left"]["prompts"], padding=True, return_tensors="pt")
    with torch.no_grad():
        cached = golden.model.generate(**batch, max_new_tokens=10, do_sample=False)
        recomputed = golden.model.generate(**batch, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(cached, tensors["generate.batch.sequences"])
    assert torch.equal(recomputed, cached)
    for index, case in enumerate(golden.expected["generate"]):
        alone = tokenizer([case["prompt"]], return_tensors="pt")
        with torch.no_grad():
            output = golden.model.generate(
                **alone, max_new_tokens=10, do_sample=False, output_scores=True, return_dict_in_generate=True
            )
        assert output.sequences[0].tolist() == case["output_ids"]
        assert tokenizer.decode(output.sequences[0, alone["input_ids"].shape[1] :]) == case["new_text"]
        assert_close(torch.stack(output.scores, 1)[0], tensors[f"generate.{index}.scores"])


@pytest.mark.parametrize("name", ["prefix_projection_false", "prefix_projection_true"])
def test_prefix_in_both_variants_gives_the_published_logits(golden, name):
    model = golden.prefixed_model(name)
    assert_prefix_outputs(golden, model, name)


def assert_prefix_outputs(golden, model, name: str) -> None:
    tensors = golden.tensors
    with torch.no_grad():
        for case in ("single", "batch"):
            output = model(input_ids=tensors[f"{case}.input_ids"], labels=tensors[f"{case}.labels"])
            assert_close(output.logits, tensors[f"{name}.{case}.logits"])
            assert abs(output.loss.item() - golden.expected[name][case]["loss"]) <= LOSS_TOLERANCE
        batch = golden.tokenizer(golden.expected["left"]["prompts"], padding=True, return_tensors="pt")
        assert_close(model(**batch).logits, tensors[f"{name}.left.logits"])
        generated = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(generated, tensors[f"{name}.generate.sequences"])


def test_published_ptuning_checkpoint_loads_and_ours_reads_back_both_ways(golden, tmp_path: Path):
    published = golden.folder / "ptuning-checkpoint-2"
    model = glmcore.load_model(golden.fixture, prefix_checkpoint=published)
    assert model.config.prefix_projection == golden.expected["ptuning_checkpoint"]["prefix_projection"]
    assert_prefix_outputs(golden, model, "ptuning_checkpoint_2")

    saved = save_prefix_checkpoint(model, tmp_path / "ours")
    ours_spec, ours_state = read_prefix_checkpoint(saved)
    published_spec, published_state = read_prefix_checkpoint(published)
    assert ours_spec == published_spec
    for key, value in published_state.items():
        assert torch.equal(ours_state[key], value)
    # The published-format file we write holds what the published trainer's holds, under the same names.
    ours_published = torch.load(saved / "pytorch_model.bin", weights_only=True)
    assert sorted(ours_published) == golden.expected["ptuning_checkpoint"]["saved_keys"]
    reloaded = glmcore.load_model(golden.fixture, prefix_checkpoint=saved)
    assert_prefix_outputs(golden, reloaded, "ptuning_checkpoint_2")


def test_prefix_mismatch_names_both_values(golden):
    published = golden.folder / "ptuning-checkpoint-2"
    with pytest.raises(PrefixMismatch, match="pre_seq_len 8 was asked for.*pre_seq_len 4"):
        glmcore.load_model(golden.fixture, prefix_checkpoint=published, pre_seq_len=8)
    projection = golden.expected["ptuning_checkpoint"]["prefix_projection"]
    with pytest.raises(PrefixMismatch, match=f"prefix_projection {not projection} was asked for"):
        glmcore.load_model(golden.fixture, prefix_checkpoint=published, prefix_projection=not projection)


def test_a_prefix_of_another_family_is_refused_by_its_width(golden):
    chatglm6b_prefix = GOLDEN / "ptuning-checkpoint-2"
    with pytest.raises(
        PrefixMismatch,
        match=r"produces 256 values per virtual token, but this model needs 128: it was trained for another model",
    ):
        glmcore.load_model(golden.fixture, prefix_checkpoint=chatglm6b_prefix)


def test_tokenizer_equals_the_published(golden):
    for variant, rows in golden.expected["tokenizer"].items():
        options = {"encode_special_tokens": True} if variant == "encode_special_tokens" else {}
        tokenizer = type(golden.tokenizer).from_pretrained(str(golden.fixture), **options)
        for row in rows:
            text = row["text"]
            encoded = tokenizer.encode(text)
            plain = tokenizer.encode(text, add_special_tokens=False)
            assert tokenizer.tokenize(text) == row["tokenize"], text
            assert encoded == row["encode"], text
            assert plain == row["encode_no_special"], text
            assert tokenizer.decode(encoded) == row["decode_encode"], text
            assert tokenizer.decode(plain) == row["decode_encode_no_special"], text
            assert tokenizer.decode(encoded, skip_special_tokens=True) == row["decode_encode_skip_special"], (
                text
            )
            assert {key: list(value) for key, value in tokenizer(text).items()} == row["call"], text
    for case in golden.expected["decode_cases"]:
        assert golden.tokenizer.decode(case["ids"]) == case["decode"]
        assert golden.tokenizer.decode(case["ids"], skip_special_tokens=True) == case["decode_skip_special"]
        assert golden.tokenizer.convert_ids_to_tokens(case["ids"]) == case["tokens"]
    specials = golden.expected["special_ids"]
    assert golden.tokenizer.vocab_size == specials["vocab_size"]
    assert (golden.tokenizer.pad_token_id, golden.tokenizer.eos_token_id) == (0, 2)
    for name, index in specials.items():
        if name.startswith(("[", "<|")) or name in ("sop", "eop", "<bos>", "<eos>", "<pad>"):
            assert golden.tokenizer.get_command(name) == index


def test_tokenizer_saves_and_reloads(golden, tmp_path: Path):
    golden.tokenizer.save_pretrained(str(tmp_path))
    again = type(golden.tokenizer).from_pretrained(str(tmp_path))
    text = golden.expected["tokenizer"]["default"][7]["text"]
    assert again.encode(text) == golden.tokenizer.encode(text)


# --- ChatGLM2-6B's prompt and the examples of its ptuning/main.py -----------------------------------


@pytest.fixture(scope="module")
def chatglm2() -> Golden:
    return loaded("chatglm2")


def test_chatglm2_build_prompt_and_chat_prompt_equal_the_published(chatglm2):
    from glmcore.models.chatglm2 import family_impl

    for case in chatglm2.expected["chat"]:
        history = [tuple(turn) for turn in case["history"]]
        assert chatglm2.tokenizer.build_prompt(case["query"], history) == case["prompt"]
        assert family_impl.chat_prompt_ids(chatglm2.tokenizer, case["query"], history) == case["input_ids"]
    for raw, cleaned in chatglm2.expected["process_response"].items():
        assert family_impl.clean_response(raw) == cleaned
    assert family_impl.stop_token_ids(chatglm2.tokenizer) == [2]


def test_chatglm2_training_and_evaluation_rows_equal_ptuning_main(chatglm2):
    from glmcore.models.chatglm2 import family_impl

    pipeline = chatglm2.expected["pipeline"]
    source, target = pipeline["max_source_length"], pipeline["max_target_length"]
    kept = [row for row in pipeline["rows"] if row["content"] and row["summary"]]
    published = pipeline["history_column"]
    for index, row in enumerate(kept):
        example = Example(row["content"], row["summary"], tuple(tuple(turn) for turn in row["history"]))
        features = family_impl.training_features(chatglm2.tokenizer, example, source, target)
        assert features["input_ids"] == published["train"]["input_ids"][index]
        assert features["labels"] == published["train"]["labels"][index]
        prompt = family_impl.evaluation_prompt_ids(chatglm2.tokenizer, example, source)
        padded = published["eval"]["input_ids"][index]
        assert padded[len(padded) - len(prompt) :] == prompt
        assert set(padded[: len(padded) - len(prompt)]) <= {0}
        label_ids = [token for token in published["eval"]["labels"][index] if token != -100]
        assert family_impl.reference_text(chatglm2.tokenizer, row["summary"], target) == (
            chatglm2.tokenizer.decode(label_ids, skip_special_tokens=True)
        )


def test_four_bit_p_tuning_step_lowers_the_loss_and_changes_only_the_prefix(chatglm2):
    from glmcore.data import TrainingCollator
    from glmcore.models.chatglm2 import family_impl

    torch.manual_seed(0)
    model = glmcore.load_model(chatglm2.fixture, quantization_bit=4, pre_seq_len=4, dtype=torch.float32)
    layer = model.transformer.encoder.layers[0]
    assert "Linear4bit" in type(layer.self_attention.query_key_value).__name__
    assert "Linear4bit" in type(layer.mlp.dense_h_to_4h).__name__
    # The untied output layer and the embedding are int8 rows, each its own (docs/decisions.md).
    assert type(model.transformer.output_layer).__name__ == "Int8LMHead"
    assert type(model.transformer.embedding.word_embeddings).__name__ == "Int8Embedding"
    assert model.transformer.prefix_encoder.embedding.weight.dtype == torch.float32
    examples = [Example("类型#上衣*颜色#白色", "白色上衣简约百搭"), Example("类型#裙*材质#牛仔布", "牛仔裙")]
    batch = TrainingCollator(chatglm2.tokenizer.pad_token_id)(
        [family_impl.training_features(chatglm2.tokenizer, example, 24, 12) for example in examples]
    )
    assert_prefix_steps_change_only_the_prefix(model, batch, steps=8)


def test_int8_embedding_and_output_layer_stay_within_a_bf16_models_rounding(golden):
    ids = torch.cat(
        [golden.tensors["single.input_ids"], golden.tensors["batch.input_ids"].flatten()[None]], 1
    )

    def divergence(model) -> float:
        """Mean KL divergence of the model's next-token distributions from the fp32 model's."""
        with torch.no_grad():
            reference = golden.model(input_ids=ids).logits.log_softmax(-1)
            other = model(input_ids=ids).logits.float().log_softmax(-1)
        return (reference.exp() * (reference - other)).sum(-1).mean().item()

    int8 = glmcore.load_model(golden.fixture, dtype=torch.float32, quantize_embedding=True)
    assert type(int8.transformer.output_layer).__name__ == "Int8LMHead"
    bf16 = glmcore.load_model(golden.fixture, dtype=torch.bfloat16)
    assert divergence(int8) <= 2 * divergence(bf16)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_lora_and_full_fine_tuning_steps_lower_the_loss(chatglm2, method):
    from peft import LoraConfig, get_peft_model

    from glmcore.data import TrainingCollator
    from glmcore.models.chatglm2 import family_impl

    torch.manual_seed(0)
    model = glmcore.load_model(chatglm2.fixture, dtype=torch.float32)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"]))
        trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
        assert trainable and all("lora_" in name for name in trainable)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    examples = [Example("类型#上衣*颜色#白色", "白色上衣简约百搭"), Example("你好", "你好👋！")]
    batch = TrainingCollator(chatglm2.tokenizer.pad_token_id)(
        [family_impl.training_features(chatglm2.tokenizer, example, 24, 12) for example in examples]
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(4):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    changed = {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}
    if method == "lora":
        assert changed and all("lora_" in name for name in changed)
    else:
        assert "transformer.output_layer.weight" in changed
        assert "transformer.encoder.layers.0.self_attention.query_key_value.bias" in changed


def test_glmtui_convert_writes_safetensors_that_give_the_published_logits(chatglm2, tmp_path: Path, capsys):
    from glmtui.cli import main

    folder = tmp_path / "chatglm2-6b"
    shutil.copytree(chatglm2.fixture, folder)
    assert main(["convert", str(folder)]) == 0
    assert "model.safetensors.index.json" in capsys.readouterr().out
    assert sorted(path.name for path in folder.glob("*.safetensors")) == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]
    for shard in folder.glob("*.bin"):
        shard.unlink()  # only the safetensors can be read now
    converted = glmcore.load_model(folder)
    with torch.no_grad():
        assert_close(
            converted(input_ids=chatglm2.tensors["single.input_ids"]).logits,
            chatglm2.tensors["single.logits"],
        )


@pytest.mark.parametrize("prefix", [None, "prefix_projection_true"])
def test_static_decoder_greedy_equals_the_published_generate(golden, prefix):
    from glmcore.generation import generate

    implementation = glmcore.models.family_of(golden.model).implementation()
    model = golden.prefixed_model(prefix) if prefix else golden.model
    expected = golden.tensors[f"{prefix}.generate.sequences" if prefix else "generate.batch.sequences"]
    batch = golden.tokenizer(golden.expected["left"]["prompts"], padding=True)
    prompts = [
        [t for t, m in zip(ids, mask, strict=True) if m]
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]
    new_tokens = expected.shape[1] - len(batch["input_ids"][0])
    decoder = implementation.new_decoder(model, len(prompts), len(batch["input_ids"][0]) + new_tokens)
    rows = generate(
        model, prompts, max_new_tokens=new_tokens, eos_token_id=2, pad_token_id=0, decoder=decoder
    )
    for row, published in zip(rows, expected[:, len(batch["input_ids"][0]) :].tolist(), strict=True):
        assert row == published[: len(row)]
        assert len(row) == new_tokens or row[-1] == 2
