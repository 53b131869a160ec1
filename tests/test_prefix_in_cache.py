"""The static decoder holds a P-tuning prefix's keys and values in its cache's first columns (glmcore/decoding.py,
issue 36), for ChatGLM-6B and ChatGLM2/3 (whose class GLM-4's layout 1 is): with either prefix variant a step runs
what a step without a prefix runs, gives the logits of the prefix put in front of the cache (the models' path for
every other cache), and greedy decoding of a left-padded batch equals each row alone and recomputation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.profiling import operations

import glmcore
from glmcore.decoding import StaticKVCache
from glmcore.generation import generate, new_decoder
from glmcore.models import family_named

PROMPTS = ("类型#上衣*材质#牛仔布", "简约", "Hello world, the longest prompt")
PREFIX_LENGTH = 3


@pytest.fixture(scope="module", params=["chatglm-6b", "chatglm3-6b"])
def family_dir(request, tiny_family_dir) -> Path:
    return tiny_family_dir(family_named(request.param))


def load(folder: Path, projection: bool | None):
    """The family's tiny model in fp32; unless `projection` is None, with a prefix of 3 virtual tokens whose
    parameters are drawn from a seeded generator."""
    if projection is None:
        return glmcore.load_model(folder, dtype=torch.float32, device="cpu").eval()
    model = glmcore.load_model(
        folder, dtype=torch.float32, device="cpu", pre_seq_len=PREFIX_LENGTH, prefix_projection=projection
    )
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.transformer.prefix_encoder.parameters():
            parameter.normal_(0, 0.5, generator=generator)
    return model.eval()


def tokenized(folder: Path) -> tuple[list[list[int]], int]:
    """The prompts' ids and the tokenizer's padding id."""
    tokenizer = glmcore.load_tokenizer(folder)
    return [tokenizer.encode(text) for text in PROMPTS], tokenizer.pad_token_id


def left_padded(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts left-padded into one batch, and its attention mask."""
    prompts, pad = tokenized(folder)
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def next_step(model, ids: torch.Tensor, mask: torch.Tensor):
    """A decoder after the prompts' prefill, its buffers set for the first generated token's step, as `decode`
    sets them."""
    decoder = new_decoder(model, ids.shape[0], ids.shape[1] + 8, use_graph=False)
    logits = decoder.prefill(ids, mask)
    length = ids.shape[1]
    decoder.token.copy_(logits.argmax(-1)[:, None])
    decoder.advance_positions()
    decoder.cache.write_index.fill_(length)
    decoder.mask[:, 0, 0, decoder.prefix_length + length] = 0.0
    return decoder


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "projection"])
def test_with_a_prefix_a_step_runs_what_a_step_without_one_runs(family_dir, projection):
    """Before, a step ran the prefix encoder (with projection, two matmuls and a tanh over its fp32 weights) and
    two `cat`s a layer, putting the prefix in front of the whole cache's keys and values."""
    ids, mask = left_padded(family_dir)
    with_prefix = operations(next_step(load(family_dir, projection), ids, mask)._step_eagerly)
    without = operations(next_step(load(family_dir, None), ids, mask)._step_eagerly)
    assert sorted(with_prefix) == sorted(without)


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "projection"])
def test_a_step_gives_the_logits_of_the_prefix_put_in_front(family_dir, projection):
    """The same step over a cache that holds no prefix (its columns copied from the decoder's, after the
    prefix's), where the model encodes the prefix and puts it in front of every layer's keys and values."""
    model = load(family_dir, projection)
    ids, mask = left_padded(family_dir)
    decoder = next_step(model, ids, mask)
    held = decoder.cache
    for layer, (key, value) in enumerate(model.transformer.prefix_keys_values(ids.shape[0], torch.float32)):
        assert torch.equal(held.keys[layer][:, :, :PREFIX_LENGTH], key)
        assert torch.equal(held.values[layer][:, :, :PREFIX_LENGTH], value)
    batch, heads_twice, columns, channels = held.keys_values[0].shape
    in_front = StaticKVCache(len(held.keys), batch, heads_twice // 2, columns, channels, torch.float32, "cpu")
    for ours, theirs in zip(in_front.keys_values, held.keys_values, strict=True):
        ours.copy_(theirs)
    in_front.write_index = held.write_index.clone()
    assert not in_front.holds_prefix
    with torch.no_grad():
        put_in_front = model(
            input_ids=decoder.token,
            position_ids=decoder.positions,
            attention_mask=decoder.mask,
            cache=in_front,
            use_cache=True,
        ).logits[:, -1]
    assert torch.equal(decoder._step_eagerly(), put_in_front)


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "projection"])
def test_a_left_padded_batch_with_a_prefix_decodes_each_row_as_alone_and_as_recomputed(family_dir, projection):
    model = load(family_dir, projection)
    prompts, pad = tokenized(family_dir)
    batched = generate(model, prompts, max_new_tokens=6, eos_token_id=-1, pad_token_id=pad)
    assert len({tuple(row) for row in batched}) > 1
    for prompt, tokens in zip(prompts, batched, strict=True):
        assert generate(model, [prompt], max_new_tokens=6, eos_token_id=-1, pad_token_id=pad) == [tokens]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens]), use_cache=False).logits[0]
        assert logits[len(prompt) - 1 : -1].argmax(-1).tolist() == tokens
