"""LoRA runs served over the same base as prefixes (issue 35), on tiny ChatGLM3-6B in fp32.

One LoRA run is trained for real (two steps, in-process) and copied into a second run; their adapters are made
strong enough to change the tiny model's answers (B scaled by 8 and by -8) and exported (merged). Every answer
is compared with the exported model's greedy one, through the server's endpoints in-process (the `openai`
client over an ASGI transport), through chat and through evaluation.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from support.app import make_app, settle, tiny_config, write_run
from support.waiting import wait_until_in_app

from glmcore.models import CHATGLM3_6B
from glmcore.runs import RunStore
from glmcore.workspace import Workspace

QUESTIONS = ("你好", "hello world")
NEW_TOKENS = 8
LORA_A, LORA_B = "20261201-100000-lora-a", "20261201-110000-lora-b"
PREFIX_A, PREFIX_B = "20261201-120000-prefix-a", "20261201-130000-prefix-b"
OTHER_BASE = "20261201-140000-other-base"


def _scale_adapter(checkpoint: Path, factor: float) -> None:
    from safetensors.torch import load_file, save_file

    path = checkpoint / "adapter_model.safetensors"
    weights = load_file(str(path))
    scaled = {name: tensor * factor if "lora_B" in name else tensor for name, tensor in weights.items()}
    save_file(scaled, str(path), metadata={"format": "pt"})


def _prefix_run(workspace: Workspace, run_id: str, model_dir: Path, *, seed: int, strength: float) -> Path:
    import torch

    import glmcore
    from glmcore.prefix import save_prefix_checkpoint

    run = write_run(
        workspace, run_id, tiny_config(workspace, model_path=model_dir), state="finished", step=2, losses=[]
    )
    torch.manual_seed(seed)
    model = glmcore.load_model(model_dir, pre_seq_len=4 + seed)
    with torch.no_grad():
        model.transformer.prefix_encoder.embedding.weight.mul_(strength)
    checkpoint = save_prefix_checkpoint(model, run.checkpoints_dir / "checkpoint-2")
    (checkpoint / "trainer_state.json").write_text("{}")
    return checkpoint


def _greedy_answer(model, tokenizer, family, question: str) -> str:
    """The model's greedy answer to a first chat turn, its tokens rendered as the server renders them."""
    from glmcore.generation import generate
    from glmcore.serve.openai_api import AnswerText

    prompt = family.chat_prompt_ids(tokenizer, question, [])
    stops = family.stop_token_ids(tokenizer)
    (tokens,) = generate(
        model, [prompt], max_new_tokens=NEW_TOKENS, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id
    )
    text = AnswerText(tokenizer, family, [], clean=True)
    return "".join(text.add(token) for token in tokens if token not in stops) + text.finish()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict:
    """The workspace (a tiny ChatGLM3 base, two LoRA runs, two P-tuning runs, a LoRA run made on ChatGLM-6B)
    and the greedy answer of each model id to each question, from the exported models and plain chat."""
    from peft import LoraConfig, get_peft_model
    from test_train import make_config

    import glmcore
    from glmcore.export import export_run
    from glmcore.prefix import install_prefix_checkpoint
    from glmcore.train import train

    workspace = Workspace(tmp_path_factory.mktemp("serve-lora") / "ws").ensure()
    model_dir = CHATGLM3_6B.implementation().write_tiny_checkpoint(
        workspace.models_dir / "tiny-chatglm3", init_std=0.5, seed=2
    )
    data = workspace.root / "train.json"
    data.write_text(
        '{"content": "类型#上衣*颜色#白色", "summary": "白色上衣简约百搭"}\n' * 8, encoding="utf-8"
    )
    dev = workspace.root / "dev.json"
    dev.write_text(
        '{"content": "类型#裙*颜色#红色", "summary": "红色连衣裙"}\n{"content": "类型#裤", "summary": "长裤"}\n',
        encoding="utf-8",
    )
    store = RunStore(workspace.runs_dir)
    trained = store.create(
        make_config(
            model_dir,
            data,
            validation_file=dev,
            method="lora",
            max_steps=2,
            save_steps=2,
            learning_rate=5e-2,
            lora_rank=4,
        )
    )
    trained.mark_running(os.getpid())
    train(trained, resume=False)
    shutil.move(trained.path, workspace.runs_dir / LORA_A)
    shutil.copytree(workspace.runs_dir / LORA_A, workspace.runs_dir / LORA_B)
    for run_id, factor in ((LORA_A, 8.0), (LORA_B, -8.0)):
        _scale_adapter(store.resolve(run_id).default_checkpoint().path, factor)
    prefixes = {
        PREFIX_A: _prefix_run(workspace, PREFIX_A, model_dir, seed=0, strength=3),
        PREFIX_B: _prefix_run(workspace, PREFIX_B, model_dir, seed=1, strength=5),
    }
    # A LoRA run of the same kind made on ChatGLM-6B: another base.
    other = write_run(
        workspace,
        OTHER_BASE,
        tiny_config(workspace, method="lora", model_path=tiny_model_dir),
        state="finished",
        step=2,
        losses=[],
    )
    peft_model = get_peft_model(
        glmcore.load_model(tiny_model_dir), LoraConfig(r=2, target_modules=["query_key_value"])
    )
    peft_model.save_pretrained(str(other.checkpoints_dir / "checkpoint-2"))
    (other.checkpoints_dir / "checkpoint-2" / "trainer_state.json").write_text("{}")

    tokenizer = glmcore.load_tokenizer(model_dir)
    family = CHATGLM3_6B.implementation()
    answers: dict[tuple[str, str], str] = {}

    def answer_all(model, model_id: str) -> None:
        for question in QUESTIONS:
            answers[model_id, question] = _greedy_answer(model, tokenizer, family, question)

    for run_id in (LORA_A, LORA_B):
        exported = export_run(store.resolve(run_id), workspace.root / "exported" / run_id)
        # The exported tiny config.json carries none of ChatGLM3's signals: the family is named.
        answer_all(glmcore.load_model(exported, family="chatglm3-6b"), run_id)
    base = glmcore.load_model(model_dir)
    answer_all(base, model_dir.name)
    for run_id, checkpoint in prefixes.items():
        install_prefix_checkpoint(base, checkpoint)
        answer_all(base, run_id)
    assert len(set(answers.values())) == len(answers), "every adapter and prefix changes every answer"
    return {"workspace": workspace, "model_dir": model_dir, "answers": answers, "store": store, "dev": dev}


