"""How servers read as text, for `glmtui serve --list` and the Serve screen alike."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text

from glmcore.serve.servers import Server, ServerStatus
from glmtui.text.figures import format_duration

SERVER_STATE_STYLES = {
    "starting": "yellow",
    "ready": "bold green",
    "stopping": "yellow",
    "stopped": "dim",
    "failed": "bold red",
    "dead": "bold red",
}
SERVER_COLUMNS = ("Server", "State", "URL", "Models", "Requests")


def server_state_text(state: str) -> Text:
    return Text(state, style=SERVER_STATE_STYLES.get(state, ""))


KIND_LABELS = {"base": "base", "prefix": "prefix", "lora": "LoRA"}
"""How each kind of model a server offers is named: the base alone, a P-tuning prefix, a LoRA adapter."""


def server_cells(server_id: str, status: ServerStatus, answered: int) -> tuple[Text, ...]:
    """The figures of a server's row: id, state, URL, how many models it offers (the LoRA adapters among them
    said), requests answered."""
    adapters = sum(kind == "lora" for kind in _kinds(status).values())
    return (
        Text(server_id),
        server_state_text(status.state),
        Text(status.url or "-"),
        Text(f"{len(status.models)} ({adapters} {KIND_LABELS['lora']})" if adapters else str(len(status.models))),
        Text(str(answered)),
    )


def _kinds(status: ServerStatus) -> dict:
    return status.kinds if isinstance(status.kinds, dict) else {}  # a status.json edited by hand


def models_text(status: ServerStatus) -> Text:
    """The models a server offers, one a line, each with its kind (a server from before kinds were written
    shows the ids alone)."""
    text = Text()
    for index, model in enumerate(status.models):
        if index:
            text.append("\n")
        text.append(str(model))
        if kind := _kinds(status).get(model):
            text.append(f"  {KIND_LABELS.get(kind, str(kind))}", style="dim")
    return text


def stop_line(server: Server, before: ServerStatus, after: ServerStatus) -> str:
    """What `glmtui serve --stop` and the Serve screen say: a server already down is named with its state, as
    `--list` shows it."""
    if not before.is_active:
        return f"Server {server.id} is not running (it is {before.state}); there is nothing to stop."
    return f"Server {server.id} {after.state}."


def loading_line(model: str, status: ServerStatus, now: datetime) -> str:
    """A starting server: the model folder it loads, what it reads now and since when (as Chat says it)."""
    try:
        waited = format_duration((now - datetime.fromisoformat(status.started or "")).total_seconds())
    except (TypeError, ValueError):  # no start time yet, or one without an offset
        waited = ""
    step = ", ".join(part for part in (status.loading or "the model", waited) if part)
    return f"Loading {model.rstrip('/').rsplit('/', 1)[-1]} ({step}); it serves once loaded."


def client_snippet(url: str, model: str, key_file: str | None) -> str:
    """Python that talks to the server with the official client; the key is read from its file, never shown."""
    key = f'open("{key_file}").read().strip()' if key_file else '"none"'
    return (
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{url}", api_key={key})\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{model}", messages=[{{"role": "user", "content": "你好"}}])\n'
        "print(reply.choices[0].message.content)"
    )


def request_line(record: dict) -> Text:
    """One answered request: when, which model, tokens in (those copied from a shared prompt beginning said),
    tokens out, speed, how it ended."""
    speed = f"{record['tokens_per_s']:.1f} tok/s" if record.get("tokens_per_s") else "-"
    first = (
        f"first {record['first_token_s'] * 1000:.0f} ms" if record.get("first_token_s") is not None else ""
    )
    clock = str(record.get("time", ""))[11:19]
    finish = record.get("finish", "")
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(f"{clock} ", style="dim")
    line.append(f"{record.get('model', '?')} ", style="bold")
    cached = f" ({record['cached_tokens']} cached)" if record.get("cached_tokens") else ""
    line.append(
        f"{record.get('prompt_tokens', 0)}{cached}→{record.get('completion_tokens', 0)} tok  {speed}  {first} "
    )
    line.append(finish, style="red" if finish in ("error", "cancelled") else "green")
    return line
