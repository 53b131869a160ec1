"""Chat: streaming with the KV cache, cancelling, history trimming, prefix switching, clean-up, the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import glmcore
from glmcore.chat import ChatError, ChatSession, ChatSettings, PrefixCache
from glmcore.data import build_prompt
from glmcore.models.chatglm6b.chat import clean_response, settled_length
from glmcore.prefix import save_prefix_checkpoint

GREEDY = ChatSettings(max_new_tokens=24, sampling=False)
PROBE = "类型#上衣*颜色#白色"


@pytest.fixture
def model(tiny_model_dir: Path):
    """A model of this test's own: switching prefixes changes it in place."""
    return glmcore.load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def prefix_checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(5)
    tuned = glmcore.load_model(tiny_model_dir, pre_seq_len=4)
    with torch.no_grad():
        tuned.transformer.prefix_encoder.embedding.weight.mul_(4)
    return save_prefix_checkpoint(tuned, tmp_path_factory.mktemp("prefix") / "checkpoint-5")


def _logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokenizer.encode(PROBE)])).logits


def test_clean_up_makes_punctuation_next_to_cjk_full_width():
    assert clean_response("  你好,世界!  ") == "你好，世界！"
    assert clean_response(",好 a:b 好;x ok? 好?") == "，好 a:b 好；x ok? 好？"
    assert clean_response("训练于[[训练时间]]") == "训练于2023年"
    assert settled_length("你好,") == 2, "a comma waits for the next character"
    assert settled_length("你好 ") == 2
    assert settled_length("训练于[[训练") == 3
    assert settled_length("好\ufffd") == 1, "a character whose bytes are still arriving waits"


def test_answers_stream_in_several_deltas_from_one_cached_generation(model, tiny_tokenizer):
    session = ChatSession(model, tiny_tokenizer)
    inputs: list[int] = []
    hook = model.transformer.register_forward_pre_hook(lambda _, args: inputs.append(args[0].shape[1]))
    try:
        turn = session.stream("你好", GREEDY)
        deltas = list(turn)
    finally:
        hook.remove()
    assert len(deltas) > 1 and all(deltas)
    assert "".join(deltas) == turn.response
    prompt = tiny_tokenizer.encode("你好")
    with torch.no_grad():
        generated = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=tiny_tokenizer.eos_token_id,
        )[0, len(prompt) :]
    assert turn.response == clean_response(tiny_tokenizer.decode(generated, skip_special_tokens=True))
    assert inputs == [len(prompt)] + [1] * (turn.generated_tokens - 1), "the prompt is computed once"
    assert session.history == [("你好", turn.response)]

    second = session.stream("你是谁", GREEDY)
    assert second.prompt_tokens == len(tiny_tokenizer.encode(build_prompt("你是谁", session.history)))
    list(second)
    assert [query for query, _ in session.history] == ["你好", "你是谁"]


def test_cancelling_mid_answer_keeps_the_partial_text_out_of_the_history(model, tiny_tokenizer):
    session = ChatSession(model, tiny_tokenizer)
    session.ask("你好", GREEDY)
    history = list(session.history)
    long_answer = ChatSettings(max_new_tokens=1500, sampling=False)
    turn = session.stream("你是谁", long_answer)
    deltas = [next(turn)]
    turn.cancel()
    deltas += list(turn)
    assert turn.cancelled and turn.finished
    assert 0 < turn.generated_tokens < 1500
    assert "".join(deltas) == turn.response
    assert session.history == history

    stop = threading.Event()
    stop.set()
    stopped = session.stream("你是谁", long_answer, cancel=stop)
    list(stopped)
    assert stopped.cancelled and stopped.generated_tokens == 1
    assert session.history == history