class InProcessServer:
    """The server's endpoints over an engine in this process, spoken to by the `openai` client."""

    def __init__(self, served: dict, **engine_options) -> None:
        import httpx2
        import openai

        import glmcore
        from glmcore.serve.batching import Engine
        from glmcore.serve.http import Service
        from glmcore.serve.registry import ModelRegistry

        model_dir = served["model_dir"]
        self.engine = Engine(
            glmcore.load_model(model_dir), glmcore.load_tokenizer(model_dir), capacity=96, **engine_options
        )
        self.service = Service(
            self.engine, ModelRegistry(model_dir, served["store"]), max_request_bytes=2**20
        )
        transport = httpx2.ASGITransport(app=self.service.app(None))
        self.client = openai.AsyncOpenAI(
            base_url="http://serve.test/v1",
            api_key="none",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=transport),
        )

    async def ask(self, model: str, question: str) -> str:
        reply = await self.client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=NEW_TOKENS,
        )
        return reply.choices[0].message.content

    async def close(self) -> None:
        await self.client.close()
        self.engine.shutdown()


def _steps_with(record, count: int) -> list:
    return [event for event in record if event.kind == "step" and len(event.detail) >= count]


async def test_lora_runs_answer_as_their_exported_models_alone_and_in_one_batch_with_prefixes_and_the_base(
    served,
):
    answers, base = served["answers"], served["model_dir"].name
    server = InProcessServer(served, slots=8, shared_tokens=96)
    try:
        listed = {model.id: model.kind for model in (await server.client.models.list()).data}
        assert {key: listed.get(key) for key in (base, LORA_A, f"{LORA_B}/checkpoint-2", PREFIX_A)} == {
            base: "base",
            LORA_A: "lora",
            f"{LORA_B}/checkpoint-2": "lora",
            PREFIX_A: "prefix",
        }
        alone = {(model, QUESTIONS[0]): await server.ask(model, QUESTIONS[0]) for model in (LORA_A, LORA_B)}
        assert alone == {key: answers[key] for key in alone}
        asks = [
            (model, question)
            for model in (LORA_A, LORA_B, PREFIX_A, PREFIX_B, base)
            for question in QUESTIONS
        ]
        together = await asyncio.gather(*(server.ask(model, question) for model, question in asks))
    finally:
        await server.close()
    assert dict(zip(asks, together, strict=True)) == {ask: answers[ask] for ask in asks}
    assert _steps_with(server.engine.record, 8), "adapters, prefixes and the base decode in the same steps"
    assert server.engine.adapters.loads == 2, "each adapter is read once, then held"


