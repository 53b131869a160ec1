"""Generation shared by every model family: sampling settings, picking a token, and `generate` over a decoder.

The decoder itself (static KV cache, CUDA graph) belongs to the model's family (`new_decoder` in its
`family_impl`); anything with `.batch`, `.device`, `.use_graph`, `.model` and
`.decode(input_ids, attention_mask, max_new_tokens, *, eos_token_id, sampling, should_stop)` serves.
Evaluation, chat and the bench decode through `generate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """Greedy by default; `do_sample` draws with temperature and top-p (ChatGLM-6B's are 0.95 and 0.7)."""

    do_sample: bool = False
    temperature: float = 0.95
    top_p: float = 0.7
    top_k: int = 0
    """0 keeps every token; transformers' default was 50."""
    seed: int | None = None


def _pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    if not sampling.do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = logits.topk(sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probabilities = torch.softmax(logits, dim=-1)
    ordered, order = probabilities.sort(dim=-1, descending=True)
    outside = ordered.cumsum(dim=-1) - ordered > sampling.top_p
    ordered = ordered.masked_fill(outside, 0.0)
    choice = torch.multinomial(ordered, 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


def new_decoder(model, batch: int, capacity: int, *, use_graph: bool | None = None, prediction: bool = False):
    """The fast decoder of `model`'s family for `batch` rows of up to `capacity` positions; `prediction` places
    the answers as the family's published prediction (evaluation) path does."""
    from glmcore.models import family_of

    implementation = family_of(model).implementation()
    return implementation.new_decoder(model, batch, capacity, use_graph=use_graph, prediction=prediction)


FINISHED_CHECK_EVERY = 4
"""generate() asks the GPU whether every row has ended once per this many steps (the rows are cut at
their end id afterwards): one wait per step would leave the GPU idle while the host launches the next."""


def generate(
    model,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    sampling: Sampling = Sampling(),
    decoder=None,
    should_stop: Callable[[], bool] | None = None,
    prediction: bool = False,
) -> list[list[int]]:
    """New tokens for each prompt (ids, left-padded here), each list ending at and including `<eop>`."""
    longest = max(map(len, prompts))
    decoder = decoder or new_decoder(model, len(prompts), longest + max_new_tokens, prediction=prediction)
    device = decoder.device
    input_ids = torch.tensor([[pad_token_id] * (longest - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=device)
    steps = list(
        decoder.decode(
            input_ids,
            attention_mask,
            max_new_tokens,
            eos_token_id=eos_token_id,
            sampling=sampling,
            should_stop=should_stop,
            check_finished_every=FINISHED_CHECK_EVERY,
        )
    )
    if not steps:
        return [[] for _ in prompts]
    tokens = torch.stack(steps, dim=1).tolist()
    return [row[: row.index(eos_token_id) + 1] if eos_token_id in row else row for row in tokens]
