"""The Serve screen: the workspace's API servers, start and stop one, and what the highlighted one is doing.

Servers are folders (glmcore.serve.servers), so this screen only reads files: every second a worker reads each
server's status and its newest requests; the table lists the servers, below it the highlighted one's URL, the
models it offers, a client snippet ready to paste and its request log with tokens/s. `s` starts a detached
server (`glmtui serve --detach`) on the chosen model and port, `x` stops the highlighted one; both in workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Input, Label, Select, Static

from glmcore.serve.servers import DEFAULT_PORT, Server, ServerStatus, list_servers
from glmtui.screens.base import WorkbenchScreen
from glmtui.serve_text import SERVER_COLUMNS, client_snippet, request_line, server_cells

REFRESH_S = 1.0
LOG_LINES = 50


@dataclass(frozen=True)
class ServerRow:
    server: Server
    status: ServerStatus
    key_file: str | None
    requests: list[dict]


class ServersRead(Message):
    def __init__(self, rows: list[ServerRow], models: list[str]) -> None:
        super().__init__()
        self.rows = rows
        self.models = models


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
        self.model_options: list[tuple[str, str]] = []
        self.column_keys: list = []

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="serve-top"):
            yield Label("Model:")
            yield Select[str]([], id="serve-model", prompt="no model yet")
            yield Label("Port:")
            yield Input(str(DEFAULT_PORT), id="serve-port", type="integer")
        yield DataTable(id="serve-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="serve-detail"):
            yield Static("No servers yet: pick a model and press s.", id="serve-about")
            yield Static("", id="serve-log")

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
                key_file = server.plan().key_file
            except (OSError, ValueError):
                key_file = None
            rows.append(ServerRow(server, server.status(), key_file, server.requests(last=LOG_LINES)))
        models = [str(path) for path in workspace.find_models()]
        self.post_message(ServersRead(rows, models))

    def on_servers_read(self, message: ServersRead) -> None:
        if not self.query("#serve-table"):
            return
        choice = self.query_one("#serve-model", Select)
        options = [(path.rsplit("/", 1)[-1], path) for path in message.models]
        if options != self.model_options:
            self.model_options = options
            choice.set_options(options)
            if options:
                choice.value = options[0][1]
        table = self.query_one("#serve-table", DataTable)
        selected = self.selected_id()
        same_servers = list(self.rows) == [row.server.id for row in message.rows]
        self.rows = {row.server.id: row for row in message.rows}
        if same_servers:  # in place: the cursor and the scroll stay where the user left them
            for row in message.rows:
                for column, cell in zip(self.column_keys, server_cells(row.server, row.status), strict=True):
                    table.update_cell(row.server.id, column, cell)
        else:
            table.clear()
            for row in message.rows:
                table.add_row(*server_cells(row.server, row.status), key=row.server.id)
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
        about = self.query_one("#serve-about", Static)
        log = self.query_one("#serve-log", Static)
        if row is None:
            about.update("No servers yet: pick a model and press s.")
            log.update("")
            return
        about.update(server_about(row))
        lines = Text("Requests (newest last):\n" if row.requests else "No requests yet.", style="dim")
        for record in row.requests[-LOG_LINES:]:
            lines.append_text(request_line(record))
            lines.append("\n")
        lines.rstrip()
        log.update(lines)

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
        finally:
            self.app.call_from_thread(setattr, self, "starting", False)
        self.app.call_from_thread(self.notify, f"Server {server.id} serves at {server.status().url}.")
        self.refresh_servers()

    def action_stop_server(self) -> None:
        row = self.rows.get(self.selected_id() or "")
        if row is None or not row.status.is_active:
            self.notify("Highlight a running server to stop it.", severity="warning")
            return
        self.stop_server(row.server)

    @work(thread=True, exit_on_error=False, group="serve-control")
    def stop_server(self, server: Server) -> None:
        from glmcore.serve.servers import stop_server
        from glmtui.serve_text import stop_line

        before = server.status()
        self.app.call_from_thread(self.notify, stop_line(server, before, stop_server(server)), markup=False)
        self.refresh_servers()


def server_about(row: ServerRow) -> Text:
    """The highlighted server: its URL, models, rows and a client snippet (or why it is not serving)."""
    status = row.status
    text = Text()
    text.append(f"{row.server.id} ", style="bold")
    text.append(f"{status.state}", style="green" if status.state == "ready" else "yellow")
    if status.slots:
        text.append(f" · {status.slots} rows of {status.context} tokens", style="dim")
    text.append("\n")
    if status.reason and status.state in ("failed", "dead"):
        text.append(f"{status.reason}\n", style="red")
    text.append("Models: ", style="dim")
    text.append(", ".join(status.models) or "-")
    text.append("\n")
    if status.url:
        text.append(client_snippet(status.url, status.models[0] if status.models else "MODEL", row.key_file))
        text.append("\n")
    return text
