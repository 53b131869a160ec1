"""The serving engine in-process on tiny ChatGLM3-6B: more requests than rows, three prefixes, each answer the
same as chat's greedy one (requests join the running batch as rows free up)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from support.serving import Answers, serve_alone_then_together, tiny_with_prefixes

from glmcore.models import CHATGLM3_6B
from glmcore.serve.batching import EngineEvent

QUESTIONS = ("你好", "hello world", "今天天气怎么样")


@pytest.fixture(scope="module")
def chatglm3(chatglm3_with_prefixes: tuple[Path, list[Path]]) -> tuple[Path, list[Path]]:
    return chatglm3_with_prefixes


def assert_served_as_chat(model_dir: Path, checkpoints: list[Path]) -> None:
    """Nine requests (the base and two prefixes, three questions each) over four rows answer as chat does."""
    import glmcore
    from glmcore.chat import ChatSession, ChatSettings
    from glmcore.serve.batching import Engine, Request

    tokenizer = glmcore.load_tokenizer(model_dir)
    session = ChatSession(glmcore.load_model(model_dir), tokenizer)
    expected = {}
    for prefix in (None, *checkpoints):
        session.use_prefix(prefix)
        for question in QUESTIONS:
            session.clear()
            expected[prefix, question] = session.ask(
                question, ChatSettings(sampling=False, max_new_tokens=12)
            ).response

    engine = Engine(glmcore.load_model(model_dir), tokenizer, slots=4, capacity=64)
    answers: dict = {}
    ended = threading.Semaphore(0)

    def request(prefix, question) -> Request:
        tokens: list[int] = []

        def deliver(kind: str, value: object) -> None:
            if kind == "token":
                tokens.append(value)
            else:
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                answers[prefix, question] = session.family.clean_response(text)
                ended.release()

        return Request(session.family.chat_prompt_ids(tokenizer, question, []), prefix, 12, deliver)

    try:
        for prefix, question in expected:
            engine.submit(request(prefix, question))
        for _ in expected:
            assert ended.acquire(timeout=60)
    finally:
        engine.shutdown()
    assert answers == expected
    assert len(set(expected.values())) == len(expected), "every prefix changes every answer"


def test_nine_requests_over_four_rows_answer_as_chat_does(chatglm3):
    assert_served_as_chat(*chatglm3)


def test_a_prefixed_row_of_transformers_glm_counts_its_positions_after_its_prefix_as_chat_does(tmp_path):
    # glm-4-9b-chat-hf's prompt starts after its prefix (as PEFT's prefix tuning places it); the served model
    # holds no prefix, so each row's positions are shifted by its own prefix's length.
    assert_served_as_chat(*tiny_with_prefixes(tmp_path, "glm-4-9b-chat-hf"))


def test_the_serve_benchmark_figure_runs_on_a_toy_shape(tmp_path, capsys):
    """`python -m glmcore.bench --tiny --only serve`: one record per client count, then the mixed load of LoRA
    adapters, prefixes and the base, and a LoRA row's numerics against the merged weights (no timing is
    asserted)."""
    import json

    from glmcore.bench import main

    assert main(["--tiny", "--only", "serve", "--workdir", str(tmp_path)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    served = [record for record in records if record["figure"] == "serve"]
    assert [record["clients"] for record in served] == [1, 8, 32, 128]
    assert all(record["tokens"] == record["clients"] * record["new_tokens"] for record in served)
    assert all(record["single_request_tokens_per_s"] > 0 for record in served)
    assert all(record["rows"] == 128 and record["blocks"] >= 128 for record in served)
    assert not any("share_of_bound" in record for record in served)  # no bandwidth measured on the CPU
    (mixed,) = [record for record in records if record["figure"] == "serve_mixed"]
    assert (
        mixed["clients"] == 32
        and mixed["tokens"] == 32 * mixed["new_tokens"]
        and mixed["versus_base_only"] > 0
    )
    (numerics,) = [record for record in records if record["figure"] == "lora_numerics"]
    assert numerics["same_argmax"] and numerics["max_abs_logit_difference"] < 1e-3  # fp32 on the CPU


def test_a_row_that_fails_fails_its_request_alone_and_every_other_is_answered(chatglm3, tmp_path):
    """A prefix whose values overflow turns its row's scores into NaN; a temperature of 1e-45 breaks sampling.
    Seven requests over three rows: those two fail with a reason, the others answer as they do alone, including
    those that wait for a row and take the failed rows after them (scrubbed: a NaN left behind would spoil them)."""
    import torch

    import glmcore
    from glmcore.generation import Sampling
    from glmcore.prefix import save_prefix_checkpoint
    from glmcore.serve.batching import Engine, Request

    model_dir, checkpoints = chatglm3
    overflowing = glmcore.load_model(model_dir, pre_seq_len=4)
    with torch.no_grad():
        overflowing.transformer.prefix_encoder.embedding.weight.fill_(1e38)  # finite in the file
    poisoned = save_prefix_checkpoint(overflowing, tmp_path / "checkpoint-poisoned")
    tokenizer = glmcore.load_tokenizer(model_dir)
    engine = Engine(glmcore.load_model(model_dir), tokenizer, slots=3, capacity=64)
    prompt = tokenizer.encode("hello world")
    unsigned_seed = Sampling(do_sample=True, temperature=0.9, top_p=0.9, seed=2**64 - 1)
    asks = {
        "base": (None, Sampling()),
        "prefix": (checkpoints[0], Sampling()),
        "poisoned": (poisoned, Sampling()),
        "tiny temperature": (None, Sampling(do_sample=True, temperature=1e-45)),
        "seeded": (None, unsigned_seed),
        "waits for a row": (checkpoints[1], Sampling()),
        "waits longer": (None, Sampling()),
    }
    outcomes: dict[str, list] = {name: [] for name in asks}
    ended = threading.Semaphore(0)

    def submit(name: str) -> None:
        def deliver(kind: str, value: object) -> None:
            outcomes[name].append((kind, str(value) if kind == "error" else value))
            if kind != "token":
                ended.release()

        prefix, sampling = asks[name]
        engine.submit(Request(prompt, prefix, 8, deliver, sampling))

    try:
        alone = {}
        for name in ("base", "prefix", "seeded", "waits for a row"):
            submit(name)
            assert ended.acquire(timeout=60)
            alone[name], outcomes[name] = outcomes[name], []
        for name in asks:
            submit(name)
        for _ in asks:
            assert ended.acquire(timeout=60), outcomes
    finally:
        engine.shutdown()
    (kind, reason), *_ = outcomes["poisoned"]
    assert kind == "error" and "not finite numbers" in reason and "prefix checkpoint" in reason
    assert outcomes["tiny temperature"] == [
        ("error", "The server failed to sample this answer; its log says why.")
    ]
    for name, answer in alone.items():
        assert outcomes[name] == answer and answer[-1] == ("end", "length"), name
    assert outcomes["waits longer"] == alone["base"]


def _passes(record, request_id: int) -> list[int]:
    """The indices in `record` of the prefill passes that wrote part of `request_id`'s prompt."""
    return [
        index
        for index, event in enumerate(record)
        if event.kind == "prefill" and any(entry[0] == request_id for entry in event.detail)
    ]


