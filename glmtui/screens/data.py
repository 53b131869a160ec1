"""The Data screen: pick a data file, map its columns, preview rows as training builds them, token lengths.

A file of conversations (ChatGLM3's `conversations`, GLM-4's and OpenAI's `messages`) needs no columns. Every
row is shown as ``glmcore.data.conversation_features`` builds it for the model's family (``preview_tokens``), the
tokens that carry the loss coloured. Loading the tokenizer needs the model code, so the preview and the
statistics run in a thread worker through ``glmcore.data`` (``load_examples`` with the model's family,
``preview_tokens``, ``length_statistics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import DataTable, Input, Label, Static

from glmcore.data import SUPPORTED_SUFFIXES, Columns, LengthStats, PreviewToken
from glmtui.messages import DataChoice, UseData
from glmtui.screens.base import WorkbenchScreen

PREVIEW_ROWS = 3
LEARNED_STYLE = "bold green"
"""How a token the loss is computed on is shown; the others are dim."""
VISIBLE_WHITESPACE = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"})
"""A token's line breaks and tabs written out, so each row stays one paragraph of tokens."""
FIELDS = (
    ("data-file", "Data file"),
    ("data-model", "Tokenizer of"),
    ("data-prompt", "Prompt column"),
    ("data-response", "Response column"),
    ("data-history", "History column"),
    ("data-source-length", "Source length"),
    ("data-target-length", "Target length"),
)


@dataclass(frozen=True)
class Preview:
    rows: list[list[PreviewToken]]
    stats: list[LengthStats]
    count: int
    skipped: int


@dataclass
class DataPreviewed(Message):
    """The data file's rows and token statistics, built off the UI thread."""

    preview: Preview


def preview_text(preview: Preview) -> Text:
    """The count, then each row's tokens, those the loss is computed on in LEARNED_STYLE (plain Text: a token
    is never read as markup)."""
    text = Text(
        f"{preview.count} examples ({preview.skipped} skipped as empty). Rows as training builds them, "
    )
    text.append("learned tokens", style=LEARNED_STYLE)
    text.append(" coloured:")
    for number, row in enumerate(preview.rows, start=1):
        text.append(f"\n{number}.", style="dim")
        for token in row:
            text.append(" ")
            text.append(
                token.text.translate(VISIBLE_WHITESPACE), style=LEARNED_STYLE if token.learned else "dim"
            )
    return text


class DataScreen(WorkbenchScreen):
    """ctrl+g previews the file with the chosen columns and lengths; ctrl+t uses it in the config editor."""

    NAME = "data"
    BINDINGS = [
        Binding("ctrl+g", "preview", "Preview", id="data-preview", tooltip="Build rows and token statistics"),
        Binding(
            "ctrl+t",
            "use_in_config",
            "Use for run",
            id="data-use",
            tooltip="Put these settings in the config",
        ),
    ]

    def compose_body(self) -> ComposeResult:
        workspace = self.workbench.workspace
        # Training files first: the file a user most often wants to look at.
        data_paths = [
            str(path)
            for path in sorted(
                workspace.data_dir.rglob("*"), key=lambda path: ("train" not in path.name, str(path))
            )
            if path.suffix.lower() in SUPPORTED_SUFFIXES
        ]
        models = [str(path) for path in workspace.find_models()]
        defaults = {
            "data-file": data_paths[0] if data_paths else "",
            "data-model": models[0] if models else "",
            "data-prompt": "content",
            "data-response": "summary",
            "data-history": "",
            "data-source-length": "64",
            "data-target-length": "64",
        }
        suggestions = {"data-file": data_paths, "data-model": models}

        def row(field_id: str, label: str) -> ComposeResult:
            with Horizontal(classes="field"):
                yield Label(label, classes="field-label")
                yield Input(
                    defaults[field_id],
                    id=field_id,
                    suggester=SuggestFromList(suggestions[field_id]) if suggestions.get(field_id) else None,
                    type="integer" if field_id.endswith("length") else "text",
                )

        labels = dict(FIELDS)
        # Paths across the full width (the long values); columns and lengths side by side below them.
        with Vertical(id="data-form"):
            for field_id in ("data-file", "data-model"):
                yield from row(field_id, labels[field_id])
            with Horizontal(id="data-settings"):
                with Vertical():
                    for field_id in ("data-prompt", "data-response", "data-history"):
                        yield from row(field_id, labels[field_id])
                with Vertical():
                    for field_id in ("data-source-length", "data-target-length"):
                        yield from row(field_id, labels[field_id])
        stats: DataTable = DataTable(id="data-stats")
        stats.add_columns("column", "p50", "p90", "p99", "max", "limit", "cut")
        yield stats
        with VerticalScroll(id="data-preview"):
            yield Static("ctrl+g builds a preview.", id="data-preview-text")

    def _value(self, field_id: str) -> str:
        return self.query_one(f"#{field_id}", Input).value.strip()

    def action_preview(self) -> None:
        self.query_one("#data-preview-text", Static).update("Loading the tokenizer and the data…")
        columns = Columns(
            self._value("data-prompt"), self._value("data-response"), self._value("data-history") or None
        )
        self.build_preview(
            Path(self._value("data-file")),
            Path(self._value("data-model")),
            columns,
            int(self._value("data-source-length") or 0),
            int(self._value("data-target-length") or 0),
        )

    @work(thread=True, exclusive=True, exit_on_error=False, group="data-preview")
    def build_preview(
        self, data_file: Path, model_path: Path, columns: Columns, source_length: int, target_length: int
    ) -> None:
        from glmcore.data import length_statistics, load_examples, preview_tokens
        from glmcore.models import family_of
        from glmcore.models.loading import load_tokenizer

        tokenizer = load_tokenizer(model_path)
        loaded = load_examples(data_file, columns, family=family_of(tokenizer))
        rows = [
            preview_tokens(tokenizer, example, source_length, target_length)
            for example in loaded.examples[:PREVIEW_ROWS]
        ]
        stats = length_statistics(tokenizer, loaded.examples, source_length, target_length)
        self.post_message(DataPreviewed(Preview(rows, stats, len(loaded.examples), loaded.skipped_empty)))

    def on_data_previewed(self, message: DataPreviewed) -> None:
        preview = message.preview
        table = self.query_one("#data-stats", DataTable)
        table.clear()
        for stat in preview.stats:
            table.add_row(
                stat.column,
                str(stat.p50),
                str(stat.p90),
                str(stat.p99),
                str(stat.max),
                str(stat.limit),
                f"{stat.truncated_share:.0%}",
            )
        self.query_one("#data-preview-text", Static).update(preview_text(preview))

    def action_use_in_config(self) -> None:
        source, target = self._value("data-source-length"), self._value("data-target-length")
        choice = DataChoice(
            train_file=Path(self._value("data-file")),
            prompt_column=self._value("data-prompt"),
            response_column=self._value("data-response"),
            history_column=self._value("data-history") or None,
            max_source_length=int(source) if source else None,
            max_target_length=int(target) if target else None,
        )
        self.post_message(UseData(choice))
