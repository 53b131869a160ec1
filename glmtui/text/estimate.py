"""A run's VRAM estimate as text, as `glmtui train`, `glmtui sweep` and the config editor say it: its size, and
whether it fits each chosen GPU now (`glmcore.estimate.gpu_fits`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from glmcore.units import format_bytes, format_gib

if TYPE_CHECKING:
    from glmcore.estimate import ContextCache, GpuFit

CPU_RUN = "Trains on the CPU (no GPU chosen)."


def estimate_line(total: int) -> str:
    return f"VRAM estimate: {format_gib(total)} GiB per GPU"


def fit_sentence(fit: GpuFit) -> str:
    """Whether the run fits one GPU's free memory now, in one sentence."""
    if fit.free_bytes is None:
        return f"GPU {fit.gpu}: free memory unknown."
    free = f"GPU {fit.gpu}: {format_gib(fit.free_bytes)} GiB free"
    if fit.fits:
        return f"{free}; the run fits (it needs {format_gib(fit.need_bytes)} GiB)."
    return f"{free}, less than the {format_gib(fit.need_bytes)} GiB the run needs: it may run out of memory."


def sweep_need(need: int | None) -> str:
    """One run of a sweep's VRAM estimate per GPU, short: "6.1 GiB", or "VRAM unknown" when its model folder
    cannot be read."""
    return f"{format_gib(need)} GiB" if need is not None else "VRAM unknown"


def context_line(cache: ContextCache) -> str:
    """The context chat and serving assume, and what one row of its KV cache takes."""
    grows = (
        f", grown as a conversation needs up to {cache.positions:,}"
        if cache.positions > cache.context
        else ""
    )
    return f"Context: {cache.context:,} tokens, KV cache {format_bytes(cache.row_bytes)} per row (16-bit){grows}."