async def test_a_budget_of_one_adapter_evicts_the_other_and_answers_stay_right(served):
    answers = served["answers"]
    probe = InProcessServer(served, slots=4)
    one_adapter = probe.engine.adapters.check(served["store"].resolve(LORA_A).default_checkpoint().path)
    await probe.close()
    size = one_adapter.bytes_at(one_adapter.rank, 4)
    server = InProcessServer(served, slots=4, adapter_memory=size)
    try:
        alternating = [LORA_A, LORA_B, LORA_A, LORA_B]
        one_by_one = [await server.ask(model, QUESTIONS[1]) for model in alternating]
        held = [path.parent.parent.name for path in server.engine.adapters.held]
        at_once = await asyncio.gather(*(server.ask(model, QUESTIONS[0]) for model in alternating))
    finally:
        await server.close()
    assert one_by_one == [answers[model, QUESTIONS[1]] for model in alternating]
    assert at_once == [answers[model, QUESTIONS[0]] for model in alternating], (
        "a waiting adapter waits its turn"
    )
    assert held == [LORA_B] and len(server.engine.adapters.held) == 1
    assert server.engine.adapters.loads >= 5


async def test_an_adapter_of_another_base_or_a_crafted_one_is_refused_with_a_sentence(served, tmp_path):
    import openai

    workspace, model_dir = served["workspace"], served["model_dir"]
    # The run that says it was made on this base but holds ChatGLM-6B's adapter: its layers are not here.
    impostor = workspace.runs_dir / "20261201-150000-impostor"
    shutil.copytree(workspace.runs_dir / OTHER_BASE, impostor)
    config = tiny_config(workspace, method="lora", model_path=model_dir)
    config.save(impostor / "config.toml")
    crafted = {}  # a copy of a good run whose adapter_config.json is crafted
    for name, text in (("list", "[]"), ("alpha", '{"r": 4, "lora_alpha": "x", "target_modules": []}')):
        crafted[name] = workspace.runs_dir / f"20261201-16000{len(crafted)}-crafted-{name}"
        shutil.copytree(workspace.runs_dir / LORA_A, crafted[name])
        (crafted[name] / "checkpoints" / "checkpoint-2" / "adapter_config.json").write_text(text)
    server = InProcessServer(served, slots=2)
    try:
        with pytest.raises(openai.NotFoundError, match="was made on .*serve it with its own model") as other:
            await server.ask(OTHER_BASE, "hi")
        with pytest.raises(
            openai.BadRequestError, match="was trained on another base model"
        ) as impostor_error:
            await server.ask(impostor.name, "hi")
        with pytest.raises(openai.BadRequestError, match="is not a JSON object") as not_an_object:
            await server.ask(crafted["list"].name, "hi")
        with pytest.raises(openai.BadRequestError, match="sets lora_alpha in a way") as bad_alpha:
            await server.ask(crafted["alpha"].name, "hi")
        still = await server.ask(LORA_A, QUESTIONS[0])
    finally:
        await server.close()
        for folder in (impostor, *crafted.values()):
            shutil.rmtree(folder)
    for error in (other.value, impostor_error.value, not_an_object.value, bad_alpha.value):
        message = error.body["message"]
        assert message.count(". ") == 0 and message.endswith(".") and "Traceback" not in message
    assert still == served["answers"][LORA_A, QUESTIONS[0]], "one bad adapter takes no other down"


async def test_chat_takes_a_lora_run_in_the_cli_and_the_app_and_answers_as_its_exported_model(
    served, monkeypatch, capsys
):
    import io

    import glmcore
    from glmcore.chat import ChatSession, ChatSettings
    from glmtui.cli import main
    from glmtui.messages import ChatWith
    from glmtui.screens.chat import ChatScreen

    workspace, run = served["workspace"], served["store"].resolve(LORA_A)
    greedy = ChatSettings(sampling=False, max_new_tokens=NEW_TOKENS)
    exported = glmcore.load_model(workspace.root / "exported" / LORA_A, family="chatglm3-6b")
    expected = (
        ChatSession(exported, glmcore.load_tokenizer(served["model_dir"])).ask(QUESTIONS[0], greedy).response
    )

    monkeypatch.setattr("sys.stdin", io.StringIO(QUESTIONS[0] + "\n"))
    command = ["--workspace", str(workspace.root), "chat", "--run", LORA_A, "--greedy"]
    assert main([*command, "--max-new-tokens", str(NEW_TOKENS)]) == 0
    assert capsys.readouterr().out == expected + "\n"

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        app.post_message(ChatWith(run))
        await wait_until_in_app(
            pilot,
            lambda: isinstance(app.screen, ChatScreen) and app.screen.session is not None,
            "the run loaded",
        )
        session = app.screen.session
        assert session.adapter == run.default_checkpoint().path.resolve() and session.prefix is None
        assert session.ask(QUESTIONS[0], greedy).response == expected
        session.use_checkpoint(None)  # back to the base: the adapter comes off
        session.clear()
        assert session.ask(QUESTIONS[0], greedy).response != expected


