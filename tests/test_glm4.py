"""glm-4-9b-chat (the remote-code layout) against golden values from the published code
(tests/golden/glm4/README.md), and glmtui's own parts on it: the cached decoder, P-tuning prefixes, detection,
refusals.

The golden tests (names ending in `_published`) take the tokenizer, the model and the training and evaluation
rows from the session's fixtures (tests/conftest.py) and nothing else, so the published code runs them too.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from support.prefix_training import assert_prefix_steps_change_only_the_prefix

LOGIT_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5
REFERENCE = Path(__file__).parent / "fixtures" / "reference" / "glm-4-9b-chat"
GOLDEN_DIR = Path(__file__).parent / "golden" / "glm4"


def test_the_tiny_checkpoint_is_the_one_the_goldens_were_made_from_published(glm4_golden, glm4_model_dir):
    written = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in glm4_model_dir.iterdir()}
    assert {name: written.get(name) for name in glm4_golden["tiny_checkpoint"]["sha256"]} == glm4_golden[
        "tiny_checkpoint"
    ]["sha256"]


def test_tokenizer_ids_and_decodes_equal_the_published(glm4_golden, glm4_tokenizer):
    golden = glm4_golden["tokenizer"]
    for case in golden["cases"]:
        text = case["text"]
        assert glm4_tokenizer.encode(text) == case["ids"], text
        assert glm4_tokenizer.encode(text, add_special_tokens=False) == case["ids_plain"], text
        assert glm4_tokenizer.decode(case["ids"]) == case["decode"], text
        assert glm4_tokenizer.decode(case["ids"], skip_special_tokens=True) == case["decode_skip"], text
    for case in golden["decode_cases"]:
        assert glm4_tokenizer.decode(case["ids"]) == case["decode"]
        assert glm4_tokenizer.decode(case["ids"], skip_special_tokens=True) == case["decode_skip"]
    assert (glm4_tokenizer.vocab_size, len(glm4_tokenizer)) == (golden["vocab_size"], golden["len"])


def test_chat_template_ids_equal_the_published(glm4_golden, glm4_tokenizer):
    for name, messages in glm4_golden["conversations"].items():
        expected = glm4_golden["chat_template"][name]
        assert glm4_tokenizer.apply_chat_template(copy.deepcopy(messages), tokenize=False) == expected["text"]
        ids = glm4_tokenizer.apply_chat_template(copy.deepcopy(messages), tokenize=True, return_dict=False)
        assert list(ids) == expected["ids"], name
        prompt = glm4_tokenizer.apply_chat_template(
            copy.deepcopy(messages[:-1]), tokenize=True, return_dict=False, add_generation_prompt=True
        )
        assert list(prompt) == expected["prompt_ids"], name


def test_training_rows_equal_the_demos_published(glm4_golden, glm4_training_row):
    """`process_batch` with `combine`, as every configuration of the demo sets it."""
    conversations = list(glm4_golden["conversations"].values())
    for setting in ("512_512_combine", "24_16_combine"):
        expected = glm4_golden["pipeline"][setting]
        for index, messages in enumerate(conversations):
            row = glm4_training_row(
                copy.deepcopy(messages), expected["max_input_length"], expected["max_output_length"]
            )
            assert row["input_ids"] == expected["train"]["input_ids"][index], (setting, index)
            assert row["labels"] == expected["train"]["labels"][index], (setting, index)


def test_evaluation_rows_equal_the_demos_published(glm4_golden, glm4_tokenizer, glm4_evaluation_row):
    """`process_batch_eval`'s row for a conversation's last answer (without `combine`: with it, the demo feeds
    the answer itself), where the demo makes one."""
    compared = 0
    for setting in ("512_512_messages", "24_16_messages"):
        expected = glm4_golden["pipeline"][setting]
        for messages, rows in zip(glm4_golden["conversations"].values(), expected["eval"], strict=True):
            answers = sum(message["role"] == "assistant" for message in messages)
            if len(rows.get("input_ids", ())) != answers:
                continue  # the demo stopped before the last answer (or raised)
            prompt, reference = glm4_evaluation_row(
                copy.deepcopy(messages), expected["max_input_length"], expected["max_output_length"]
            )
            assert prompt == rows["input_ids"][-1]
            labels = glm4_tokenizer.decode(rows["output_ids"][-1], skip_special_tokens=True).strip()
            assert reference == labels
            compared += 1
    assert compared >= 6


def assert_logits(logits: torch.Tensor, expected: dict, columns: list[int]) -> None:
    assert (logits[..., columns] - torch.tensor(expected["columns"])).abs().max().item() <= LOGIT_TOLERANCE
    assert (
        torch.logsumexp(logits, -1) - torch.tensor(expected["logsumexp"])
    ).abs().max().item() <= LOGIT_TOLERANCE
    assert logits.argmax(-1).tolist() == expected["argmax"]


def test_fp32_logits_single_and_left_padded_and_loss_equal_the_published(
    glm4_golden, glm4_model, glm4_tokenizer
):
    golden = glm4_golden["model"]
    padded = golden["padded"]
    batch = glm4_tokenizer(padded["texts"], padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "position_ids"):
        assert batch[key].tolist() == padded[key]
    with torch.no_grad():
        assert_logits(
            glm4_model(torch.tensor([golden["single"]["input_ids"]])).logits[0],
            golden["single"],
            golden["columns"],
        )
        assert_logits(glm4_model(**batch).logits, padded, golden["columns"])
        rows = glm4_golden["pipeline"][golden["loss"]["pipeline"]]["train"]
        for input_ids, labels, loss in zip(
            rows["input_ids"], rows["labels"], golden["loss"]["losses"], strict=True
        ):
            output = glm4_model(torch.tensor([input_ids]), labels=torch.tensor([labels]))
            assert abs(output.loss.item() - loss) <= LOSS_TOLERANCE


def test_greedy_generation_with_the_cache_equals_recomputation_and_the_published(
    glm4_golden, glm4_model, glm4_tokenizer
):
    golden = glm4_golden["generation"]
    texts = glm4_golden["model"]["padded"]["texts"]
    cases = {
        "single": {"input_ids": torch.tensor([glm4_golden["model"]["single"]["input_ids"]])},
        "padded": dict(glm4_tokenizer(texts, padding=True, return_tensors="pt")),
    }
    with torch.no_grad():
        for name, inputs in cases.items():
            cached = glm4_model.generate(**inputs, max_new_tokens=10, do_sample=False)
            recomputed = glm4_model.generate(**inputs, max_new_tokens=10, do_sample=False, use_cache=False)
            assert cached.tolist() == golden[name]["sequences"] == recomputed.tolist(), name
        for text, expected in zip(texts, golden["rows_alone"], strict=True):
            alone = glm4_model.generate(
                torch.tensor([glm4_tokenizer.encode(text)]), max_new_tokens=10, do_sample=False
            )
            assert alone[0].tolist() == expected


# --- glmtui's own parts, held to the golden values --------------------------------------------------------


def unpadded_prompts(batch: dict) -> list[list[int]]:
    return [
        [token for token, kept in zip(ids, mask, strict=True) if kept]
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]


def test_the_static_decoder_equals_the_golden_generation(glm4_golden, glm4_model, glm4_tokenizer):
    from glmcore.generation import generate
    from glmcore.models import family_of

    implementation = family_of(glm4_model).implementation()
    padded = glm4_golden["model"]["padded"]
    prompts = unpadded_prompts(padded)
    width = len(padded["input_ids"][0])
    decoder = implementation.new_decoder(glm4_model, len(prompts), width + 10)
    rows = generate(
        glm4_model,
        prompts,
        max_new_tokens=10,
        eos_token_id=implementation.stop_token_ids(glm4_tokenizer),
        pad_token_id=glm4_tokenizer.pad_token_id,
        decoder=decoder,
    )
    assert rows == [sequence[width:] for sequence in glm4_golden["generation"]["padded"]["sequences"]]


def prefixed_model(model_dir: Path, projection: bool):
    """The tiny model with a 3-token prefix whose values are large enough to change every answer."""
    import glmcore

    model = glmcore.load_model(
        model_dir, dtype=torch.float32, device="cpu", pre_seq_len=3, prefix_projection=projection
    ).eval()
    with torch.no_grad():
        for parameter in model.transformer.prefix_encoder.parameters():
            parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))
    return model


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "projection"])
def test_a_prefix_in_both_variants_saves_and_loads_back_to_the_same_logits(
    glm4_model_dir, glm4_model, glm4_golden, projection, tmp_path: Path
):
    """P-tuning v2 on GLM-4's two key/value groups, as the other families' checkpoints are written."""
    import glmcore
    from glmcore.prefix import save_prefix_checkpoint

    model = prefixed_model(glm4_model_dir, projection)
    save_prefix_checkpoint(model, tmp_path / "prefix")
    loaded = glmcore.load_model(
        glm4_model_dir, dtype=torch.float32, device="cpu", prefix_checkpoint=tmp_path / "prefix"
    ).eval()
    assert loaded.config.prefix_projection == projection
    # Beside ours, the PEFT adapter the GLM-4 demo's P-tuning writes: alone, it loads to the same logits.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(tmp_path / "prefix" / name, adapter / name)
    from_adapter = glmcore.load_model(
        glm4_model_dir, dtype=torch.float32, device="cpu", prefix_checkpoint=adapter
    )
    assert from_adapter.config.prefix_projection is False
    ids = torch.tensor([glm4_golden["model"]["single"]["input_ids"]])
    with torch.no_grad():
        logits = model(ids, logits_to_keep=4).logits
        assert torch.equal(loaded(ids, logits_to_keep=4).logits, logits)
        assert (from_adapter.eval()(ids, logits_to_keep=4).logits - logits).abs().max().item() <= 1e-5
        assert not torch.allclose(glm4_model(ids, logits_to_keep=4).logits, logits, atol=1e-2)


def test_the_demos_peft_prefix_adapter_loads_as_a_prefix_with_peft_s_logits(
    glm4_model_dir, glm4_golden, glm4_tokenizer
):
    """An adapter PEFT 0.12 saved for the published code as the demo's ptuning_v2.yaml configures it
    (tests/golden/glm4/README.md): single prompt, and each row of a left-padded batch as PEFT gives it alone
    (PEFT's own padded forward drops the tokenizer's position_ids and counts the pads)."""
    import glmcore

    golden = json.loads((GOLDEN_DIR / "peft_prefix.json").read_text(encoding="utf-8"))
    model = glmcore.load_model(
        glm4_model_dir,
        dtype=torch.float32,
        device="cpu",
        prefix_checkpoint=GOLDEN_DIR / "peft-prefix-adapter",
    ).eval()
    assert (model.config.pre_seq_len, model.config.prefix_projection) == (4, False)
    columns = glm4_golden["model"]["columns"]
    texts = glm4_golden["model"]["padded"]["texts"]
    batch = glm4_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert_logits(
            model(torch.tensor([glm4_golden["model"]["single"]["input_ids"]])).logits[0],
            golden["single"],
            columns,
        )
        padded = model(**batch).logits
    for row, expected in zip(range(len(texts)), golden["alone"], strict=True):
        assert_logits(padded[row][batch["attention_mask"][row].bool()], expected, columns)


def test_with_a_prefix_the_decoder_equals_recomputation_and_a_padded_batch_each_row_alone(
    glm4_model_dir, glm4_golden, glm4_tokenizer
):
    """The prefix sits in the decoder's cache; recomputing the whole sequence with it gives the same tokens,
    and so does each row decoded alone."""
    from glmcore.generation import generate
    from glmcore.models import family_of

    model = prefixed_model(glm4_model_dir, projection=True)
    implementation = family_of(model).implementation()
    prompts = unpadded_prompts(glm4_golden["model"]["padded"])
    stops = implementation.stop_token_ids(glm4_tokenizer)

    def decoded(rows: list[list[int]]) -> list[list[int]]:
        decoder = implementation.new_decoder(model, len(rows), max(map(len, rows)) + 8)
        return generate(
            model,
            rows,
            max_new_tokens=8,
            eos_token_id=stops,
            pad_token_id=glm4_tokenizer.pad_token_id,
            decoder=decoder,
        )

    batched = decoded(prompts)
    assert batched == [decoded([prompt])[0] for prompt in prompts]
    assert batched != [
        sequence[len(sequence) - 10 :][:8] for sequence in glm4_golden["generation"]["rows_alone"]
    ]
    for prompt, new in zip(prompts, batched, strict=True):
        sequence = torch.tensor([prompt])
        with torch.no_grad():
            for _ in new:
                following = model(sequence, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
                sequence = torch.cat([sequence, following], dim=1)
        assert sequence[0, len(prompt) :].tolist() == new


# --- the family: detection, its shape, refusals ------------------------------------------------------------


def write_config(folder: Path, **changes) -> Path:
    from glmcore.models.glm4 import PUBLISHED_CONFIG

    folder.mkdir(parents=True, exist_ok=True)
    config = {**PUBLISHED_CONFIG, **changes}
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return folder


@pytest.mark.parametrize(
    ("variant", "changes", "groups"),
    [
        ("glm-4-9b-chat", {}, 2),
        ("glm-4-9b", {"_name_or_path": "THUDM/glm-4-9b", "seq_length": 8192, "rope_ratio": None}, 2),
        (
            "glm-4-9b-chat-1m",
            {
                "_name_or_path": "THUDM/glm-4-9b-chat-1m",
                "multi_query_group_num": 4,
                "rope_ratio": 10000,
                "seq_length": 1048576,
            },
            4,
        ),
        ("exported", {"_name_or_path": None}, 2),
    ],
)
def test_each_released_variant_is_glm4_alone_with_its_prefix_width(tmp_path: Path, variant, changes, groups):
    """The base model's seq_length 8192 is also ChatGLM3-6B's: its vocabulary tells them apart."""
    from glmcore.models import FAMILIES, family_for
    from glmcore.models.family import ModelShape

    folder = write_config(tmp_path / variant, **changes)
    config = json.loads((folder / "config.json").read_text())
    assert [family.name for family in FAMILIES if family.detect(config, folder)] == ["glm-4-9b-chat"]
    assert family_for(folder)[0].name == "glm-4-9b-chat"
    assert ModelShape.from_model_dir(folder).cache_values_per_token == 40 * 2 * groups * 128


def test_the_real_folders_metadata_is_glm4_and_its_index_is_the_models_tensors(tmp_path: Path):
    """The published config.json, tokenizer_config.json and weight index (tests/fixtures/reference)."""
    from glmcore.models import family_for
    from glmcore.models.glm4.configuration import GLM4Config
    from glmcore.models.glm4.modeling import GLM4ForConditionalGeneration

    folder = tmp_path / "glm-4-9b-chat"
    folder.mkdir()
    for name in ("config.json", "tokenizer_config.json"):
        shutil.copy(REFERENCE / name, folder / name)
    family, why = family_for(folder)
    assert family.name == "glm-4-9b-chat" and why == "config.json _name_or_path is THUDM/glm-4-9b-chat"
    config = GLM4Config.from_pretrained(folder)
    assert (config.rope_ratio, config.num_layers, config.layernorm_epsilon) == (500, 40, 1.5625e-07)
    with torch.device("meta"):
        model = GLM4ForConditionalGeneration(config)
    index = json.loads((REFERENCE / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) - set(model.state_dict()) == {"transformer.rotary_pos_emb.inv_freq"}
    assert set(model.state_dict()) <= set(index)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"rope_scaling": {"type": "yarn", "factor": 4}},
            r"keys glmtui's GLM-4 does not know \(rope_scaling\)",
        ),
        ({"attn_implementation": "paged"}, "attn_implementation 'paged', which the published GLM-4 code"),
        ({"num_hidden_layers": 39}, "num_hidden_layers 39 but num_layers 40"),
        ({"rmsnorm": False}, "no published GLM-4 checkpoint has"),
    ],
    ids=["rope_scaling", "attn_implementation", "num_hidden_layers", "rmsnorm"],
)
def test_architecture_keys_it_does_not_implement_are_refused_with_a_sentence(
    tmp_path: Path, changes, message
):
    from glmcore.models.chatglm2.configuration import UnsupportedArchitecture
    from glmcore.models.glm4.configuration import GLM4Config

    with pytest.raises(UnsupportedArchitecture, match=message):
        GLM4Config.from_pretrained(write_config(tmp_path, **changes))


def test_the_rotary_base_is_10000_times_rope_ratio(glm4_model):
    """The published RotaryEmbedding's `base * rope_ratio`: rope_ratio 1 (ChatGLM2/3) gives other logits than
    GLM-4's 500, and ChatGLM3-6B-32k's 50 loads."""
    from glmcore.models.chatglm2.modeling import rotary_cos_sin

    positions = torch.arange(6)[None]
    cos, _ = rotary_cos_sin(positions, 16, torch.float32, rope_ratio=500)
    expected = torch.cos(positions[0, :, None].float() / (10000 * 500) ** (torch.arange(0, 8, 2) / 8))
    assert torch.allclose(cos[0, 0], expected)
    assert not torch.allclose(cos, rotary_cos_sin(positions, 16, torch.float32)[0])


def test_a_damaged_ranks_file_is_named_with_its_line(glm4_model_dir, tmp_path: Path):
    import glmcore
    from glmcore.models.glm4.tokenization import TokenizerFileError

    folder = shutil.copytree(glm4_model_dir, tmp_path / "damaged")
    lines = (folder / "tokenizer.model").read_text().splitlines()
    lines[4] = "not-base64!! 4"
    (folder / "tokenizer.model").write_text("\n".join(lines) + "\n")
    with pytest.raises(TokenizerFileError, match=r"tokenizer.model:5 is not a tiktoken rank line"):
        glmcore.load_tokenizer(folder)


def test_the_tokenizer_saves_and_reloads(glm4_tokenizer, tmp_path: Path):
    glm4_tokenizer.save_pretrained(tmp_path)
    text = "你好 <|user|> world\n\t 123 😀"
    reloaded = type(glm4_tokenizer).from_pretrained(tmp_path)
    assert reloaded.encode(text) == glm4_tokenizer.encode(text)
    assert reloaded.decode(reloaded.encode(text)) == glm4_tokenizer.decode(glm4_tokenizer.encode(text))


def test_a_four_bit_p_tuning_step_on_advertisegen_rows_lowers_the_loss_and_changes_only_the_prefix(
    tmp_path: Path,
):
    """NF4 blocks, the untied embedding and output layer in int8 rows, an fp32 prefix: the only thing trained.
    The rows are AdvertiseGen's content and summary through the chat template, as the demo builds them. (The
    family's own tiny checkpoint: its specials follow the ranks.)"""
    import glmcore
    from glmcore.data import TrainingCollator, training_features
    from glmcore.examples import Example
    from glmcore.models.glm4.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path / "tiny", init_std=0.3)
    glm4_tokenizer = glmcore.load_tokenizer(folder)
    torch.manual_seed(0)
    model = glmcore.load_model(folder, quantization_bit=4, pre_seq_len=4, dtype=torch.float32)
    layer = model.transformer.encoder.layers[0]
    assert "Linear4bit" in type(layer.self_attention.query_key_value).__name__
    assert type(model.transformer.output_layer).__name__ == "Int8LMHead"
    assert model.transformer.prefix_encoder.embedding.weight.dtype == torch.float32
    examples = [Example("类型#上衣*颜色#白色", "白色上衣简约百搭"), Example("类型#裙*材质#牛仔布", "牛仔裙")]
    rows = [training_features(glm4_tokenizer, example, 24, 12) for example in examples]
    assert rows[0]["input_ids"][:3] == [
        glm4_tokenizer.get_command(t) for t in ("[gMASK]", "<sop>", "<|user|>")
    ]
    batch = TrainingCollator(glm4_tokenizer.pad_token_id)(rows)
    assert_prefix_steps_change_only_the_prefix(model, batch, steps=8)


def test_a_messages_metadata_and_a_system_messages_tools_must_be_what_the_template_writes():
    """glmcore.data keeps both for GLM-4's template (the golden rows hold them); a wrong type is named."""
    from glmcore.data import DataError, chat_messages

    kept = chat_messages([{"role": "system", "content": "", "tools": []}, {"role": "user", "content": "hi"}])
    assert kept[0] == {"role": "system", "content": "", "tools": []}
    with pytest.raises(DataError, match=r"message 2: 'metadata' holds a number \(3\); write it as text"):
        chat_messages(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "metadata": 3}]
        )
    with pytest.raises(DataError, match=r"message 1: 'tools' holds an object.*; write it as a list of tools"):
        chat_messages([{"role": "system", "content": "", "tools": {"name": "f"}}])
