"""The static-cache decoder gives what `generate()` gives, for padded batches and with a prefix, for each family."""

from __future__ import annotations

import pytest
import torch

import glmcore
from glmcore.generation import Sampling, generate, new_decoder
from glmcore.models import family_named, family_of

PROMPTS = ["类型#上衣*材质#牛仔布*颜色#白色", "简约", "Hello world, a longer prompt than the others"]


def reference(model, tokenizer, prompt_ids: list[int], new_tokens: int) -> list[int]:
    output = model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens, do_sample=False)
    return output[0, len(prompt_ids) :].tolist()


def test_greedy_static_decoding_equals_generate_for_a_padded_batch(tiny_model, tiny_tokenizer):
    prompts = [tiny_tokenizer.encode(prompt) for prompt in PROMPTS]
    results = generate(
        tiny_model,
        prompts,
        max_new_tokens=10,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    for prompt, result in zip(prompts, results, strict=True):
        assert result == reference(tiny_model, tiny_tokenizer, prompt, 10)


def test_a_decoder_is_reused_across_batches_and_with_a_prefix(tiny_model_dir, tiny_tokenizer):
    model = glmcore.load_model(tiny_model_dir, pre_seq_len=3)
    prompts = [tiny_tokenizer.encode(prompt) for prompt in PROMPTS]
    decoder = new_decoder(model, batch=1, capacity=64)
    for prompt in prompts:
        result = generate(
            model,
            [prompt],
            max_new_tokens=8,
            eos_token_id=tiny_tokenizer.eos_token_id,
            pad_token_id=tiny_tokenizer.pad_token_id,
            decoder=decoder,
        )
        assert result[0] == reference(model, tiny_tokenizer, prompt, 8)


def test_seeded_sampling_repeats(tiny_model, tiny_tokenizer):
    prompt = [tiny_tokenizer.encode(PROMPTS[0])]
    settings = Sampling(do_sample=True, temperature=1.0, top_p=0.9, seed=7)
    first, second = (
        generate(tiny_model, prompt, max_new_tokens=12, eos_token_id=-1, pad_token_id=3, sampling=settings)
        for _ in range(2)
    )
    assert first == second
    assert first != generate(tiny_model, prompt, max_new_tokens=12, eos_token_id=-1, pad_token_id=3)


@pytest.fixture(scope="module", params=["chatglm2-6b", "chatglm3-6b"])
def grouped_family_model(request, tmp_path_factory):
    """A tiny ChatGLM2 / ChatGLM3 model (random weights wide enough that greedy answers vary) and tokenizer."""
    family = family_named(request.param)
    folder = family.implementation().write_tiny_checkpoint(
        tmp_path_factory.mktemp(request.param) / request.param, init_std=0.5, seed=3
    )
    return glmcore.load_model(folder, pre_seq_len=None), glmcore.load_tokenizer(folder)


def test_each_familys_fast_path_equals_generate_greedy(grouped_family_model):
    """ChatGLM2/3's static decoder (glmcore.generation's loop, the family's cache and positions) gives the
    tokens of transformers' `generate()` greedy, for a left-padded batch, at fp32."""
    model, tokenizer = grouped_family_model
    assert family_of(model).name in ("chatglm2-6b", "chatglm3-6b")
    prompts = [tokenizer.encode(prompt) for prompt in PROMPTS]
    results = generate(
        model, prompts, max_new_tokens=10, eos_token_id=-1, pad_token_id=tokenizer.pad_token_id
    )
    expected = [reference(model, tokenizer, prompt, 10) for prompt in prompts]
    assert results == expected
    assert len({tuple(row) for row in expected}) > 1


def test_generation_stops_at_any_of_the_familys_stop_ids(grouped_family_model):
    model, tokenizer = grouped_family_model
    prompt = tokenizer.encode(PROMPTS[0])
    free = generate(model, [prompt], max_new_tokens=10, eos_token_id=-1, pad_token_id=0)[0]
    stop = free[4]
    stopped = generate(model, [prompt], max_new_tokens=10, eos_token_id=[-1, stop], pad_token_id=0)[0]
    assert stopped == free[: free.index(stop) + 1]
