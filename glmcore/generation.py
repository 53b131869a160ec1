"""Generation shared by every model family: `new_decoder` (the model's family's fast decoder) and `generate`
over a decoder. The decoder's family-neutral part, `StaticDecoder`, and the sampling settings are
glmcore.decoding's, on the ground floor below the families; anything with `.batch`, `.device`, `.use_graph`,
`.model` and `.decode(input_ids, attention_mask, max_new_tokens, *, eos_token_id, sampling, should_stop)` serves.
Evaluation, chat and the bench decode through `generate`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from glmcore.decoding import Sampling, stop_ids
from glmcore.decoding import pick_tokens as pick_tokens  # re-exported: serving picks tokens row by row


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
    eos_token_id: int | list[int],
    pad_token_id: int,
    sampling: Sampling = Sampling(),
    decoder=None,
    should_stop: Callable[[], bool] | None = None,
    prediction: bool = False,
) -> list[list[int]]:
    """New tokens for each prompt (ids, left-padded here), each list ending at and including its first stop
    id (`eos_token_id`: the family's end of answer, or all its stop ids)."""
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
    stops = set(stop_ids(eos_token_id))
    return [_through_first_stop(row, stops) for row in tokens]


def _through_first_stop(row: list[int], stops: set[int]) -> list[int]:
    for index, token in enumerate(row):
        if token in stops:
            return row[: index + 1]
    return row
