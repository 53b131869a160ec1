"""`glmtui serve`: an OpenAI-compatible API over one base model and the workspace's prefixes and LoRA adapters.

In front, it serves until Ctrl-C and prints a line per request; `--detach` starts it in its own session and
returns once it serves; `--list` shows the workspace's servers and `--stop ID` stops one (docs/serve.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from glmcore.errors import GlmError
from glmcore.serve.servers import (
    DEFAULT_ADAPTER_MEMORY_MIB,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PORT,
    KEY_ENV,
)
from glmtui.commands.family_option import add_family_option, apply_family
from glmtui.commands.four_bit_option import add_four_bit_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the model, its P-tuning prefixes and LoRA adapters over an OpenAI-compatible HTTP API",
        description="Serve one base model and every P-tuning and LoRA run of the workspace made on it (or the "
        "runs and checkpoints named) over the OpenAI API: GET /v1/models, POST /v1/chat/completions, /v1/completions. "
        f"Requests must carry the key of --api-key-file or ${KEY_ENV} as a Bearer token when one is set; a host "
        "other than loopback always needs one (generated if none is given).",
    )
    parser.add_argument("--model", type=Path, default=None, help="the base model folder")
    add_family_option(parser)
    parser.add_argument(
        "--run",
        dest="runs",
        action="append",
        default=[],
        metavar="RUN",
        help="serve this P-tuning or LoRA run (its model unless --model; repeatable)",
    )
    parser.add_argument(
        "--checkpoint",
        dest="checkpoints",
        action="append",
        default=[],
        metavar="CK",
        help="serve only this checkpoint: checkpoint-N of --run, a checkpoint folder or a run (repeatable)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks one)"
    )
    parser.add_argument(
        "--quantization-bit",
        type=int,
        choices=(4, 8, 16),
        default=None,
        help="base weights (default: the run's, else 16)",
    )
    add_four_bit_option(parser)
    parser.add_argument(
        "--api-key-file", type=Path, default=None, help=f"file holding the key (else ${KEY_ENV})"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"requests decoded together at most (default {DEFAULT_MAX_BATCH})",
    )
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        help="tokens per request: prefix + prompt + answer (default 8192, at most the model's positions)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help="requests waiting for a free row or key-value memory before the server answers 429 "
        f"(default {DEFAULT_MAX_QUEUE})",
    )
    parser.add_argument(
        "--adapter-memory",
        type=float,
        default=DEFAULT_ADAPTER_MEMORY_MIB,
        metavar="MIB",
        help=f"MiB held for LoRA adapters, least recently used evicted (default {DEFAULT_ADAPTER_MEMORY_MIB})",
    )
    parser.add_argument(
        "--detach", action="store_true", help="start in the background and return once serving"
    )
    parser.add_argument("--list", action="store_true", help="list the workspace's servers")
    parser.add_argument(
        "--stop", metavar="ID", default=None, help="stop a server (its id, id prefix or port)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glmcore.workspace import Workspace

    console = Console(highlight=False)
    errors = Console(stderr=True, highlight=False)
    workspace = Workspace.from_env()
    try:
        if args.list:
            return list_servers(workspace, console)
        if args.stop:
            return stop(workspace, args.stop, console)
        return start(workspace, args, console, errors)
    except GlmError as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        return 1


def list_servers(workspace, console: Console) -> int:
    from glmcore.serve.servers import list_servers as servers_of
    from glmtui.text.serve import SERVER_COLUMNS, models_text, server_cells

    servers = servers_of(workspace)
    if not servers:
        console.print("No servers yet: glmtui serve --model DIR starts one.")
        return 0
    statuses = {server: server.status() for server in servers}
    table = Table(*SERVER_COLUMNS, box=None)
    for server, status in statuses.items():
        table.add_row(*server_cells(server.id, status, server.answered()))
    console.print(table)
    for server, status in statuses.items():
        if status.is_active and status.models:
            console.print(Text(f"\n{server.id} serves:"))
            console.print(Padding(models_text(status), (0, 0, 0, 2)))
    return 0


def stop(workspace, name: str, console: Console) -> int:
    from glmcore.serve.servers import resolve_server, stop_server
    from glmtui.text.serve import stop_line

    server = resolve_server(workspace, name)
    before = server.status()
    console.print(escape(stop_line(server, before, stop_server(server))))
    return 0


def start(workspace, args: argparse.Namespace, console: Console, errors: Console) -> int:
    from glmcore.serve.servers import plan_server, resolve_api_key, start_detached

    plan = plan_server(
        workspace.ensure(),
        model=args.model,
        runs=args.runs,
        checkpoints=args.checkpoints,
        quantization_bit=args.quantization_bit,
        four_bit=args.four_bit,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        context=args.context,
        max_queue=args.max_queue,
        adapter_memory=args.adapter_memory,
    )
    apply_family(args.family, Path(plan.model))
    key = resolve_api_key(args.host, args.api_key_file, workspace)
    if key.generated:
        console.print(
            f"{args.host} is reachable from other machines, so requests need a key: it is in {key.file} "
            "(readable by you only)."
        )
    if args.detach:
        with console.status("starting the server…"):
            server = start_detached(workspace, plan, key)
        status = server.status()
        console.print(f"Server {server.id} serves {', '.join(status.models)} at {status.url}")
        console.print(f"Stop it with glmtui serve --stop {server.id}; its log is {server.log_path}.")
        return 0
    return serve_in_front(workspace, plan, key, console)


def serve_in_front(workspace, plan, key, console: Console) -> int:
    from glmcore.quiet import quiet_libraries
    from glmcore.serve.main import bind, serve_forever
    from glmcore.serve.servers import create_server
    from glmtui.text.serve import request_line

    sock = bind(plan.host, plan.port)
    quiet_libraries()
    if key.file is not None:
        plan.key_file = str(key.file)
    server = create_server(workspace, plan)
    console.print(f"Server {server.id}; Ctrl-C stops it.")
    return serve_forever(
        server,
        workspace,
        key.value,
        sock=sock,
        announce=lambda line: console.print(escape(line)),
        on_request=lambda record: console.print(request_line(record)),
    )
