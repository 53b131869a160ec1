"""The paged KV cache in-process on tiny ChatGLM3-6B (and ChatGLM-6B): rows take blocks for what they hold, so a
pool that fits one worst-case row serves many at once; a request waits for blocks others reserved, one
larger than the pool is refused; every answer is the one the request gets alone."""

from __future__ import annotations

import pytest
from support.serving import Answers, serve_alone_then_together

from glmcore.models import CHATGLM3_6B

QUESTIONS = ("你好", "hello world", "今天天气怎么样")
CAPACITY = 224
"""Tokens one row holds at most: 14 blocks."""


def _widest_step(record) -> int:
    return max(len(event.detail) for event in record if event.kind == "step")


@pytest.mark.parametrize("family", ["chatglm3-6b", "chatglm-6b"])
def test_a_pool_of_one_worst_case_row_serves_many_at_once_and_each_answers_as_alone(
    family, chatglm3_with_prefixes, tiny_model_dir
):
    """Twelve requests with mixed prefixes (ChatGLM3) and prompt lengths over a pool of 14 blocks: the static plan
    gave that memory one row of 224 columns, the engine's record shows four or more rows decoding in one step;
    together the requests need more blocks than the pool holds, so some wait for the blocks others give back.
    Every answer is the one it gets alone, and every block is back in the pool at the end."""
    import glmcore
    from glmcore.models import family_named
    from glmcore.serve.batching import Engine, blocks_for

    if family == CHATGLM3_6B.name:
        model_dir, checkpoints = chatglm3_with_prefixes
        prefixes = (None, *checkpoints)
    else:
        model_dir, prefixes = tiny_model_dir, (None,)
    tokenizer = glmcore.load_tokenizer(model_dir)
    implementation = family_named(family).implementation()
    asks = {
        f"ask {index}": (
            implementation.chat_prompt_ids(tokenizer, QUESTIONS[index % 3] * (1 + index % 4), []),
            prefixes[index % len(prefixes)],
        )
        for index in range(12)
    }
    static_rows = 1
    pool = static_rows * blocks_for(CAPACITY)
    engine = Engine(glmcore.load_model(model_dir), tokenizer, slots=12, capacity=CAPACITY, blocks=pool)
    try:
        alone, together, requests = serve_alone_then_together(engine, asks, 6)
        load = engine.load()
    finally:
        engine.shutdown()
    assert together == alone
    assert _widest_step(engine.record) >= 4 * static_rows
    assert sum(request.blocks for request in requests.values()) > pool, "the pool's blocks were taken again"
    assert engine.decoder.most_blocks_used <= pool
    assert load["reserved_blocks"] == 0 and engine.decoder.free_blocks == pool


def test_a_request_waits_for_blocks_others_reserved_and_one_larger_than_the_pool_is_refused(
    chatglm3_with_prefixes,
):
    """A pool of 8 blocks (128 tokens) under rows of 224 columns, one request may wait. A request asking for more
    than the pool holds is refused at once with a sentence; one that finds a free row but too few unreserved
    blocks waits, and takes its row when the request holding them ends: the record shows the first's last step
    before the second's first pass, and both answer as alone. A third sent meanwhile finds the queue full though
    rows are free: 429's QueueFull."""
    import glmcore
    from glmcore.serve.batching import Engine, QueueFull, RequestTooLong

    model_dir, _ = chatglm3_with_prefixes
    tokenizer = glmcore.load_tokenizer(model_dir)
    prompt = CHATGLM3_6B.implementation().chat_prompt_ids(tokenizer, QUESTIONS[1], [])
    engine = Engine(  # no stop token: each answer takes its whole budget
        glmcore.load_model(model_dir),
        tokenizer,
        slots=4,
        capacity=CAPACITY,
        blocks=8,
        stop_ids=set(),
        max_waiting=1,
    )
    answers = Answers()
    try:
        with pytest.raises(RequestTooLong, match=r"holds 128 per request.*lower max_tokens"):
            engine.submit(answers.request("too long", prompt, None, 128 - len(prompt) + 1))
        holding_budget, waiting_budget = 96 - len(prompt), 48 - len(prompt)  # 6 blocks, then 3
        alone = {}
        for name, budget in (("holding", holding_budget), ("waiting", waiting_budget)):
            engine.submit(answers.request(name, prompt, None, budget))
            answers.wait(1)
            alone[name] = answers.tokens[name]
        waiting = answers.request("waiting", prompt, None, waiting_budget)
        refused = []

        def send_two_more() -> None:
            engine.submit(waiting)
            try:
                engine.submit(answers.request("refused", prompt, None, waiting_budget))
            except QueueFull as error:
                refused.append(str(error))

        holding = answers.request("holding", prompt, None, holding_budget, then=send_two_more)
        engine.submit(holding)
        answers.wait(2)
    finally:
        engine.shutdown()
    assert {name: answers.tokens[name] for name in alone} == alone
    assert alone["holding"][-1] == ("end", "length") and alone["waiting"][-1] == ("end", "length")
    record = list(engine.record)
    last_holding_step = max(
        index for index, event in enumerate(record) if event.kind == "step" and holding.id in event.detail
    )
    first_waiting_pass = min(
        index
        for index, event in enumerate(record)
        if event.kind == "prefill" and any(entry[0] == waiting.id for entry in event.detail)
    )
    assert last_holding_step < first_waiting_pass
    assert refused == ["Every row or the key-value memory is taken and 1 requests wait; try again shortly."]


