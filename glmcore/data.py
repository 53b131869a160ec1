"""Datasets in the AdvertiseGen form or as conversations, and the examples the model's family builds from them.

Files are JSON lines, a JSON array, or CSV (UTF-8, a byte-order mark allowed). A row is either

- columns: a prompt column, a response column and optionally a history column (a list of [query, response]
  pairs), all text. Rows with an empty prompt or response are skipped and counted, as the published script
  skips them; or
- a conversation (JSON only): ChatGLM3's fine-tuning form, `{"conversations": [{"role": ..., "content": ...},
  ...], "tools": [...]}` with the roles system, user, assistant, observation and tool (a call with `name`,
  `parameters` and its `observation`), or OpenAI's chat form, `{"messages": [...]}`, whose assistant
  `tool_calls` and `tool` results are read as ChatGLM3's tool messages (`chat_messages`).

Anything else wrong stops the load with one sentence naming the file and line.

Training rows, evaluation prompts and references are built exactly as each family's published scripts build
them, by its `family_impl` (ChatGLM-6B's: glmcore/models/chatglm6b/data.py), from the examples of
glmcore/examples.py; the functions here find the family from the tokenizer. `conversation_features` is the one way a conversation becomes a training row.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from glmcore.examples import IGNORE_INDEX, DataError, Example, conversation_example, turns_only_refusal
from glmcore.examples import build_prompt as build_prompt  # re-exported: data's public names stay

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv")
CONVERSATION_KEYS = ("conversations", "messages")
"""The key of a conversation row: ChatGLM3's fine-tuning form, or OpenAI's chat form."""
CHAT_ROLES = ("system", "user", "assistant", "observation", "tool")
BYTE_ORDER_MARK = "\ufeff"
SPREAD_OBJECT_LOOKAHEAD = 1 << 20
"""Characters read past a JSON line that does not close, to tell an object spread over lines from a cut line."""


@dataclass(frozen=True)
class Columns:
    prompt: str = "content"
    response: str = "summary"
    history: str | None = None


@dataclass
class LoadedData:
    path: Path
    examples: list[Example]
    skipped_empty: int = 0
    columns_found: list[str] = field(default_factory=list)


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, or DataError at the first line that is not UTF-8."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}:{number}: byte {error.start + 1} of the line is not UTF-8 ({raw[error.start]:#04x}); "
                    "save the file as UTF-8."
                ) from None
            # Excel and Notepad start UTF-8 files with a byte-order mark; it is not part of the first value.
            yield number, line.removeprefix(BYTE_ORDER_MARK) if number == 1 else line


def _json_type(value: object) -> str:
    """How a JSON value reads to a user: "a number (123)", "a list", ..."""
    if isinstance(value, bool):
        return f"true/false ({json.dumps(value)})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "text" if isinstance(value, str) else "null"


def _too_deep(where: str) -> DataError:
    return DataError(
        f"{where}: the JSON there is nested deeper than Python's JSON reader allows (RecursionError); "
        "a row is one object of text values, so fix or remove it."
    )


def _nesting_line(text: str) -> int:
    """The line where `text`'s brackets nest deepest first (for a JSON array too deep to read)."""
    depth = deepest = 0
    line = deepest_line = 1
    in_string = escaped = False
    for char in text:
        if in_string:
            in_string = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, deepest_line = depth, line
        elif char in "]}":
            depth -= 1
        if char == "\n":
            line += 1
    return deepest_line


