"""The end every family's model shares: the LM head's output and loss, generate()'s position hook, and how a
P-tuning v2 prefix's rows become per-layer keys and values.

A family's `...ForConditionalGeneration.forward` runs its transformer and hands the last hidden states to
`causal_lm_output`: in training with labels, only the labelled positions go through the head, picked without a
wait for the GPU, fused with the fp32 cross-entropy where the head is frozen (`glmcore.models.fused`); otherwise
the logits, with the same loss.
Either loss is zero-label-safe: a batch whose labels are all ignored (ChatGLM3's fine-tuning keeps rows cut
before their answers) has loss 0 with a gradient of zeros, not 0 / 0, which would write NaN into every weight.

Ground floor: this module imports no family and no registry (tests/test_import_graph.py).
"""

from __future__ import annotations

from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from glmcore.examples import IGNORE_INDEX
from glmcore.models.fused import labelled_cross_entropy

# transformers renamed the cache argument and output field from `past_key_values` to `cache` during 5.x;
# accept and return whichever the installed release uses.
CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"

Count = torch.Tensor | int


def causal_lm_output(
    hidden_states: torch.Tensor,
    head: nn.Module,
    vocabulary: int,
    *,
    labels: torch.Tensor | None,
    training: bool,
    logits_to_keep: int,
    num_items_in_batch: Count | None,
    cache,
    label_count: int | None = None,
) -> CausalLMOutputWithPast:
    """Logits of `head` (`vocabulary` outputs) and the loss over labels that are not ignored, shifted by one;
    in training, the loss alone.

    Training needs logits only where there is a label: the LM head (a tenth of a 6B model's compute) and the
    fp32 logits run on those positions alone (`label_count` of them, the count a training batch carries).
    `num_items_in_batch` from the Trainer makes the loss a sum over the whole accumulated batch divided by its
    label count, so batch × accumulation splits give the same gradients.
    """
    cached = {CACHE_FIELD: cache}
    if labels is not None and training:
        loss = labelled_positions_loss(
            hidden_states, labels, head, vocabulary, num_items_in_batch, label_count
        )
        return CausalLMOutputWithPast(loss=loss, logits=None, **cached)
    if logits_to_keep:
        hidden_states = hidden_states[:, -logits_to_keep:]
    logits = head(hidden_states)
    loss = logits_loss(logits, labels, num_items_in_batch) if labels is not None else None
    return CausalLMOutputWithPast(loss=loss, logits=logits, **cached)


def labelled_positions_loss(
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    head: nn.Module,
    vocabulary: int,
    num_items_in_batch: Count | None,
    label_count: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of next-token predictions in fp32, summed over labels that are not ignored, divided by
    their count (or by the whole accumulated batch's count, `num_items_in_batch`), 0 where there are none.

    Only the labelled positions go through the head (a P-tuning row is half prompt, and the head's matrix
    product and fp32 logits are the step's largest after the layers'). They are picked by index, a number of
    them fixed on the host: `label_count`, which `glmcore.data.TrainingCollator` counts before the batch goes
    to the GPU. A boolean mask would pick the same rows in the same order, but its output's size is read back
    from the GPU, a wait at every micro-batch that leaves the GPU idle while the host catches up. A count
    larger than the labels (DataParallel's replicas share their batch's count) leaves slots that point at a
    position whose label is ignored and add nothing; a smaller one would drop labels. Without a count it is
    read back once, here.
    """
    # Position i of each row predicts label i + 1; each row's last position predicts nothing.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).flatten().to(hidden_states.device)
    labelled = targets != IGNORE_INDEX
    count = at_least_one(num_items_in_batch if num_items_in_batch is not None else labelled.sum())
    positions = len(targets)
    slots = min(positions, label_count if label_count is not None else int(labelled.sum()))
    # A slot past the labels points at the last position, whose label is ignored.
    picked = torch.nonzero_static(labelled, size=slots, fill_value=positions - 1)[:, 0]
    hidden_states = hidden_states.flatten(0, 1).index_select(0, picked)
    targets = targets.index_select(0, picked)
    head_is_frozen = not any(parameter.requires_grad for parameter in head.parameters())
    if hidden_states.requires_grad and head_is_frozen and hidden_states.dtype != torch.float16:
        # No logits kept for the backward pass (fp16 keeps the plain path: a loss scaler scales its
        # gradient, which the fused one computes unscaled).
        return labelled_cross_entropy(hidden_states, targets, count, head, vocabulary)
    logits = head(hidden_states).float()
    total = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (count.to(total.device) if isinstance(count, torch.Tensor) else count)


def logits_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Count | None) -> torch.Tensor:
    """The same loss from whole logits [batch, seq, vocabulary] (evaluation): transformers' causal LM loss,
    with 0 for a batch that has no label."""
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].to(logits.device)
    total = F.cross_entropy(
        logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    count = at_least_one(count)
    return total / (count.to(total.device) if isinstance(count, torch.Tensor) else count)


def at_least_one(count: Count) -> Count:
    """A label count to divide by: a batch with none sums to 0, and 0 / 1 is its loss."""
    return count.clamp(min=1) if isinstance(count, torch.Tensor) else max(count, 1)


class PositionsGenerationMixin(GenerationMixin):
    """generate()'s hook for a model whose positions are a function of the whole sequence so far (GLM's 2D
    positions, or positions that skip left padding): derive them for the whole sequence, then keep those of
    the tokens this step feeds. A family gives `generation_position_ids`."""

    def generation_position_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The position ids [batch, ..., seq] of every token of `input_ids` (left-padded by `attention_mask`)."""
        raise NotImplementedError

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs) -> dict:
        kwargs.pop("position_ids", None)
        model_inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        new_length = model_inputs["input_ids"].shape[1]
        positions = self.generation_position_ids(input_ids, kwargs.get("attention_mask"))
        model_inputs["position_ids"] = positions[..., -new_length:].contiguous()
        return model_inputs


def peft_prefix_tuning_config(config, key_value_heads: int, channels: int, layers: int) -> dict:
    """PEFT PREFIX_TUNING's adapter_config.json for a prefix of `config.pre_seq_len` tokens over `layers` layers
    of `key_value_heads` × `channels` keys and values, in inference mode (PEFT then reads the saved keys and
    values as they are)."""
    token_dim = key_value_heads * channels
    return {
        "peft_type": "PREFIX_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": config.pre_seq_len,
        "num_attention_heads": key_value_heads,
        "token_dim": token_dim,
        "num_layers": layers,
        "encoder_hidden_size": token_dim,
        "num_transformer_submodules": 1,
        "prefix_projection": False,
        "inference_mode": True,
        "base_model_name_or_path": getattr(config, "_name_or_path", None) or None,
        "revision": None,
        "auto_mapping": None,
    }


def prefix_layers(flat: torch.Tensor, layers: int, heads: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A prefix's rows [batch, pre_seq_len, layers·2·heads·channels], read as [layer, key/value, head, channel]
    (the published layout of every family), as the cache takes them: per layer (key, value), each
    [batch, heads, pre_seq_len, channels]."""
    batch, length, _ = flat.shape
    per_layer = flat.view(batch, length, layers, 2, heads, -1).permute(2, 3, 0, 4, 1, 5)
    return [(layer[0], layer[1]) for layer in per_layer]
