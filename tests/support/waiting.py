"""Waiting, in tests, for a process or the app to get somewhere: the one deadline loop every test uses."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

WAIT_S = 120.0
"""How long a test waits before it gives up: generous for a loaded 2-core machine, never an assertion on speed."""
INTERVAL_S = 0.05


def wait_until(condition: Callable[[], T], what: str, *, timeout: float = WAIT_S) -> T:
    """Check ``condition()`` until it returns something true, and return that; past ``timeout`` seconds fail,
    saying ``what`` never happened."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(INTERVAL_S)
    return value


async def wait_until_in_app(pilot, condition: Callable[[], T], what: str, *, timeout: float = WAIT_S) -> T:
    """As `wait_until`, letting the app under ``pilot`` run meanwhile; a failure also says what the app showed
    instead (its notifications and status lines)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"the app never showed {what}; it showed {shown_messages(pilot.app)}")
        await pilot.pause(INTERVAL_S)
    return value


def shown_messages(app) -> list[str]:
    """The notifications and status lines on screen, to say what the app showed instead."""
    statuses = [
        str(widget.render()) for widget in app.screen.query("Static") if widget.id and "status" in widget.id
    ]
    return [notification.message for notification in app.notifications] + statuses + [repr(app._exception)]
