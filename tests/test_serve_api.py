"""The OpenAI request mapping without a server: messages to the family's prompt, bodies to 400s, streamed text."""

from __future__ import annotations

import json

import pytest

from glmcore.models import CHATGLM_6B
from glmcore.serve import openai_api as api


@pytest.fixture(scope="module")
def family():
    return CHATGLM_6B.implementation()


def messages(*pairs: tuple[str, str]) -> list[api.Message]:
    return [api.Message(role=role, content=content) for role, content in pairs]


def test_chatglm6b_takes_the_system_text_before_the_first_user_turn(family, tiny_tokenizer):
    prompt = api.chat_prompt(
        family,
        tiny_tokenizer,
        messages(("system", "简短回答"), ("user", "你好"), ("assistant", "你好！"), ("user", "再见")),
    )
    assert prompt == family.chat_prompt_ids(tiny_tokenizer, "再见", [("简短回答\n\n你好", "你好！")])
    alone = api.chat_prompt(family, tiny_tokenizer, messages(("system", "简短回答"), ("user", "你好")))
    assert alone == family.chat_prompt_ids(tiny_tokenizer, "简短回答\n\n你好", [])


def test_a_conversation_must_end_with_the_user(family, tiny_tokenizer):
    with pytest.raises(api.BadRequest) as refused:
        api.chat_prompt(family, tiny_tokenizer, messages(("user", "hi"), ("assistant", "hello")))
    assert refused.value.param == "messages"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2}', "n"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}', "top_p"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b"[1, 2]", None),
    ],
)
def test_bad_bodies_name_their_field(body: bytes, param: str | None):
    with pytest.raises(api.BadRequest) as refused:
        api.parse(api.ChatCompletionRequest, body)
    assert refused.value.param == param and str(refused.value)


def completion(**fields) -> bytes:
    return json.dumps({"model": "m", "prompt": "x", **fields}).encode()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop: give at most 4 stop strings, not 5."),
        ({"prompt": ["one", "two"]}, "prompt: give 1 prompt (a string, or a list of 1 string), not 2."),
        ({"seed": 2**64}, "seed: Input should be less than or equal to 18446744073709551615."),
        ({"seed": -(2**63) - 1}, "seed: Input should be greater than or equal to -9223372036854775808."),
        ({"seed": 1.5}, "seed: Input should be a valid integer, got a number with a fractional part."),
    ],
)
def test_a_wrong_field_is_named_with_what_it_takes(fields: dict, message: str):
    with pytest.raises(api.BadRequest) as refused:
        api.parse(api.CompletionRequest, completion(**fields))
    assert (refused.value.param, str(refused.value)) == (next(iter(fields)), message)


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63), 2**63, 0])
def test_any_64_bit_seed_signed_or_unsigned_is_taken(seed: int):
    request = api.parse(api.CompletionRequest, completion(seed=seed, stop=["a", "b", "c", "d"]))
    assert request.sampling().seed == seed


def test_sampling_is_greedy_at_temperature_zero_and_chatglms_otherwise():
    request = api.parse(api.CompletionRequest, b'{"model": "m", "prompt": "x", "temperature": 0}')
    assert not request.sampling().do_sample and request.answer_budget == api.COMPLETION_DEFAULT_MAX_TOKENS
    for tiny in (1e-45, 9.9e-6):  # dividing the scores by it would overflow
        assert not api.parse(api.CompletionRequest, completion(temperature=tiny)).sampling().do_sample
    assert api.parse(api.CompletionRequest, completion(temperature=1e-5)).sampling().do_sample
    sampled = api.parse(api.CompletionRequest, b'{"model": "m", "prompt": "x"}').sampling()
    assert (sampled.temperature, sampled.top_p, sampled.top_k) == (0.95, 0.7, 50)


def test_text_that_may_start_a_stop_string_waits_and_the_stop_string_is_not_sent(family, tiny_tokenizer):
    ids = tiny_tokenizer.encode("ab cd END ef", add_special_tokens=False)
    answer = api.AnswerText(tiny_tokenizer, family, ["END"], clean=False)
    sent = "".join(answer.add(token) for token in ids if not answer.stopped)
    assert answer.stopped and sent + answer.finish() == "ab cd "