def _lone_surrogate(value: object) -> str | None:
    """The first UTF-16 surrogate with no partner in any text of `value` (`"\\ud800"` in JSON), as its escape."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as error:
                return f"\\u{ord(item[error.start]):04x}"
        elif isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            pending += item
    return None


def _checked_record(where: str, line: str, record: object) -> object:
    """`record`, or DataError if it holds text that is not Unicode (a lone surrogate), which no tokenizer takes."""
    # A lone surrogate can only come from a \u escape: the bytes were checked as UTF-8.
    if "\\u" in line and (surrogate := _lone_surrogate(record)) is not None:
        raise DataError(
            f"{where}: {surrogate} is half of a UTF-16 surrogate pair with no other half, so it is not text; "
            "fix that escape or remove it."
        )
    return record


def _spread_object_lines(first: str, following: Iterator[tuple[int, str]]) -> int:
    """How many lines past `first` a JSON object starting on it runs on (0 when none closes within reach)."""
    text = first
    for _, line in following:
        text += line
        if len(text) > SPREAD_OBJECT_LOOKAHEAD:
            break
    text = text.lstrip()
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except (json.JSONDecodeError, RecursionError):
        return 0
    return text.count("\n", 0, end) if isinstance(value, dict) else 0


def _json_lines_records(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, object]]:
    for number, line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(stripped)
        except RecursionError:
            raise _too_deep(where) from None
        except json.JSONDecodeError as error:
            if error.pos >= len(stripped) and (spread := _spread_object_lines(line, lines)):
                raise DataError(
                    f"{where}: one JSON object is spread over lines {number}-{number + spread}, but each line "
                    "of a .json/.jsonl file must hold a whole row; write one object per line (JSON lines) or "
                    "put the objects in a JSON array [...]."
                ) from None
            raise DataError(
                f"{where}: not valid JSON ({error.msg} at column {error.colno}); fix or remove that line."
            ) from None
        yield number, _checked_record(where, line, record)


def _json_array_records(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """The items of a JSON array file, each with the line it starts on."""
    try:
        items = json.loads(text)
    except RecursionError:
        raise _too_deep(f"{path}:{_nesting_line(text)}") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg}); fix the file.") from None
    if not isinstance(items, list):
        raise DataError(f"{path}:1: the file holds {_json_type(items)}, not a list of rows; use JSON lines.")
    # Walk the text again only to know where each item starts, for the messages about rows.
    decoder = json.JSONDecoder()
    position, line = text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    for item in items:
        start = position
        while text[start] in " \t\r\n,":
            start += 1
        line += text.count("\n", position, start)
        _, position = decoder.raw_decode(text, start)
        yield line, _checked_record(f"{path}:{line}", text[start:position], item)
        line += text.count("\n", start, position)


def _csv_records(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, object]]:
    """CSV rows as dicts keyed by the header; a row whose field count differs from the header's is an error."""
    numbered = iter(lines)
    current = [0]

    def text_lines() -> Iterator[str]:
        for number, line in numbered:
            current[0] = number
            yield line

    reader = csv.reader(text_lines(), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{current[0]}: {len(row)} fields where the header has {len(header)}; "
                    "put quotes around values that hold commas."
                )
            yield current[0], dict(zip(header, row, strict=True))
    except csv.Error as error:
        raise DataError(
            f"{path}:{current[0]}: not valid CSV ({error}); check the quotes on that line."
        ) from None