def test_sixteen_requests_are_prefilled_together_and_answer_as_alone_a_long_prompt_in_chunks(chatglm3):
    """Issue 34: 16 concurrent requests with mixed prefixes and prompt lengths, one of them longer than a prefill
    pass takes; each answers as alone, the 16 prefills start in at most 2 passes, the long prompt spans 2 or more."""
    import glmcore
    from glmcore.serve.batching import Engine

    model_dir, checkpoints = chatglm3
    tokenizer = glmcore.load_tokenizer(model_dir)
    family = CHATGLM3_6B.implementation()
    asks = {}
    for index in range(15):
        question = QUESTIONS[index % 3] * (1 + index % 4)
        asks[f"short {index}"] = (
            family.chat_prompt_ids(tokenizer, question, []),
            (None, *checkpoints)[index % 3],
        )
    asks["long"] = (tokenizer.encode("hello world " * 25), checkpoints[1])
    budget = 320
    total = sum(len(prompt) for prompt, _ in asks.values())
    assert total - len(asks["long"][0]) < budget < total, (
        "the short prompts fit one pass, the long one does not"
    )
    engine = Engine(glmcore.load_model(model_dir), tokenizer, slots=16, capacity=224, prefill_budget=budget)
    try:
        alone, together, requests = serve_alone_then_together(engine, asks, 6)
    finally:
        engine.shutdown()
    assert together == alone
    record = list(engine.record)
    starts = {_passes(record, request.id)[0] for request in requests.values()}
    assert len(starts) <= 2, [event for event in record if event.kind == "prefill"]
    assert len(_passes(record, requests["long"].id)) >= 2


