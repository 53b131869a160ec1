"""glm-4-9b-chat-hf (transformers' `glm`) and GLM-4-9B-0414 / GLM-Z1-9B-0414 (transformers' `glm4`) against golden
values from transformers' own classes and PEFT (tests/golden/glm4_hf/README.md), and glmtui's own parts on
them: real-token positions, the static decoder, P-tuning prefixes (glmtui's and PEFT's), detection, refusals,
4-bit P-tuning, LoRA and full fine-tuning.

Each layout's golden tiny checkpoint is built once per session (its real special ids make its vocabulary the
real 151552 rows, as the GLM-4 demo's code needs).
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
from support.profiling import operations

import glmcore

LOGIT_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5
GOLDEN = Path(__file__).parent / "golden"
REFERENCE_HF = Path(__file__).parent / "fixtures" / "reference" / "glm-4-9b-chat-hf"
LAYOUTS = {"glm-4-9b-chat-hf": "glm4_hf", "glm-4-0414": "glm4_0414"}


@pytest.fixture(scope="session", params=list(LAYOUTS), ids=list(LAYOUTS))
def layout(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def golden(layout: str) -> dict:
    return json.loads((GOLDEN / LAYOUTS[layout] / "expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def model_dir(layout: str, golden: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glmcore.models import family_named

    arguments = golden["tiny_checkpoint"]["write_tiny_checkpoint"]
    folder = tmp_path_factory.mktemp(LAYOUTS[layout]) / "tiny"
    return family_named(layout).implementation().write_tiny_checkpoint(folder, **arguments)


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):
    return glmcore.load_tokenizer(model_dir)


@pytest.fixture(scope="session")
def model(model_dir: Path):
    return glmcore.load_model(model_dir, dtype=torch.float32, device="cpu").eval()


GLM4_FAMILIES = ("glm-4-9b-chat", "glm-4-9b-chat-hf", "glm-4-0414")


@pytest.fixture(scope="session")
def small_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each GLM-4 layout's own small tiny checkpoint (specials after the learnt vocabulary)."""
    from glmcore.models import family_named

    root = tmp_path_factory.mktemp("glm4-layouts")
    return {
        name: family_named(name).implementation().write_tiny_checkpoint(root / name, init_std=0.3)
        for name in GLM4_FAMILIES
    }


@pytest.fixture(scope="session")
def small(layout: str, small_dirs: dict[str, Path]):
    """The layout's small tiny model (fp32) and tokenizer, for glmtui's own parts (no golden values needed)."""
    folder = small_dirs[layout]
    return (
        folder,
        glmcore.load_model(folder, dtype=torch.float32, device="cpu").eval(),
        glmcore.load_tokenizer(folder),
    )


PROMPTS = ["你好，世界", "Write  code:\n\tprint(1) and more words 😀"]


def test_the_tiny_checkpoint_is_the_one_the_goldens_were_made_from(golden, model_dir: Path):
    written = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in model_dir.iterdir()}
    assert written == golden["tiny_checkpoint"]["sha256"]


def test_tokenizer_ids_and_decodes_equal_transformers(golden, tokenizer):
    for case in golden["tokenizer"]["cases"]:
        text = case["text"]
        assert tokenizer.encode(text) == case["ids"], text
        assert tokenizer.encode(text, add_special_tokens=False) == case["ids_plain"], text
        assert tokenizer.decode(case["ids"]) == case["decode"], text
        assert tokenizer.decode(case["ids"], skip_special_tokens=True) == case["decode_skip"], text
    for case in golden["tokenizer"]["decode_cases"]:
        assert tokenizer.decode(case["ids"]) == case["decode"]
        assert tokenizer.decode(case["ids"], skip_special_tokens=True) == case["decode_skip"]
    assert (tokenizer.vocab_size, len(tokenizer)) == (
        golden["tokenizer"]["vocab_size"],
        golden["tokenizer"]["len"],
    )


def test_chat_template_ids_with_system_tools_and_observation_equal_transformers(golden, tokenizer):
    for name, messages in golden["conversations"].items():
        expected = golden["chat_template"][name]
        assert tokenizer.apply_chat_template(copy.deepcopy(messages), tokenize=False) == expected["text"]
        assert tokenizer.chat_ids(copy.deepcopy(messages)) == expected["ids"], name
        prompt = tokenizer.chat_ids(copy.deepcopy(messages[:-1]), add_generation_prompt=True)
        assert prompt == expected["prompt_ids"], name


