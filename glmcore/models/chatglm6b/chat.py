"""ChatGLM-6B's chat prompt and its published answer clean-up, with the streaming counterpart of the clean-up.

The prompt is the bare query on the first turn, then `[Round i]\\n问：...\\n答：...` rounds (`build_prompt`),
encoded with `[gMASK] <sop>` appended. The clean-up strips the answer, fills in the training-time placeholder
and makes half-width punctuation full-width next to CJK characters; `settled_length` says how much of an
unfinished answer that clean-up can no longer change, so a stream shows only text that stays.
"""

from __future__ import annotations

import re

from glmcore.errors import GlmError
from glmcore.examples import build_prompt

TRAINING_TIME_PLACEHOLDER = "[[训练时间]]"
TRAINING_TIME = "2023年"
HALF_TO_FULL_WIDTH = {",": "，", "!": "！", ":": "：", ";": "；", "?": "？"}
CJK = "\u4e00-\u9fff"
_PUNCTUATION = re.escape("".join(HALF_TO_FULL_WIDTH))
_AFTER_CJK = re.compile(f"(?<=[{CJK}])[{_PUNCTUATION}]")
_BEFORE_CJK = re.compile(f"[{_PUNCTUATION}](?=[{CJK}])")
_INCOMPLETE_CHARACTER = "\ufffd"
"""What decoding gives for the bytes of a character whose last byte-fallback token has not arrived yet."""


def chat_prompt_ids(
    tokenizer, query: str, history: list[tuple[str, str]], system: str | None = None
) -> list[int]:
    """The published chat prompt's ids; ChatGLM-6B has no system prompt."""
    if system:
        raise GlmError("ChatGLM-6B has no system prompt; leave it empty for this model.")
    return tokenizer.encode(build_prompt(query, history))


def stop_token_ids(tokenizer) -> list[int]:
    """`<eop>` ends an answer."""
    return [tokenizer.eos_token_id]


def clean_response(text: str) -> str:
    """ChatGLM-6B's published answer clean-up: strip, fill in the training-time placeholder, and make half-width
    , ! : ; ? full-width where they touch a CJK character."""
    text = text.strip().replace(TRAINING_TIME_PLACEHOLDER, TRAINING_TIME)
    text = _AFTER_CJK.sub(lambda mark: HALF_TO_FULL_WIDTH[mark.group()], text)
    return _BEFORE_CJK.sub(lambda mark: HALF_TO_FULL_WIDTH[mark.group()], text)


def settled_length(cleaned: str) -> int:
    """How much of an unfinished cleaned answer can no longer change when more text arrives.

    Held back: trailing whitespace (the final strip may drop it), a trailing half-width punctuation mark (a CJK
    character after it makes it full-width), a trailing start of the training-time placeholder, and the
    replacement characters of a character whose bytes are still arriving.
    """
    end = len(cleaned.rstrip().rstrip(_INCOMPLETE_CHARACTER).rstrip())
    if end and cleaned[end - 1] in HALF_TO_FULL_WIDTH:
        end -= 1
    for size in range(len(TRAINING_TIME_PLACEHOLDER) - 1, 0, -1):
        if cleaned[:end].endswith(TRAINING_TIME_PLACEHOLDER[:size]):
            return end - size
    return end