def test_a_request_arriving_during_a_long_prefill_gets_its_first_token_before_it_ends(chatglm3):
    """A decoding request keeps stepping while a long prompt is written in chunks, and a short request sent meanwhile
    (by the decoding one's third token) is answered first: the engine's record shows it in order. Both answer as
    alone (the steps between the chunks leave the half-written row alone)."""
    import glmcore
    from glmcore.serve.batching import Engine

    model_dir, _ = chatglm3
    tokenizer = glmcore.load_tokenizer(model_dir)
    family = CHATGLM3_6B.implementation()
    engine = Engine(glmcore.load_model(model_dir), tokenizer, slots=4, capacity=224, prefill_budget=16)
    answers = Answers()
    prompts = {
        "short": family.chat_prompt_ids(tokenizer, QUESTIONS[0], []),
        "long": tokenizer.encode("hello world " * 25),
    }
    try:
        alone = {}
        for name, prompt in prompts.items():
            engine.submit(answers.request(name, prompt, None, 4))
            answers.wait(1)
            alone[name] = answers.tokens[name]
        short = answers.request("short", prompts["short"], None, 4)
        long = answers.request("long", prompts["long"], None, 4)
        decoding = answers.request(
            "decoding",
            family.chat_prompt_ids(tokenizer, QUESTIONS[1], []),
            None,
            40,
            then=lambda: engine.submit(short),
        )
        engine.submit(decoding)
        engine.submit(long)
        answers.wait(3)
    finally:
        engine.shutdown()
    assert {name: answers.tokens[name] for name in prompts} == alone
    record = list(engine.record)
    long_passes = _passes(record, long.id)
    assert len(long_passes) >= 10
    first_short_token = record.index(EngineEvent("first token", (short.id,)))
    assert long_passes[0] < first_short_token < long_passes[-1]
    steps_meanwhile = [
        index
        for index, event in enumerate(record)
        if event.kind == "step" and decoding.id in event.detail and long_passes[0] < index < long_passes[-1]
    ]
    assert len(steps_meanwhile) >= len(long_passes) - 1, (
        "the decoding row stepped between the long prompt's chunks"
    )


SYSTEM = "You are a careful assistant. Answer in one short sentence, and say so when you do not know. "


