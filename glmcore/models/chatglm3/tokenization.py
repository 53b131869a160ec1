"""The ChatGLM3-6B tokenizer: ChatGLM2's, plus the role tokens and the published chat-building methods.

`<|system|> <|user|> <|assistant|> <|observation|>` follow the GLM specials; unlike ChatGLM2's, every
special decodes to its own text. A literal `<|user|>` in a text is a role token only with
`encode_special_tokens=True` (otherwise SentencePiece spells it out), as published.
`build_single_message(role, metadata, message)` and `build_chat_input(query, history, role)` keep the
published names and results, since users' own code calls them.
"""

from __future__ import annotations

import json
import re

from transformers import BatchEncoding

from glmcore.models.chatglm2.tokenization import GLM_SPECIAL_TOKENS, ChatGLM2Tokenizer

ROLES = ("system", "user", "assistant", "observation")
ROLE_TOKENS = tuple(f"<|{role}|>" for role in ROLES)
ROLE_TOKEN_PATTERN = re.compile("|".join(re.escape(token) for token in ROLE_TOKENS))


class ChatGLM3Tokenizer(ChatGLM2Tokenizer):
    special_token_names = (*GLM_SPECIAL_TOKENS, *ROLE_TOKENS)

    def __init__(self, vocab_file: str, encode_special_tokens: bool = False, **kwargs) -> None:
        self.encode_special_tokens = encode_special_tokens
        super().__init__(vocab_file, encode_special_tokens=encode_special_tokens, **kwargs)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        if not self.encode_special_tokens:
            return self.sp_model.encode(text, out_type=str)
        tokens, start = [], 0
        for match in ROLE_TOKEN_PATTERN.finditer(text):
            if start < match.start():
                tokens.extend(self.sp_model.encode(text[start : match.start()], out_type=str))
            tokens.append(match.group())
            start = match.end()
        if start < len(text):
            tokens.extend(self.sp_model.encode(text[start:], out_type=str))
        return tokens

    def _convert_id_to_token(self, index: int) -> str:
        if index in self.special_names:
            return self.special_names[index]
        return super()._convert_id_to_token(index)

    def build_single_message(self, role: str, metadata: str, message: str) -> list[int]:
        """`<|role|>` + metadata and a newline + the message, each encoded by SentencePiece alone."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        return [
            self.special_ids[f"<|{role}|>"],
            *self.sp_model.encode(f"{metadata}\n"),
            *self.sp_model.encode(message),
        ]

    def build_chat_input(
        self, query: str, history: list[dict] | None = None, role: str = "user"
    ) -> BatchEncoding:
        """`[gMASK] sop`, each history message (a system message's tools as indented JSON after its text),
        the query under `role`, and `<|assistant|>`: the published prompt, as a batch of one (tensors)."""
        input_ids = [self.special_ids["[gMASK]"], self.special_ids["sop"]]
        for item in history or []:
            content = item["content"]
            if item["role"] == "system" and "tools" in item:
                content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
            input_ids.extend(self.build_single_message(item["role"], item.get("metadata", ""), content))
        input_ids.extend(self.build_single_message(role, "", query))
        input_ids.append(self.special_ids["<|assistant|>"])
        return self.ids_batch(input_ids)