def test_history_is_trimmed_oldest_round_first_to_fit_the_positions(model, tiny_tokenizer):
    session = ChatSession(model, tiny_tokenizer)
    for query in ("你好", "你是谁", "今天天气很好"):
        session.ask(query, ChatSettings(max_new_tokens=8, sampling=False))
    rounds = list(session.history)
    query = "晚上想吃什么"
    fits_last_round = len(tiny_tokenizer.encode(build_prompt(query, rounds[-1:])))
    tight = ChatSettings(max_new_tokens=session.max_sequence_length - fits_last_round, sampling=False)
    stop = threading.Event()
    stop.set()
    turn = session.stream(query, tight, cancel=stop)
    assert turn.trimmed_rounds == 2 and turn.prompt_tokens == fits_last_round
    assert session.history == rounds[-1:]
    list(turn)

    with pytest.raises(ChatError, match="fit beside an answer of 2047 tokens"):
        session.stream(query, ChatSettings(max_new_tokens=2047))
    session.clear()
    assert session.history == []


def test_prefixes_swap_in_place_and_come_from_the_cache(
    model, tiny_model, tiny_tokenizer, prefix_checkpoint, tmp_path
):
    checkpoint = tmp_path / "checkpoint-5"
    shutil.copytree(prefix_checkpoint, checkpoint)
    base_weights = [parameter for name, parameter in model.named_parameters() if "prefix" not in name]
    base_logits = _logits(model, tiny_tokenizer)
    prefixes = PrefixCache()
    session = ChatSession(model, tiny_tokenizer, prefixes=prefixes)

    session.use_prefix(checkpoint)
    tuned_logits = _logits(model, tiny_tokenizer)
    assert (tuned_logits - base_logits).abs().max() > 1e-3, "the prefix changes the output"
    assert session.prefix == checkpoint.resolve() and model.config.pre_seq_len == 4
    tuned_answer = session.ask("你好", GREEDY).response
    assert tuned_answer != ChatSession(tiny_model, tiny_tokenizer).ask("你好", GREEDY).response

    session.use_prefix(None)
    torch.testing.assert_close(_logits(model, tiny_tokenizer), base_logits, atol=0, rtol=0)
    assert session.prefix is None and not model.config.pre_seq_len

    shutil.rmtree(checkpoint)  # a cached prefix reads no file
    session.use_prefix(checkpoint)
    torch.testing.assert_close(_logits(model, tiny_tokenizer), tuned_logits, atol=0, rtol=0)
    assert len(prefixes) == 1
    session.clear()
    assert session.ask("你好", GREEDY).response == tuned_answer
    after = [parameter for name, parameter in model.named_parameters() if "prefix" not in name]
    assert len(after) == len(base_weights)
    assert all(old is new for old, new in zip(base_weights, after, strict=True)), "the base weights stay"

    with pytest.raises(glmcore.errors.GlmError, match="does not exist"):
        session.use_prefix(tmp_path / "elsewhere")


def test_settings_refuse_what_cannot_work():
    with pytest.raises(ChatError, match="at least 1 token"):
        ChatSettings(max_new_tokens=0)
    with pytest.raises(ChatError, match="top_p"):
        ChatSettings(top_p=0)


@pytest.mark.slow
def test_chat_command_streams_answers_for_a_script(
    model, tiny_model_dir, tiny_tokenizer, prefix_checkpoint, tmp_path
):
    session = ChatSession(model, tiny_tokenizer)
    settings = ChatSettings(max_new_tokens=12, sampling=False)
    first = session.ask("你好", settings).response
    session.use_prefix(prefix_checkpoint)
    tuned = session.ask("你好", settings).response
    assert tuned != first

    script = f"你好\n/prefix {prefix_checkpoint}\n你好\n/prefix off\n/clear\n你好\n/quit\n你好\n"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "glmtui.cli",
            "--workspace",
            str(tmp_path),
            "chat",
            "--model",
            str(tiny_model_dir),
            "--greedy",
            "--max-new-tokens",
            "12",
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{first}\n{tuned}\n{first}\n"
    assert "History cleared." in done.stderr
