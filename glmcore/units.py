"""Byte units and how sizes are written, for the engine and both front ends (it imports nothing)."""

from __future__ import annotations

MIB = 2**20
GIB = 2**30


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KiB': sizes in messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_gib(count: float) -> str:
    """12_884_901_888 -> '12.0': GPU memory, always in GiB with one decimal (the unit written by the caller)."""
    return f"{count / GIB:.1f}"
