"""Tiny models that learned to say one thing back: a tool-call conversation (ChatGLM3, GLM-4) and a thinking
model's reasoning before its answer (GLM-Z1's layout). A random tiny model never emits a call or a `</think>`, so
the tests of tools and reasoning (serving, chat, the Chat screen) run on these, trained in-process once per session
(`tests/conftest.py`: `tool_call_model`, `z1_model`) until greedy decoding says the conversation back.
"""

from __future__ import annotations

import json
from pathlib import Path

from glmcore.tool_calls import ToolCall

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
QUESTION = "What is the weather in Paris?"
ARGUMENTS = {"city": "Paris"}
RESULT = '{"temperature": 22}'
ANSWER = "It is 22 degrees in Paris."
TOOL_FAMILIES = ("chatglm3-6b", "glm-4-9b-chat")
MAX_TRAINING_STEPS = 200
LEARNED_LOSS = 0.02
CORPUS = [QUESTION, ANSWER, RESULT, json.dumps([WEATHER["function"]], indent=4), "tool_call(city='Paris')"]

Z1_QUESTION = "What is 2 + 2?"
Z1_REASONING = "Two and two make four."
Z1_ANSWER = "4"
Z1_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n<think>{% endif %}"
)
"""A chat template that opens the reasoning in the generation prompt, as a thinking model's does."""


def conversation(tool_call: ToolCall) -> list[list[dict]]:
    """The conversation's prompts at each answer: the question; the question, call and result; all of it and a
    next question."""
    asked = [{"role": "user", "content": QUESTION}]
    answered = [
        *asked,
        {"role": "assistant", "tool_call": tool_call},
        {"role": "observation", "content": RESULT},
    ]
    return [
        asked,
        answered,
        [*answered, {"role": "assistant", "content": ANSWER}, {"role": "user", "content": "?"}],
    ]


def tool_training_row(family, tokenizer) -> tuple[list[int], list[int]]:
    """The conversation's ids, and labels on the model's two answers (each with the token that stops it): the call
    and the answer after the tool's result, exactly as the server's prompts frame them."""
    from glmcore.examples import IGNORE_INDEX

    call = ToolCall("get_weather", json.dumps(ARGUMENTS))
    asked, answered, whole = (
        family.tool_prompt_ids(tokenizer, messages, [WEATHER]) for messages in conversation(call)
    )
    assert answered[: len(asked)] == asked and whole[: len(answered)] == answered
    call_end = answered.index(tokenizer.get_command("<|observation|>"), len(asked))
    answer_end = whole.index(tokenizer.get_command("<|user|>"), len(answered))
    ids = whole[: answer_end + 1]
    learned = {*range(len(asked), call_end + 1), *range(len(answered), answer_end + 1)}
    return ids, [token if index in learned else IGNORE_INDEX for index, token in enumerate(ids)]


def z1_training_row(family, tokenizer) -> tuple[list[int], list[int]]:
    """The question's prompt, then the reasoning, `</think>`, the answer and the stop token, learned."""
    from glmcore.examples import IGNORE_INDEX

    prompt = family.chat_prompt_ids(tokenizer, Z1_QUESTION, [])
    output = tokenizer.encode(f"{Z1_REASONING}</think>{Z1_ANSWER}", add_special_tokens=False)
    ids = [*prompt, *output, tokenizer.get_command("<|user|>")]
    return ids, [IGNORE_INDEX] * len(prompt) + ids[len(prompt) :]


def train_on(model_dir: Path, row) -> int:
    """Train the model in `model_dir` on its `row(family, tokenizer)` until its loss is below LEARNED_LOSS, and
    store it there (float32: a tiny model's margins are thin); the steps it took (fails when it does not learn)."""
    import torch

    import glmcore
    from glmcore.models.checkpoint import rewrite_weights

    tokenizer = glmcore.load_tokenizer(model_dir)
    model = glmcore.load_model(model_dir, dtype=torch.float32, device="cpu").train()
    ids, labels = row(model.model_family.implementation(), tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one tiny row: more threads only wait on each other on a busy 2-core machine
    torch.manual_seed(0)
    steps, loss = 0, float("inf")
    try:
        while loss >= LEARNED_LOSS and steps < MAX_TRAINING_STEPS:
            output = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            output.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps, loss = steps + 1, output.loss.item()
    finally:
        torch.set_num_threads(threads)
    assert loss < LEARNED_LOSS, (
        f"{model_dir.name} did not learn the conversation in {steps} steps (loss {loss:.3f})"
    )
    rewrite_weights(model_dir, {name: tensor.detach() for name, tensor in model.state_dict().items()})
    return steps


def write_tool_call_model(folder: Path, name: str) -> Path:
    """A tiny model of family `name` that answers QUESTION with the call and RESULT with ANSWER (1,024 positions:
    room for the prompt beside the Chat screen's 512-token answers)."""
    from glmcore.models import family_named

    family_named(name).implementation().write_tiny_checkpoint(
        folder, corpus=CORPUS * 3, seq_length=1024, seed=0
    )
    train_on(folder, tool_training_row)
    return folder


def write_z1_model(folder: Path) -> Path:
    """A tiny GLM-4-0414 with a thinking template that answers Z1_QUESTION with Z1_REASONING, then the answer."""
    from glmcore.models import family_named

    family_named("glm-4-0414").implementation().write_tiny_checkpoint(
        folder,
        corpus=[Z1_QUESTION, Z1_REASONING, "</think>", Z1_ANSWER] * 3,
        seq_length=1024,
        seed=0,
        chat_template=Z1_TEMPLATE,
    )
    train_on(folder, z1_training_row)
    return folder
