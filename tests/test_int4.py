"""The optional int4 4-bit backend (torchao, glmcore/models/int4.py): refused in one sentence without torchao,
before anything loads; with it, logits as close to fp32's as NF4's, and glmcore's decoder runs on its weights.

CI installs no torchao: there the refusals run and the numerics tests are skipped (with the reason). Locally,
`pip install --target DIR 'torchao>=0.18,<0.19' --no-deps` and PYTHONPATH=.:DIR run the numerics tests instead.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import glmcore
from glmcore.bench import main as bench_main
from glmcore.chat import plan_chat
from glmcore.config import ConfigError, RunConfig
from glmcore.errors import GlmError
from glmcore.generation import generate
from glmcore.models.chatglm6b.tiny import write_tiny_checkpoint
from glmcore.models.glm4.hf.family_impl import write_tiny_checkpoint as write_glm4_hf_checkpoint
from glmcore.models.int4 import MISSING_TORCHAO
from glmcore.models.quantized_embedding import Int8LMHead

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
needs_torchao = pytest.mark.skipif(
    not HAS_TORCHAO, reason="torchao is not installed (pip install 'glmtui[int4]')"
)
PROMPT = "类型#上衣*材质#牛仔布*颜色#白色"


@pytest.mark.skipif(
    HAS_TORCHAO, reason="torchao is installed here, so the missing-package sentence cannot show"
)
def test_int4_without_torchao_is_one_sentence_before_anything_is_made(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "evaluation"
    options = ["--model", tiny_model_dir, "--data", tmp_path / "dev.json", "--four-bit", "int4", "--out", out]
    done = subprocess.run(
        [sys.executable, "-m", "glmtui.cli", "--workspace", str(tmp_path / "ws"), "eval", *map(str, options)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert " ".join(done.stderr.split()) == f"error: {MISSING_TORCHAO}"
    assert not out.exists()
    with pytest.raises(GlmError) as refused:
        glmcore.load_model(tiny_model_dir, quantization_bit=4, four_bit="int4")
    assert str(refused.value) == MISSING_TORCHAO
    assert bench_main(["--tiny", "--only", "decode4i", "--workdir", str(tmp_path / "bench")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {MISSING_TORCHAO}"
    assert not (tmp_path / "bench").exists()


def test_int4_is_a_4_bit_format_and_training_keeps_nf4(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(GlmError, match="int4 is a 4-bit format, but the weights were asked for at 8-bit"):
        plan_chat(None, model=tiny_model_dir, quantization_bit=8, four_bit="int4")
    settings = {
        "model_path": str(tiny_model_dir),
        "train_file": str(tmp_path / "train.json"),
        "four_bit": "int4",
    }
    with pytest.raises(
        ConfigError, match="four_bit is not a training setting: training's 4-bit weights are always"
    ):
        RunConfig.from_dict(settings)


@pytest.fixture(scope="module")
def realistic_model_dir(tmp_path_factory) -> Path:
    """Weights at the published initialisation scale, where rounding errors behave as in the real model; hidden
    64 and inner 256 wide, so the blocks quantize in groups of 64 and of 128."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("int4") / "model", init_std=0.02, seed=2)


def relative_error(logits: torch.Tensor, reference: torch.Tensor) -> float:
    return ((logits - reference).norm() / reference.norm()).item()


@needs_torchao
def test_int4_logits_stay_as_close_to_fp32_as_nf4s(realistic_model_dir: Path) -> None:
    ids = torch.tensor([glmcore.load_tokenizer(realistic_model_dir).encode(PROMPT)])
    int4 = glmcore.load_model(realistic_model_dir, quantization_bit=4, four_bit="int4")
    layer = int4.transformer.layers[0]
    assert "Int4" in type(layer.attention.query_key_value.weight).__name__
    assert layer.attention.query_key_value.weight.block_size == [1, 64]
    assert layer.mlp.dense_4h_to_h.weight.block_size == [1, 128]
    assert isinstance(int4.lm_head, Int8LMHead), "the output layer is stored as NF4's is"
    with torch.no_grad():
        reference = glmcore.load_model(realistic_model_dir)(ids).logits[:, -1]
        nf4 = glmcore.load_model(realistic_model_dir, quantization_bit=4)(ids).logits[:, -1]
        quantized = int4(ids).logits[:, -1]
    assert 0 < relative_error(quantized, reference) < 1.5 * relative_error(nf4, reference)


def greedy_by_whole_forwards(model, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens from the whole sequence's forward pass at each step: no cache, no decoder."""
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(prompt) :]


@needs_torchao
@pytest.mark.parametrize("layout", ["chatglm-6b", "glm-4 transformers layout"])
def test_glmcores_decoder_runs_on_int4_weights(
    realistic_model_dir: Path, tmp_path: Path, layout: str
) -> None:
    """The static decoder's greedy tokens are the whole forward pass's, with the same int4 weights (GLM-4's
    transformers layout joins q, k and v in one product only where they share one storage, which int4's do not)."""
    folder = realistic_model_dir if layout == "chatglm-6b" else write_glm4_hf_checkpoint(tmp_path / "glm4")
    model = glmcore.load_model(folder, quantization_bit=4, four_bit="int4")
    tokenizer = glmcore.load_tokenizer(folder)
    prompt = tokenizer.encode(PROMPT)
    decoded = generate(model, [prompt], max_new_tokens=6, eos_token_id=-1, pad_token_id=0)
    assert decoded == [greedy_by_whole_forwards(model, prompt, 6)]
