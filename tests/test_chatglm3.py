"""ChatGLM3-6B's roles, chat prompt and fine-tuning examples against the published code's values, and how
ChatGLM2/3 folders are recognised (tests/golden/chatglm3/README.md says how the values were made)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN

import glmcore
from glmcore.data import Example
from glmcore.models import UnsupportedModel, family_for
from glmcore.models.chatglm2 import FamilySignalsDisagree
from glmcore.models.chatglm2.configuration import UnsupportedArchitecture
from glmcore.models.chatglm3 import family_impl

FIXTURE = GOLDEN / "chatglm3" / "tiny-chatglm3"
CHATGLM2_FIXTURE = GOLDEN / "chatglm2" / "tiny-chatglm2"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((GOLDEN / "chatglm3" / "expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer():
    return glmcore.load_tokenizer(FIXTURE)


def test_build_chat_input_and_single_messages_equal_the_published(tokenizer, expected):
    for case in expected["chat"]:
        inputs = tokenizer.build_chat_input(case["query"], history=case["history"], role=case["role"])
        for key in ("input_ids", "attention_mask", "position_ids"):
            assert inputs[key][0].tolist() == case[key], (case["query"], key)
    for case in expected["single_message"]:
        assert tokenizer.build_single_message(case["role"], case["metadata"], case["message"]) == case["ids"]
    with pytest.raises(ValueError, match="role must be one of"):
        tokenizer.build_single_message("tool", "", "x")


def test_chat_prompt_stops_and_clean_up_are_the_published_chat(tokenizer, expected):
    system_case = expected["chat"][2]  # system, then a user turn, then the query as an observation
    plain = family_impl.chat_prompt_ids(tokenizer, "你好", [])
    assert plain == expected["chat"][0]["input_ids"]
    with_system = family_impl.chat_prompt_ids(
        tokenizer, "next", [("literal <|user|> inside", "ok")], system=system_case["history"][0]["content"]
    )
    assert with_system[: len(tokenizer.build_single_message("system", "", "x")) - 1][:3] == [
        tokenizer.get_command("[gMASK]"),
        tokenizer.get_command("sop"),
        tokenizer.get_command("<|system|>"),
    ]
    assert with_system[-1] == tokenizer.get_command("<|assistant|>")
    assert family_impl.stop_token_ids(tokenizer) == [
        2,
        tokenizer.get_command("<|user|>"),
        tokenizer.get_command("<|observation|>"),
    ]
    for case in expected["process_response"]:
        assert family_impl.clean_response(case["output"]) == case["content"]


def test_training_and_evaluation_rows_equal_finetune_hf(tokenizer, expected):
    pipeline = expected["pipeline"]
    source, target = pipeline["max_input_length"], pipeline["max_output_length"]
    published_train = pipeline["train"]
    evaluated = 0
    for index, conversation in enumerate(pipeline["conversations"]):
        if conversation[0]["role"] == "system":
            continue  # the Example form has no system message
        turns = [
            (conversation[i]["content"], conversation[i + 1]["content"])
            for i in range(0, len(conversation), 2)
        ]
        example = Example(turns[-1][0], turns[-1][1], tuple(turns[:-1]))
        features = family_impl.training_features(tokenizer, example, source, target)
        length = len(published_train["input_ids"][index])
        assert features["input_ids"][:length] == published_train["input_ids"][index]
        assert features["labels"][:length] == published_train["labels"][index]
        assert set(features["labels"][length:]) <= {-100}
        # The demo makes one evaluation row per assistant message, and none once the prompt reached
        # max_input_length (recorded in docs/decisions.md); the example's answer is the last message.
        published_eval = pipeline["eval_per_conversation"][index]
        if len(published_eval["input_ids"]) < len(turns):
            continue
        evaluated += 1
        prompt_ids, output_ids = published_eval["input_ids"][-1], published_eval["output_ids"][-1]
        assert family_impl.evaluation_prompt_ids(tokenizer, example, source) == prompt_ids
        assert family_impl.reference_ids(tokenizer, example.response, target) == output_ids
        assert family_impl.reference_text(tokenizer, example.response, target) == (
            tokenizer.decode(output_ids).strip()
        )
    assert evaluated >= 3


LONG_QUERY = "类型#裙*版型#显瘦*风格#文艺*图案#印花*裙长#连衣裙*领型#圆领" * 3


def test_a_row_cut_before_its_answer_is_kept_with_no_label_as_finetune_hf_keeps_it(tokenizer):
    """`process_batch` cuts the whole conversation to input + output + 1 tokens and keeps the row even when
    that leaves no assistant token: every label -100, nothing filtered out or lengthened."""
    features = family_impl.training_features(tokenizer, Example(LONG_QUERY, "这款连衣裙简约显瘦。"), 8, 4)
    conversation_start = [
        tokenizer.get_command("[gMASK]"),
        tokenizer.get_command("sop"),
        *tokenizer.build_single_message("user", "", LONG_QUERY),
    ]
    assert len(conversation_start) > 8 + 4 + 1
    assert features == {"input_ids": conversation_start[:13], "labels": [-100] * 13}


def test_a_batch_with_no_answer_token_left_learns_nothing_instead_of_turning_nan(tokenizer):
    """The published loss is a mean over no label (NaN, which the optimizer would write into every trained
    weight); here such a batch has loss 0 and no gradient, and a batch with answers keeps its loss."""
    from glmcore.data import TrainingCollator

    model = glmcore.load_model(FIXTURE, pre_seq_len=4, dtype="float32").train()
    cut = family_impl.training_features(tokenizer, Example(LONG_QUERY, "这款连衣裙简约显瘦。"), 8, 4)
    loss = model(**TrainingCollator(tokenizer.pad_token_id)([cut, cut])).loss
    loss.backward()
    assert loss.item() == 0.0
    gradient = model.transformer.prefix_encoder.embedding.weight.grad
    assert gradient is not None and not gradient.any()
    whole = family_impl.training_features(tokenizer, Example("类型#裙", "简约显瘦。"), 8, 4)
    mixed = model(**TrainingCollator(tokenizer.pad_token_id)([whole, cut])).loss
    assert torch.isfinite(mixed) and mixed.item() > 0


def copy_fixture(source: Path, destination: Path, **config_changes) -> Path:
    """The fixture's config and tokenizer (no weights: detection reads config.json only)."""
    destination.mkdir()
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(source / name, destination / name)
    config = json.loads((destination / "config.json").read_text(encoding="utf-8"))
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (destination / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return destination


def test_family_detection_rule_override_and_refusals(tmp_path: Path):
    assert family_for(CHATGLM2_FIXTURE)[0].name == "chatglm2-6b"
    assert family_for(FIXTURE) == (
        family_for(FIXTURE)[0],
        "config.json _name_or_path is THUDM/chatglm3-6b",
    )
    base = copy_fixture(FIXTURE, tmp_path / "base", _name_or_path="THUDM/chatglm3-6b-base", seq_length=None)
    assert family_for(base)[0].name == "chatglm3-6b"
    unnamed = copy_fixture(CHATGLM2_FIXTURE, tmp_path / "unnamed", _name_or_path=None, seq_length=32768)
    assert family_for(unnamed)[1] == "config.json seq_length is 32768"
    conflict = copy_fixture(CHATGLM2_FIXTURE, tmp_path / "conflict", seq_length=8192)
    with pytest.raises(
        FamilySignalsDisagree, match='looks like chatglm2-6b .* also like chatglm3-6b .*family = "'
    ):
        family_for(conflict)
    assert family_for(conflict, "chatglm3-6b") == (
        family_for(FIXTURE)[0],
        'family = "chatglm3-6b" is set',
    )
    silent = copy_fixture(CHATGLM2_FIXTURE, tmp_path / "silent", _name_or_path=None, seq_length=1024)
    with pytest.raises(
        UnsupportedModel,
        match='none of glmtui.s families .* recognises; if it is one of them, set family = "..."',
    ):
        family_for(silent)
    with pytest.raises(UnsupportedModel, match='family = "chatglm4" is not a model family glmtui knows'):
        family_for(silent, "chatglm4")
    assert family_for(GOLDEN / "tiny-chatglm6b")[0].name == "chatglm-6b"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rope_ratio": 0}, "rope_ratio to 0; it must be a positive number"),
        ({"rmsnorm": False}, "rmsnorm to a value"),
        ({"quantization_bit": 4}, "saved quantized"),
        ({"sliding_window": 128}, r"keys glmtui's ChatGLM2/3 does not know \(sliding_window\)"),
    ],
)
def test_architecture_keys_it_does_not_implement_are_refused(tmp_path: Path, change, message):
    folder = copy_fixture(CHATGLM2_FIXTURE, tmp_path / "changed", **change)
    config_class = family_for(folder)[0].implementation().config_class
    with pytest.raises(UnsupportedArchitecture, match=message):
        config_class.from_pretrained(folder)


