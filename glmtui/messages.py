"""What one screen asks of another, as typed messages the app routes.

A screen never reaches into another screen: it posts one of these and `GlmApp` hands it to the screen that
does the work, then brings that screen to the front. Adding a request is a class here and a handler in
glmtui/app.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.message import Message

from glmcore.config import RunConfig
from glmcore.runs import Run


@dataclass
class OpenRun(Message):
    """Watch ``run`` in the Training view."""

    run: Run


@dataclass
class EvaluateRun(Message):
    """Offer ``run``'s checkpoints on the Evaluate screen."""

    run: Run


@dataclass
class ChatWith(Message):
    """Chat with ``run``'s model and the checkpoint the run stands for."""

    run: Run


@dataclass
class CompareRuns(Message):
    """Show ``runs`` side by side on the Compare screen."""

    runs: list[Run]


@dataclass
class EditConfig(Message):
    """Fill the config editor with ``config`` (the demo's, a clone of a run's) and open it."""

    config: RunConfig


@dataclass(frozen=True)
class DataChoice:
    """The data settings chosen on the Data screen, to apply over the editor's current config."""

    train_file: Path
    prompt_column: str
    response_column: str
    history_column: str | None
    max_source_length: int | None
    max_target_length: int | None


@dataclass
class UseData(Message):
    """Apply ``choice`` to the config being edited and open the editor."""

    choice: DataChoice
