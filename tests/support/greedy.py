"""16-bit greedy decoding through a captured CUDA graph held to recomputation (tests/gpu): its tokens are
recomputation's wherever the top two logits are further apart than 16-bit rounding can move them."""

from __future__ import annotations

import torch

from glmcore.generation import new_decoder


def assert_graph_steps_pick_recomputed_tokens(model, prompt: torch.Tensor, clear_margin: float) -> None:
    """Decode 8 tokens after `prompt` [1, length] through a captured graph, then recompute the whole sequence
    without a cache: each token is recomputation's argmax where its top two logits are more than
    `clear_margin` apart (some are)."""
    decoder = new_decoder(model, 1, 32, use_graph=True)
    steps = decoder.decode(prompt, torch.ones_like(prompt), 8, eos_token_id=-1)
    generated = torch.stack(list(steps), dim=1)[0]
    assert decoder.graph is not None, decoder.graph_error
    with torch.no_grad():
        sequence = torch.cat((prompt[0], generated))[None]
        logits = model(sequence, use_cache=False).logits[0, prompt.shape[1] - 1 : -1].float()
    top_two = logits.topk(2, dim=-1).values
    clear = (top_two[:, 0] - top_two[:, 1]) > clear_margin
    assert clear.any()
    assert torch.equal(logits.argmax(-1)[clear], generated[clear])
