"""Servers as folders: `<workspace>/servers/<id>/`, written by the server process, read by anyone (docs/serve.md).

Like a run, a server outlives the terminal that started it and is known by its files, not by talking to it:
`server.json` (what was asked: model, prefixes, host, port, limits, the key file's path, never the key),
`status.json` (state, pid and its start time, the URL, the models offered, written atomically), `server.log`
(the process's output) and `requests.jsonl` (one line per request answered). A status that says `starting`,
`ready` or `stopping` while its pid is gone, or belongs to a process with another start time, is shown as
`dead`. Stopping is SIGTERM to that process, which stops taking requests, ends the answers in flight and exits.

Keys: a key comes from `--api-key-file` or `$GLMTUI_API_KEY`; a host other than loopback without one gets a
generated key in `<workspace>/servers/api-key` (mode 0600, made once and reused, its path printed). A detached
server reads its key from a file whose path is in server.json, so the key is in no process's argv or
environment and no log.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.process_identity import process_matches, process_start_time
from glmcore.runs import now_iso
from glmcore.workspace import Workspace, atomic_write_text, new_numbered_folder

KEY_ENV = "GLMTUI_API_KEY"
GENERATED_KEY_NAME = "api-key"
ACTIVE_STATES = ("starting", "ready", "stopping")
DEFAULT_PORT = 8000
DEFAULT_MAX_REQUEST_BYTES = 1 << 20
DEFAULT_ADAPTER_MEMORY_MIB = 512
"""MiB held for LoRA adapters: about 70 of ChatGLM-6B at rank 8 in 16-bit (7.3 MiB each)."""
DEFAULT_MAX_BATCH = 128
"""Rows decoded together at most: the KV cache is paged, so a row takes memory only for what it holds (fewer rows
where the GPU's budget cannot gather that many, glmcore.serve.batching.plan_memory)."""
DEFAULT_MAX_QUEUE = 64
"""Requests that may wait for a free row or unreserved key-value blocks before the server answers 429."""


class ServeError(GlmError):
    """A server cannot be planned, started, found or stopped as asked."""


@dataclass
class ServerPlan:
    """What `glmtui serve` was asked for: the contents of server.json."""

    model: str
    runs: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    quantization_bit: int = 16
    key_file: str | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    context: int | None = None
    """Columns per row of the KV cache (prefix + prompt + answer), capped by the model's positions; None:
    glmcore.estimate.DEFAULT_CONTEXT (8,192)."""
    max_queue: int = DEFAULT_MAX_QUEUE
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    adapter_memory: float = DEFAULT_ADAPTER_MEMORY_MIB
    """MiB of the device held for LoRA adapters (loaded on first use, least recently used evicted)."""
    four_bit: str = "nf4"
    """How 4-bit weights are stored: nf4 or int4 (`glmcore.models.int4`)."""

    @classmethod
    def from_dict(cls, data: dict) -> ServerPlan:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


@dataclass(frozen=True)
class ApiKey:
    value: str | None
    file: Path | None = None
    generated: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read, created with that mode (never readable by others, even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def resolve_api_key(host: str, key_file: Path | None, workspace: Workspace, environ=os.environ) -> ApiKey:
    """The key requests must carry: from `key_file`, else `$GLMTUI_API_KEY`, else generated for a host that is
    not loopback (loopback without a key serves anyone on this machine, as the user chose)."""
    if key_file is not None:
        try:
            value = Path(key_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ServeError(f"cannot read the API key file {key_file}: {error.strerror}") from None
        if not value:
            raise ServeError(f"the API key file {key_file} is empty; write the key in it")
        return ApiKey(value, Path(key_file).expanduser().absolute())
    if value := environ.get(KEY_ENV, "").strip():
        return ApiKey(value)
    if is_loopback(host):
        return ApiKey(None)
    path = servers_dir(workspace) / GENERATED_KEY_NAME
    if path.is_file() and (value := path.read_text(encoding="utf-8").strip()):
        return ApiKey(value, path, generated=True)
    write_private(path, secrets.token_urlsafe(32) + "\n")
    return ApiKey(path.read_text(encoding="utf-8").strip(), path, generated=True)


def servers_dir(workspace: Workspace) -> Path:
    return workspace.root / "servers"


@dataclass
class ServerStatus:
    state: str
    pid: int | None = None
    pid_start_time: float | None = None
    host: str | None = None
    port: int | None = None
    url: str | None = None
    models: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    """Each model's kind: "base", "prefix" or "lora" (none in a server folder written before LoRA was served)."""
    slots: int | None = None
    blocks: int | None = None
    """The KV cache's blocks of 16 tokens the rows share (none in a server folder written before they were)."""
    context: int | None = None
    started: str | None = None
    ended: str | None = None
    reason: str | None = None
    loading: str | None = None
    """While `starting`: what the process reads now (the weights, the tokenizer, the key-value cache)."""

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES


class Server:
    """One server folder."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._append_lock = threading.Lock()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Server) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def plan_path(self) -> Path:
        return self.path / "server.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def log_path(self) -> Path:
        return self.path / "server.log"

    @property
    def requests_path(self) -> Path:
        return self.path / "requests.jsonl"

    def write_plan(self, plan: ServerPlan) -> None:
        atomic_write_text(self.plan_path, json.dumps(asdict(plan), indent=2) + "\n")

    def plan(self) -> ServerPlan:
        return ServerPlan.from_dict(json.loads(self.plan_path.read_text(encoding="utf-8")))

    def stored_status(self) -> ServerStatus:
        try:
            data = json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return ServerStatus("starting")
        return ServerStatus(
            **{name: data[name] for name in ServerStatus.__dataclass_fields__ if name in data}
        )

    def status(self) -> ServerStatus:
        """The stored status, `dead` where it claims a process that is gone."""
        status = self.stored_status()
        if (
            status.is_active
            and status.pid is not None
            and not process_matches(status.pid, status.pid_start_time)
        ):
            status.state = "dead"
            status.reason = status.reason or f"the server process (pid {status.pid}) ended without a word"
        return status

    def write_status(self, **changes: object) -> ServerStatus:
        status = asdict(self.stored_status())
        status.update(changes)
        atomic_write_text(self.status_path, json.dumps(status, indent=2) + "\n")
        return ServerStatus(**status)

    def append_request(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._append_lock, open(self.requests_path, "a", encoding="utf-8") as handle:
            handle.write(line)

    def answered(self) -> int:
        """How many requests the server has answered (the lines of requests.jsonl)."""
        try:
            with self.requests_path.open("rb") as log:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: log.read(1 << 20), b""))
        except OSError:
            return 0

    def requests(self, last: int = 200) -> list[dict]:
        """The latest `last` requests answered, oldest first (a line cut short by a crash is skipped)."""
        try:
            lines = self.requests_path.read_text(encoding="utf-8").splitlines()[-last:]
        except OSError:
            return []
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records


def list_servers(workspace: Workspace) -> list[Server]:
    """Every server folder, newest first."""
    folder = servers_dir(workspace)
    if not folder.is_dir():
        return []
    found = [Server(path) for path in folder.iterdir() if (path / "server.json").is_file()]
    return sorted(found, key=lambda server: server.id, reverse=True)


def create_server(workspace: Workspace, plan: ServerPlan) -> Server:
    folder = servers_dir(workspace)
    path = new_numbered_folder(folder, f"{datetime.now():%Y%m%d-%H%M%S}-{plan.port}")
    if path is None:
        raise ServeError(f"cannot find a free server folder name in {folder}")
    server = Server(path)
    server.write_plan(plan)
    return server


def resolve_server(workspace: Workspace, name: str) -> Server:
    """A server by its id, a unique prefix of it, or its port: the active server on it, else the newest one that
    used it (a stopped server is found as `--list` shows it)."""
    servers = list_servers(workspace)
    exact = [server for server in servers if server.id == name]
    matches = exact or [server for server in servers if server.id.startswith(name)]
    if not matches and name.isdigit():
        on_port = [server for server in servers if server.stored_status().port == int(name)]
        matches = [server for server in on_port if server.status().is_active] or on_port[:1]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ServeError(f"{name!r} names {len(matches)} servers; give more of the id (glmtui serve --list)")
    raise ServeError(f"no server {name!r} in {servers_dir(workspace)}; glmtui serve --list shows them")


def check_limits(plan: ServerPlan) -> None:
    """Refuse a port or limits no server can serve with, before any folder exists."""
    if not 0 <= plan.port <= 65535:
        raise ServeError(f"--port {plan.port} is not a port: give one from 1 to 65535, or 0 to pick a free one")
    if plan.max_batch < 1:
        raise ServeError(f"--max-batch {plan.max_batch} would decode no request: give 1 or more")
    if plan.context is not None and plan.context < 1:
        raise ServeError(
            f"--context {plan.context} leaves no room for a request: give the tokens one request may take "
            "(prefix + prompt + answer), or leave it out for 8,192 (or the model's positions, if fewer)"
        )
    if plan.max_queue < 0:
        raise ServeError(f"--max-queue {plan.max_queue} is negative: give 0 (no waiting) or more")
    if plan.adapter_memory < 0:
        raise ServeError(
            f"--adapter-memory {plan.adapter_memory} is negative: give the MiB LoRA adapters may take (0: none)"
        )


def plan_server(
    workspace: Workspace,
    *,
    model: Path | None,
    runs: list[str],
    checkpoints: list[str],
    quantization_bit: int | None,
    four_bit: str = "nf4",
    **options,
) -> ServerPlan:
    """What to serve, checked before anything starts: the model (given, or the first run's), the runs named,
    every one a P-tuning or LoRA run of that model (others are refused, pointing to `glmtui export`), and the
    4-bit format (int4 means 4-bit unless the bits are given)."""
    from glmcore.models import int4
    from glmcore.models.checkpoint import model_folder_problems
    from glmcore.models.loading import tokenizer_problem
    from glmcore.runs import RunStore
    from glmcore.serve.registry import ModelRegistry, Selection, refused_method

    check_limits(ServerPlan(model="", **options))
    store = RunStore(workspace.runs_dir)
    first = store.resolve(runs[0]) if runs else None
    if first is not None and (problem := refused_method(first)):
        raise ServeError(problem)
    if model is None and first is None:
        raise ServeError("Name the model folder with --model, or a run with --run.")
    model = Path(model or first.config.model_path).expanduser().absolute()
    if problems := model_folder_problems(model):
        raise ServeError(f"{problems[0]}; give a complete model folder with --model")
    if problem := tokenizer_problem(model):
        raise ServeError(f"{problem}.")
    ModelRegistry(model, store, Selection(tuple(runs), tuple(checkpoints))).check()
    bits = int4.resolve_bits(
        quantization_bit, four_bit, first.config.quantization_bit if first is not None else 16
    )
    int4.check_four_bit(four_bit, bits)
    return ServerPlan(
        model=str(model),
        runs=list(runs),
        checkpoints=list(checkpoints),
        quantization_bit=bits,
        four_bit=four_bit,
        **options,
    )


def start_detached(workspace: Workspace, plan: ServerPlan, key: ApiKey, *, timeout: float = 600.0) -> Server:
    """Start `python -m glmcore.serve SERVER_DIR` in its own session and wait until it serves or fails.

    The key reaches it through a file only: the user's key file, or a copy of `$GLMTUI_API_KEY` written into the
    server folder with mode 0600.
    """
    server = create_server(workspace, plan)
    if key.value is not None and key.file is None:
        write_private(server.path / GENERATED_KEY_NAME, key.value + "\n")
        plan.key_file = str(server.path / GENERATED_KEY_NAME)
    elif key.file is not None:
        plan.key_file = str(key.file)
    server.write_plan(plan)
    environment = {name: value for name, value in os.environ.items() if name != KEY_ENV}
    environment["GLMTUI_HOME"] = str(workspace.root)
    with open(server.log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "glmcore.serve", str(server.path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=server.path,
            env=environment,
            start_new_session=True,
        )
    server.write_status(
        state="starting", pid=process.pid, pid_start_time=process_start_time(process.pid), started=now_iso()
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.stored_status()
        if status.state == "ready":
            return server
        if process.poll() is not None or status.state in ("failed", "stopped"):
            reason = server.stored_status().reason or last_log_line(server)
            raise ServeError(f"the server did not start: {reason} (log: {server.log_path})")
        time.sleep(0.2)
    raise ServeError(f"the server has not started after {timeout:.0f} s; see {server.log_path}")


def last_log_line(server: Server) -> str:
    try:
        lines = [line for line in server.log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return "it left no log"
    return lines[-1] if lines else "it left no log"


def stop_server(server: Server, timeout: float = 30.0) -> ServerStatus:
    """SIGTERM the server's process (the pid checked against its start time) and wait for it to end."""
    status = server.status()
    if not status.is_active:
        return status
    with contextlib.suppress(ProcessLookupError):  # it may have ended since status() looked
        os.kill(status.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_matches(status.pid, status.pid_start_time):
        time.sleep(0.1)
    if process_matches(status.pid, status.pid_start_time):
        raise ServeError(f"server {server.id} (pid {status.pid}) has not stopped after {timeout:.0f} s")
    if server.stored_status().is_active:
        server.write_status(state="stopped", ended=now_iso(), reason="stopped")
    return server.status()
