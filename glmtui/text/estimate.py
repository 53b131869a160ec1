"""A run's VRAM estimate as text, as `glmtui train`, `glmtui sweep` and the config editor say it (whether it fits a
GPU now is `glmcore.estimate.GpuFit.sentence`)."""

from __future__ import annotations

from glmcore.units import format_gib


def estimate_line(total: int) -> str:
    return f"VRAM estimate: {format_gib(total)} GiB per GPU"


def sweep_need(need: int | None) -> str:
    """One run of a sweep's VRAM estimate per GPU, short: "6.1 GiB", or "VRAM unknown" when its model folder
    cannot be read."""
    return f"{format_gib(need)} GiB" if need is not None else "VRAM unknown"