def test_training_and_evaluation_rows_equal_the_glm4_demos(golden, tokenizer):
    """Layout 1's rows (`process_batch` with `combine`; `process_batch_eval`'s row of the last answer) apply
    unchanged: the demo's code ran on this layout's tokenizer for the goldens."""
    from glmcore.data import chat_messages, conversation_features, evaluation_prompt_ids, reference_text
    from glmcore.examples import conversation_example

    conversations = list(golden["conversations"].values())
    for setting in ("512_512_combine", "24_16_combine"):
        expected = golden["pipeline"][setting]
        lengths = expected["max_input_length"], expected["max_output_length"]
        for index, messages in enumerate(conversations):
            row = conversation_features(
                tokenizer, copy.deepcopy(messages), max_input_length=lengths[0], max_output_length=lengths[1]
            )
            assert row["input_ids"] == expected["train"]["input_ids"][index], (setting, index)
            assert row["labels"] == expected["train"]["labels"][index], (setting, index)
    compared = 0
    for setting in ("512_512_messages", "24_16_messages"):
        expected = golden["pipeline"][setting]
        for messages, rows in zip(conversations, expected["eval"], strict=True):
            if len(rows.get("input_ids", ())) != sum(message["role"] == "assistant" for message in messages):
                continue  # the demo stopped before the last answer (or raised)
            example = conversation_example(chat_messages(copy.deepcopy(messages)))
            assert (
                evaluation_prompt_ids(tokenizer, example, expected["max_input_length"])
                == rows["input_ids"][-1]
            )
            labels = tokenizer.decode(rows["output_ids"][-1], skip_special_tokens=True).strip()
            assert reference_text(tokenizer, example.response, expected["max_output_length"]) == labels
            compared += 1
    assert compared >= 6


def assert_logits(logits: torch.Tensor, expected: dict, columns: list[int]) -> None:
    assert (logits[..., columns] - torch.tensor(expected["columns"])).abs().max().item() <= LOGIT_TOLERANCE
    assert (
        torch.logsumexp(logits, -1) - torch.tensor(expected["logsumexp"])
    ).abs().max().item() <= LOGIT_TOLERANCE
    assert logits.argmax(-1).tolist() == expected["argmax"]


