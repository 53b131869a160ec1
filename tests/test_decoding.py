"""The static-cache decoder gives what `generate()` gives, for padded batches and with a prefix."""

from __future__ import annotations

import torch

import glmcore
from glmcore.generation import Sampling, generate, new_decoder

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
