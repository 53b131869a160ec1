"""Datasets in the AdvertiseGen form, and the examples the model's family builds from them.

Files are JSON lines, a JSON array, or CSV, loaded through `datasets`. A row has a prompt column, a
response column and optionally a history column (a list of [query, response] pairs). Rows with an empty
prompt or response are skipped and counted, as the published script skips them.

Training rows, evaluation prompts and references are built exactly as each family's published scripts build
them, by its `family_impl` (ChatGLM-6B's: glmcore/models/chatglm6b/data.py); the functions here find the family
from the tokenizer.
"""

from __future__ import annotations

import json
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


def _check_json_lines(path: Path) -> bool:
    """True for a JSON array file; for JSON lines, fail on the first bad line with its number."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            stripped = line.strip()
            if not stripped:
                continue
            if number == 1 and stripped.startswith("["):
                return True
            try:
                json.loads(stripped)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{path}, line {number}: not valid JSON ({error.msg}). Fix or remove that line."
                ) from None
    return False


def _read_table(path: Path):
    import datasets

    datasets.disable_progress_bars()
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return datasets.Dataset.from_csv(str(path), keep_in_memory=True)
    if _check_json_lines(path):
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON (line {error.lineno}: {error.msg}).") from None
        return datasets.Dataset.from_list(records)
    return datasets.Dataset.from_json(str(path), keep_in_memory=True)


def _history_pairs(value, path: Path, row_number: int) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    try:
        return tuple((str(query), str(response)) for query, response in value)
    except (TypeError, ValueError):
        raise DataError(
            f"{path}, row {row_number}: the history must be a list of [query, response] pairs."
        ) from None


def load_examples(path: str | Path, columns: Columns = Columns()) -> LoadedData:
    """Read a dataset file into examples, or say exactly what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"The data file {path} does not exist.")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: use a .json, .jsonl or .csv file (AdvertiseGen ships JSON lines).")
    table = _read_table(path)
    found = list(table.column_names)
    wanted = [columns.prompt, columns.response] + ([columns.history] if columns.history else [])
    missing = [name for name in wanted if name not in found]
    if missing:
        raise DataError(
            f"{path} has no column {', '.join(repr(name) for name in missing)}; its columns are: {', '.join(found) or 'none'}."
        )
    examples: list[Example] = []
    skipped = 0
    for row_number, row in enumerate(table, start=1):
        query, response = row[columns.prompt], row[columns.response]
        if not query or not response:
            skipped += 1
            continue
        history = _history_pairs(row[columns.history], path, row_number) if columns.history else ()
        examples.append(Example(str(query), str(response), history))
    if not examples:
        raise DataError(f"{path} holds no usable rows ({skipped} had an empty prompt or response).")
    return LoadedData(path, examples, skipped, found)


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
