"""The OpenAI request mapping without a server: messages to the family's prompt, bodies to 400s, streamed text."""

from __future__ import annotations

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


def test_sampling_is_greedy_at_temperature_zero_and_chatglms_otherwise():
    request = api.parse(api.CompletionRequest, b'{"model": "m", "prompt": "x", "temperature": 0}')
    assert not request.sampling().do_sample and request.answer_budget == api.COMPLETION_DEFAULT_MAX_TOKENS
    sampled = api.parse(api.CompletionRequest, b'{"model": "m", "prompt": "x"}').sampling()
    assert (sampled.temperature, sampled.top_p, sampled.top_k) == (0.95, 0.7, 50)


def test_text_that_may_start_a_stop_string_waits_and_the_stop_string_is_not_sent(family, tiny_tokenizer):
    ids = tiny_tokenizer.encode("ab cd END ef", add_special_tokens=False)
    answer = api.AnswerText(tiny_tokenizer, family, ["END"], clean=False)
    sent = "".join(answer.add(token) for token in ids if not answer.stopped)
    assert answer.stopped and sent + answer.finish() == "ab cd "