async def test_evaluation_takes_a_lora_run_in_the_cli_and_the_app_and_predicts_as_its_exported_model(
    served, tmp_path
):
    from glmcore.evaluate import EvalSettings, compare_checkpoints, read_predictions
    from glmtui.cli import main

    workspace, run = served["workspace"], served["store"].resolve(LORA_A)
    lengths = {name: getattr(run.config, name) for name in ("max_source_length", "max_target_length")}
    exported = compare_checkpoints(
        workspace.root / "exported" / LORA_A,
        ["base"],
        served["dev"],
        EvalSettings(**lengths),
        tmp_path / "exported",
        family="chatglm3-6b",
    )
    expected = read_predictions(exported.output_dir / "base" / "generated_predictions.txt")

    out = tmp_path / "cli"
    assert main(["--workspace", str(workspace.root), "eval", "--run", LORA_A, "--out", str(out)]) == 0
    assert read_predictions(out / "checkpoint-2" / "generated_predictions.txt") == expected
    assert read_predictions(out / "base" / "generated_predictions.txt") != expected

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        evaluate = app.workbench_screen("evaluate")
        app.action_show("evaluate")
        await settle(pilot)
        evaluate.select_run(run)
        await settle(pilot)
        await pilot.press("ctrl+g")
        await wait_until_in_app(pilot, lambda: evaluate.comparison is not None, "the comparison")
    predictions = evaluate.comparison.output_dir / "checkpoint-2" / "generated_predictions.txt"
    assert read_predictions(predictions) == expected


def test_a_4_bit_base_serves_lora_rows_as_peft_applies_them_over_it(served):
    """NF4 on the CPU (bitsandbytes): the hooks sit on its Linear4bit layers; each adapter row's greedy tokens
    are those of PEFT's own LoRA layers over the same quantized base, the way training applies them."""
    import threading

    from peft import PeftModel

    import glmcore
    from glmcore.generation import generate
    from glmcore.serve.batching import Engine, Request
    from glmcore.serve.servers import plan_server

    workspace, model_dir, store = served["workspace"], served["model_dir"], served["store"]
    plan = plan_server(workspace, model=None, runs=[LORA_A], checkpoints=[], quantization_bit=4)
    assert plan.quantization_bit == 4 and plan.model == str(model_dir)
    tokenizer = glmcore.load_tokenizer(model_dir)
    family = CHATGLM3_6B.implementation()
    prompt = family.chat_prompt_ids(tokenizer, QUESTIONS[0], [])
    stops = family.stop_token_ids(tokenizer)
    adapters = {run_id: store.resolve(run_id).default_checkpoint().path for run_id in (LORA_A, LORA_B)}
    expected = {}
    for run_id, checkpoint in adapters.items():
        peft = PeftModel.from_pretrained(glmcore.load_model(model_dir, quantization_bit=4), str(checkpoint))
        (tokens,) = generate(
            peft.base_model.model, [prompt], max_new_tokens=NEW_TOKENS, eos_token_id=stops, pad_token_id=0
        )
        expected[run_id] = [token for token in tokens if token not in stops]

    engine = Engine(glmcore.load_model(model_dir, quantization_bit=4), tokenizer, slots=4, capacity=64)
    answers: dict[str, list[int]] = {run_id: [] for run_id in adapters}
    ended = threading.Semaphore(0)

    def request(run_id: str) -> Request:
        def deliver(kind: str, value: object) -> None:
            if kind == "token":
                answers[run_id].append(value)
            else:
                ended.release()

        return Request(prompt, None, NEW_TOKENS, deliver, adapter=adapters[run_id])

    try:
        for run_id in adapters:
            engine.submit(request(run_id))
        for _ in adapters:
            assert ended.acquire(timeout=60)
    finally:
        engine.shutdown()
    assert answers == expected and answers[LORA_A] != answers[LORA_B]
