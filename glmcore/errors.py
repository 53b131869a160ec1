"""Errors meant for the user: their message says what happened and what to do about it."""


class GlmError(Exception):
    """Base of every error whose message is shown to the user as is (no traceback)."""


class RunError(GlmError):
    """A run cannot be found, started, stopped, resumed or deleted as asked."""
