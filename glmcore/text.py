"""Text from users, files and servers that cannot go everywhere other text goes.

A NUL ends a string in C, so it cannot be in a file name, an argument or an environment variable; a newline or an
escape sequence garbles a log line or a terminal; a lone surrogate (possible in JSON, never in TOML) cannot be
written as UTF-8. Names and paths are refused with such characters, and values merely passed on are cleaned.
"""

from __future__ import annotations

import unicodedata

CONTROL_CATEGORIES = ("Cc", "Cs")
"""C0 and C1 controls (NUL, tab, newline, escape, DEL…) and lone surrogates."""


def control_character(text: str) -> str | None:
    """The first control character in ``text`` as U+XXXX, or None when it holds none."""
    found = next(
        (character for character in text if unicodedata.category(character) in CONTROL_CATEGORIES), None
    )
    return None if found is None else f"U+{ord(found):04X}"


def without_unwritable(text: str) -> str:
    """``text`` with each NUL and lone surrogate replaced by U+FFFD, so an environment variable or UTF-8 file can
    carry it."""
    return "".join(
        "\ufffd" if character == "\0" or unicodedata.category(character) == "Cs" else character
        for character in text
    )
