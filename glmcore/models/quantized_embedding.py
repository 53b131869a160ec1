"""The tied word embedding / LM head stored as int8 rows, for 4- and 8-bit models.

Once the 28 blocks are in NF4, ChatGLM-6B's 130528 × 4096 embedding (shared with the LM head) is the
largest piece left: 1 GiB in 16-bit, over a quarter of the model. Stored as int8 with one scale per row
(absmax), it takes half that, and its outputs stay within the rounding of the 16-bit model (tested).
The LM head multiplies by the dequantized matrix a slice of rows at a time, so no full 16-bit copy ever
exists, in the forward or the backward pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

ROWS_PER_SLICE = 4096
"""Rows dequantized at once: 32 MiB of 16-bit weights for ChatGLM-6B, transient at the training step's peak."""


class Int8Rows(nn.Module):
    """An int8 matrix with a scale per row, quantized from a floating-point matrix slice by slice."""

    def __init__(self, weight: torch.Tensor, compute_dtype: torch.dtype) -> None:
        super().__init__()
        rows, columns = weight.shape
        quantized = torch.empty(rows, columns, dtype=torch.int8, device=weight.device)
        scales = torch.empty(rows, 1, dtype=compute_dtype, device=weight.device)
        for start in range(0, rows, ROWS_PER_SLICE):
            block = weight[start : start + ROWS_PER_SLICE].float()
            scale = block.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
            quantized[start : start + ROWS_PER_SLICE] = torch.round(block / scale).to(torch.int8)
            scales[start : start + ROWS_PER_SLICE] = scale.to(compute_dtype)
        self.register_buffer("quantized", quantized)
        self.register_buffer("scales", scales)
        self.compute_dtype = compute_dtype

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.quantized[start:stop].to(self.compute_dtype).mul_(self.scales[start:stop])

    def slices(self) -> Iterator[tuple[int, int]]:
        """(start, stop) of each slice of rows that is dequantized at once."""
        total = self.quantized.shape[0]
        for start in range(0, total, ROWS_PER_SLICE):
            yield start, min(start + ROWS_PER_SLICE, total)


class _SlicedProjection(torch.autograd.Function):
    """hidden @ Wᵀ over row slices of W; the backward gives the hidden states' gradient only (W is frozen)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, matrix: Int8Rows) -> torch.Tensor:
        ctx.matrix = matrix
        output = hidden.new_empty(*hidden.shape[:-1], matrix.quantized.shape[0])
        for start, stop in matrix.slices():
            output[..., start:stop] = hidden @ matrix.rows(start, stop).T
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        matrix = ctx.matrix
        grad_hidden = None
        for start, stop in matrix.slices():
            part = grad_output[..., start:stop].to(matrix.compute_dtype) @ matrix.rows(start, stop)
            grad_hidden = part if grad_hidden is None else grad_hidden + part
        return grad_hidden, None


class Int8Embedding(nn.Module):
    def __init__(self, matrix: Int8Rows) -> None:
        super().__init__()
        self.matrix = matrix

    @property
    def weight(self) -> torch.Tensor:
        """The scales stand in for the weight where callers only ask for its dtype and device."""
        return self.matrix.scales

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.matrix.quantized[input_ids].to(self.matrix.compute_dtype) * self.matrix.scales[input_ids]


class Int8LMHead(Int8Embedding):
    """The same matrix, multiplied by rather than indexed."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return _SlicedProjection.apply(hidden_states.to(self.matrix.compute_dtype), self.matrix)


def quantize_tied_embedding(model) -> None:
    """Replace the model's 16-bit embedding and LM head (one tied matrix) by one int8 copy."""
    embedding = model.get_input_embeddings()
    matrix = Int8Rows(embedding.weight.detach(), embedding.weight.dtype)
    model.set_input_embeddings(Int8Embedding(matrix))
    model.set_output_embeddings(Int8LMHead(matrix))
    del embedding
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def quantize_untied_embeddings(model) -> None:
    """A model with a separate output layer (ChatGLM2/3): the embedding and the output layer, each as its own
    int8 copy."""
    embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
    model.set_input_embeddings(Int8Embedding(Int8Rows(embedding.weight.detach(), embedding.weight.dtype)))
    model.set_output_embeddings(Int8LMHead(Int8Rows(output.weight.detach(), output.weight.dtype)))
    del embedding, output
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