def read_records(path: str | Path) -> Iterator[tuple[int, object]]:
    """(line number, record) for every row of a .json, .jsonl or .csv file; DataError with file:line otherwise.

    Records are read with the standard json and csv parsers rather than `datasets`, whose errors name neither
    the file's line nor the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"The data file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: use a .json, .jsonl or .csv file (AdvertiseGen ships JSON lines).")
    lines = _decoded_lines(path)
    if suffix == ".csv":
        yield from _csv_records(path, lines)
        return
    first = next(((number, line) for number, line in lines if line.strip()), None)
    if first is None:
        return
    if first[1].lstrip().startswith("["):
        text = "\n" * (first[0] - 1) + first[1] + "".join(line for _, line in lines)
        yield from _json_array_records(path, text)
        return
    yield from _json_lines_records(path, itertools.chain([first], lines))


def _text(value: object, column: str, where: str) -> str:
    """A prompt or response cell as text ("" for null); DataError for numbers, lists and objects."""
    if value is None or isinstance(value, str):
        return value or ""
    raise DataError(
        f"{where}: {column!r} holds {_json_type(value)}, not text; write it as a JSON string (in quotes)."
    )


def _history_pairs(value: object, column: str, where: str) -> tuple[tuple[str, str], ...]:
    """A history cell ([[query, response], ...], or that list as JSON text in a CSV) as pairs of text."""
    problem = DataError(
        f'{where}: {column!r} must be a list of [query, response] pairs of text, like [["q", "a"]].'
    )
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except (json.JSONDecodeError, RecursionError):
            raise problem from None
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)
        for pair in value
    ):
        raise problem
    return tuple((query, response) for query, response in value)


MESSAGE_SHAPE = '{"role": "user", "content": "..."}'
TOOL_MESSAGE_SHAPE = '{"role": "tool", "name": "...", "parameters": {...}, "observation": ...}'


def _loss_flag(message: dict, where: str) -> dict:
    """ChatGLM3's `loss` (or OpenAI's `weight`, 0 or 1) of a message, as `{"loss": bool}`; {} when unset."""
    for key in ("loss", "weight"):
        if key in message:
            value = message[key]
            if not isinstance(value, bool) and value not in (0, 1):
                raise DataError(
                    f"{where}: {key!r} holds {_json_type(value)}; write true or false (or 1 or 0)."
                )
            return {"loss": bool(value)}
    return {}


def _tool_call(message: dict, where: str) -> dict:
    """ChatGLM3's tool message checked: a text `name` and an object of `parameters` (its observation: any)."""
    name, parameters = message.get("name"), message.get("parameters")
    if not isinstance(name, str) or not name or not isinstance(parameters, dict):
        raise DataError(
            f"{where}: a tool message needs a text 'name' and an object 'parameters', like {TOOL_MESSAGE_SHAPE}."
        )
    return {"role": "tool", "name": name, "parameters": parameters, "observation": message.get("observation")}


def _openai_tool_calls(calls: object, where: str) -> list[dict]:
    """An OpenAI assistant message's `tool_calls` as ChatGLM3 tool messages (observations filled in later)."""
    shape = '[{"type": "function", "function": {"name": "...", "arguments": "{...}"}}]'
    if not isinstance(calls, list):
        raise DataError(f"{where}: 'tool_calls' holds {_json_type(calls)}; write it as {shape}.")
    messages = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments", {}) if isinstance(function, dict) else None
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except (json.JSONDecodeError, RecursionError):
                arguments = None
        if not isinstance(name, str) or not name or not isinstance(arguments, dict):
            raise DataError(
                f"{where}: each tool call needs a function name and its arguments as a JSON object; write {shape}."
            )
        messages.append({"role": "tool", "name": name, "parameters": arguments, "observation": None})
    return messages