@pytest.mark.parametrize("budget", [2048, 16], ids=["whole prompts", "16-token chunks"])
def test_requests_sharing_a_system_prompt_copy_its_keys_and_answer_as_without(chatglm3, budget):
    """Issue 34: requests with one long system prompt, mixed with others, on two prefixes and the base. Sent
    together, one request per prefix writes the shared beginning and the others take it (the base's rows name its
    blocks, the 4-token prefix's rows copy them: the record shows their prefill starting after it); each answer is the one an engine that shares nothing gives. A later request over
    a third prefix copies nothing though its tokens are the same; a later one over the base copies it again.
    In 16-token chunks, the others copy each block as it is written, one pass behind."""
    import glmcore
    from glmcore.serve.shared_prompts import BLOCK

    model_dir, checkpoints = chatglm3
    tokenizer = glmcore.load_tokenizer(model_dir)
    family = CHATGLM3_6B.implementation()
    burst = {}
    for index, question in enumerate(QUESTIONS):
        burst[f"base {index}"] = (family.chat_prompt_ids(tokenizer, question, [], system=SYSTEM), None)
        burst[f"plain {index}"] = (family.chat_prompt_ids(tokenizer, question, []), None)
    for index, question in enumerate(QUESTIONS[:2]):
        prompt = family.chat_prompt_ids(tokenizer, question, [], system=SYSTEM)
        burst[f"prefix {index}"] = (prompt, checkpoints[0])
    later = {"other prefix": (burst["base 0"][0], checkpoints[1]), "base again": (burst["base 1"][0], None)}
    copied = {
        group: len(
            _common_beginning([prompt for name, (prompt, _) in burst.items() if name.startswith(group)])
        )
        // BLOCK
        * BLOCK
        for group in ("base", "prefix")
    }
    assert min(copied.values()) >= 2 * BLOCK, "the system prompt spans blocks"

    expected, _, _ = _serve_in_rounds(model_dir, [burst, later], shared_tokens=0, prefill_budget=budget)
    answers, requests, record = _serve_in_rounds(
        model_dir, [burst, later], shared_tokens=256, prefill_budget=budget
    )
    assert answers == expected
    reused = {name: request.reused_tokens for name, request in requests.items()}
    for group, tokens in copied.items():
        writers = sum(name.startswith(group) for name in burst)
        group_reused = sorted(reused[name] for name in burst if name.startswith(group))
        assert group_reused == [0, *[tokens] * (writers - 1)], reused
    assert reused["other prefix"] == 0 and reused["base again"] == copied["base"]
    assert all(tokens == 0 for name, tokens in reused.items() if name.startswith("plain"))
    for name, request in requests.items():
        first_pass = record[_passes(record, request.id)[0]]
        (start,) = [entry[1] for entry in first_pass.detail if entry[0] == request.id]
        assert start == reused[name], "the copied tokens are not prefilled again"
        assert (EngineEvent("reuse", (request.id, reused[name])) in record) == bool(reused[name])


def _serve_in_rounds(model_dir: Path, rounds: list[dict], **options):
    """Each round's requests ({name: (prompt, prefix)}) sent together, the next round once they have ended; each
    request's tokens, the requests and the engine's record."""
    import glmcore
    from glmcore.serve.batching import Engine

    tokenizer = glmcore.load_tokenizer(model_dir)
    engine = Engine(glmcore.load_model(model_dir), tokenizer, slots=12, capacity=96, **options)
    answers, requests = Answers(), {}
    try:
        for asks in rounds:
            for name, (prompt, prefix) in asks.items():
                requests[name] = answers.request(name, prompt, prefix, 6)
                engine.submit(requests[name])
            answers.wait(len(asks))
    finally:
        engine.shutdown()
    return answers.tokens, requests, list(engine.record)