def test_transformers_bookkeeping_keys_are_not_architecture():
    """Older transformers (5.17) hand `_commit_hash` to the config's constructor along with config.json's keys."""
    config_class = family_for(CHATGLM2_FIXTURE)[0].implementation().config_class
    config_class.from_pretrained(CHATGLM2_FIXTURE)  # loads
    config_class(_commit_hash="0" * 40, _attn_implementation_internal=None)
    with pytest.raises(UnsupportedArchitecture, match=r"does not know \(commit_hash\)"):
        config_class(commit_hash="0" * 40)


def test_the_tokenizer_code_hashes_are_the_published_files(tmp_path: Path):
    from glmcore.catalog import load_manifest
    from glmcore.models.chatglm2 import PUBLISHED_TOKENIZER_CODE

    for family in ("chatglm2-6b", "chatglm3-6b"):
        published = {file.path: file.sha256 for file in load_manifest(family).files}
        assert PUBLISHED_TOKENIZER_CODE[published["tokenization_chatglm.py"]] == family
    # Any other tokenization_chatglm.py is no signal (and is never run): the next rule decides.
    folder = copy_fixture(CHATGLM2_FIXTURE, tmp_path / "edited", _name_or_path=None, seq_length=8192)
    (folder / "tokenization_chatglm.py").write_text("raise SystemExit('never run')\n", encoding="utf-8")
    assert family_for(folder) == (family_for(FIXTURE)[0], "config.json seq_length is 8192")


