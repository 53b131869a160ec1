"""The Serve screen under Pilot: snapshots at 80x24 and 120x40 of servers as their folders describe them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from support.app import make_app, make_workspace, settle
from support.waiting import wait_until_in_app
from test_snapshots import assert_whole, press

from glmcore.serve.servers import Server, ServerPlan
from glmcore.workspace import Workspace

SNAPSHOT_ROOT = Path(tempfile.gettempdir()) / "glmtui-serve-snapshot-workspace"


def workspace_with_servers() -> Workspace:
    """A server that answered three requests and was stopped, and one whose process died."""
    workspace = make_workspace(SNAPSHOT_ROOT)
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
        models=["tiny-chatglm", "20260501-100000-alpha", "20260501-100000-alpha/checkpoint-10"],
        slots=16,
        context=2048,
        started="2026-05-01T11:00:00+00:00",
        ended="2026-05-01T11:30:00+00:00",
        reason="stopped",
    )
    for second, (name, finish, tokens) in enumerate(
        (
            ("tiny-chatglm", "stop", 41),
            ("20260501-100000-alpha", "length", 128),
            ("tiny-chatglm", "cancelled", 7),
        )
    ):
        stopped.append_request(
            {
                "model": name,
                "endpoint": "chat",
                "stream": True,
                "time": f"2026-05-01T11:10:0{second}+0000",
                "prompt_tokens": 64,
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
def test_serve_screen(snap_compare, size: tuple[int, int]) -> None:
    app = make_app(workspace_with_servers())

    async def open_serve(pilot) -> None:
        await press(pilot, "f9")
        screen = pilot.app.screen
        await wait_until_in_app(
            pilot,
            lambda: (
                screen.query_one("#serve-table").row_count >= 2
                and "Models:" in str(screen.query_one("#serve-about").render())
            ),
            "both servers and the models they serve",
        )
        await settle(pilot)
        await assert_whole(pilot)

    assert snap_compare(app, terminal_size=size, run_before=open_serve)