def test_a_full_pool_drops_the_least_recently_used_blocks_and_a_dropped_prefix_takes_its_own(chatglm3):
    """A pool of two blocks and one prefix kept at a time, requests one after the other: a prefix's blocks push
    the base's out; a second prefix pushes the first out of the prefix cache, and its blocks go with it (the pool
    keeps nothing of a prefix whose keys are made again); the freed room serves the next. Answers as without."""
    import glmcore
    from glmcore.serve.shared_prompts import BLOCK

    model_dir, checkpoints = chatglm3
    tokenizer = glmcore.load_tokenizer(model_dir)
    family = CHATGLM3_6B.implementation()
    first, second, third = (family.chat_prompt_ids(tokenizer, q, [], system=SYSTEM) for q in QUESTIONS)
    turns = {
        "base": (first, None),
        "prefix": (second, checkpoints[0]),
        "second prefix, short": (family.chat_prompt_ids(tokenizer, QUESTIONS[0], []), checkpoints[1]),
        "prefix again": (second, checkpoints[0]),
        "prefix, other question": (third, checkpoints[0]),
        "base again": (first, None),
    }
    rounds = [{name: ask} for name, ask in turns.items()]
    expected, _, _ = _serve_in_rounds(model_dir, rounds, shared_tokens=0, max_prefixes=1)
    answers, requests, _ = _serve_in_rounds(model_dir, rounds, shared_tokens=2 * BLOCK, max_prefixes=1)
    assert answers == expected
    assert {name: request.reused_tokens for name, request in requests.items()} == {
        "base": 0,
        "prefix": 0,
        "second prefix, short": 0,
        "prefix again": 0,
        "prefix, other question": 2 * BLOCK,
        "base again": 0,
    }


def _common_beginning(prompts: list[list[int]]) -> list[int]:
    return os.path.commonprefix(prompts)  # element by element: lists of tokens as well as strings


def test_only_families_whose_prompts_are_causal_keep_shared_beginnings(chatglm3, tiny_model, tiny_tokenizer):
    """ChatGLM-6B's context is read both ways (its first tokens see the later ones), so no other prompt can share
    its keys: no pool. ChatGLM3's prompt is causal: a row's worth."""
    import glmcore
    from glmcore.serve.batching import shared_prompt_tokens

    model_dir, _ = chatglm3
    chatglm3_model = glmcore.load_model(model_dir)
    assert shared_prompt_tokens(chatglm3_model, glmcore.load_tokenizer(model_dir), 64) == 64
    assert shared_prompt_tokens(tiny_model, tiny_tokenizer, 64) == 0


async def test_a_client_is_told_how_many_prompt_tokens_were_shared(chatglm3, tmp_path):
    """The API's `usage.prompt_tokens_details.cached_tokens` and requests.jsonl's `cached_tokens`: none for the
    first request with a system prompt, its whole blocks for the next one (the endpoints in-process, the `openai`
    client over an ASGI transport)."""
    import httpx2
    import openai

    import glmcore
    from glmcore.runs import RunStore
    from glmcore.serve.batching import Engine
    from glmcore.serve.http import Service
    from glmcore.serve.registry import ModelRegistry
    from glmcore.serve.shared_prompts import BLOCK

    model_dir, _ = chatglm3
    tokenizer = glmcore.load_tokenizer(model_dir)
    family = CHATGLM3_6B.implementation()
    prompts = [family.chat_prompt_ids(tokenizer, question, [], system=SYSTEM) for question in QUESTIONS[:2]]
    shared = len(_common_beginning(prompts)) // BLOCK * BLOCK
    engine = Engine(glmcore.load_model(model_dir), tokenizer, slots=2, capacity=96, shared_tokens=96)
    logged: list[dict] = []
    registry = ModelRegistry(model_dir, RunStore(tmp_path / "runs"))
    service = Service(engine, registry, max_request_bytes=2**20, on_request=logged.append)
    transport = httpx2.ASGITransport(app=service.app(None))
    client = openai.AsyncOpenAI(
        base_url="http://serve.test/v1", api_key="none", http_client=httpx2.AsyncClient(transport=transport)
    )
    try:
        cached = []
        for question in QUESTIONS[:2]:
            reply = await client.chat.completions.create(
                model=model_dir.name,
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                temperature=0,
                max_tokens=3,
            )
            cached.append(reply.usage.prompt_tokens_details.cached_tokens)
    finally:
        await client.close()
        engine.shutdown()
    assert shared >= 2 * BLOCK and cached == [0, shared]
    assert [entry["cached_tokens"] for entry in logged] == cached
