"""The Serve screen: the workspace's API servers, start and stop one, and what the highlighted one is doing.

Servers are folders (glmcore.serve.servers), so this screen only reads files: every second a worker reads each
server's status and its newest requests; the table lists the servers, below it the highlighted one's state
(while it loads: what it reads and for how long), the models it offers, a client snippet ready to paste and its
request log with tokens/s. The models scroll within a few rows and the log takes the rest, so at 80x24 all
three stay in view. `s` starts a detached server (`glmtui serve --detach`) on the chosen model and port, `x`
stops the highlighted one, a loading one too; both in workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Input, Label, Select, Static

from glmcore.errors import GlmError
from glmcore.serve.servers import DEFAULT_PORT, Server, ServerStatus, list_servers
from glmtui.screens.base import WorkbenchScreen
from glmtui.text.serve import (
    SERVER_COLUMNS,
    client_snippet,
    loading_line,
    models_text,
    request_line,
    server_cells,
)

REFRESH_S = 1.0
LOG_LINES = 50


@dataclass(frozen=True)
class ServerRow:
    server: Server
    status: ServerStatus
    model: str | None
    """The model folder it was asked to serve (server.json); None where that file cannot be read."""
    key_file: str | None
    requests: list[dict]
    answered: int


@dataclass
class ServersRead(Message):
    """Every server folder as a row, and the model folders a server can serve."""

    rows: list[ServerRow]
    models: list[str]


class ServeScreen(WorkbenchScreen):
    """s starts a server on the chosen model, x stops the highlighted one."""

    NAME = "serve"
    BINDINGS = [
        Binding(
            "s", "start_server", "Start", id="serve-start", tooltip="Serve the chosen model in the background"
        ),
        Binding("x", "stop_server", "Stop", id="serve-stop", tooltip="Stop the highlighted server"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, ServerRow] = {}
        self.starting = False
        self.stopped_while_starting = False
        """The user stopped a loading server while this screen's start waited on it: its end is no failure."""
        self.model_options: list[tuple[str, str]] = []
        self.column_keys: list = []
        self.last_reading: tuple | None = None
        """The models and rows of the last read shown; a read equal to it changes nothing on screen."""

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="serve-top"):
            yield Label("Model:")
            yield Select[str]([], id="serve-model", prompt="no model yet")
            yield Label("Port:")
            yield Input(str(DEFAULT_PORT), id="serve-port", type="integer")
        yield DataTable(id="serve-table", cursor_type="row", zebra_stripes=True)
        with Vertical(id="serve-detail"):
            yield Static("No servers yet: pick a model and press s.", id="serve-about")
            with VerticalScroll(id="serve-models"):
                yield Static("", id="serve-model-list")
            yield Static("", id="serve-snippet")
            with VerticalScroll(id="serve-log"):
                yield Static("", id="serve-requests")

    def on_mount(self) -> None:
        table = self.query_one("#serve-table", DataTable)
        self.column_keys = table.add_columns(*SERVER_COLUMNS)
        table.focus()
        self.refresh_servers()
        self.set_interval(REFRESH_S, self.refresh_servers)

    @work(thread=True, exclusive=True, exit_on_error=False, group="serve-read")
    def refresh_servers(self) -> None:
        """Read every server folder and the workspace's models; post them."""
        workspace = self.workbench.workspace
        rows = []
        for server in list_servers(workspace):
            try:
                plan = server.plan()
                model, key_file = plan.model, plan.key_file
            except (OSError, ValueError, TypeError):
                model = key_file = None
            requests = server.requests(last=LOG_LINES)
            rows.append(ServerRow(server, server.status(), model, key_file, requests, server.answered()))
        models = [str(path) for path in workspace.find_models()]
        self.post_message(ServersRead(rows, models))

    def on_servers_read(self, message: ServersRead) -> None:
        if not self.query("#serve-table"):
            return
        reading = (
            message.models,
            [
                (row.server.id, row.status, row.model, row.key_file, row.requests, row.answered)
                for row in message.rows
            ],
        )
        if reading == self.last_reading and not any(row.status.state == "starting" for row in message.rows):
            return  # nothing changed: an idle screen is not redrawn every second (over SSH each redraw is sent)
        self.last_reading = reading
        choice = self.query_one("#serve-model", Select)
        options = [(path.rsplit("/", 1)[-1], path) for path in message.models]
        if options != self.model_options:
            self.model_options = options
            choice.set_options(options)
            if options:
                choice.value = options[0][1]
        table = self.query_one("#serve-table", DataTable)
        selected = self.selected_id()
        if self.starting and (
            started := [row.server.id for row in message.rows if row.server.id not in self.rows]
        ):
            selected = started[0]  # the server being started: its loading shows at once
        same_servers = list(self.rows) == [row.server.id for row in message.rows]
        self.rows = {row.server.id: row for row in message.rows}
        if same_servers:  # in place: the cursor and the scroll stay where the user left them
            for row in message.rows:
                for column, cell in zip(
                    self.column_keys, server_cells(row.server.id, row.status, row.answered), strict=True
                ):
                    table.update_cell(row.server.id, column, cell)
        else:
            table.clear()
            for row in message.rows:
                table.add_row(*server_cells(row.server.id, row.status, row.answered), key=row.server.id)
            if selected in self.rows:
                table.move_cursor(row=list(self.rows).index(selected))
        self._show_detail()

    def selected_id(self) -> str | None:
        table = self.query_one("#serve-table", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        row = self.rows.get(self.selected_id() or "")
        self.query_one("#serve-models").display = row is not None
        self.query_one("#serve-snippet").display = bool(row and row.status.url)
        self.query_one("#serve-log").display = row is not None
        if row is None:
            self.query_one("#serve-about", Static).update("No servers yet: pick a model and press s.")
            return
        self.query_one("#serve-about", Static).update(server_about(row))
        self.query_one("#serve-model-list", Static).update(models_text(row.status))
        if row.status.url:
            snippet = client_snippet(row.status.url, (row.status.models or ["MODEL"])[0], row.key_file)
            self.query_one("#serve-snippet", Static).update(Text(snippet))
        log = self.query_one("#serve-log", VerticalScroll)
        at_end = log.scroll_y >= log.max_scroll_y
        lines = Text("Requests (newest last):\n" if row.requests else "No requests yet.", style="dim")
        for record in row.requests[-LOG_LINES:]:
            lines.append_text(request_line(record))
            lines.append("\n")
        lines.rstrip()
        self.query_one("#serve-requests", Static).update(lines)
        if at_end:  # the newest request stays in view unless the user scrolled back
            self.call_after_refresh(log.scroll_end, animate=False)

    # actions

    def action_start_server(self) -> None:
        model = self.query_one("#serve-model", Select).value
        if not isinstance(model, str):
            self.notify(
                "There is no model to serve: download one on the Models screen (F2).", severity="warning"
            )
            return
        port_text = self.query_one("#serve-port", Input).value.strip()
        if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
            self.notify(f"The port must be a number from 0 to 65535, not {port_text!r}.", severity="error")
            return
        if self.starting:
            self.notify("A server is already starting.")
            return
        self.starting = True
        self.notify(f"Starting a server for {model} on port {port_text} …")
        self.start_server(model, int(port_text))

    @work(thread=True, exit_on_error=False, group="serve-control")
    def start_server(self, model: str, port: int) -> None:
        from pathlib import Path

        from glmcore.serve.servers import plan_server, resolve_api_key, start_detached

        workspace = self.workbench.workspace
        try:
            plan = plan_server(
                workspace, model=Path(model), runs=[], checkpoints=[], quantization_bit=None, port=port
            )
            server = start_detached(workspace, plan, resolve_api_key(plan.host, None, workspace))
        except GlmError:
            if self.stopped_while_starting:  # x on the loading server: it ended as asked
                return
            raise
        finally:
            self.app.call_from_thread(setattr, self, "starting", False)
        self.app.call_from_thread(self.notify, f"Server {server.id} serves at {server.status().url}.")
        self.refresh_servers()

    def action_stop_server(self) -> None:
        row = self.rows.get(self.selected_id() or "")
        if row is None or not row.status.is_active:
            self.notify("Highlight a running server to stop it.", severity="warning")
            return
        self.stopped_while_starting = self.starting and row.status.state == "starting"
        self.stop_server(row.server)

    @work(thread=True, exit_on_error=False, group="serve-control")
    def stop_server(self, server: Server) -> None:
        from glmcore.serve.servers import stop_server
        from glmtui.text.serve import stop_line

        before = server.status()
        self.app.call_from_thread(self.notify, stop_line(server, before, stop_server(server)), markup=False)
        self.refresh_servers()


def server_about(row: ServerRow) -> Text:
    """The highlighted server's state and rows; while it loads, what and for how long; why it is not serving."""
    status = row.status
    text = Text()
    text.append(f"{row.server.id} ", style="bold")
    text.append(f"{status.state}", style="green" if status.state == "ready" else "yellow")
    if status.slots and status.blocks:  # a paged cache: the rows share its blocks
        text.append(
            f" · {status.slots} rows over {status.blocks:,} cache blocks, {status.context} tokens a request at most",
            style="dim",
        )
    elif status.slots:
        text.append(f" · {status.slots} rows of {status.context} tokens", style="dim")
    if status.state == "starting" and row.model:
        text.append(f"\n{loading_line(row.model, status, datetime.now().astimezone())}", style="yellow")
    if status.reason and status.state in ("failed", "dead"):
        text.append(f"\n{status.reason}", style="red")
    text.append(f"\nModels ({len(status.models)}):" if status.models else "\nModels: none yet", style="dim")
    return text
