"""The fused training functions give the gradients of the plain autograd chains they replace, and the shared
head's loss (glmcore/models/head.py) is the same, zero-label-safe one for every family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import glmcore
from glmcore.examples import IGNORE_INDEX
from glmcore.models import FAMILIES, fused
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


@pytest.fixture(scope="module", params=FAMILIES, ids=[family.name for family in FAMILIES])
def prefixed(request, tiny_family_dir):
    """A family's tiny model with a 4-token prefix, only the prefix trained, no prefix dropout (so training and
    evaluation run the same forward pass)."""
    model = glmcore.load_model(tiny_family_dir(request.param), pre_seq_len=4, dtype="float32")
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("transformer.prefix_encoder.")
    model.transformer.prefix_dropout.p = 0.0
    return model


def random_batch(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of 12 tokens whose last 7, 5 and 2 are labelled."""
    vocabulary = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocabulary, (3, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    for row, labelled in enumerate((7, 5, 2)):
        labels[row, : 12 - labelled] = IGNORE_INDEX
    return ids, labels


def is_fused(loss: torch.Tensor) -> bool:
    return type(loss.grad_fn).__name__.startswith("_LabelledCrossEntropy")


@pytest.mark.parametrize("num_items", [None, 40])
def test_the_fused_loss_equals_the_plain_cross_entropy(prefixed, num_items, monkeypatch):
    """Training (fused, chunks of two rows) against torch's cross-entropy of the evaluation logits: the same
    loss and the same prefix gradient, for every family."""
    monkeypatch.setattr(fused, "LOGITS_PER_CHUNK", 2 * prefixed.get_input_embeddings().weight.shape[0])
    ids, labels = random_batch(prefixed)
    count = num_items or int((labels[:, 1:] != IGNORE_INDEX).sum())
    fused_gradient, fused_loss = prefix_gradient_and_loss(prefixed.train(), ids, labels, num_items)
    prefixed.eval().zero_grad(set_to_none=True)
    logits = prefixed(ids).logits[:, :-1]
    plain_loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), reduction="sum") / count
    plain_loss.backward()
    plain_gradient = prefixed.transformer.prefix_encoder.embedding.weight.grad
    torch.testing.assert_close(fused_loss, plain_loss.detach())
    torch.testing.assert_close(fused_gradient, plain_gradient)
    assert fused_gradient.abs().sum() > 0
    assert is_fused(prefixed.train()(ids, labels=labels).loss)
    torch.testing.assert_close(prefixed.eval()(ids, labels=labels, num_items_in_batch=num_items).loss, fused_loss)


@pytest.mark.parametrize("path", ["fused", "plain", "evaluation"])
@pytest.mark.parametrize("num_items", [None, 0])
def test_a_batch_whose_labels_are_all_ignored_has_loss_zero_and_a_gradient_of_zeros(prefixed, path, num_items):
    """ChatGLM3's fine-tuning keeps rows cut before their answers; a batch of them has nothing to learn. Its loss
    is 0, not 0 / 0 (NaN, which the optimizer would write into every trained weight), on every path of every
    family: the fused loss (frozen head), the plain one (a trained head) and the evaluation logits'."""
    ids, labels = random_batch(prefixed)
    labels[:] = IGNORE_INDEX
    head = prefixed.get_output_embeddings().weight
    head.requires_grad = path == "plain"
    try:
        prefixed.train(path != "evaluation").zero_grad(set_to_none=True)
        loss = prefixed(ids, labels=labels, num_items_in_batch=num_items).loss
        loss.backward()
    finally:
        head.requires_grad = False
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert is_fused(loss) == (path == "fused")
    gradient = prefixed.transformer.prefix_encoder.embedding.weight.grad
    assert gradient is not None and not gradient.any()


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
