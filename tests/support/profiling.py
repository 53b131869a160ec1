"""Counting what a decoding step runs: the top-level aten operations `torch.profiler` records on the CPU."""

from __future__ import annotations

from torch.profiler import ProfilerActivity, profile

NO_KERNEL = """view _unsafe_view _reshape_alias reshape flatten unflatten t transpose permute select slice narrow unsqueeze
squeeze expand as_strided split split_with_sizes chunk unbind alias detach lift_fresh empty empty_strided to contiguous
result_type"""
"""Operations that only make views or allocate; `to` and `contiguous` count where they copy (a child computes)."""


def operations(step) -> list[str]:
    """The top-level aten operations one call of `step` runs that compute something (not views): on the GPU,
    each is about one kernel (`rms_norm` one fused kernel there, several operations on the CPU)."""
    no_kernel = {f"aten::{name}" for name in NO_KERNEL.split()}

    def computes(event) -> bool:
        return event.name not in no_kernel or any(computes(child) for child in event.cpu_children)

    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        step()
    return [event.name for event in profiled.events() if event.cpu_parent is None and computes(event)]
