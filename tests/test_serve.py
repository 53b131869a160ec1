"""`glmtui serve`: real detached server processes on the tiny model, driven by the official `openai` client.

Two servers are shared by every test here: `wide` (8 rows, a key from $GLMTUI_API_KEY) over a workspace with two
P-tuning runs, a full fine-tuning run and a run whose newer checkpoints have crafted headers, and `narrow` (1 row, no waiting
queue) for the disconnect and the 429. The last test stops `narrow` with a stream open.
"""

from __future__ import annotations

import json
import shutil
import stat
import struct
import subprocess
import threading
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
from support.app import tiny_config, write_run
from support.serving import start_glmtui

from glmcore.serve.servers import Server, list_servers, resolve_api_key
from glmcore.workspace import Workspace

KEY = "test-key-4f1c9a"
ANSWER_TOKENS = 16
QUESTIONS = ("你好", "hello world", "今天天气怎么样")
ALPHA, BETA, GAMMA = "20260501-100000-alpha", "20260501-110000-beta", "20260501-140000-gamma"
LORA = "20260501-150000-lora"

pytestmark = pytest.mark.slow


def _prefix_checkpoint(model_dir: Path, folder: Path, *, seed: int, strength: float) -> None:
    """A complete P-tuning checkpoint whose prefix is strong enough to change the tiny model's answers."""
    import torch

    import glmcore
    from glmcore.prefix import save_prefix_checkpoint

    torch.manual_seed(seed)
    model = glmcore.load_model(model_dir, pre_seq_len=4 + seed)
    with torch.no_grad():
        model.transformer.prefix_encoder.embedding.weight.mul_(strength)
    save_prefix_checkpoint(model, folder)
    (folder / "trainer_state.json").write_text("{}")


