"""The fused training functions give the gradients of the plain autograd chains they replace, and the shared
head's loss (glmcore/models/head.py) is the same, zero-label-safe one for every family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support.profiling import READS_BACK
from torch.profiler import ProfilerActivity, profile

import glmcore
from glmcore.data import TrainingCollator
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
    torch.testing.assert_close(
        prefixed.eval()(ids, labels=labels, num_items_in_batch=num_items).loss, fused_loss
    )


@pytest.mark.parametrize("path", ["fused", "plain", "evaluation"])
@pytest.mark.parametrize("num_items", [None, 0])
def test_a_batch_whose_labels_are_all_ignored_has_loss_zero_and_a_gradient_of_zeros(
    prefixed, path, num_items
):
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


# --- the labelled positions, picked without reading anything back from the device ------------------------


def boolean_mask_loss(hidden, labels, head, count=None) -> torch.Tensor:
    """The loss as it was computed before (glmcore/models/head.py up to issue 36): the labelled positions
    selected by a boolean mask, the plain fp32 cross-entropy summed and divided by the label count."""
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][selected]).float()
    total = F.cross_entropy(logits, targets[selected], reduction="sum")
    return total / max(count if count is not None else int(selected.sum()), 1)


@pytest.mark.parametrize("num_items", [None, 40, "tensor"])
@pytest.mark.parametrize("label_count", ["exact", "more", None])
@pytest.mark.parametrize("head_is_trained", [False, True], ids=["fused", "plain"])
@pytest.mark.parametrize("rows_labelled", [(7, 0, 3, 1), (0, 0, 0, 0)], ids=["some", "none"])
def test_the_labelled_positions_loss_is_the_boolean_mask_loss(
    head_is_trained, label_count, num_items, rows_labelled, monkeypatch
):
    """Random hidden states and labels (rows with no label at all among them) through the head's loss, fused
    (frozen head, chunks of three rows) and plain (trained head): the loss and every gradient are those of the
    boolean-mask selection, with the batch's own label count, one larger than it, or none given."""
    from glmcore.models.head import labelled_positions_loss

    monkeypatch.setattr(fused, "LOGITS_PER_CHUNK", 3 * 50)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 50, (4, 9), generator=generator)
    for row, labelled in enumerate(rows_labelled):
        labels[row, : 9 - labelled] = IGNORE_INDEX
    labels[0, 4] = IGNORE_INDEX  # a gap among a row's labels
    hidden = torch.randn(4, 9, 16, generator=generator, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight.requires_grad = head_is_trained
    count = int((labels[:, 1:] != IGNORE_INDEX).sum())
    given = {"exact": count, "more": count + 5, None: None}[label_count]
    items = torch.tensor(40) if num_items == "tensor" else num_items

    loss = labelled_positions_loss(hidden, labels, head, 50, items, given)
    (hidden_gradient,) = torch.autograd.grad(loss, hidden, retain_graph=head_is_trained)
    head_gradient = torch.autograd.grad(loss, head.weight)[0] if head_is_trained else None
    expected = boolean_mask_loss(hidden, labels, head, None if items is None else int(items))
    (expected_hidden_gradient,) = torch.autograd.grad(expected, hidden, retain_graph=head_is_trained)

    assert is_fused(loss) == (not head_is_trained)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hidden_gradient, expected_hidden_gradient, rtol=1e-6, atol=1e-6)
    assert bool(hidden_gradient.any()) == (count > 0)
    if head_is_trained:
        torch.testing.assert_close(
            head_gradient, torch.autograd.grad(expected, head.weight)[0], rtol=1e-6, atol=1e-6
        )


def test_a_training_step_reads_nothing_back_from_the_device(prefixed):
    """A batch from the training collator (which counts its labels on the host) through a family's training
    forward and backward: no operation reads a value back, the wait that left the GPU idle in every step."""
    ids, labels = random_batch(prefixed)
    labels[2] = IGNORE_INDEX
    rows = [
        {"input_ids": row.tolist(), "labels": label.tolist()} for row, label in zip(ids, labels, strict=True)
    ]
    batch = TrainingCollator(prefixed.config.pad_token_id)(rows)
    assert batch["label_count"] == int((labels[:, 1:] != IGNORE_INDEX).sum()) == 7 + 5
    prefixed.train().zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        loss = prefixed(**batch).loss
        loss.backward()
    assert is_fused(loss)
    assert not READS_BACK & {event.name for event in profiled.events()}
    gradient = prefixed.transformer.prefix_encoder.embedding.weight.grad
    assert gradient is not None and gradient.any()