def test_a_row_grows_block_by_block_and_gives_its_blocks_back(chatglm3_with_prefixes):
    """A row takes blocks as its prefix, prompt and answer are written, not its whole reservation at once: while a
    request with a prefix decodes, its row holds the blocks its columns fill; when it ends, they are free."""
    import glmcore
    from glmcore.serve.batching import BLOCK, Engine, blocks_for

    model_dir, checkpoints = chatglm3_with_prefixes
    tokenizer = glmcore.load_tokenizer(model_dir)
    prompt = CHATGLM3_6B.implementation().chat_prompt_ids(tokenizer, QUESTIONS[0], [])
    engine = Engine(glmcore.load_model(model_dir), tokenizer, slots=2, capacity=CAPACITY)
    held: list[int] = []
    answers = Answers()
    request = answers.request("grows", prompt, checkpoints[1], 2 * BLOCK)
    prefix = engine.prefix_length(checkpoints[1])

    def deliver(kind: str, value: object, record=request.deliver) -> None:
        if kind == "token":  # on the engine thread, between steps
            held.append(len(engine.decoder.tables[0]))
        record(kind, value)

    request.deliver = deliver
    try:
        engine.submit(request)
        answers.wait(1)
    finally:
        engine.shutdown()
    written = [
        prefix + len(prompt) + fed for fed in range(2 * BLOCK)
    ]  # columns when each token is handed over
    assert held == [blocks_for(columns) for columns in written]
    assert held[0] < held[-1] <= request.blocks, "it grew within its reservation"
    assert engine.decoder.free_blocks == engine.blocks


def test_rows_of_one_prefix_checkpoint_share_its_whole_blocks_and_answer_as_alone(
    chatglm3_with_prefixes, tmp_path
):
    """A prefix of 36 tokens: its two whole blocks are written once and named by every row of its checkpoint (the
    last 4 columns in each row's own block). Over a pool of 14 blocks, each request needs 4 blocks on its own but 2
    beside the shared ones, so more than three decode in one step, the most that fit without sharing; each answers as
    alone, as does a request of another prefix among them, and the shared blocks are back in the pool at the
    end."""
    import torch

    import glmcore
    from glmcore.prefix import save_prefix_checkpoint
    from glmcore.serve.batching import BLOCK, Engine, blocks_for

    model_dir, checkpoints = chatglm3_with_prefixes
    torch.manual_seed(7)
    tuned = glmcore.load_model(model_dir, pre_seq_len=2 * BLOCK + 4)
    with torch.no_grad():
        tuned.transformer.prefix_encoder.embedding.weight.mul_(4)
    long_prefix = save_prefix_checkpoint(tuned, tmp_path / "checkpoint-long")
    tokenizer = glmcore.load_tokenizer(model_dir)
    family = CHATGLM3_6B.implementation()
    asks = {
        f"long prefix {index}": (family.chat_prompt_ids(tokenizer, QUESTIONS[index % 3], []), long_prefix)
        for index in range(6)
    }
    asks["other prefix"] = (family.chat_prompt_ids(tokenizer, QUESTIONS[0], []), checkpoints[0])
    new_tokens = 6
    assert all(
        blocks_for(2 * BLOCK + 4 + len(prompt) + new_tokens) == 4
        for prompt, prefix in asks.values()
        if prefix == long_prefix
    )
    pool = blocks_for(CAPACITY)
    engine = Engine(glmcore.load_model(model_dir), tokenizer, slots=8, capacity=CAPACITY, blocks=pool)
    try:
        alone, together, requests = serve_alone_then_together(engine, asks, new_tokens)
        load = engine.load()
    finally:
        engine.shutdown()
    assert together == alone
    assert len(set(map(str, alone.values()))) > 1, "the prefixes change the answers"
    assert {request.shared_blocks for name, request in requests.items() if name != "other prefix"} == {2}
    long_ids = {requests[f"long prefix {index}"].id for index in range(6)}
    steps = [set(event.detail) for event in engine.record if event.kind == "step"]
    assert max(len(long_ids & step) for step in steps) > 3, "more rows of the prefix than fit without sharing"
    assert load["shared_blocks"] == 0 and engine.decoder.free_blocks == pool