def _adapter_checkpoint(model_dir: Path, folder: Path) -> None:
    """A complete LoRA checkpoint (PEFT's files) whose random adapter changes the tiny model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    import glmcore

    torch.manual_seed(0)
    config = LoraConfig(r=2, target_modules=["query_key_value"], init_lora_weights=False)
    get_peft_model(glmcore.load_model(model_dir), config).save_pretrained(str(folder))
    (folder / "trainer_state.json").write_text("{}")


CRAFTED_HEADERS = {
    "checkpoint-20": b"[]",  # JSON, but not an object
    "checkpoint-30": b"{}",  # behind a length of 2**62
    "checkpoint-40": json.dumps({"embedding.weight": {"dtype": "F32", "shape": [1]}}).encode(),  # no data_offsets
}


def _crafted_checkpoints(good: Path) -> None:
    """Copies of the whole checkpoint `good` beside it, each with a prefix.safetensors header crafted to break a
    reader that trusts it."""
    for name, header in CRAFTED_HEADERS.items():
        folder = good.parent / name
        shutil.copytree(good, folder)
        length = 2**62 if name == "checkpoint-30" else len(header)
        (folder / "prefix.safetensors").write_bytes(struct.pack("<Q", length) + header)


def _glmtui(workspace: Workspace, *args: str, env: dict | None = None, **options) -> subprocess.Popen:
    return start_glmtui(workspace.root, *args, env=env, **options)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from glmcore.models.chatglm6b.tiny import write_tiny_checkpoint

    workspace = Workspace(tmp_path_factory.mktemp("serve") / "ws").ensure()
    model = write_tiny_checkpoint(workspace.models_dir / "tiny-chatglm", init_std=0.5, seed=2)
    alpha = write_run(
        workspace, "20260501-100000-alpha", tiny_config(workspace), state="finished", step=20, losses=[]
    )
    beta = write_run(
        workspace, "20260501-110000-beta", tiny_config(workspace), state="finished", step=10, losses=[]
    )
    full = tiny_config(workspace, method="full")
    write_run(workspace, "20260501-120000-full", full, state="finished", step=10, losses=[])
    _prefix_checkpoint(model, alpha.checkpoints_dir / "checkpoint-10", seed=0, strength=2)
    _prefix_checkpoint(model, alpha.checkpoints_dir / "checkpoint-20", seed=1, strength=4)
    _prefix_checkpoint(model, beta.checkpoints_dir / "checkpoint-10", seed=2, strength=5)
    gamma = write_run(workspace, GAMMA, tiny_config(workspace), state="finished", step=40, losses=[])
    _prefix_checkpoint(model, gamma.checkpoints_dir / "checkpoint-10", seed=3, strength=3)
    _crafted_checkpoints(gamma.checkpoints_dir / "checkpoint-10")
    lora = write_run(workspace, LORA, tiny_config(workspace, method="lora"), state="finished", step=10, losses=[])
    _adapter_checkpoint(model, lora.checkpoints_dir / "checkpoint-10")
    return workspace


def _start(workspace: Workspace, *options: str, env: dict | None = None) -> subprocess.Popen:
    model = workspace.models_dir / "tiny-chatglm"
    return _glmtui(workspace, "serve", "--model", str(model), "--port", "0", "--detach", *options, env=env)


@pytest.fixture(scope="module")
def servers(workspace: Workspace):
    """Both servers, started side by side (each loads the model on its own), stopped with --stop at the end."""
    wide = _start(workspace, "--max-batch", "8", "--context", "96", env={"GLMTUI_API_KEY": KEY})
    narrow = _start(workspace, "--max-batch", "1", "--max-queue", "0", "--context", "2048")
    started = {}
    for name, process in (("wide", wide), ("narrow", narrow)):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err + out
        server_id = out.split("Server ", 1)[1].split()[0]
        started[name] = Server(workspace.root / "servers" / server_id)
    yield started
    for server in started.values():  # the last test has stopped narrow already
        stopping = _glmtui(workspace, "serve", "--stop", server.id)
        out, err = stopping.communicate(timeout=60)
        assert stopping.returncode == 0, err
        assert server.status().state == "stopped"


def _client(server: Server, key: str | None = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.status().url, api_key=key or "none", max_retries=0, timeout=120)


def _ask(client: openai.OpenAI, model: str, question: str, **options) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=ANSWER_TOKENS,
        **options,
    )
    return reply.choices[0].message.content


def _streamed(client: openai.OpenAI, model: str, question: str) -> str:
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=ANSWER_TOKENS,
        stream=True,
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def test_lists_the_base_every_whole_prefix_and_adapter_checkpoint_but_not_full_fine_tuning(servers):
    """Crafted headers neither stop the servers from starting nor the listing: those checkpoints are left out
    and a request for one is told why; the run stands for its whole checkpoint once its check passes the
    damaged ones over, else it is left out with its reason too."""
    client = _client(servers["wide"])
    kinds = {model.id: model.kind for model in client.models.list()}
    assert {name: kind for name, kind in kinds.items() if name != GAMMA} == {
        "tiny-chatglm": "base",
        ALPHA: "prefix",
        f"{ALPHA}/checkpoint-10": "prefix",
        f"{ALPHA}/checkpoint-20": "prefix",
        BETA: "prefix",
        f"{BETA}/checkpoint-10": "prefix",
        f"{GAMMA}/checkpoint-10": "prefix",
        LORA: "lora",
        f"{LORA}/checkpoint-10": "lora",
    }
    assert _ask(client, LORA, "hi") != _ask(client, "tiny-chatglm", "hi"), "the adapter is applied"
    for name in CRAFTED_HEADERS:
        with pytest.raises(openai.NotFoundError, match="cannot be served") as refused:
            _ask(client, f"{GAMMA}/{name}", "hi")
        assert name in str(refused.value)
    if GAMMA in kinds:
        assert _ask(client, GAMMA, "hi") == _ask(client, f"{GAMMA}/checkpoint-10", "hi")
    else:
        with pytest.raises(openai.NotFoundError, match="cannot be served"):
            _ask(client, GAMMA, "hi")


@pytest.fixture(scope="module")
def chat_answers(workspace: Workspace) -> dict[str, str]:
    """`glmtui chat --greedy` with no prefix, then alpha's latest checkpoint, then beta's: the reference."""
    checkpoints = {
        "tiny-chatglm": "off",
        ALPHA: workspace.runs_dir / ALPHA / "checkpoints" / "checkpoint-20",
        BETA: workspace.runs_dir / BETA / "checkpoints" / "checkpoint-10",
    }
    script = "".join(f"/prefix {path}\n/clear\n{QUESTIONS[0]}\n" for path in checkpoints.values())
    model = workspace.models_dir / "tiny-chatglm"
    chat = _glmtui(
        workspace,
        "chat",
        "--model",
        str(model),
        "--greedy",
        "--max-new-tokens",
        str(ANSWER_TOKENS),
        stdin=subprocess.PIPE,
    )
    out, err = chat.communicate(script, timeout=300)
    assert chat.returncode == 0, err
    return dict(zip(checkpoints, out.split("\n")[: len(checkpoints)], strict=True)) | {"_stdout": out}


def test_chat_streaming_and_completion_give_glmtui_chats_greedy_answers(servers, chat_answers):
    client = _client(servers["wide"])
    answers = {model: _ask(client, model, QUESTIONS[0]) for model in ("tiny-chatglm", ALPHA, BETA)}
    assert chat_answers["_stdout"] == "".join(f"{answers[model]}\n" for model in answers)
    assert len(set(answers.values())) == 3, "each prefix changes the answer"
    assert _streamed(client, BETA, QUESTIONS[0]) == answers[BETA]
    assert _ask(client, f"{ALPHA}/checkpoint-20", QUESTIONS[0]) == answers[ALPHA]

    completion = client.completions.create(model=ALPHA, prompt=QUESTIONS[1], max_tokens=5, temperature=0)
    assert completion.choices[0].finish_reason in ("length", "stop")
    assert completion.usage.completion_tokens <= 5 and completion.usage.prompt_tokens > 0
    assert completion.choices[0].text


def test_eight_concurrent_streams_over_three_prefixes_answer_as_alone(servers):
    client = _client(servers["wide"])
    asks = [(model, question) for model in ("tiny-chatglm", ALPHA, BETA) for question in QUESTIONS][:8]
    alone = {ask: _ask(client, *ask) for ask in asks}
    together: dict[tuple[str, str], str] = {}
    start = threading.Barrier(len(asks))

    def stream(ask: tuple[str, str]) -> None:
        start.wait()
        together[ask] = _streamed(client, *ask)

    threads = [threading.Thread(target=stream, args=(ask,)) for ask in asks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert together == alone
    batched = [record["batch"] for record in servers["wide"].requests()[-len(asks) :]]
    assert max(batched) > 1, f"the streams shared decoding steps: {batched}"


def test_refusals_are_the_apis_error_json(servers):
    client = _client(servers["wide"])
    with pytest.raises(openai.NotFoundError) as unknown:
        _ask(client, "no-such-model", "hi")
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
    with pytest.raises(openai.NotFoundError, match="glmtui export"):
        _ask(client, "20260501-120000-full", "hi")
    with pytest.raises(openai.NotFoundError):
        _ask(client, "../../../etc/passwd", "hi")
    with pytest.raises(openai.BadRequestError) as wrong_role:
        client.chat.completions.create(model=ALPHA, messages=[{"role": "robot", "content": "hi"}])
    assert wrong_role.value.param == "messages.0.role"

    url = servers["wide"].status().url
    headers = {"Authorization": f"Bearer {KEY}"}
    for body, param in ((b'{"model": "x", "messages": [', None), (b'{"model": "tiny-chatglm"}', "messages")):
        response = httpx.post(f"{url}/chat/completions", content=body, headers=headers)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param
        assert "Traceback" not in response.text
    too_big = httpx.post(f"{url}/completions", content=b" " * (2 << 20), headers=headers)
    assert too_big.status_code == 413 and too_big.json()["error"]["message"]


def test_a_key_is_needed_and_is_in_no_command_line_or_log(servers):
    for key in (None, "wrong"):
        with pytest.raises(openai.AuthenticationError):
            _client(servers["wide"], key).models.list()
    server = servers["wide"]
    pid = server.status().pid
    assert KEY not in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    assert KEY.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    assert KEY not in server.log_path.read_text() + server.plan_path.read_text()
    key_file = Path(server.plan().key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_a_disconnect_frees_the_row_and_a_full_queue_answers_429(servers):
    server = servers["narrow"]
    client = _client(server, None)
    stream = client.chat.completions.create(
        model="tiny-chatglm",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0,
        max_tokens=1900,
        stream=True,
    )
    chunks = iter(stream)
    next(chunks), next(chunks)  # the one row is decoding this answer

    with pytest.raises(openai.RateLimitError) as refused:
        _ask(client, "tiny-chatglm", "hi")
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.body["type"] == "rate_limit_error"

    stream.close()  # the server notices at once and frees the row at its next step: a retry gets it
    assert _ask(client.with_options(max_retries=3), "tiny-chatglm", "hi")
    cancelled = [record for record in server.requests() if record["finish"] == "cancelled"]
    assert cancelled and cancelled[0]["completion_tokens"] < 1900


def test_a_host_beyond_loopback_without_a_key_gets_a_generated_one(workspace: Workspace, monkeypatch):
    monkeypatch.delenv("GLMTUI_API_KEY", raising=False)
    assert resolve_api_key("127.0.0.1", None, workspace).value is None
    # 192.0.2.1 (TEST-NET-1) is nobody's address: the key is made before the bind, which then fails.
    model = workspace.models_dir / "tiny-chatglm"
    command = _glmtui(workspace, "serve", "--model", str(model), "--host", "192.0.2.1", "--port", "0")
    out, err = command.communicate(timeout=120)
    assert command.returncode == 1
    key_file = workspace.root / "servers" / "api-key"
    assert str(key_file) in out.replace("\n", "")
    assert "cannot listen on 192.0.2.1" in err
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 32 and key not in out + err
    again = resolve_api_key("0.0.0.0", None, workspace)
    assert (again.value, again.file, again.generated) == (key, key_file, True)
    assert all(server.status().state != "failed" for server in list_servers(workspace)), "nothing half-made"


def test_list_shows_the_servers(workspace: Workspace, servers):
    listing = _glmtui(workspace, "serve", "--list")
    out, _ = listing.communicate(timeout=60)
    for server in servers.values():
        assert server.id in out and server.status().url in out
    assert " (2 LoRA)" in out and f"{LORA}  LoRA" in out and f"{ALPHA}  prefix" in out
    assert json.loads(servers["wide"].status_path.read_text())["state"] == "ready"


async def test_the_serve_screen_starts_shows_and_stops_a_server(workspace: Workspace, servers):
    from support.app import make_app, settle
    from support.waiting import wait_until_in_app

    answer = _ask(_client(servers["narrow"], None), "tiny-chatglm", "hi")
    app = make_app(workspace)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("f9")
        screen = pilot.app.screen
        table = screen.query_one("#serve-table")
        await wait_until_in_app(pilot, lambda: table.row_count >= 2, "both servers listed")
        await pilot.press(*["down"] * list(screen.rows).index(servers["narrow"].id))
        await settle(pilot)
        snippet = str(screen.query_one("#serve-snippet").render())
        assert servers["narrow"].status().url in snippet and "from openai import OpenAI" in snippet
        log = str(screen.query_one("#serve-requests").render())
        assert "tok/s" in log and f"tiny-chatglm 4→{ANSWER_TOKENS} tok" in log and answer, (
            "the request just answered"
        )

        port = screen.query_one("#serve-port")
        port.value = "0"
        await pilot.press("s")
        await wait_until_in_app(pilot, lambda: table.row_count >= 3, "the started server listed")
        assert screen.selected_id() == list(screen.rows)[0], "the server being started is highlighted"
        await wait_until_in_app(
            pilot, lambda: screen.rows[screen.selected_id()].status.state != "starting", "the server ready"
        )
        started = screen.rows[screen.selected_id()]
        assert started.server not in servers.values() and started.status.state == "ready"
        assert ALPHA in started.status.models
        shown = str(screen.query_one("#serve-model-list").render())
        assert f"{LORA}  LoRA" in shown and f"{ALPHA}  prefix" in shown and "tiny-chatglm  base" in shown
        await pilot.press("x")
        await wait_until_in_app(pilot, lambda: not started.server.status().is_active, "the server stopped")
        await settle(pilot)
        assert started.server.status().state == "stopped"


async def test_x_on_a_server_still_loading_stops_it_without_an_error(workspace: Workspace, servers):
    from support.app import make_app, settle
    from support.waiting import wait_until_in_app

    app = make_app(workspace)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("f9")
        screen = pilot.app.screen
        await wait_until_in_app(pilot, lambda: screen.query_one("#serve-table").row_count >= 2, "the servers")
        screen.query_one("#serve-port").value = "0"
        await pilot.press("s")
        about = screen.query_one("#serve-about")
        await wait_until_in_app(pilot, lambda: "Loading tiny-chatglm" in str(about.render()), "the load")
        loading = screen.rows[screen.selected_id()].server
        await pilot.press("x")
        await wait_until_in_app(pilot, lambda: not screen.starting, "the start given up")
        await settle(pilot)
        assert loading.status().state == "stopped"
        assert [n.severity for n in app.notifications] == ["information", "information"], [
            n.message for n in app.notifications
        ]


def test_a_run_that_saves_later_is_served_without_a_restart(workspace: Workspace, servers):
    client = _client(servers["wide"])
    late = "20260501-130000-late"
    assert late not in {model.id for model in client.models.list()}
    run = write_run(workspace, late, tiny_config(workspace), state="running", step=10, losses=[])
    _prefix_checkpoint(
        workspace.models_dir / "tiny-chatglm", run.checkpoints_dir / "checkpoint-10", seed=3, strength=4
    )
    assert _ask(client, late, QUESTIONS[0])  # an id not known yet makes the server read the runs again
    assert {late, f"{late}/checkpoint-10"} <= {model.id for model in client.models.list()}
    assert late in servers["wide"].status().models


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--max-batch", "0"], "--max-batch 0 would decode no request"),
        (["--max-batch", "-2"], "--max-batch -2 would decode no request"),
        (["--context", "-1"], "--context -1 leaves no room for a request"),
        (["--port", "70000"], "--port 70000 is not a port"),
        (["--max-queue", "-1"], "--max-queue -1 is negative"),
        (["--adapter-memory", "-5"], "--adapter-memory -5.0 is negative"),
    ],
)
def test_limits_no_server_can_serve_with_are_refused_before_any_folder(tmp_path, monkeypatch, capsys, option, said):
    from glmtui.cli import main

    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "ws"))
    assert main(["serve", "--model", str(tmp_path / "model"), "--detach", *option]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and said in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "ws" / "servers").exists()


def test_stopping_ends_an_open_stream_with_an_error_and_its_port_names_it_stopped(
    workspace, servers, capsys, monkeypatch
):
    """Runs last: it stops `narrow`. The stream's last event carries an `error` object, so the client raises
    APIError instead of returning a quietly cut answer; then `--stop PORT` and `--list` agree it is stopped."""
    from glmtui.cli import main

    monkeypatch.setenv("GLMTUI_HOME", str(workspace.root))
    server = servers["narrow"]
    port = server.status().port
    stream = _client(server, None).chat.completions.create(
        model="tiny-chatglm", messages=[{"role": "user", "content": "hi"}], max_tokens=1900, stream=True
    )
    chunks = iter(stream)
    next(chunks), next(chunks)  # the answer is being written
    ended: list[BaseException] = []

    def read_to_the_end() -> None:
        try:
            for _ in chunks:
                pass
        except openai.APIError as error:
            ended.append(error)

    reader = threading.Thread(target=read_to_the_end)
    reader.start()
    assert main(["serve", "--stop", server.id]) == 0
    reader.join(60)
    assert [type(error) for error in ended] == [openai.APIError], ended
    assert "The server is stopping, so this answer ends unfinished" in str(ended[0])
    assert server.requests()[-1]["finish"] == "error"

    assert main(["serve", "--stop", str(port)]) == 0
    assert main(["serve", "--list"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"Server {server.id} stopped. Server {server.id} is not running (it is stopped); there is nothing" in out
    assert f"{server.id} stopped" in out.split("Requests", 1)[1], "--list shows it stopped"
