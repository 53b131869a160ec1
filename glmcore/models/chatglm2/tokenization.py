"""The ChatGLM2-6B tokenizer: SentencePiece `tokenizer.model`, GLM's specials numbered after its pieces.

As published: `[MASK] [gMASK] [sMASK] sop eop` take the ids right after the last SentencePiece piece and
are never produced from text; every encoding starts with `[gMASK] sop`; the pad id is SentencePiece's
unk id (0) and padding is on the left, with `position_ids` counting real tokens from 0; the specials,
`<s>`, `</s>` and `<unk>` decode to nothing. `build_prompt(query, history)` is the published prompt.

transformers' own special-token machinery is kept out of the way (the published tokenizer registers no
special token with it): no text is ever split on `</s>` or `<unk>`, and `skip_special_tokens` changes
nothing, exactly as with the published code.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import sentencepiece
from transformers import BatchEncoding, PreTrainedTokenizer
from transformers.utils import PaddingStrategy

GLM_SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
# Keys of the published tokenizer_config.json that only its own code reads.
PUBLISHED_ONLY_KEYS = ("remove_space", "do_lower_case", "auto_map", "name_or_path", "tokenizer_class")


class ChatGLM2Tokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask", "position_ids"]
    # The tokens after SentencePiece's pieces, in id order; ChatGLM3 appends its role tokens.
    special_token_names: tuple[str, ...] = GLM_SPECIAL_TOKENS

    def __init__(self, vocab_file: str, padding_side: str = "left", **kwargs) -> None:
        self.vocab_file = vocab_file
        self.sp_model = sentencepiece.SentencePieceProcessor(model_file=str(vocab_file))
        first = self.sp_model.vocab_size()
        self.special_ids = {name: first + index for index, name in enumerate(self.special_token_names)}
        self.special_names = {index: name for name, index in self.special_ids.items()}
        for key in PUBLISHED_ONLY_KEYS:
            kwargs.pop(key, None)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(padding_side=padding_side, **kwargs)

    # The published tokenizer answers these itself, from SentencePiece, and registers none of them.
    @property
    def unk_token(self) -> str:
        return "<unk>"

    @property
    def pad_token(self) -> str:
        return "<unk>"

    @property
    def eos_token(self) -> str:
        return "</s>"

    @property
    def unk_token_id(self) -> int:
        return self.sp_model.unk_id()

    @property
    def pad_token_id(self) -> int:
        return self.sp_model.unk_id()

    @property
    def eos_token_id(self) -> int:
        return self.sp_model.eos_id()

    @property
    def vocab_size(self) -> int:
        return self.sp_model.vocab_size() + len(self.special_token_names)

    def get_command(self, token: str) -> int:
        """The id of a special token by its published name (`[gMASK]`, `sop`, `<eos>`, `<|user|>`, ...)."""
        named = {
            "<bos>": self.sp_model.bos_id(),
            "<eos>": self.sp_model.eos_id(),
            "<pad>": self.sp_model.unk_id(),
        }
        if token in named:
            return named[token]
        if token not in self.special_ids:
            raise KeyError(f"{token} is not a special token of this tokenizer")
        return self.special_ids[token]

    def get_vocab(self) -> dict[str, int]:
        vocab = {self._convert_id_to_token(index): index for index in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        if token in self.special_ids:
            return self.special_ids[token]
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        silent = (self.sp_model.eos_id(), self.sp_model.bos_id(), self.sp_model.unk_id())
        if index in self.special_names or index in silent or not 0 <= index < self.sp_model.vocab_size():
            return ""
        return self.sp_model.id_to_piece(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.sp_model.decode_pieces(tokens)

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """`[gMASK] sop` + a, or `[gMASK] sop` + a + b + `</s>` for a pair."""
        ids = [self.special_ids["[gMASK]"], self.special_ids["sop"], *token_ids_0]
        if token_ids_1 is not None:
            ids = ids + token_ids_1 + [self.eos_token_id]
        return ids

    def build_prompt(self, query: str, history: list[tuple[str, str]] | None = None) -> str:
        """The published ChatGLM2 prompt: `[Round i]\\n\\n问：…\\n\\n答：…` per turn, rounds counted from 1."""
        prompt = ""
        for round_index, (old_query, response) in enumerate(history or [], start=1):
            prompt += f"[Round {round_index}]\n\n问：{old_query}\n\n答：{response}\n\n"
        return prompt + f"[Round {len(history or []) + 1}]\n\n问：{query}\n\n答："

    def ids_batch(self, input_ids: list[int], return_tensors: str | None = "pt") -> BatchEncoding:
        """One unpadded row with its attention mask and positions, as the published tokenizer returns it."""
        length = len(input_ids)
        return BatchEncoding(
            {
                "input_ids": [input_ids],
                "attention_mask": [[1] * length],
                "position_ids": [list(range(length))],
            },
            tensor_type=return_tensors,
        )

    def _pad(
        self,
        encoded_inputs,
        max_length: int | None = None,
        padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
    ) -> dict:
        """Left padding with pad id 0; attention mask 0 and position 0 on pads, positions 0.. on real tokens."""
        if (padding_side or self.padding_side) != "left":
            raise ValueError("ChatGLM2/3 tokenizers pad on the left only, as the published ones do.")
        ids = encoded_inputs[self.model_input_names[0]]
        length = len(ids)
        if padding_strategy == PaddingStrategy.LONGEST:
            max_length = length
        if max_length is not None and pad_to_multiple_of is not None and max_length % pad_to_multiple_of:
            max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of
        encoded_inputs.setdefault("attention_mask", [1] * length)
        encoded_inputs.setdefault("position_ids", list(range(length)))
        if padding_strategy != PaddingStrategy.DO_NOT_PAD and max_length is not None and length != max_length:
            difference = max_length - length
            encoded_inputs["attention_mask"] = [0] * difference + list(encoded_inputs["attention_mask"])
            encoded_inputs["position_ids"] = [0] * difference + list(encoded_inputs["position_ids"])
            encoded_inputs[self.model_input_names[0]] = [self.pad_token_id] * difference + list(ids)
        return encoded_inputs

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        target = Path(save_directory) / name if os.path.isdir(save_directory) else Path(save_directory)
        if Path(self.vocab_file).resolve() != target.resolve():
            shutil.copyfile(self.vocab_file, target)
        return (str(target),)
