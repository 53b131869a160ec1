"""Two training steps written as one autograd function each, where autograd's own chain keeps large tensors.

- `expanded_dropout`: P-tuning v2's prefix, an fp32 [rows, width] matrix broadcast to the batch, cast to
  16-bit and dropped out row by row. Autograd's chain (expand, cast, dropout) makes an fp32 copy of the whole
  batch in the backward pass (1.9 GB at batch 16 for ChatGLM-6B) before summing it; here the dropout's
  gradient is summed over the batch in fp32 directly, the same arithmetic as the published code's.
- `labelled_cross_entropy`: the LM head and the fp32 cross-entropy of the labelled positions (a slot whose label
  is ignored, padding a fixed count of them, adds nothing), a chunk of rows at a time, with the hidden states'
  gradient computed in the forward pass. Autograd's chain keeps the fp32 log-probabilities [labelled tokens,
  vocabulary] for the backward pass and makes three more such tensors in it (2 GB at batch 16); here only the
  gradient [labelled tokens, hidden] is kept. The gradient is the
  one cross-entropy's backward gives (softmax minus one-hot over the label count, in fp32, then cast to the
  head's dtype), so training follows the same path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from glmcore.examples import IGNORE_INDEX

LOGITS_PER_CHUNK = 2**25
"""Logits computed at once by `labelled_cross_entropy` (0.19 GiB with their fp32 copy; 257 rows of ChatGLM-6B)."""


class _ExpandedDropout(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, matrix: torch.Tensor, batch: int, dtype: torch.dtype, probability: float
    ) -> torch.Tensor:
        narrow = matrix.to(dtype)
        output, mask = torch.native_dropout(narrow.expand(batch, *narrow.shape), probability, True)
        ctx.save_for_backward(mask)
        ctx.scale = 1.0 / (1.0 - probability)
        ctx.matrix_dtype = matrix.dtype
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (mask,) = ctx.saved_tensors
        grad = torch.ops.aten.native_dropout_backward(grad_output, mask, ctx.scale)
        return grad.sum(0, dtype=ctx.matrix_dtype), None, None, None


def expanded_dropout(
    matrix: torch.Tensor, batch: int, dtype: torch.dtype, probability: float
) -> torch.Tensor:
    """Dropout of `matrix` [rows, width] repeated for `batch` rows, in `dtype`: [batch, rows, width]."""
    return _ExpandedDropout.apply(matrix, batch, dtype, probability)


class _LabelledCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, targets: torch.Tensor, count, head: Callable, vocabulary: int):
        # A count given as a number stays on the host (a CPU scalar, as a GPU kernel reads it): made a GPU
        # tensor, it would be a copy that waits for the GPU.
        count = count.float() if isinstance(count, torch.Tensor) else torch.tensor(float(count))
        inverse_count = 1.0 / count
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        rows = max(1, LOGITS_PER_CHUNK // vocabulary)
        for start in range(0, hidden.shape[0], rows):
            with torch.enable_grad():
                part = hidden[start : start + rows].detach().requires_grad_()
                logits = head(part)
            log_probabilities = logits.detach().float()
            log_probabilities -= torch.logsumexp(log_probabilities, dim=-1, keepdim=True)
            labelled = targets[start : start + rows, None] != IGNORE_INDEX
            picked = targets[start : start + rows, None].clamp(min=0)
            total -= (log_probabilities.gather(-1, picked) * labelled).sum()
            # d(loss)/d(logits) = (softmax − one-hot) / count, as cross-entropy's backward computes it (zero for
            # an ignored label); it overwrites the logits (the head's backward needs only its weight), so one
            # fp32 copy exists.
            weight = labelled * inverse_count
            grad_logits = log_probabilities.exp_().mul_(weight)
            grad_logits.scatter_add_(-1, picked, -weight)
            with torch.no_grad():
                logits.copy_(grad_logits)
            del log_probabilities, grad_logits
            (grad_hidden[start : start + rows],) = torch.autograd.grad(logits, part, logits)
        ctx.save_for_backward(grad_hidden)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), None, None, None, None


def labelled_cross_entropy(
    hidden: torch.Tensor, targets: torch.Tensor, count: torch.Tensor | int, head: Callable, vocabulary: int
) -> torch.Tensor:
    """Σ cross-entropy(head(hidden[i]) in fp32, targets[i]) / count, for a head whose weights are frozen.

    hidden [tokens, hidden] (the labelled positions), targets [tokens] (IGNORE_INDEX where a row adds
    nothing), vocabulary: the head's outputs.
    """
    return _LabelledCrossEntropy.apply(hidden, targets, count, head, vocabulary)
