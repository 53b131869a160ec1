"""Datasets in the AdvertiseGen form, and the examples the model's family builds from them.

Files are JSON lines, a JSON array, or CSV (UTF-8). A row has a prompt column, a response column and optionally
a history column (a list of [query, response] pairs), all text. Rows with an empty prompt or response are skipped
and counted, as the published script skips them; anything else wrong stops the load with the file and line.

Training rows, evaluation prompts and references are built exactly as each family's published scripts build
them, by its `family_impl` (ChatGLM-6B's: glmcore/models/chatglm6b/data.py); the functions here find the family
from the tokenizer.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from glmcore.errors import GlmError

IGNORE_INDEX = -100
SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv")


class DataError(GlmError):
    pass


@dataclass(frozen=True)
class Columns:
    prompt: str = "content"
    response: str = "summary"
    history: str | None = None


@dataclass(frozen=True)
class Example:
    query: str
    response: str
    history: tuple[tuple[str, str], ...] = ()

    @property
    def prompt(self) -> str:
        return build_prompt(self.query, self.history)


@dataclass
class LoadedData:
    path: Path
    examples: list[Example]
    skipped_empty: int = 0
    columns_found: list[str] = field(default_factory=list)


def build_prompt(query: str, history: tuple[tuple[str, str], ...] | list = ()) -> str:
    """The bare query, or ChatGLM-6B's rounds: `[Round i]\\n问：q\\n答：r\\n` per past turn, then the query's."""
    if not history:
        return query
    rounds = "".join(
        f"[Round {index}]\n问：{old_query}\n答：{old_response}\n"
        for index, (old_query, old_response) in enumerate(history)
    )
    return rounds + f"[Round {len(history)}]\n问：{query}\n答："


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, or DataError at the first line that is not UTF-8."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}:{number}: byte {error.start + 1} of the line is not UTF-8 ({raw[error.start]:#04x}); "
                    "save the file as UTF-8."
                ) from None


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


def _json_lines_records(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, object]]:
    for number, line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        try:
            yield number, json.loads(stripped)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno}); fix or remove that line."
            ) from None


def _json_array_records(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """The items of a JSON array file, each with the line it starts on."""
    try:
        items = json.loads(text)
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
        yield line, item
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
        except json.JSONDecodeError:
            raise problem from None
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)
        for pair in value
    ):
        raise problem
    return tuple((query, response) for query, response in value)


def load_examples(path: str | Path, columns: Columns = Columns()) -> LoadedData:
    """Read a dataset file into examples, or say exactly what is wrong with it and on which line."""
    path = Path(path)
    wanted = [columns.prompt, columns.response] + ([columns.history] if columns.history else [])
    examples: list[Example] = []
    found: dict[str, None] = {}
    skipped = rows = 0
    for number, record in read_records(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise DataError(
                f"{where}: {_json_type(record)} where a row was expected; each row is one JSON object like "
                f'{{"{columns.prompt}": "...", "{columns.response}": "..."}}.'
            )
        rows += 1
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
    if missing:
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
    """Stacks fixed-length rows, dropping the pad columns every row of the batch shares.

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
        return {"input_ids": input_ids[:, :length], "labels": labels[:, :length]}


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
