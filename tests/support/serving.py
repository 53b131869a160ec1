"""The serving engine's test parts: tiny models with prefix checkpoints, and requests whose answers are kept."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path


def tiny_with_prefixes(folder: Path, family: str) -> tuple[Path, list[Path]]:
    """A tiny model of `family` and two prefix checkpoints of different lengths that change its answers."""
    import torch

    import glmcore
    from glmcore.models import family_named
    from glmcore.prefix import save_prefix_checkpoint

    model_dir = (
        family_named(family).implementation().write_tiny_checkpoint(folder / "model", init_std=0.5, seed=2)
    )
    checkpoints = []
    for index, strength in enumerate((3, 5)):
        torch.manual_seed(index)
        tuned = glmcore.load_model(model_dir, pre_seq_len=4 + 2 * index)
        with torch.no_grad():
            tuned.transformer.prefix_encoder.embedding.weight.mul_(strength)
        checkpoints.append(save_prefix_checkpoint(tuned, folder / f"checkpoint-{index}"))
    return model_dir, checkpoints


class Answers:
    """Each request's tokens and how it ended, by name; `ended` counts the requests that ended."""

    def __init__(self) -> None:
        self.tokens: dict[str, list] = {}
        self.ended = threading.Semaphore(0)

    def request(self, name: str, prompt: list[int], prefix, new_tokens: int, *, then=None):
        from glmcore.serve.batching import Request

        self.tokens[name] = []

        def deliver(kind: str, value: object) -> None:
            self.tokens[name].append((kind, value))
            if kind != "token":
                self.ended.release()
            elif then is not None and len(self.tokens[name]) == 3:
                then()

        return Request(prompt, prefix, new_tokens, deliver)

    def wait(self, count: int) -> None:
        for _ in range(count):
            assert self.ended.acquire(timeout=60), self.tokens


def serve_alone_then_together(engine, asks: dict, new_tokens: int):
    """Each ask ({name: (prompt, prefix)}) alone, then all of them at once: the answers alone, the answers
    together and the requests sent together."""
    answers = Answers()
    alone = {}
    for name, (prompt, prefix) in asks.items():
        engine.submit(answers.request(name, prompt, prefix, new_tokens))
        answers.wait(1)
        alone[name] = answers.tokens[name]
    requests = {
        name: answers.request(name, prompt, prefix, new_tokens) for name, (prompt, prefix) in asks.items()
    }
    for request in requests.values():
        engine.submit(request)
    answers.wait(len(asks))
    return alone, answers.tokens, requests


def start_glmtui(workspace_root: Path, *args: str, env: dict | None = None, **options) -> subprocess.Popen:
    """`glmtui ARGS` as its own process over the workspace at `workspace_root`, its output captured as text."""
    environment = {**os.environ, "GLMTUI_HOME": str(workspace_root), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "glmtui.cli", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )
