"""The int8 tied embedding of 4/8-bit models: half the memory, outputs as close as 16-bit ones, gradients flow."""

from __future__ import annotations

import pytest
import torch

import glmcore
from glmcore.models.chatglm6b.tiny import write_tiny_checkpoint
from glmcore.models.quantized_embedding import Int8LMHead

PROMPT = "类型#上衣*材质#牛仔布*颜色#白色"


@pytest.fixture(scope="module")
def realistic_model_dir(tmp_path_factory):
    """Weights at the published initialisation scale, where rounding errors behave as in the real model."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("q") / "model", init_std=0.02, seed=2)


def relative_error(logits: torch.Tensor, reference: torch.Tensor) -> float:
    return ((logits.float() - reference).norm() / reference.norm()).item()


def test_int8_embedding_stays_as_close_to_fp32_as_bf16_does(realistic_model_dir):
    ids = torch.tensor([glmcore.load_tokenizer(realistic_model_dir).encode(PROMPT)])
    with torch.no_grad():
        reference = glmcore.load_model(realistic_model_dir)(ids).logits
        int8 = glmcore.load_model(realistic_model_dir, quantize_embedding=True)(ids).logits
        bf16 = glmcore.load_model(realistic_model_dir, dtype=torch.bfloat16)(ids).logits
    assert 0 < relative_error(int8, reference) < 1.5 * relative_error(bf16, reference)


def test_int8_embedding_serves_both_ends_and_passes_gradients_to_the_prefix(realistic_model_dir):
    tokenizer = glmcore.load_tokenizer(realistic_model_dir)
    model = glmcore.load_model(realistic_model_dir, pre_seq_len=2, quantize_embedding=True)
    assert isinstance(model.lm_head, Int8LMHead)
    assert model.lm_head.matrix is model.transformer.word_embeddings.matrix, "one matrix serves both"
    assert model.lm_head.matrix.quantized.dtype == torch.int8
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    labels = ids.clone()
    labels[:, :3] = -100
    model.train()
    model(ids, labels=labels).loss.backward()
    assert model.transformer.prefix_encoder.embedding.weight.grad.abs().sum() > 0
