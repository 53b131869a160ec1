"""The fused training functions give the gradients of the plain autograd chains they replace."""

from __future__ import annotations

import torch

import glmcore
from glmcore.models import fused
from glmcore.models.quantized_embedding import quantize_tied_embedding


def labelled_batch(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [
        tokenizer.encode(text) + [5, 6, 7, 8]
        for text in ("类型#上衣*材质#牛仔布", "简约", "a longer prompt here")
    ]
    longest = max(map(len, rows))
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (longest - len(row)) for row in rows])
    labels = torch.tensor(
        [[-100] * (len(row) - 5) + row[-5:] + [-100] * (longest - len(row)) for row in rows]
    )
    return ids, labels


def prefix_gradient_and_loss(model, ids, labels, num_items=None) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = model(ids, labels=labels, num_items_in_batch=num_items).loss
    loss.backward()
    return model.transformer.prefix_encoder.embedding.weight.grad.clone(), loss.detach()


def test_fused_loss_gives_the_plain_cross_entropy_gradient(tiny_model_dir, tiny_tokenizer, monkeypatch):
    """Training (fused, chunks of two rows) and evaluation mode (full logits, plain cross-entropy) agree."""
    model = glmcore.load_model(tiny_model_dir, pre_seq_len=4)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("transformer.prefix_encoder.")
    model.transformer.prefix_dropout.p = 0.0  # the same forward pass in both modes
    ids, labels = labelled_batch(tiny_tokenizer)
    monkeypatch.setattr(fused, "LOGITS_PER_CHUNK", 2 * model.config.vocab_size)
    for num_items in (None, torch.tensor(40)):
        fused_gradient, fused_loss = prefix_gradient_and_loss(model.train(), ids, labels, num_items)
        plain_gradient, plain_loss = prefix_gradient_and_loss(model.eval(), ids, labels, num_items)
        torch.testing.assert_close(fused_loss, plain_loss)
        torch.testing.assert_close(fused_gradient, plain_gradient)
        assert fused_gradient.abs().sum() > 0


def test_fused_loss_through_the_int8_head_of_a_quantized_model(tiny_model_dir, tiny_tokenizer):
    model = glmcore.load_model(tiny_model_dir, pre_seq_len=4)
    quantize_tied_embedding(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("transformer.prefix_encoder.")
    model.transformer.prefix_dropout.p = 0.0
    ids, labels = labelled_batch(tiny_tokenizer)
    fused_gradient, fused_loss = prefix_gradient_and_loss(model.train(), ids, labels)
    plain_gradient, plain_loss = prefix_gradient_and_loss(model.eval(), ids, labels)
    torch.testing.assert_close(fused_loss, plain_loss)
    torch.testing.assert_close(fused_gradient, plain_gradient)


def test_expanded_dropout_follows_the_published_chain():
    """fp32 matrix → batch → 16-bit → dropout (the kernel nn.Dropout runs on a GPU), each row its own mask;
    the gradient is the chain's, summed over the batch in fp32."""
    matrix = torch.randn(6, 40, requires_grad=True)
    grad_output = torch.randn(3, 6, 40, dtype=torch.bfloat16)
    torch.manual_seed(0)
    output = fused.expanded_dropout(matrix, 3, torch.bfloat16, 0.25)
    (fused_gradient,) = torch.autograd.grad(output, matrix, grad_output)
    torch.manual_seed(0)
    published, _ = torch.native_dropout(matrix.unsqueeze(0).expand(3, -1, -1).to(torch.bfloat16), 0.25, True)
    (published_gradient,) = torch.autograd.grad(published, matrix, grad_output)

    kept = output != 0
    assert output.dtype == torch.bfloat16 and output.shape == (3, 6, 40)
    assert 0.6 < kept.float().mean() < 0.9 and not (kept[0] == kept[1]).all()
    torch.testing.assert_close(output, published, atol=0, rtol=0)
    torch.testing.assert_close(fused_gradient, published_gradient)
