"""GLM-4's -hf and 0414 layouts' fused one-token step on a CUDA GPU (issue 32): what the CPU tests cannot see.
Skipped without one; run on the GPU machine with `python -m pytest tests/gpu -q`.

The step is captured as a CUDA graph (nothing in it reads back to the host), with and without a prefix held in
the cache, after the model was moved to the GPU (`.to()` lays q/k/v out in one storage again), and each bf16
greedy token equals recomputation's wherever the top two logits are not within bf16 rounding (its step's norms
round once where transformers' round twice: a near tie may go the other way).
"""

from __future__ import annotations

import pytest
import torch
from support.greedy import assert_graph_steps_pick_recomputed_tokens

import glmcore
from glmcore.models import family_named
from glmcore.models.glm4.native import adjacent_parts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("prefixed", [False, True], ids=["plain", "prefix"])
@pytest.mark.parametrize("name", ["glm-4-9b-chat-hf", "glm-4-0414"])
def test_the_graph_step_picks_the_tokens_recomputation_picks(tiny_family_dir, name, prefixed):
    folder = tiny_family_dir(family_named(name))
    torch.manual_seed(0)  # the new prefix's initial values
    model = glmcore.load_model(folder, device="cpu", pre_seq_len=4 if prefixed else None)
    model = model.to("cuda", torch.bfloat16).eval()
    attention = model.model.layers[0].self_attn
    assert (
        adjacent_parts([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
        is not None
    )
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10, 11]], device="cuda")
    # bf16 keeps 8 bits: logits near 10 are 1/16 apart.
    assert_graph_steps_pick_recomputed_tokens(model, prompt, clear_margin=0.25)