def test_the_prefix_of_a_fine_tuning_demo_checkpoint_loads(tmp_path: Path):
    """finetune_hf.py saves the whole model (sharded safetensors) with its prefix in P-tuning checkpoints."""
    from safetensors.torch import load_file

    from glmcore.prefix import read_prefix_checkpoint

    checkpoint = GOLDEN / "chatglm3" / "finetune-demo-checkpoint-3"
    spec, state = read_prefix_checkpoint(checkpoint)
    assert (spec.pre_seq_len, spec.prefix_projection) == (4, False)
    assert list(state) == ["embedding.weight"]
    model = glmcore.load_model(FIXTURE, prefix_checkpoint=checkpoint)
    ids = load_file(str(GOLDEN / "chatglm3" / "expected.safetensors"))["single.input_ids"]
    expected = load_file(str(GOLDEN / "chatglm3" / "finetune-demo-checkpoint-3.expected.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert (logits - expected["single.logits"]).abs().max().item() <= 1e-4


def test_a_p_tuning_run_on_chatglm3_trains_on_its_own_rows(tmp_path: Path):
    """Through the real training process code (Trainer, run folder): the rows are ChatGLM3's, the loss falls."""
    import os

    from glmcore.config import RunConfig
    from glmcore.data import load_examples, training_features
    from glmcore.prefix import read_prefix_checkpoint
    from glmcore.runs import RunStore
    from glmcore.train import train

    rows = [
        {"content": "类型#裙*版型#显瘦*风格#文艺", "summary": "这款连衣裙简约显瘦，文艺的印花。"},
        {"content": "类型#上衣*颜色#白色", "summary": "白色上衣简约百搭。"},
    ]
    data = tmp_path / "train.json"
    data.write_text(
        "\n".join(json.dumps(row, ensure_ascii=False) for row in rows * 4) + "\n", encoding="utf-8"
    )
    tokenizer = glmcore.load_tokenizer(FIXTURE)
    example = load_examples(data).examples[0]
    assert training_features(tokenizer, example, 24, 16) == family_impl.training_features(
        tokenizer, example, 24, 16
    )

    config = RunConfig(
        name="chatglm3",
        model_path=FIXTURE,
        train_file=data,
        quantization_bit=16,
        pre_seq_len=4,
        learning_rate=0.3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=12,
        save_steps=12,
        logging_steps=1,
        max_source_length=24,
        max_target_length=16,
        gpus=[],
        dtype="float32",
    )
    run = RunStore(tmp_path / "runs").create(config)
    run.mark_running(os.getpid())
    assert train(run, resume=False) == "finished"
    losses = [event["loss"] for event in run.events() if event["kind"] == "log"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses
    spec, _ = read_prefix_checkpoint(run.latest_checkpoint().path)
    assert spec.pre_seq_len == 4


def test_chat_session_answers_with_the_published_greedy_continuation(expected):
    """The shared ChatSession on ChatGLM3: the build_chat_input prompt, the family's decoder, its stops."""
    from glmcore.chat import ChatSession, ChatSettings

    model = glmcore.load_model(FIXTURE)
    tokenizer = glmcore.load_tokenizer(FIXTURE)
    session = ChatSession(model, tokenizer)
    turn = session.ask("你好", ChatSettings(max_new_tokens=8, sampling=False))
    prompt = family_impl.chat_prompt_ids(tokenizer, "你好", [])
    assert prompt == expected["chat"][0]["input_ids"]
    with torch.no_grad():
        greedy = model.generate(**tokenizer.ids_batch(prompt), max_new_tokens=8, do_sample=False)[
            0, len(prompt) :
        ]
    stops = family_impl.stop_token_ids(tokenizer)
    new = []
    for token in greedy.tolist():
        if token in stops:
            break
        new.append(token)
    assert turn.response == family_impl.clean_response(tokenizer.decode(new))
    assert session.history == [("你好", turn.response)]


def test_chat_session_keeps_the_system_prompt_and_the_configs_positions():
    """The session's prompt starts with the system message every turn; its positions are config seq_length."""
    from glmcore.chat import ChatSession, ChatSettings

    model = glmcore.load_model(FIXTURE)
    tokenizer = glmcore.load_tokenizer(FIXTURE)
    system = "You are a terse assistant."
    session = ChatSession(model, tokenizer, system=system)
    assert session.max_sequence_length == json.loads((FIXTURE / "config.json").read_text())["seq_length"]
    session.history = [("你好", "好")]
    turn = session.stream("next", ChatSettings(max_new_tokens=2, sampling=False))
    assert turn.prompt_ids == family_impl.chat_prompt_ids(tokenizer, "next", [("你好", "好")], system=system)
    turn.close()
