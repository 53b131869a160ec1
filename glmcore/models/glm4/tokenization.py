"""The glm-4-9b-chat tokenizer: tiktoken byte-level BPE over `tokenizer.model`, as published.

`tokenizer.model` is a ranks file ("base64-bytes rank" per line), read as the published
tokenization_chatglm.py reads it, with its pre-tokenization pattern and no specials of tiktoken's own. The
specials (`<|endoftext|> [MASK] [gMASK] [sMASK] <sop> <eop> <|system|> <|user|> <|assistant|> <|observation|>`
and the image/video markers) are transformers' added tokens from tokenizer_config.json, so a literal
`<|user|>` in a text is the role token, as with the published code. Every encoding starts with `[gMASK] <sop>`;
padding is on the left with `position_ids` counting real tokens from 0.

Decoding reproduces the published results under the transformers it was written for (4.44): the text between
specials decoded from its bytes (invalid UTF-8 replaced), each special its own text, and the parts joined by one
space; an id that is neither a rank nor a special decodes as the published code does (its bytes so far again).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import tiktoken
from transformers import PreTrainedTokenizer

from glmcore.errors import GlmError
from glmcore.models.chatglm2.tokenization import ChatGLM2Tokenizer
from glmcore.models.glm4.published import CHAT_TEMPLATE, PRETOKENIZE_PATTERN

ROLES = ("system", "user", "assistant", "observation")


class TokenizerFileError(GlmError):
    pass


def read_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """The ranks of a tiktoken ranks file; a line that is not "base64 rank" is refused with its number."""
    ranks = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as error:
                raise TokenizerFileError(
                    f"{path}:{number} is not a tiktoken rank line ('base64-bytes rank'); is this glm-4's "
                    "tokenizer.model? Download the model again."
                ) from error
    return ranks


class ChatGLM4Tokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask", "position_ids"]

    def __init__(self, vocab_file: str, padding_side: str = "left", **kwargs) -> None:
        self.vocab_file = vocab_file
        self.mergeable_ranks = read_ranks(vocab_file)
        self.encoding = tiktoken.Encoding(
            name="glm4", pat_str=PRETOKENIZE_PATTERN, mergeable_ranks=self.mergeable_ranks, special_tokens={}
        )
        self.decoder = {rank: token for token, rank in self.mergeable_ranks.items()}
        for key in ("auto_map", "remove_space", "do_lower_case", "tokenizer_class"):
            kwargs.pop(key, None)  # read only by the published code
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        kwargs.setdefault("chat_template", CHAT_TEMPLATE)
        super().__init__(padding_side=padding_side, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)

    def get_vocab(self) -> dict:
        vocab = {self._convert_id_to_token(index): index for index in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[bytes]:
        return [self.decoder[rank] for rank in self.encoding.encode(text, disallowed_special=())]

    def _convert_token_to_id(self, token: bytes) -> int:
        return self.mergeable_ranks[token]

    def _convert_id_to_token(self, index: int) -> bytes | str:
        return self.decoder.get(index, "")

    def convert_tokens_to_string(self, tokens: list[bytes | str]) -> str:
        """The published join: bytes decoded together; a str token (an unknown id's "") adds the bytes so far
        once more and is itself dropped (published behaviour, kept so decodes equal the published ones)."""
        text, pending = "", b""
        for token in tokens:
            if isinstance(token, str):
                if pending:
                    text += pending.decode("utf-8", errors="replace")
            else:
                pending += token
        if pending:
            text += pending.decode("utf-8", errors="replace")
        return text

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        spaces_between_special_tokens: bool = True,
        **kwargs,
    ) -> str:
        """transformers 4.44's decode, which the published tokenizer relies on: the ranks between specials
        decoded together, each special as its own part, the parts joined by a space."""
        ids = [token_ids] if isinstance(token_ids, int) else [int(index) for index in token_ids]
        special_ids = set(self.all_special_ids)
        parts: list[str] = []
        pending: list[bytes | str] = []
        for index in ids:
            if skip_special_tokens and index in special_ids:
                continue
            added = self._added_tokens_decoder.get(index)
            if added is None:
                pending.append(self._convert_id_to_token(index))
                continue
            if pending and (text := self.convert_tokens_to_string(pending)):
                parts.append(text)
            pending = []
            parts.append(added.content)
        if pending:
            parts.append(self.convert_tokens_to_string(pending))
        return (" " if spaces_between_special_tokens else "").join(parts)

    def get_command(self, token: str) -> int:
        """The id of a special token by its published name (`[gMASK]`, `<|user|>`, ...)."""
        index = self.added_tokens_encoder.get(token)
        if index is None:
            raise KeyError(f"{token} is not a special token of this tokenizer")
        return index

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """`[gMASK] <sop>` + a, or `[gMASK] <sop>` + a + b + `<|endoftext|>` for a pair."""
        ids = [self.get_command("[gMASK]"), self.get_command("<sop>"), *token_ids_0]
        if token_ids_1 is not None:
            ids = ids + token_ids_1 + [self.eos_token_id]
        return ids

    def build_single_message(self, role: str, metadata: str, message: str) -> list[int]:
        """`<|role|>`, then metadata and a newline, then the message, each part encoded alone (the published
        method: no special token is read from the texts)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        return [
            self.get_command(f"<|{role}|>"),
            *self.encoding.encode(f"{metadata}\n", disallowed_special=()),
            *self.encoding.encode(message, disallowed_special=()),
        ]

    def chat_ids(self, messages: list[dict], *, add_generation_prompt: bool = False) -> list[int]:
        """The published chat template's ids for `messages` (OpenAI-style dicts; `tools` on a message,
        `metadata` on a tool call)."""
        return list(
            self.apply_chat_template(
                messages, tokenize=True, return_dict=False, add_generation_prompt=add_generation_prompt
            )
        )

    _pad = ChatGLM2Tokenizer._pad

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        target = Path(save_directory) / name if os.path.isdir(save_directory) else Path(save_directory)
        if Path(self.vocab_file).resolve() != target.resolve():
            shutil.copyfile(self.vocab_file, target)
        return (str(target),)
