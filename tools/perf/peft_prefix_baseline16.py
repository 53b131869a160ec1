"""The 16-bit baseline for ChatGLM2-6B / ChatGLM3-6B P-tuning: transformers' own GLM class with PEFT prefix tuning.

What a user of current transformers has without glmtui (their published code needs transformers ~4.30 and remote
code): `GlmForCausalLM` at ChatGLM2/3's 6B shape (28 layers, hidden 4096, 2 key/value groups, SwiGLU 13,696,
vocabulary 65,024, half rotary), random weights in bf16, frozen, and a PEFT prefix of 128 virtual tokens (no
projection) trained with AdamW over 64+64-token rows, loss on the last 64. The rows of `glmcore.bench --only
ptuning16 --family chatglm3-6b` (batch 16, and batch 1) are measured the same way; run both in one GPU call.
`--glm4` takes GLM-4-9B's shape instead (40 layers, vocabulary 151,552, qkv bias), the 16-bit line beside
`glmcore.bench --only ptuning16 --family glm-4-9b-chat` (the GLM-4 baseline script has NF4 rows only).

Imports only torch, transformers and PEFT. Prints one JSON line per figure; `--tiny` runs a toy shape on the CPU.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from peft import PrefixTuningConfig, get_peft_model
from transformers import GlmConfig, GlmForCausalLM

TINY = "--tiny" in sys.argv
GLM4 = "--glm4" in sys.argv
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
SOURCE, TARGET, VIRTUAL_TOKENS, TIMED_STEPS = 64, 64, 128, 3


def report(**figures) -> None:
    print(json.dumps(figures), flush=True)


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def glm_config() -> GlmConfig:
    """ChatGLM2/3's 6B shape in transformers' GLM class (GLM-4-9B's with --glm4, a toy one with --tiny)."""
    ids = {"pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1}
    if TINY:
        return GlmConfig(
            vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, **ids,
        )  # fmt: skip
    if GLM4:
        return GlmConfig(
            vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_hidden_layers=40,
            num_attention_heads=32, num_key_value_heads=2, head_dim=128, partial_rotary_factor=0.5,
            attention_bias=True, **ids,
        )  # fmt: skip
    return GlmConfig(
        vocab_size=65024, hidden_size=4096, intermediate_size=13696, num_hidden_layers=28,
        num_attention_heads=32, num_key_value_heads=2, head_dim=128, partial_rotary_factor=0.5, **ids,
    )  # fmt: skip


def random_model() -> GlmForCausalLM:
    """Random weights (norms at 1, biases at 0), as the anchors initialise theirs."""
    model = GlmForCausalLM(glm_config()).to(device=DEVICE, dtype=DTYPE)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                parameter.fill_(1.0 if "norm" in name else 0.0)
            else:
                parameter.normal_(0, 0.02, generator=generator)
    return model


def prefix_step_figures(model, batch: int) -> dict:
    """Tokens/s and peak memory of AdamW steps on the prefix at `batch` rows of SOURCE + TARGET tokens."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    input_ids = torch.randint(10, 1000, (batch, SOURCE + TARGET), device=DEVICE)
    labels = input_ids.clone()
    labels[:, :SOURCE] = -100

    def step() -> None:
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    synchronize()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    synchronize()
    seconds = (time.perf_counter() - started) / TIMED_STEPS
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None
    return {
        "batch": batch,
        "s_per_step": round(seconds, 4),
        "tokens_per_s": round(batch * (SOURCE + TARGET) / seconds, 1),
        "peak_GiB": round(peak, 2) if peak is not None else None,
    }


def main() -> None:
    report(figure="environment", device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
           torch=torch.__version__, dtype=str(DTYPE), shape="glm-4-9b" if GLM4 else "chatglm2/3-6b")  # fmt: skip
    model = get_peft_model(
        random_model(),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL_TOKENS, prefix_projection=False),
    )
    model.train()
    for batch in (16, 1):
        try:
            report(figure="hf_glm_peft_prefix_16bit_step", **prefix_step_figures(model, batch))
        except Exception as error:  # a baseline that fails is a figure too
            report(figure="hf_glm_peft_prefix_16bit_step", batch=batch, error=repr(error)[:300])


if __name__ == "__main__":
    main()
