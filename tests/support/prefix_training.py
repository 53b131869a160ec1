"""The check every family's 4-bit P-tuning test makes: a few steps on the prefix alone do what P-tuning must."""

from __future__ import annotations

import torch


def assert_prefix_steps_change_only_the_prefix(model, batch: dict, steps: int) -> None:
    """Train only `model`'s P-tuning prefix for `steps` AdamW steps (lr 2e-2, prefix dropout off) on `batch`:
    the loss falls, the prefix moves, and every other tensor of the model stays bit for bit what it was."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("transformer.prefix_encoder.")
    frozen = {
        name: tensor.clone() for name, tensor in model.state_dict().items() if "prefix_encoder" not in name
    }
    prefix_before = model.transformer.prefix_encoder.embedding.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    model.transformer.prefix_dropout.p = 0.0
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert not torch.equal(model.transformer.prefix_encoder.embedding.weight, prefix_before)
    for name, tensor in model.state_dict().items():
        if name in frozen:
            assert torch.equal(tensor, frozen[name]), f"{name} changed"
