"""ChatGLM2/3's fused decoding step (glmcore/models/chatglm2/modeling.py, issue 34): its parts give the published
arithmetic, the step runs no more operations than ChatGLM-6B's, and decoding with it equals recomputation."""

from __future__ import annotations

import pytest
import torch
from support.profiling import operations
from transformers.cache_utils import DynamicCache

import glmcore
from glmcore.generation import generate, new_decoder
from glmcore.models import family_named
from glmcore.models.chatglm2.modeling import RMSNorm, apply_rotary, rotary_tables, rotate_in_place

KV_CHANNELS = 16


def published_rotary(x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """The published apply_rotary_pos_emb on heads [batch, seq, heads, channels]: the pairs of the first half."""
    rotated_dims = KV_CHANNELS // 2
    theta = 1.0 / 10000 ** (torch.arange(0, rotated_dims, 2, dtype=torch.float32) / rotated_dims)
    angles = position_ids[..., None].float() * theta
    cos, sin = angles.cos().to(x.dtype)[:, :, None], angles.sin().to(x.dtype)[:, :, None]
    pairs = x[..., :rotated_dims].unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    return torch.cat((rotated, x[..., rotated_dims:]), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_gives_the_published_values_and_gradients(dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, KV_CHANNELS, generator=generator).to(dtype).requires_grad_()
    positions = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 7, 8, 9]])
    grad = torch.randn(x.shape, generator=generator).to(dtype)
    tables = rotary_tables(positions, KV_CHANNELS, dtype)

    ours = apply_rotary(x, tables)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    published = published_rotary(x, positions)
    (published_grad,) = torch.autograd.grad(published, x, grad)
    assert torch.equal(ours, published)
    assert torch.equal(ours_grad, published_grad)

    in_place = x.detach().clone()
    rotate_in_place(in_place, tables)
    torch.testing.assert_close(
        in_place, published.detach(), atol=1e-6 if dtype == torch.float32 else 1e-2, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rms_norm_without_gradients_gives_the_published_chain(dtype):
    """Decoding's `F.rms_norm` against the chain training keeps: the same values on the CPU."""
    norm = RMSNorm(64, 1e-5)
    norm.weight.data = torch.rand(64, generator=torch.Generator().manual_seed(1)) + 0.5
    norm = norm.to(dtype)
    x = (torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(2)) * 4).to(dtype)
    with torch.no_grad():
        decoding = norm(x)
    training = norm(x)
    assert training.requires_grad
    assert torch.equal(decoding, training.detach())


def decoding_step_operations(model, prompt: list[int]) -> list[str]:
    decoder = new_decoder(model, 1, 16, use_graph=False)
    ids = torch.tensor([prompt])
    decoder.prefill(ids, torch.ones_like(ids))
    return operations(decoder._step_eagerly)


def test_a_chatglm3_step_runs_no_more_operations_than_chatglm_6bs(tiny_model, tiny_family_dir):
    """Issue 34: the step with RMSNorm, SwiGLU and grouped keys launches no more kernels than ChatGLM-6B's (both
    tiny models have 2 layers). Before the fusions it ran 95 against ChatGLM-6B's 48."""
    chatglm3 = glmcore.load_model(tiny_family_dir(family_named("chatglm3-6b")))
    config = tiny_model.config
    ours = decoding_step_operations(chatglm3, [5, 6, 7, 8, 9])
    theirs = decoding_step_operations(tiny_model, [5, 6, 7, config.gmask_token_id, config.bos_token_id])
    assert len(ours) <= len(theirs), (sorted(ours), sorted(theirs))
    layers = chatglm3.config.num_layers
    assert ours.count("aten::index_copy_") == layers  # keys and values in one write
    assert ours.count("aten::scaled_dot_product_attention") == layers
    assert ours.count("aten::rms_norm") == 2 * layers + 1


@pytest.fixture(scope="module")
def prefixed_chatglm3(tiny_family_dir):
    folder = tiny_family_dir(family_named("chatglm3-6b"))
    torch.manual_seed(0)  # the new prefix's initial values
    return glmcore.load_model(folder, pre_seq_len=3), glmcore.load_tokenizer(folder)


def test_decoding_a_left_padded_batch_with_a_prefix_equals_each_row_alone_and_recomputation(
    prefixed_chatglm3,
):
    """Also with the cache's columns rounded up (prefix 3 + capacity 15 → 32 keys, the hidden rest never seen; the
    prefix's keys and values held in the cache's first 3 columns)."""
    model, tokenizer = prefixed_chatglm3
    decoder = new_decoder(model, 1, 15)
    assert decoder.mask.shape[-1] == decoder.cache.keys[0].shape[2] == 32
    assert decoder.cache.keys_values[0].shape[2] == 32 - 3
    prompts = [
        tokenizer.encode(text)
        for text in ("类型#上衣*材质#牛仔布", "简约", "Hello world, the longest prompt")
    ]
    batched = generate(model, prompts, max_new_tokens=8, eos_token_id=-1, pad_token_id=tokenizer.pad_token_id)
    assert len({tuple(row) for row in batched}) > 1
    for prompt, tokens in zip(prompts, batched, strict=True):
        alone = generate(
            model, [prompt], max_new_tokens=8, eos_token_id=-1, pad_token_id=tokenizer.pad_token_id
        )
        assert alone[0] == tokens
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens]), use_cache=False).logits[0]
        assert logits[len(prompt) - 1 : -1].argmax(-1).tolist() == tokens


def test_a_step_without_a_static_cache_gives_the_logits_of_recomputation(prefixed_chatglm3):
    """The step through transformers' own cache (update(), not the static cache's one write), with a padded row."""
    model, _ = prefixed_chatglm3
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    with torch.no_grad():
        whole = model(ids, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, -1]
        model(ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], cache=cache)
        step = model(ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:], cache=cache)
    torch.testing.assert_close(step.logits[:, -1], whole, atol=1e-4, rtol=0)  # the goldens' tolerance
