"""The server process: `python -m glmcore.serve SERVER_DIR` (detached) or `glmtui serve` in front.

Order matters for a user waiting on 13 GB: the address is bound first (a port in use is said at once), then the
model loads, then uvicorn serves on the bound socket. status.json follows: `starting`, `ready` (with the URL and
the models), `stopping`, `stopped` or `failed` with the reason. Stopping ends the engine first, so every answer
in flight is told it ends unfinished (glmcore.serve.http) before uvicorn closes the connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.runs import now_iso, process_start_time
from glmcore.serve.servers import ServeError, Server, ServerPlan, is_loopback
from glmcore.workspace import Workspace

log = logging.getLogger("glmcore.serve")


def bind(host: str, port: int) -> socket.socket:
    """The listening address, bound now so a port in use or a wrong host is refused before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port}: {error.strerror}; choose another --host or --port"
        ) from None
    sock.set_inheritable(False)
    return sock


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def serve_forever(
    server: Server,
    workspace: Workspace,
    key: str | None,
    *,
    sock: socket.socket | None = None,
    announce: Callable[[str], None] = lambda line: None,
    on_request: Callable[[dict], None] | None = None,
) -> int:
    """Load, serve until SIGINT/SIGTERM, and keep status.json true throughout; 0 after a clean stop."""
    plan = server.plan()
    server.write_status(
        state="starting", pid=os.getpid(), pid_start_time=process_start_time(os.getpid()), started=now_iso()
    )
    try:
        sock = sock or bind(plan.host, plan.port)
        port = sock.getsockname()[1]
        server.write_status(host=plan.host, port=port, url=url_of(plan.host, port))
        service = build_service(plan, workspace, server, announce=announce, on_request=on_request)
    except GlmError as error:
        server.write_status(state="failed", ended=now_iso(), reason=str(error))
        raise
    try:
        return _run_uvicorn(service, sock, key, server, announce)
    finally:
        service.engine.shutdown()


def build_service(plan: ServerPlan, workspace: Workspace, server: Server, *, announce, on_request):
    import torch

    from glmcore.estimate import context_tokens
    from glmcore.models.loading import load_model, load_tokenizer
    from glmcore.runs import RunStore
    from glmcore.serve.adapters import MIB
    from glmcore.serve.batching import Engine, plan_memory, shared_prompt_tokens
    from glmcore.serve.http import Service
    from glmcore.serve.registry import ModelRegistry, Selection

    registry = ModelRegistry(
        Path(plan.model),
        RunStore(workspace.runs_dir),
        Selection(tuple(plan.runs), tuple(plan.checkpoints)),
        on_change=lambda models: server.write_status(**models_status(models)),
    )
    registry.check()
    stored = f", {plan.four_bit}" if plan.quantization_bit == 4 else ""
    announce(f"Loading {plan.model} ({plan.quantization_bit}-bit{stored}) …")
    server.write_status(loading="the weights")
    model = load_model(plan.model, quantization_bit=plan.quantization_bit, four_bit=plan.four_bit)
    server.write_status(loading="the tokenizer")
    tokenizer = load_tokenizer(plan.model)
    server.write_status(loading="the key-value cache")
    positions = getattr(model.config, "max_position_embeddings", None) or 2048
    capacity = context_tokens(positions, plan.context)  # 8,192 unless asked: never a 5 GiB row per request
    dtype = model.get_input_embeddings().weight.dtype
    dtype = dtype if dtype.is_floating_point else torch.float16
    shared = shared_prompt_tokens(model, tokenizer, capacity)
    adapter_memory = int(plan.adapter_memory * MIB)
    memory = plan_memory(
        model, dtype, capacity, plan.max_batch, shared_tokens=shared, reserved_bytes=adapter_memory
    )

    engine = Engine(
        model,
        tokenizer,
        slots=memory.rows,
        capacity=capacity,
        blocks=memory.blocks,
        max_waiting=plan.max_queue,
        shared_tokens=shared,
        adapter_memory=adapter_memory,
    )

    def record(entry: dict) -> None:
        server.append_request(entry)
        if on_request is not None:
            on_request(entry)

    service = Service(engine, registry, max_request_bytes=plan.max_request_bytes, on_request=record)
    server.write_status(
        slots=memory.rows,
        blocks=memory.blocks,
        context=capacity,
        **models_status(registry.models()),
        loading=None,
    )
    return service


def models_status(models) -> dict:
    """status.json's `models` (their ids) and `kinds` (each one's kind)."""
    return {
        "models": [served.id for served in models],
        "kinds": {served.id: served.kind for served in models},
    }


def _run_uvicorn(service, sock: socket.socket, key: str | None, server: Server, announce) -> int:
    import uvicorn

    config = uvicorn.Config(
        service.app(key), log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5
    )
    uvicorn_server = uvicorn.Server(config)
    status = server.stored_status()

    original_startup = uvicorn_server.startup

    async def startup(sockets=None) -> None:
        await original_startup(sockets=sockets)
        server.write_status(state="ready")
        announce(f"Serving {', '.join(status.models)} at {status.url}")

    original_shutdown = uvicorn_server.shutdown

    async def shutdown(sockets=None) -> None:
        server.write_status(state="stopping")
        await asyncio.to_thread(service.engine.shutdown)
        await original_shutdown(sockets=sockets)

    uvicorn_server.startup = startup
    uvicorn_server.shutdown = shutdown
    try:
        uvicorn_server.run(sockets=[sock])
    except BaseException as error:
        server.write_status(state="failed", ended=now_iso(), reason=str(error) or type(error).__name__)
        raise
    server.write_status(state="stopped", ended=now_iso(), reason="stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The detached server: its folder's server.json says everything; the key comes from its key file."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m glmcore.serve SERVER_DIR", file=sys.stderr)
        return 2
    from glmcore.quiet import quiet_libraries

    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = Server(Path(args[0]).absolute())
    workspace = Workspace.from_env()
    try:
        plan = server.plan()
        key = Path(plan.key_file).read_text(encoding="utf-8").strip() if plan.key_file else None
        if not key and not is_loopback(plan.host):
            raise ServeError(f"{plan.host} is not a loopback address and no key was given")
        return serve_forever(server, workspace, key, announce=lambda line: log.info("%s", line))
    except GlmError as error:
        server.write_status(state="failed", ended=now_iso(), reason=str(error))
        print(f"glmcore.serve: {error}", file=sys.stderr)
        return 1
