"""The Models screen drives a real download from a real HTTP server on 127.0.0.1 and shows it live."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from huggingface_hub import constants
from support.app import make_app, make_workspace, settle
from support.fileserver import running_fileserver
from support.waiting import wait_until_in_app
from textual.message import Message
from textual.widgets import Input, ProgressBar, Static

from glmcore.download import DownloadProgress
from glmtui.screens.models import DownloadProgressed


@pytest.fixture
def hub(monkeypatch):
    """The test server as the Hugging Face endpoint (tests run offline otherwise)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with running_fileserver() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


async def test_models_screen_shows_a_live_download_from_the_server(hub, tmp_path: Path) -> None:
    weights = bytes(range(256)) * 24_000  # 6 MB, served in chunks
    files = {"config.json": b'{"model_type": "chatglm"}', "pytorch_model.bin": weights}
    hub.add_hub_repo("someone/tiny-glm", "0" * 40, files, lfs={"pytorch_model.bin"})
    hub.faults.drop_after["pytorch_model.bin"] = 2_000_000  # the transfer breaks once and resumes
    app = make_app(make_workspace(tmp_path / "ws"))
    progress: list[DownloadProgress] = []  # every snapshot the Models screen was handed, in order

    def note_progress(message: Message) -> None:
        # A message is dispatched to the screen, then bubbles to the app: each snapshot is noted once.
        if isinstance(message, DownloadProgressed) and all(message.progress is not p for p in progress):
            progress.append(message.progress)

    async with app.run_test(size=(120, 40), message_hook=note_progress) as pilot:
        await pilot.press("f2")
        await settle(pilot)
        source = app.screen.query_one("#models-source", Input)
        source.focus()
        source.value = "someone/tiny-glm"
        await pilot.press("enter")
        status = app.screen.query_one("#download-status", Static)
        bar = app.screen.query_one("#download-progress", ProgressBar)
        # Shown live: the break (the retry waits a second before it resumes), then the end.
        await wait_until_in_app(pilot, lambda: str(status.render()).startswith("retrying: "), "the retry")
        await wait_until_in_app(
            pilot,
            lambda: str(status.render()).startswith("Downloaded someone/tiny-glm"),
            "the download's end",
        )
        await settle(pilot)
        assert bar.total == len(weights) + len(files["config.json"])
        assert bar.progress == bar.total
    destination = tmp_path / "ws" / "models" / "tiny-glm"
    assert (
        hashlib.sha256((destination / "pytorch_model.bin").read_bytes()).digest()
        == hashlib.sha256(weights).digest()
    )
    # The screen was handed every change of state (a state change is always sent): the break and the resume.
    states = [snapshot.state for snapshot in progress]
    changes = [state for index, state in enumerate(states) if index == 0 or state != states[index - 1]]
    assert changes == ["downloading", "retrying", "downloading", "done"]