def chat_messages(messages: object, where: str = "the conversation") -> list[dict]:
    """`messages` in ChatGLM3's fine-tuning form, checked; DataError (starting with `where`) otherwise.

    That form is what ChatGLM3's finetune_demo reads: system, user, assistant and observation messages with text
    `content`, and tool messages (a call: `name`, `parameters`, and its `observation`); any message may carry a
    `loss` flag. OpenAI's chat form is taken too: an assistant message's `tool_calls` become tool messages
    (its text, if any, first), each following `tool` message's content is the observation of the next call
    still without one, and `weight` is `loss`."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where} must be a list of messages, each like {MESSAGE_SHAPE}.")
    result: list[dict] = []
    awaiting: list[dict] = []  # OpenAI tool calls whose `tool` result has not come yet
    for number, message in enumerate(messages, start=1):
        at = f"{where}, message {number}"
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str):
            raise DataError(
                f"{at} is {_json_type(message)} without a text 'role'; write it as {MESSAGE_SHAPE}."
            )
        if role not in CHAT_ROLES:
            raise DataError(f"{at} has the role {role!r}; use one of {', '.join(CHAT_ROLES)}.")
        loss = _loss_flag(message, at)
        if role == "tool" and ("parameters" in message or "name" in message and "content" not in message):
            result.append({**_tool_call(message, at), **loss})
            continue
        if role == "tool":
            if not awaiting:
                raise DataError(
                    f"{at} is a tool result with no tool call before it; put an assistant message with "
                    f"'tool_calls' before it, or write the call and its result as {TOOL_MESSAGE_SHAPE}."
                )
            awaiting.pop(0)["observation"] = message.get("content")
            continue
        calls = message.get("tool_calls") if role == "assistant" else None
        content = message.get("content")
        if calls is None or content:
            if not isinstance(content, str):
                raise DataError(
                    f"{at}: 'content' holds {_json_type(content)}, not text; write it as {MESSAGE_SHAPE}."
                )
            result.append({"role": role, "content": content, **loss, **_template_keys(message, at)})
        if calls is not None:
            called = [{**call, **loss} for call in _openai_tool_calls(calls, at)]
            result += called
            awaiting += called
    return result


def _template_keys(message: dict, where: str) -> dict:
    """A message's `metadata` (text) and a system message's `tools` (a list), which GLM-4's chat template
    writes; the other families' rows ignore them."""
    keys = {}
    if "metadata" in message:
        if not isinstance(message["metadata"], str):
            raise DataError(f"{where}: 'metadata' holds {_json_type(message['metadata'])}; write it as text.")
        keys["metadata"] = message["metadata"]
    if message.get("role") == "system" and "tools" in message:
        if not isinstance(message["tools"], list):
            raise DataError(
                f"{where}: 'tools' holds {_json_type(message['tools'])}; write it as a list of tools."
            )
        keys["tools"] = message["tools"]
    return keys


def _conversation_example(record: dict, where: str, family) -> Example:
    """A conversation row as an Example; DataError when `family` (if given) takes only user/assistant turns
    and the conversation has more."""
    key = next(key for key in CONVERSATION_KEYS if key in record)
    example = conversation_example(
        chat_messages(record[key], f"{where}: {key!r}"), record.get("tools"), where
    )
    if family is not None and not family.conversations and not example.turns_only:
        raise DataError(f"{where}: {turns_only_refusal(family.title)}")
    return example


