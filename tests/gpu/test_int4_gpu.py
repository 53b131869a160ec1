"""torchao's int4 weights on a CUDA GPU (issue 36): the tile-packed layout and its CUDA-graph decoding, which the
CPU tests (tests/test_int4.py, the opaque CPU layout) cannot see. Skipped without a GPU or without torchao.

Run on the GPU machine after `pip install --no-deps .whl/torchao-0.18.0-*.whl` (docs/benchmarks.md):
`python -m pytest tests/gpu/test_int4_gpu.py -q`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import glmcore
from glmcore.generation import generate, new_decoder
from glmcore.models.chatglm6b.tiny import write_tiny_checkpoint

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="needs torchao (glmtui[int4])"),
]
PROMPT = "类型#上衣*材质#牛仔布*颜色#白色"


@pytest.fixture(scope="module")
def realistic_model_dir(tmp_path_factory) -> Path:
    """Weights at the published initialisation scale; hidden 64 and inner 256 wide (groups of 64 and 128)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("int4-gpu") / "model", init_std=0.02, seed=2)


def relative_error(logits: torch.Tensor, reference: torch.Tensor) -> float:
    return ((logits.float() - reference.float()).norm() / reference.float().norm()).item()


def test_int4_on_the_gpu_is_tile_packed_and_as_close_to_16_bit_as_nf4(realistic_model_dir: Path) -> None:
    ids = torch.tensor([glmcore.load_tokenizer(realistic_model_dir).encode(PROMPT)], device="cuda")
    int4 = glmcore.load_model(realistic_model_dir, quantization_bit=4, four_bit="int4")
    weight = int4.transformer.layers[0].attention.query_key_value.weight
    assert type(weight).__name__ == "Int4TilePackedTo4dTensor"
    with torch.no_grad():
        reference = glmcore.load_model(realistic_model_dir)(ids).logits[:, -1]
        nf4 = glmcore.load_model(realistic_model_dir, quantization_bit=4)(ids).logits[:, -1]
        quantized = int4(ids).logits[:, -1]
    print(
        f"relative to 16-bit: int4 {relative_error(quantized, reference):.5f}, nf4 {relative_error(nf4, reference):.5f}"
    )
    assert 0 < relative_error(quantized, reference) < 1.5 * relative_error(nf4, reference)


def test_the_captured_int4_step_picks_the_eager_steps_tokens(realistic_model_dir: Path) -> None:
    model = glmcore.load_model(realistic_model_dir, quantization_bit=4, four_bit="int4")
    prompt = glmcore.load_tokenizer(realistic_model_dir).encode(PROMPT)
    tokens = {}
    for use_graph in (False, True):
        decoder = new_decoder(model, 1, len(prompt) + 12, use_graph=use_graph)
        tokens[use_graph] = generate(
            model, [prompt], max_new_tokens=12, eos_token_id=-1, pad_token_id=0, decoder=decoder
        )
        if use_graph:
            assert decoder.graph_error is None and decoder.graph is not None
    assert tokens[True] == tokens[False]
