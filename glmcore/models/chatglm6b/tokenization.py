"""The ChatGLM-6B tokenizer: SentencePiece (`ice_text.model`) with GLM's whitespace and newline pieces.

Before SentencePiece sees a text, `\\n` becomes `<n>`, `\\t` becomes `<|tab|>` and each run of 2 to 80
spaces becomes `<|blank_N|>`; decoding reverses it. `encode(text)` appends `[gMASK] <sop>` as the
published tokenizer does. Every special id is read from the SentencePiece model, never assumed.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import sentencepiece
from transformers import PreTrainedTokenizer

MAX_BLANK_LENGTH = 80
TAB_PIECE = "<|tab|>"
NEWLINE_PIECE = "<n>"
BLANK_PIECE = re.compile(r"<\|blank_(\d+)\|>")
BLANK_LENGTHS = frozenset(str(length) for length in range(2, MAX_BLANK_LENGTH + 1))
SPACE_RUN = re.compile(" {2," + str(MAX_BLANK_LENGTH) + "}")


def encode_whitespace(text: str) -> str:
    """Replace newlines, tabs and runs of spaces by the pieces GLM was trained with.

    Runs longer than 80 are split greedily from the left (80, then the rest), as the published
    replacement of the longest runs first does.
    """
    text = text.replace("\n", NEWLINE_PIECE).replace("\t", TAB_PIECE)
    return SPACE_RUN.sub(lambda run: f"<|blank_{len(run.group())}|>", text)


def decode_whitespace(text: str) -> str:
    """The inverse of encode_whitespace: only the pieces it makes (`<|blank_2|>` .. `<|blank_80|>`) become
    spaces; a literal `<|blank_1|>` or `<|blank_100|>` stays text, as in the published tokenizer."""
    text = text.replace(NEWLINE_PIECE, "\n").replace(TAB_PIECE, "\t")
    return BLANK_PIECE.sub(
        lambda piece: " " * int(piece.group(1)) if piece.group(1) in BLANK_LENGTHS else piece.group(), text
    )


class ChatGLMTokenizer(PreTrainedTokenizer):
    """A transformers tokenizer over `ice_text.model` that pads on the left, as generation wants.

    `num_image_tokens` (0 in the published v1.1 `tokenizer_config.json`) offsets every SentencePiece id,
    for the older checkpoints that reserved 20000 image ids in front of the text vocabulary.
    """

    vocab_files_names = {"vocab_file": "ice_text.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str,
        bos_token: str = "<sop>",
        eos_token: str = "<eop>",
        mask_token: str = "[MASK]",
        gmask_token: str = "[gMASK]",
        pad_token: str = "<pad>",
        unk_token: str = "<unk>",
        padding_side: str = "left",
        num_image_tokens: int = 0,
        **kwargs,
    ) -> None:
        self.vocab_file = vocab_file
        self.num_image_tokens = num_image_tokens
        self.sp_model = sentencepiece.SentencePieceProcessor(model_file=str(vocab_file))
        # transformers 5 turns every unknown `*_token` key of tokenizer_config.json (gmask_token, end_token)
        # into a special token that is split out of texts; the published tokenizer treats them as text.
        gmask_token = kwargs.pop("model_specific_special_tokens", {}).get("gmask_token", gmask_token)
        self.gmask_piece = gmask_token
        for published_only in ("end_token", "do_lower_case", "remove_space", "auto_map", "name_or_path"):
            kwargs.pop(published_only, None)
        # The published decode (transformers 4.27) removed spaces before punctuation: "Hello , world" -> "Hello, world".
        kwargs.setdefault("clean_up_tokenization_spaces", True)
        super().__init__(
            bos_token=bos_token,
            eos_token=eos_token,
            mask_token=mask_token,
            pad_token=pad_token,
            unk_token=unk_token,
            padding_side=padding_side,
            num_image_tokens=num_image_tokens,
            **kwargs,
        )

    @property
    def vocab_size(self) -> int:
        return self.num_image_tokens + self.sp_model.get_piece_size()

    @property
    def gmask_token_id(self) -> int:
        return self._convert_token_to_id(self.gmask_piece)

    def get_vocab(self) -> dict[str, int]:
        vocab = {self._convert_id_to_token(index): index for index in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp_model.encode(encode_whitespace(text), out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp_model.piece_to_id(token) + self.num_image_tokens

    def _convert_id_to_token(self, index: int) -> str:
        if index < self.num_image_tokens:
            return f"<image_{index}>"
        return self.sp_model.id_to_piece(index - self.num_image_tokens)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return decode_whitespace(self.sp_model.decode_pieces(tokens))

    def _decode(self, token_ids: int | list[int], **kwargs) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        token_ids = [token for token in token_ids if token != self.pad_token_id]
        return super()._decode(token_ids, **kwargs)

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """`a + [gMASK, <sop>]`, or `a + [gMASK, <sop>] + b + [<eop>]` for a pair."""
        ids = token_ids_0 + [self.gmask_token_id, self.bos_token_id]
        if token_ids_1 is not None:
            ids = ids + token_ids_1 + [self.eos_token_id]
        return ids

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        target = Path(save_directory) / name if os.path.isdir(save_directory) else Path(save_directory)
        if Path(self.vocab_file).resolve() != target.resolve():
            shutil.copyfile(self.vocab_file, target)
        return (str(target),)
