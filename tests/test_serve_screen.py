"""The Serve screen under Pilot: snapshots at 80x24 and 120x40 of servers as their folders describe them, and a
server loading its model (a real process stands in for it) that the screen describes and `x` stops."""

from __future__ import annotations

import re
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from support.app import columns_fit_rows, make_app, make_workspace, message_recorder, settle
from support.waiting import wait_until_in_app
from test_snapshots import assert_whole, press

from glmcore.runs import process_start_time
from glmcore.serve.servers import Server, ServerPlan
from glmcore.workspace import Workspace

CHECKPOINTS = [f"20260501-100000-alpha/checkpoint-{step}" for step in range(10, 80, 10)]


def workspace_with_servers(root: Path) -> Workspace:
    """A server offering nine models that answered five requests and was stopped, and one whose process died.
    No path of the workspace shows on the screen, so ``root`` can be any (each test's own)."""
    workspace = make_workspace(root)
    model = str(workspace.models_dir / "tiny-chatglm")
    stopped = Server(workspace.root / "servers" / "20260501-120000-8000")
    stopped.path.mkdir(parents=True)
    stopped.write_plan(ServerPlan(model=model, port=8000))
    stopped.write_status(
        state="stopped",
        pid=4242,
        host="127.0.0.1",
        port=8000,
        url="http://127.0.0.1:8000/v1",
        models=["tiny-chatglm", "20260501-100000-alpha", *CHECKPOINTS],
        slots=16,
        context=2048,
        started="2026-05-01T11:00:00+00:00",
        ended="2026-05-01T11:30:00+00:00",
        reason="stopped",
    )
    for second, (name, finish, tokens, cached) in enumerate(
        (
            ("tiny-chatglm", "stop", 41, 0),
            ("20260501-100000-alpha", "length", 128, 0),
            ("tiny-chatglm", "cancelled", 7, 48),
            ("tiny-chatglm", "stop", 12, 48),
            ("tiny-chatglm", "stop", 30, 0),
        )
    ):
        stopped.append_request(
            {
                "model": name,
                "endpoint": "chat",
                "stream": True,
                "time": f"2026-05-01T11:10:0{second}+0000",
                "prompt_tokens": 64,
                "cached_tokens": cached,
                "completion_tokens": tokens,
                "seconds": 2.5,
                "first_token_s": 0.042,
                "tokens_per_s": 31.4 + second,
                "finish": finish,
            }
        )
    dead = Server(workspace.root / "servers" / "20260501-110000-8001")
    dead.path.mkdir(parents=True)
    dead.write_plan(ServerPlan(model=model, port=8001))
    dead.write_status(
        state="ready", pid=4_000_000, pid_start_time=1.0, port=8001, url="http://127.0.0.1:8001/v1"
    )
    return workspace


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_serve_screen(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:
    app = make_app(workspace_with_servers(tmp_path / "ws"))

    async def open_serve(pilot) -> None:
        await press(pilot, "f9")
        screen = pilot.app.screen
        await wait_until_in_app(
            pilot,
            lambda: (
                screen.query_one("#serve-table").row_count >= 2
                and "Models (9):" in str(screen.query_one("#serve-about").render())
            ),
            "both servers and the models they serve",
        )
        table = screen.query_one("#serve-table")
        await wait_until_in_app(
            pilot, lambda: columns_fit_rows(table), "the table's columns sized to its rows"
        )
        await settle(pilot)
        await assert_whole(pilot)
        shown = "\n".join(strip.text for strip in pilot.app.screen._compositor.render_strips())
        assert "Models (9):" in shown and "print(reply.choices[0].message.content)" in shown
        assert "11:10:04 tiny-chatglm 64→30 tok" in shown  # the newest request, below the snippet
        assert "64 (48 cached)→12 tok" in shown

    assert snap_compare(app, terminal_size=size, run_before=open_serve)


async def test_a_loading_server_says_what_it_loads_for_how_long_and_x_stops_it(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    loading = subprocess.Popen(["sleep", "60"])  # the server process, still reading its weights
    try:
        server = Server(workspace.root / "servers" / "20260501-120000-8000")
        server.path.mkdir(parents=True)
        server.write_plan(ServerPlan(model=str(workspace.models_dir / "tiny-chatglm"), port=8000))
        started, written = datetime.now().astimezone() - timedelta(seconds=75), time.monotonic()
        server.write_status(
            state="starting",
            pid=loading.pid,
            pid_start_time=process_start_time(loading.pid),
            started=started.isoformat(timespec="seconds"),
            loading="the weights",
        )
        app = make_app(workspace)
        async with app.run_test(size=(80, 24)) as pilot:
            await press(pilot, "f9")
            about = pilot.app.screen.query_one("#serve-about")
            await wait_until_in_app(pilot, lambda: "Loading tiny-chatglm" in str(about.render()), "the load")
            # As long as it has loaded, however long the app took to show it (a loaded machine takes seconds).
            shown = re.search(r"Loading tiny-chatglm \(the weights, (\d+)m (\d\d)s\)", str(about.render()))
            assert shown is not None, str(about.render())
            assert 75 <= int(shown[1]) * 60 + int(shown[2]) <= 75 + (time.monotonic() - written) + 2
            await press(pilot, "x")
            await wait_until_in_app(pilot, lambda: server.status().state == "stopped", "the stop")
            assert loading.wait(timeout=5) is not None
    finally:
        loading.kill()
        loading.wait()


async def test_an_idle_read_redraws_nothing_and_a_new_request_is_drawn(tmp_path: Path) -> None:
    """The screen reads the server folders every second: an idle one keeps what it shows (CI once caught the
    80x24 snapshot in the middle of a redraw of the same thing); a new request is drawn."""
    from textual.widgets import Static

    from glmtui.screens.serve import ServersRead

    workspace = workspace_with_servers(tmp_path / "ws")
    reads, note_reads = message_recorder(ServersRead)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40), message_hook=note_reads) as pilot:
        await press(pilot, "f9")
        requests = pilot.app.screen.query_one("#serve-requests", Static)
        await wait_until_in_app(pilot, lambda: "11:10:04" in str(requests.content), "the request log")
        await settle(pilot)
        shown, read = requests.content, len(reads)
        await wait_until_in_app(pilot, lambda: len(reads) >= read + 2, "two more reads of the folders")
        await settle(pilot)
        assert requests.content is shown

        request = {"model": "tiny-chatglm", "time": "2026-05-01T11:20:00+0000", "finish": "stop"}
        Server(workspace.root / "servers" / "20260501-120000-8000").append_request(request)
        await wait_until_in_app(pilot, lambda: "11:20:00" in str(requests.content), "the new request")
