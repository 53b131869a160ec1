"""ChatGLM-6B's static-cache decoder: glmcore.decoding's, with ChatGLM-6B's cache, 2D positions and prompt mask.

The step, its CUDA graph capture and the decoding loop are `glmcore.decoding.StaticDecoder`'s (the module
says why the fast path is one graph per step); what this family gives is the cache's shape ([batch, heads,
capacity, head_dim]), GLM's 2D positions (the block position counts generated tokens) and the prefix-LM
mask over the prompt.

Greedy decoding here gives the same tokens as `model.generate()` (tested on the CPU); evaluation and
chat use this path through `glmcore.generation.generate` and the family's `new_decoder`.
"""

from __future__ import annotations

import torch

from glmcore.decoding import StaticDecoder
from glmcore.models.chatglm6b.modeling import glm_attention_mask, glm_position_ids


class ChatGLMStaticDecoder(StaticDecoder):
    """`mask_first` places the answer at a prompt's `[MASK]` before its `[gMASK]` (see `glm_position_ids`)."""

    position_shape = (2, 1)

    def __init__(
        self, model, batch: int, capacity: int, *, use_graph: bool | None = None, mask_first: bool = False
    ) -> None:
        self.mask_first = mask_first
        super().__init__(model, batch, capacity, use_graph=use_graph)

    def cache_heads_and_channels(self) -> tuple[int, int]:
        return self.config.num_attention_heads, self.config.head_dim

    def prompt_positions_and_mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        allowed = glm_attention_mask(input_ids, attention_mask, 0, self.prefix_length, self.config)
        positions = glm_position_ids(input_ids, attention_mask, self.config, mask_first=self.mask_first)
        return positions, allowed

    def advance_positions(self) -> None:
        self.positions[:, 1] += 1
