"""Chat and serving size their KV cache for a context (8,192 tokens unless told, capped by the positions), not
for the model's positions; chat grows it when a conversation outgrows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from glmcore.chat import ChatError, ChatSession, ChatSettings
from glmcore.estimate import DEFAULT_CONTEXT, context_cache
from glmcore.models.family import ModelShape
from glmcore.workspace import Workspace

GLM4_POSITIONS = 131072
GREEDY = ChatSettings(max_new_tokens=8, sampling=False)


@pytest.fixture(scope="module")
def long_glm4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GLM-4 with glm-4-9b-chat's 131,072 positions."""
    from glmcore.models.glm4.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(
        tmp_path_factory.mktemp("long") / "glm4-long", seq_length=GLM4_POSITIONS, init_std=0.5, seed=2
    )


def test_the_estimate_of_glm4s_full_positions_is_5_gib_a_row_and_the_default_context_a_sixteenth():
    from glmcore.models import family_named

    shape = family_named("glm-4-9b-chat").published_shape()
    assert context_cache(shape, GLM4_POSITIONS).row_bytes == 5 * 2**30
    cache = context_cache(shape)
    assert (cache.context, cache.row_bytes, cache.positions) == (
        DEFAULT_CONTEXT,
        5 * 2**30 // 16,
        GLM4_POSITIONS,
    )
    assert context_cache(family_named("chatglm-6b").published_shape()).context == 2048, "capped by positions"


@pytest.fixture(scope="module")
def long_model(long_glm4: Path):
    import glmcore

    return glmcore.load_model(long_glm4), glmcore.load_tokenizer(long_glm4)


def test_chat_grows_its_cache_when_the_conversation_outgrows_it_and_answers_as_a_full_cache_does(long_model):
    model, tokenizer = long_model
    small = ChatSession(model, tokenizer, context=16)
    full = ChatSession(model, tokenizer, context=1024)
    assert small.decoder().capacity == 16

    for query in ("今天天气怎么样？", "明天呢？请说说北京的天气"):
        turn = small.ask(query, GREEDY)
        needed = turn.prompt_tokens + GREEDY.max_new_tokens
        assert needed <= small.context < 1024 and small.decoder().capacity == small.context
        assert turn.response == full.ask(query, GREEDY).response
    assert small.context >= 32, "at least doubled"
    with pytest.raises(ChatError, match="--context 0 holds no token"):
        ChatSession(model, tokenizer, context=0)


def test_chat_and_serving_start_at_8192_tokens_on_a_model_of_131072_positions(
    long_glm4: Path, long_model, tmp_path: Path
):
    from glmcore.serve.main import build_service
    from glmcore.serve.servers import Server, ServerPlan

    model, tokenizer = long_model
    session = ChatSession(model, tokenizer)
    assert session.context == DEFAULT_CONTEXT and session.decoder().capacity == DEFAULT_CONTEXT
    assert ChatSession(model, tokenizer, context=10**6).context == GLM4_POSITIONS
    assert ModelShape.from_model_dir(long_glm4).positions == GLM4_POSITIONS

    workspace = Workspace(tmp_path / "ws").ensure()
    server = Server(workspace.root / "servers" / "context")
    server.path.mkdir(parents=True)
    plan = ServerPlan(model=str(long_glm4), max_batch=2)
    server.write_plan(plan)
    service = build_service(plan, workspace, server, announce=lambda line: None, on_request=None)
    try:
        assert service.engine.capacity == DEFAULT_CONTEXT
        assert server.stored_status().context == DEFAULT_CONTEXT
    finally:
        service.engine.shutdown()


def test_the_config_editors_estimate_says_the_context_chat_and_serving_size_for(long_glm4: Path):
    from glmcore.config import RunConfig
    from glmcore.estimate import estimate_vram, published_context_cache, published_estimate
    from glmtui.screens.config import Estimates, describe_estimate

    config = RunConfig(name="glm4", model_path=long_glm4, train_file=long_glm4 / "train.json", gpus=[])
    shape = ModelShape.from_model_dir(long_glm4)
    name, reference = published_estimate(config)
    estimates = Estimates(
        estimate_vram(shape, config),
        reference,
        name,
        model_context=context_cache(shape),
        reference_context=published_context_cache(config),
    )
    rows = [" ".join(row.split()) for row in describe_estimate(estimates, [], None).plain.splitlines()]
    assert name == "GLM-4-9B"
    assert "chat context 8,192 8,192" in rows
    per_token = 2 * 2 * 16 * 2 * 2  # key and value, 2 groups, 16 channels, 2 layers, 16-bit
    assert context_cache(shape).row_bytes == DEFAULT_CONTEXT * per_token
    assert "chat KV cache 2.0 MiB 320.0 MiB" in rows