def test_rows_sharing_a_system_prompt_name_its_blocks_instead_of_copies(chatglm3_with_prefixes):
    """Four requests over the base with one long system prompt, sent together: one writes its whole blocks, the
    others name those same blocks in their tables (the base's prompt starts on a block's edge), so the pool's
    peak holds the system prompt once, not four times; the answers are those of an engine that shares nothing."""
    import glmcore
    from glmcore.serve.batching import BLOCK, Engine, blocks_for

    model_dir, _ = chatglm3_with_prefixes
    tokenizer = glmcore.load_tokenizer(model_dir)
    family = CHATGLM3_6B.implementation()
    system = (
        "You are a careful assistant. Answer in one short sentence, and say so when you do not know. " * 2
    )
    asks = {
        f"ask {index}": (family.chat_prompt_ids(tokenizer, question, [], system=system), None)
        for index, question in enumerate((*QUESTIONS, "hello"))
    }
    runs = {}
    for shared_tokens in (0, 8 * BLOCK):
        engine = Engine(  # no stop token: every answer is 24 tokens, so the four overlap
            glmcore.load_model(model_dir),
            tokenizer,
            slots=4,
            capacity=CAPACITY,
            shared_tokens=shared_tokens,
            stop_ids=set(),
        )
        answers = Answers()
        try:
            requests = {name: answers.request(name, prompt, None, 24) for name, (prompt, _) in asks.items()}
            for request in requests.values():
                engine.submit(request)
            answers.wait(len(asks))
        finally:
            engine.shutdown()
        runs[shared_tokens] = (answers.tokens, requests, engine.decoder.most_blocks_used)
    (unshared, _, unshared_peak), (shared, requests, shared_peak) = runs.values()
    assert shared == unshared
    reused = sorted(request.reused_tokens for request in requests.values())
    assert reused[0] == 0 and reused[1] >= 3 * BLOCK and len(set(reused[1:])) == 1
    assert unshared_peak == sum(blocks_for(len(prompt) + 24) for prompt, _ in asks.values())
    assert shared_peak == unshared_peak - 3 * (reused[1] // BLOCK)


def test_the_serve_screen_says_the_rows_share_the_cache_blocks_status_json_gives(tmp_path):
    """status.json's `blocks` (the pool the server settled on) is what the Serve screen shows beside the rows; a
    server folder written before blocks existed keeps its "rows of N tokens"."""
    from glmcore.serve.servers import Server
    from glmtui.screens.serve import ServerRow, server_about

    about = {}
    for name, blocks in (("paged", 4096), ("static", None)):
        server = Server(tmp_path / name)
        server.path.mkdir()
        server.write_status(state="ready", slots=128, blocks=blocks, context=8192)
        row = ServerRow(server, server.stored_status(), None, None, [], 0)
        about[name] = server_about(row).plain.splitlines()[0]
    assert about == {
        "paged": "paged ready · 128 rows over 4,096 cache blocks, 8192 tokens a request at most",
        "static": "static ready · 128 rows of 8192 tokens",
    }