def test_fp32_logits_single_and_left_padded_and_loss_equal_transformers(golden, model, tokenizer):
    """The padded batch without position ids: glmtui counts real tokens (transformers' class alone would count
    the pads; the goldens pass generate()'s positions)."""
    expected = golden["model"]
    padded = expected["padded"]
    batch = tokenizer(padded["texts"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == padded["input_ids"]
    with torch.no_grad():
        single = model(torch.tensor([expected["single"]["input_ids"]])).logits[0]
        assert_logits(single, expected["single"], expected["columns"])
        assert_logits(model(**batch).logits, padded, expected["columns"])
        rows = golden["pipeline"][expected["loss"]["pipeline"]]["train"]
        for ids, labels, loss in zip(
            rows["input_ids"], rows["labels"], expected["loss"]["losses"], strict=True
        ):
            assert (
                abs(model(torch.tensor([ids]), labels=torch.tensor([labels])).loss.item() - loss)
                <= LOSS_TOLERANCE
            )


def test_greedy_generation_with_the_cache_equals_recomputation_and_each_row_alone(golden, model, tokenizer):
    """transformers' generate() over glmtui's model; each row alone through glmtui's decoder."""
    expected = golden["generation"]
    texts = golden["model"]["padded"]["texts"]
    padded = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        single = model.generate(
            torch.tensor([golden["model"]["single"]["input_ids"]]), max_new_tokens=10, do_sample=False
        )
        assert single.tolist() == expected["single"]["sequences"]
        cached = model.generate(**padded, max_new_tokens=10, do_sample=False)
        recomputed = model.generate(**padded, max_new_tokens=10, do_sample=False, use_cache=False)
        assert cached.tolist() == expected["padded"]["sequences"] == recomputed.tolist()
    for text, alone in zip(texts, expected["rows_alone"], strict=True):
        prompt = tokenizer.encode(text)
        assert prompt + decoded(model, tokenizer, [prompt], 10)[0] == alone


def unpadded(batch: dict) -> list[list[int]]:
    return [
        [token for token, kept in zip(ids, mask, strict=True) if kept]
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]


def decoded(model, tokenizer, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    from glmcore.generation import generate
    from glmcore.models import family_of

    implementation = family_of(model).implementation()
    decoder = implementation.new_decoder(model, len(prompts), max(map(len, prompts)) + new_tokens)
    return generate(
        model,
        prompts,
        max_new_tokens=new_tokens,
        eos_token_id=implementation.stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        decoder=decoder,
    )


def test_the_static_decoder_equals_transformers_generation_on_a_left_padded_batch(golden, model, tokenizer):
    padded = golden["model"]["padded"]
    width = len(padded["input_ids"][0])
    rows = decoded(model, tokenizer, unpadded(padded), 10)
    assert rows == [sequence[width:] for sequence in golden["generation"]["padded"]["sequences"]]


def test_a_decoding_step_runs_no_more_operations_than_transformers_own_static_cache_step(small):
    """Our static decoder's step over transformers' class against that class stepping its own StaticCache (its
    forward with the 2D mask, from which it builds the 4D one, as generate() does every step), one token after the
    same prompt, counted as tests/test_fused_chatglm2.py counts ChatGLM's. Without gradients each RMSNorm is one
    `rms_norm` where transformers' chain runs six operations (before: -hf 93 operations, transformers' 113; the
    fused step's own counts are tests/test_fused_glm4_native.py's)."""
    from transformers import AutoModelForCausalLM, StaticCache

    from glmcore.generation import new_decoder
    from glmcore.models.head import CACHE_FIELD

    folder, model, _ = small
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    decoder = new_decoder(model, 1, 16, use_graph=False)
    decoder.prefill(ids, torch.ones_like(ids))
    ours = operations(decoder._step_eagerly)

    transformers_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    cache = StaticCache(config=transformers_model.config, max_cache_len=16)
    with torch.no_grad():
        transformers_model(input_ids=ids, attention_mask=torch.ones_like(ids), **{CACHE_FIELD: cache})
        theirs = operations(
            lambda: transformers_model(
                input_ids=torch.tensor([[10]]),
                attention_mask=torch.ones(1, 6, dtype=torch.long),
                position_ids=torch.tensor([[5]]),
                **{CACHE_FIELD: cache},
            )
        )
    assert len(ours) <= len(theirs), (sorted(ours), sorted(theirs))
    norms = sum(type(module).__name__.endswith("RMSNorm") for module in model.modules())
    layers = model.config.num_hidden_layers
    assert norms in (2 * layers + 1, 4 * layers + 1)  # every one of transformers' RMSNorms
    assert ours.count("aten::rms_norm") == norms and "aten::rsqrt" not in ours
    assert theirs.count("aten::index_copy_") == 2 * layers
    assert ours.count("aten::index_copy_") == layers  # the fused step's keys and values in one write
    assert ours.count("aten::scaled_dot_product_attention") == layers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rms_norm_without_gradients_gives_transformers_chain(small, dtype):
    """`InferenceRMSNorm` (decoding, evaluation, serving) against the chain training keeps: the same values."""
    model = small[1]
    norm = copy.deepcopy(
        next(module for module in model.modules() if isinstance(module, model.rms_norm_class))
    )
    width = norm.weight.shape[0]
    norm.weight.data = torch.rand(width, generator=torch.Generator().manual_seed(1)) + 0.5
    norm = norm.to(dtype)
    x = (torch.randn(3, 4, width, generator=torch.Generator().manual_seed(2)) * 4).to(dtype)
    with torch.no_grad():
        decoding = norm(x)
    training = norm(x)
    assert training.requires_grad
    assert torch.equal(decoding, training.detach())


def prefixed_model(model_dir: Path, projection: bool):
    model = glmcore.load_model(
        model_dir, dtype=torch.float32, device="cpu", pre_seq_len=3, prefix_projection=projection
    ).eval()
    with torch.no_grad():
        for parameter in model.transformer.prefix_encoder.parameters():
            parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))
    return model


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "projection"])
def test_a_prefix_saves_loads_back_and_its_peft_adapter_gives_the_same_logits_over_transformers_class(
    small, projection, tmp_path: Path
):
    """Both variants; beside glmtui's files, the PEFT PREFIX_TUNING adapter: `PeftModel.from_pretrained` over
    transformers' own class gives glmtui's logits, single and on a left-padded batch (with generate()'s
    positions, which PEFT shifts by the prefix as glmtui counts them)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from glmcore.prefix import save_prefix_checkpoint

    folder, model, tokenizer = small
    prefixed = prefixed_model(folder, projection)
    save_prefix_checkpoint(prefixed, tmp_path / "prefix")
    loaded = glmcore.load_model(
        folder, dtype=torch.float32, device="cpu", prefix_checkpoint=tmp_path / "prefix"
    )
    assert loaded.config.prefix_projection == projection
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert type(base).__module__.startswith("transformers.")
    peft_model = PeftModel.from_pretrained(base, tmp_path / "prefix").eval()
    ids = torch.tensor([tokenizer.encode(PROMPTS[1])])
    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    positions = (batch["attention_mask"].cumsum(-1) - 1).masked_fill(batch["attention_mask"] == 0, 1)
    with torch.no_grad():
        logits = prefixed(ids).logits
        assert torch.equal(loaded.eval()(ids).logits, logits)
        assert (peft_model(input_ids=ids).logits - logits).abs().max().item() <= 1e-5
        padded = prefixed(**batch).logits
        assert (peft_model(**batch, position_ids=positions).logits - padded).abs().max().item() <= 1e-5
        assert not torch.allclose(model(ids).logits, logits, atol=1e-2)


def test_the_golden_peft_prefix_adapter_loads_as_a_prefix_with_pefts_logits(
    layout, golden, model_dir, tokenizer
):
    model = glmcore.load_model(
        model_dir,
        dtype=torch.float32,
        device="cpu",
        prefix_checkpoint=GOLDEN / LAYOUTS[layout] / "peft-prefix-adapter",
    ).eval()
    assert (model.config.pre_seq_len, model.config.prefix_projection) == (4, False)
    expected, columns = golden["peft_prefix"], golden["model"]["columns"]
    batch = tokenizer(golden["model"]["padded"]["texts"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert_logits(
            model(torch.tensor([golden["model"]["single"]["input_ids"]])).logits[0],
            expected["single"],
            columns,
        )
        padded = model(**batch).logits
    assert_logits(padded, expected["padded"], columns)
    for row, alone in enumerate(expected["alone"]):
        assert_logits(padded[row][batch["attention_mask"][row].bool()], alone, columns)


def test_with_a_prefix_the_decoder_equals_recomputation_and_a_padded_batch_each_row_alone(small):
    folder, _, tokenizer = small
    model = prefixed_model(folder, projection=True)
    prompts = [tokenizer.encode(text) for text in PROMPTS]
    batched = decoded(model, tokenizer, prompts, 8)
    assert batched == [decoded(model, tokenizer, [prompt], 8)[0] for prompt in prompts]
    for prompt, new in zip(prompts, batched, strict=True):
        sequence = torch.tensor([prompt])
        with torch.no_grad():
            for _ in new:
                following = model(sequence, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
                sequence = torch.cat([sequence, following], dim=1)
        assert sequence[0, len(prompt) :].tolist() == new


def test_with_a_prefix_gradient_checkpointing_gives_the_same_gradients(small):
    """transformers drops a layer's cache under checkpointing; glmtui's prefix stays (it reads, never writes)."""
    folder, _, tokenizer = small
    ids = torch.tensor([tokenizer.encode(PROMPTS[1])])
    gradients = []
    for checkpointing in (False, True):
        model = prefixed_model(folder, projection=False)
        model.transformer.prefix_dropout.p = 0.0
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        model(ids, labels=ids).loss.backward()
        gradients.append(model.transformer.prefix_encoder.embedding.weight.grad)
    assert gradients[0].abs().sum() > 0
    torch.testing.assert_close(gradients[1], gradients[0])


# --- the families: detection, the real metadata, refusals ---------------------------------------------------


def test_the_real_hf_folders_metadata_is_its_family_and_its_index_is_transformers_tensors(tmp_path: Path):
    from glmcore.models import family_for
    from glmcore.models.glm4.hf.modeling import GLM4HFConfig, GLM4HFForCausalLM

    for name in ("config.json", "tokenizer_config.json"):
        shutil.copy(REFERENCE_HF / name, tmp_path / name)
    assert family_for(tmp_path)[0].name == "glm-4-9b-chat-hf"
    with torch.device("meta"):
        model = GLM4HFForCausalLM(GLM4HFConfig.from_pretrained(tmp_path))
    index = json.loads((REFERENCE_HF / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == set(model.state_dict())


@pytest.mark.parametrize(
    ("layout_name", "changes", "message"),
    [
        (
            "glm-4-9b-chat-hf",
            {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            "rope_scaling type 'yarn'",
        ),
        (
            "glm-4-0414",
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            "rope_scaling type 'llama3'",
        ),
        ("glm-4-0414", {"sliding_window": 4096}, r"does not know \(sliding_window\)"),
    ],
    ids=["hf-yarn", "0414-llama3", "0414-unknown-key"],
)
def test_architecture_keys_it_does_not_implement_are_refused_with_a_sentence(
    tmp_path: Path, layout_name, changes, message
):
    from glmcore.models import family_named
    from glmcore.models.chatglm2.configuration import UnsupportedArchitecture
    from glmcore.models.loading import load_config

    family = family_named(layout_name)
    (tmp_path / "config.json").write_text(json.dumps({**family.published_config(), **changes}))
    with pytest.raises(UnsupportedArchitecture, match=message):
        load_config(tmp_path)


def test_0414_accepts_yarn_beyond_32k(tmp_path: Path):
    from glmcore.models import family_named

    family = family_named("glm-4-0414")
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    (tmp_path / "config.json").write_text(json.dumps({**family.published_config(), "rope_scaling": yarn}))
    config = family.implementation().config_class.from_pretrained(tmp_path)
    assert config.rope_parameters["rope_type"] == "yarn"


def test_a_folders_own_chat_template_is_kept(small, tmp_path: Path):
    """Z1's template writes the reasoning: whatever the folder's tokenizer_config.json holds is what renders."""
    folder = shutil.copytree(small[0], tmp_path / "z1")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "[gMASK]<sop>{% for m in messages %}<|{{ m.role }}|>\n<think>{{ m.content }}{% endfor %}"
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = glmcore.load_tokenizer(folder)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == (
        "[gMASK]<sop><|user|>\n<think>hi"
    )


# --- training on every GLM-4 layout --------------------------------------------------------------------------


def advertisegen_batch(tokenizer):
    from glmcore.data import TrainingCollator, training_features
    from glmcore.examples import Example

    examples = [Example("类型#上衣*颜色#白色", "白色上衣简约百搭"), Example("类型#裙*材质#牛仔布", "牛仔裙")]
    rows = [training_features(tokenizer, example, 24, 12) for example in examples]
    return TrainingCollator(tokenizer.pad_token_id)(rows)


@pytest.mark.parametrize("layout_name", ["glm-4-9b-chat-hf", "glm-4-0414"])
def test_a_four_bit_p_tuning_step_lowers_the_loss_and_changes_only_the_prefix(small_dirs, layout_name):
    from glmcore.models.quantized_embedding import Int8LMHead

    folder = small_dirs[layout_name]
    tokenizer = glmcore.load_tokenizer(folder)
    torch.manual_seed(0)
    model = glmcore.load_model(folder, quantization_bit=4, pre_seq_len=4, dtype=torch.float32)
    assert "Linear4bit" in type(model.model.layers[0].self_attn.q_proj).__name__
    assert isinstance(model.lm_head, Int8LMHead)
    batch = advertisegen_batch(tokenizer)
    assert_prefix_steps_change_only_the_prefix(model, batch, steps=5)


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("layout_name", GLM4_FAMILIES)
def test_lora_and_full_fine_tuning_take_a_step_on_every_glm4_layout(
    small_dirs, layout_name, method, tmp_path
):
    """glmcore.train's model for the method (LoRA on the family's targets, or every weight), one step: the loss
    is finite, and exactly the trained parameters move."""
    from glmcore.config import RunConfig
    from glmcore.train import prepare_model

    folder = small_dirs[layout_name]
    config = RunConfig(
        name="x", model_path=folder, train_file=folder, method=method, quantization_bit=16, dtype="float32"
    )
    torch.manual_seed(0)
    model = prepare_model(config)
    trained = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert trained and (method == "full" or all("lora_" in name for name in trained))
    model.train()
    loss = model(**advertisegen_batch(glmcore.load_tokenizer(folder))).loss
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    moved = {
        name for name, p in model.named_parameters() if name in trained and not torch.equal(p, trained[name])
    }
    assert moved and moved <= set(trained)
