"""A log whose lines, when wider than the pane, end in an ellipsis instead of being cut silently.

A cut with no mark changes meaning: "stopped at step 53" cut to "stopped at step 5", "lr 0.02" to "lr 0.0".
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.segment import Segment
from textual.strip import Strip
from textual.widgets import Log

ELLIPSIS = "…"


class MarkedLog(Log):
    """`Log`, with "…" in the last column of a line that goes on past it (and in the first, scrolled right)."""

    def _render_line(self, y: int, scroll_x: int, width: int) -> Strip:
        strip = super()._render_line(y, scroll_x, width)
        if y >= len(self._lines) or width < 2:
            return strip
        length = cell_len(self._process_line(self._lines[y]))
        cut_right = length > scroll_x + width
        cut_left = scroll_x > 0 and length > 0
        if not (cut_right or cut_left):
            return strip
        style = self.rich_style
        start, end = (1 if cut_left else 0), (width - 1 if cut_right else width)
        parts = [Strip([Segment(ELLIPSIS, style)])] if cut_left else []
        parts.append(strip.crop(start, end))
        if cut_right:
            parts.append(Strip([Segment(ELLIPSIS, style)]))
        return Strip.join(parts).apply_offsets(scroll_x, y)
