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


class OpenRun(Message):
    """Watch ``run`` in the Training view."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run


class EvaluateRun(Message):
    """Offer ``run``'s checkpoints on the Evaluate screen."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run


class ChatWith(Message):
    """Chat with ``run``'s model and the checkpoint the run stands for."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run


class CompareRuns(Message):
    """Show ``runs`` side by side on the Compare screen."""

    def __init__(self, runs: list[Run]) -> None:
        super().__init__()
        self.runs = runs


class EditConfig(Message):
    """Fill the config editor with ``config`` (the demo's, a clone of a run's) and open it."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__()
        self.config = config


@dataclass(frozen=True)
class DataChoice:
    """The data settings chosen on the Data screen, to apply over the editor's current config."""

    train_file: Path
    prompt_column: str
    response_column: str
    history_column: str | None
    max_source_length: int | None
    max_target_length: int | None


class UseData(Message):
    """Apply ``choice`` to the config being edited and open the editor."""

    def __init__(self, choice: DataChoice) -> None:
        super().__init__()
        self.choice = choice
