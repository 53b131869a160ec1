"""ChatGLM2/3's static-cache decoder: glmcore.decoding's, with the cache of the key/value groups and 1D positions.

The step, its CUDA graph capture and the decoding loop are `glmcore.decoding.StaticDecoder`'s; what this
family gives is the cache's shape ([batch, groups, capacity, kv_channels]: multi-query attention keeps two
groups, a sixteenth of ChatGLM-6B's cache), the positions (one per token, counting real tokens from 0) and
the prompt's mask (causal, the prefix seen by all, padded keys hidden: the published rule for real rows).
"""

from __future__ import annotations

import torch

from glmcore.decoding import StaticDecoder
from glmcore.models.chatglm2.modeling import attention_mask_for


class ChatGLM2StaticDecoder(StaticDecoder):
    position_shape = (1,)

    def cache_heads_and_channels(self) -> tuple[int, int]:
        return self.config.multi_query_group_num, self.config.kv_channels

    def prompt_positions_and_mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length = input_ids.shape
        prefix = self.prefix_length
        padding = torch.cat((attention_mask.new_ones(batch, prefix), attention_mask), dim=-1)
        allowed, _ = attention_mask_for(padding, batch, length, prefix, self.device)
        if allowed is None:  # no padding: causal over the prompt, the prefix seen by all
            allowed = torch.ones(length, prefix + length, dtype=torch.bool, device=self.device)
            allowed[:, prefix:] = allowed[:, prefix:].tril()
            allowed = allowed.expand(batch, 1, length, prefix + length)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions, allowed

    def advance_positions(self) -> None:
        self.positions += 1


def new_decoder(model, batch: int, capacity: int, *, use_graph: bool | None = None) -> ChatGLM2StaticDecoder:
    return ChatGLM2StaticDecoder(model, batch, capacity, use_graph=use_graph)
