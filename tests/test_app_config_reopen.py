"""The config editor reopens the last config after the app restarts, and names only saved files as commands."""

from __future__ import annotations

from pathlib import Path

from support.app import make_app, make_workspace, settle, tiny_config
from textual.widgets import Input, Static

from glmtui.screens.config import ConfigScreen


def side_command(screen: ConfigScreen) -> str:
    return " ".join(str(screen.query_one("#config-command", Static).render()).split())


async def test_the_last_saved_config_reopens_and_the_shown_command_names_a_saved_file(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    saved_path = workspace.configs_dir / "tiny-ptuning.toml"
    async with make_app(workspace).run_test(size=(120, 40)) as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, ConfigScreen)
        assert screen.query_one("#name", Input).value == "my-run"  # nothing to reopen yet
        screen.load(tiny_config(workspace, max_steps=77))
        await settle(pilot)
        assert side_command(screen) == f"Not saved: ctrl+s writes {saved_path} for `glmtui train`."
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert side_command(screen) == f"Same from the shell: glmtui train {saved_path}"

    async with make_app(workspace).run_test(size=(120, 40)) as pilot:
        screen = pilot.app.screen
        await settle(pilot)
        assert screen.query_one("#name", Input).value == "tiny-ptuning"
        assert screen.query_one("#max_steps", Input).value == "77"
        assert side_command(screen) == f"Same from the shell: glmtui train {saved_path}"
        screen.query_one("#max_steps", Input).focus()
        await pilot.press("ctrl+a", "ctrl+k", "9")
        await settle(pilot)
        assert side_command(screen).startswith("Not saved: ctrl+s writes")


async def test_a_last_config_that_is_gone_falls_back_to_the_defaults(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    gone = workspace.configs_dir / "gone.toml"
    gone.parent.mkdir(parents=True)
    tiny_config(workspace).save(gone)
    workspace.remember_config(gone)
    gone.unlink()
    async with make_app(workspace).run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert pilot.app.screen.query_one("#name", Input).value == "my-run"