def load_examples(path: str | Path, columns: Columns = Columns(), *, family=None) -> LoadedData:
    """Read a dataset file into examples, or say exactly what is wrong with it and on which line.

    With the model's `family` (a ModelFamily), a conversation it cannot be trained on is refused here too."""
    path = Path(path)
    wanted = [columns.prompt, columns.response] + ([columns.history] if columns.history else [])
    examples: list[Example] = []
    found: dict[str, None] = {}
    skipped = rows = conversations = 0
    for number, record in read_records(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise DataError(
                f"{where}: {_json_type(record)} where a row was expected; each row is one JSON object like "
                f'{{"{columns.prompt}": "...", "{columns.response}": "..."}}.'
            )
        rows += 1
        if columns.prompt not in record and any(key in record for key in CONVERSATION_KEYS):
            examples.append(_conversation_example(record, where, family))
            conversations += 1
            continue
        found.update(dict.fromkeys(record))
        query = _text(record.get(columns.prompt), columns.prompt, where)
        response = _text(record.get(columns.response), columns.response, where)
        history = (
            _history_pairs(record.get(columns.history), columns.history, where) if columns.history else ()
        )
        if not query or not response:
            skipped += 1
            continue
        examples.append(Example(query, response, history))
    if not rows:
        raise DataError(
            f"{path} is empty; it needs one row per example with {columns.prompt!r} and {columns.response!r}."
        )
    missing = [name for name in wanted if name not in found]
    if missing and conversations < rows:
        raise DataError(
            f"{path} has no column {', '.join(repr(name) for name in missing)}; its columns are: "
            f"{', '.join(found) or 'none'}. Set prompt_column/response_column to the ones it has."
        )
    if not examples:
        raise DataError(f"{path} holds no usable rows ({skipped} had an empty prompt or response).")
    return LoadedData(path, examples, skipped, list(found))


# --- examples as the model's family builds them (glmcore/models/<family>/family_impl.py) -------------


def _family(tokenizer):
    from glmcore.models import family_of

    return family_of(tokenizer).implementation()


def conversation_features(
    tokenizer, messages: list[dict], *, max_input_length: int, max_output_length: int, tools: object = None
) -> dict[str, list[int]]:
    """input_ids and labels of one conversation (ChatGLM3's `conversations` or OpenAI's `messages`, with the
    row's `tools`), as the tokenizer's family's published fine-tuning code builds them.

    ChatGLM3-6B (finetune_demo): every assistant message and tool call is learned, the row cut to
    max_input_length + max_output_length + 1 tokens and not padded. ChatGLM-6B and ChatGLM2-6B, whose published
    code knows a query, its answer and earlier turns, take user/assistant turns only (their padded rows)."""
    return _family(tokenizer).conversation_features(
        tokenizer, chat_messages(messages), tools, max_input_length, max_output_length
    )


@dataclass(frozen=True)
class PreviewToken:
    """One token of a row as training builds it: its text, and whether the loss is computed on it."""

    text: str
    learned: bool


def example_conversation(example: Example) -> list[dict]:
    """An example as a conversation: its own messages, or its history turns, its query and its response."""
    if example.messages:
        return list(example.messages)
    turns = [*example.history, (example.query, example.response)]
    return [
        {"role": role, "content": text}
        for query, response in turns
        for role, text in (("user", query), ("assistant", response))
    ]


def preview_tokens(
    tokenizer, example: Example, max_source_length: int, max_target_length: int
) -> list[PreviewToken]:
    """`conversation_features` of the example as tokens with their learned flags (a label other than
    IGNORE_INDEX), its trailing padding left out: what the Data screen colours.

    A byte-level tokenizer's pieces (GLM-4's tiktoken; the byte-level BPE of a tokenizer.json, whose pieces
    spell bytes as GPT-2's printable characters) are bytes, and a character may span several: those are shown
    joined, as the character."""
    features = conversation_features(
        tokenizer,
        example_conversation(example),
        max_input_length=max_source_length,
        max_output_length=max_target_length,
        tools=example.tools,
    )
    ids, labels = features["input_ids"], features["labels"]
    while ids and ids[-1] == tokenizer.pad_token_id and labels[-1] == IGNORE_INDEX:
        ids, labels = ids[:-1], labels[:-1]
    tokens: list[PreviewToken] = []
    pending, pending_learned = b"", False
    as_bytes = byte_level_pieces(tokenizer)
    for piece, label in zip(tokenizer.convert_ids_to_tokens(ids), labels, strict=True):
        learned = label != IGNORE_INDEX
        piece = as_bytes(piece)
        if pending and (not isinstance(piece, bytes) or learned != pending_learned):
            tokens.append(PreviewToken(pending.decode("utf-8", "backslashreplace"), pending_learned))
            pending = b""
        if not isinstance(piece, bytes):
            tokens.append(PreviewToken(piece, learned))
            continue
        pending, pending_learned = pending + piece, learned
        try:
            text = pending.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a character's first bytes: wait for the rest
        tokens.append(PreviewToken(text, learned))
        pending = b""
    if pending:
        tokens.append(PreviewToken(pending.decode("utf-8", "backslashreplace"), pending_learned))
    return tokens


def byte_level_pieces(tokenizer) -> Callable[[str | bytes], str | bytes]:
    """How to read a token piece of `tokenizer` as the bytes it stands for: a byte-level BPE's pieces (a
    tokenizer.json whose decoder is ByteLevel) are its printable stand-ins for bytes; other pieces are text
    (bytes ones, tiktoken's, stay bytes)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.decoder).__name__ != "ByteLevel":
        return lambda piece: piece
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {character: byte for byte, character in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())

    def as_bytes(piece: str | bytes) -> str | bytes:
        if isinstance(piece, bytes) or piece in special or not all(c in byte_of for c in piece):
            return piece
        return bytes(byte_of[character] for character in piece)

    return as_bytes


def training_features(
    tokenizer, example: Example, max_source_length: int, max_target_length: int
) -> dict[str, list[int]]:
    """input_ids and labels of one training row, right-padded to source + target length, as the tokenizer's
    family's published fine-tuning script builds them."""
    return _family(tokenizer).training_features(tokenizer, example, max_source_length, max_target_length)


def evaluation_prompt_ids(tokenizer, example: Example, max_source_length: int) -> list[int]:
    """The prompt the family's published evaluation generates from."""
    return _family(tokenizer).evaluation_prompt_ids(tokenizer, example, max_source_length)


def reference_text(tokenizer, response: str, max_target_length: int) -> str:
    """The label as the family's published evaluation scores it."""
    return _family(tokenizer).reference_text(tokenizer, response, max_target_length)


def training_dataset(
    tokenizer, examples: list[Example], max_source_length: int, max_target_length: int
) -> list[dict]:
    """Training rows (input_ids, labels): a list is all the Trainer's data loader needs."""
    return [
        training_features(tokenizer, example, max_source_length, max_target_length) for example in examples
    ]


class TrainingCollator:
    """Stacks fixed-length rows, dropping the pad columns every row of the batch shares, and counts the labels
    the loss reads (shifted by one, not ignored) while they are on the host: the model's `label_count`
    (`glmcore.models.head.labelled_positions_loss`).

    Trailing pads are labelled -100 and come after each row's last real token, which never attends to
    them, so trimming them changes no loss or gradient and saves the compute the published code spends.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        input_ids = torch.tensor([row["input_ids"] for row in rows])
        labels = torch.tensor([row["labels"] for row in rows])
        real = (labels != IGNORE_INDEX) | (input_ids != self.pad_token_id)
        length = int(real.nonzero()[:, 1].max()) + 1 if real.any() else input_ids.shape[1]
        labels = labels[:, :length]
        return {
            "input_ids": input_ids[:, :length],
            "labels": labels,
            "label_count": int((labels[:, 1:] != IGNORE_INDEX).sum()),
        }


# --- statistics to choose lengths from --------------------------------------------------------------


@dataclass(frozen=True)
class LengthStats:
    column: str
    p50: int
    p90: int
    p99: int
    max: int
    limit: int
    truncated_share: float


def _percentile(sorted_values: list[int], share: float) -> int:
    index = min(len(sorted_values) - 1, round(share * (len(sorted_values) - 1)))
    return sorted_values[index]


def length_statistics(
    tokenizer, examples: list[Example], max_source_length: int, max_target_length: int
) -> list[LengthStats]:
    """Token lengths of prompts and responses, and the share each limit would cut."""
    columns = {
        "prompt": (
            [len(tokenizer.encode(example.prompt, add_special_tokens=False)) for example in examples],
            max_source_length - 1,
        ),
        "response": (
            [len(tokenizer.encode(example.response, add_special_tokens=False)) for example in examples],
            max_target_length - 2,
        ),
    }
    stats = []
    for column, (lengths, limit) in columns.items():
        ordered = sorted(lengths)
        stats.append(
            LengthStats(
                column=column,
                p50=_percentile(ordered, 0.5),
                p90=_percentile(ordered, 0.9),
                p99=_percentile(ordered, 0.99),
                max=ordered[-1],
                limit=limit,
                truncated_share=sum(length > limit for length in ordered) / len(ordered),
            )
        )
    return stats
