"""The bench's int4 figures (`python -m glmcore.bench --only decode4i,serve4i`): torchao's int4 weights against
16-bit and NF4 on the same random checkpoint (glmcore/models/int4.py, issue 36).

`decode4i`: the numerics first, each 4-bit format's last-position logits against the 16-bit model's on the same
prompts (max |difference|, and the norm of the difference over the 16-bit logits' norm), then batch-1 decoding
through the static decoder as `decode4` measures NF4, with its share of the copy-bandwidth bound counted from the
bytes the int4 weights really hold. `serve4i`: the `serve` figure's clients through the serving engine with int4
weights.
"""

from __future__ import annotations

from pathlib import Path

NUMERICS_PROMPTS = 4


def stored_bytes(model) -> int:
    """The bytes the model's parameters hold: a tensor subclass (torchao's int4 weights) counts its inner tensors
    (packed values, scales and zero points), not the 16-bit shape it stands for."""

    def size(tensor) -> int:
        if hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()
            return sum(size(getattr(tensor, name)) for name in names if getattr(tensor, name) is not None)
        return tensor.numel() * tensor.element_size()

    return sum(size(parameter) for parameter in model.parameters())


def numerics_prompts(ids: dict[str, int], length: int) -> list[list[int]]:
    """`NUMERICS_PROMPTS` different prompts of `length` tokens ending as the family's prompts end."""
    tail = [ids["gmask_token_id"], ids["bos_token_id"]]
    return [
        [10 + (row * 7 + column) % 500 for column in range(length - 2)] + tail
        for row in range(NUMERICS_PROMPTS)
    ]


def last_logits(model, prompts: list[list[int]]):
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return model(torch.tensor(prompts, device=device)).logits[:, -1].float().cpu()


def four_bit_numerics(model_dir: Path, ids: dict[str, int], prompt_length: int) -> dict:
    """int4's and NF4's last-position logits against 16-bit's on the same prompts."""
    from glmcore.bench import reset_peak
    from glmcore.models.loading import load_model

    prompts = numerics_prompts(ids, prompt_length)
    logits = {}
    for name, options in (
        ("16-bit", {}),
        ("int4", {"quantization_bit": 4, "four_bit": "int4"}),
        ("nf4", {"quantization_bit": 4}),
    ):
        model = load_model(model_dir, **options)
        logits[name] = last_logits(model, prompts)
        del model
        reset_peak()
    reference = logits.pop("16-bit")
    figures = {
        "prompts": NUMERICS_PROMPTS,
        "prompt": prompt_length,
        "logit_scale": round(float(reference.abs().max()), 3),
    }
    for name, values in logits.items():
        difference = values - reference
        figures[name] = {
            "max_abs_logit_difference": round(float(difference.abs().max()), 5),
            "relative_difference": round(float(difference.norm() / reference.norm()), 5),
            "same_argmax": float((values.argmax(-1) == reference.argmax(-1)).float().mean()),
        }
    return figures


def int4_figures(model_dir: Path, bench, wanted: set[str], bound: float | None, tiny: bool, report) -> None:
    """Report the int4 figures `wanted` asks for (`decode4i`, `serve4i`) through the bench's `report`."""
    from glmcore.adapters import model_compute_dtype
    from glmcore.bench import SOURCE, decoding, peak_gib, reset_peak, serving
    from glmcore.models.loading import load_model
    from glmcore.serve.batching import kv_bytes_per_token

    if "decode4i" in wanted:
        report("four_bit_numerics", **four_bit_numerics(model_dir, bench.special_ids, SOURCE + 2))
    reset_peak()
    model = load_model(model_dir, quantization_bit=4, four_bit="int4")
    weight_bytes = stored_bytes(model)
    if "decode4i" in wanted:
        rate = decoding(model, bench.special_ids, 1, SOURCE + 2, 128 if not tiny else 8)
        extra = {}
        if bound:
            extra = {
                "bound_tokens_per_s": round(bound / weight_bytes, 1),
                "share_of_bound": round(rate * weight_bytes / bound, 3),
            }
        report(
            "decode",
            bits=4,
            four_bit="int4",
            batch=1,
            prompt=SOURCE + 2,
            tokens_per_s=round(rate, 1),
            weights_GB=round(weight_bytes / 1e9, 2),
            graph_error=decoding.graph_error,
            step_ms=decoding.step_ms,
            peak_GiB=peak_gib(),
            **extra,
        )
    if "serve4i" in wanted:
        new_tokens = 128 if not tiny else 16
        cache_bytes_per_row = (SOURCE + 2 + new_tokens / 2) * kv_bytes_per_token(
            model, model_compute_dtype(model)
        )
        for figures in serving(model, bench.special_ids, 4, SOURCE + 2, new_tokens, bound):
            if bound:  # serving() counts int4 weights at their 16-bit shape: the bound from what they hold
                clients = figures["clients"]
                limit = clients * bound / (weight_bytes + clients * cache_bytes_per_row)
                figures["weights_plus_cache_bound_tokens_per_s"] = round(limit, 1)
                figures["share_of_bound"] = round(figures["output_tokens_per_s"] / limit, 3)
            report("serve", four_bit="int4", **figures)
    del model
    reset_peak()
