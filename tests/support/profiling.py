"""Counting what a decoding step runs: the top-level aten operations `torch.profiler` records on the CPU; and
the operations that would make a training step wait for the GPU."""

from __future__ import annotations

from torch.profiler import ProfilerActivity, profile

NO_KERNEL = """view _unsafe_view _reshape_alias reshape flatten unflatten t transpose permute select slice narrow unsqueeze
squeeze expand as_strided split split_with_sizes chunk unbind alias detach lift_fresh empty empty_strided to contiguous
result_type"""
"""Operations that only make views or allocate; `to` and `contiguous` count where they copy (a child computes)."""

READS_BACK = frozenset(
    {"aten::nonzero", "aten::masked_select", "aten::_local_scalar_dense", "aten::is_nonzero"}
)
"""Operations that read a tensor's values back to the host, which on a GPU waits for all the work queued before
them: a boolean mask's selection (nonzero, masked_select), .item() / int() / bool() (_local_scalar_dense)."""


def operations(step) -> list[str]:
    """The top-level aten operations one call of `step` runs that compute something (not views): on the GPU,
    each is about one kernel (`rms_norm` one fused kernel there, several operations on the CPU)."""
    no_kernel = {f"aten::{name}" for name in NO_KERNEL.split()}

    def computes(event) -> bool:
        return event.name not in no_kernel or any(computes(child) for child in event.cpu_children)

    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        step()
    return [event.name for event in profiled.events() if event.cpu_parent is None and computes(event)]
