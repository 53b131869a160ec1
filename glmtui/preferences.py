"""What the app remembers between sessions about how it was left (which Training pane was zoomed, ...).

One small JSON file in the workspace, ``app-preferences.json``, so the choice follows the workspace across SSH
logins. It only ever holds layout choices: an unreadable or hand-broken file is ignored (the defaults come
back), never an error, and a write that fails is dropped with a log line, since no work depends on it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from glmcore.workspace import Workspace, atomic_write_text

logger = logging.getLogger(__name__)

FILE_NAME = "app-preferences.json"


class Preferences:
    """Layout choices of one workspace, read once and written on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._values = self._read(path)

    @classmethod
    def of(cls, workspace: Workspace) -> Preferences:
        return cls(workspace.root / FILE_NAME)

    @staticmethod
    def _read(path: Path) -> dict[str, object]:
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return values if isinstance(values, dict) else {}

    def get(self, key: str, default: str | None = None) -> str | None:
        """The remembered text for ``key``, or ``default`` when there is none."""
        value = self._values.get(key)
        return value if isinstance(value, str) else default

    def set(self, key: str, value: str | None) -> None:
        """Remember ``value`` for ``key`` (None forgets it)."""
        if value is None:
            self._values.pop(key, None)
        else:
            self._values[key] = value
        try:
            atomic_write_text(self.path, json.dumps(self._values, indent=2, sort_keys=True) + "\n")
        except OSError as error:
            logger.warning("Could not remember %s in %s: %s", key, self.path, error)
