"""Shared fixtures: tiny ChatGLM-6B checkpoints in the real on-disk layout, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a hub, and the tokenizers' thread pools only slow a 2-core CI machine down.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose random weights are large enough that greedy decoding does not repeat one token."""
    from glmcore.models.chatglm6b.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "chatglm-6b-tiny", init_std=0.5, seed=2)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    import glmcore

    return glmcore.load_model(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    import glmcore

    return glmcore.load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def chatglm3_with_prefixes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A tiny ChatGLM3-6B and two prefix checkpoints that change its answers (the serving tests')."""
    from support.serving import tiny_with_prefixes

    from glmcore.models import CHATGLM3_6B

    return tiny_with_prefixes(tmp_path_factory.mktemp("serve-engine"), CHATGLM3_6B.name)


# glm-4-9b-chat (tests/test_glm4.py): the tiny checkpoint its golden values were made from, and the parts the
# golden tests take from fixtures only, so that a shim can give them from the published code instead
# (tests/golden/glm4/README.md).
GLM4_GOLDEN = GOLDEN / "glm4" / "expected.json"


@pytest.fixture(scope="session")
def glm4_golden() -> dict:
    import json

    return json.loads(GLM4_GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def glm4_model_dir(glm4_golden: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glmcore.models.glm4.tiny import write_tiny_checkpoint

    arguments = glm4_golden["tiny_checkpoint"]["write_tiny_checkpoint"]
    return write_tiny_checkpoint(tmp_path_factory.mktemp("glm4") / "glm-4-9b-chat-tiny", **arguments)


@pytest.fixture(scope="session")
def glm4_tokenizer(glm4_model_dir: Path):
    import glmcore

    return glmcore.load_tokenizer(glm4_model_dir)


@pytest.fixture(scope="session")
def glm4_model(glm4_model_dir: Path):
    import torch

    import glmcore

    return glmcore.load_model(glm4_model_dir, dtype=torch.float32, device="cpu").eval()


@pytest.fixture(scope="session")
def glm4_training_row(glm4_tokenizer):
    """(messages, max_input_length, max_output_length) -> the row's input_ids and labels."""
    from glmcore.data import conversation_features

    def row(messages: list[dict], max_input_length: int, max_output_length: int) -> dict:
        return conversation_features(
            glm4_tokenizer, messages, max_input_length=max_input_length, max_output_length=max_output_length
        )

    return row


@pytest.fixture(scope="session")
def glm4_evaluation_row(glm4_tokenizer):
    """(messages, max_input_length, max_output_length) -> the prompt ids and reference text of the last answer."""
    from glmcore.data import chat_messages, evaluation_prompt_ids, reference_text
    from glmcore.examples import conversation_example

    def row(messages: list[dict], max_input_length: int, max_output_length: int) -> tuple[list[int], str]:
        example = conversation_example(chat_messages(messages))
        return (
            evaluation_prompt_ids(glm4_tokenizer, example, max_input_length),
            reference_text(glm4_tokenizer, example.response, max_output_length),
        )

    return row


@pytest.fixture(scope="session")
def tiny_family_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`tiny_family_dir(family)`: each family's tiny checkpoint (`glmcore.models.FAMILIES`), written on first
    use; ChatGLM-6B's is `tiny_model_dir`."""
    written = {"chatglm-6b": tiny_model_dir}

    def folder(family) -> Path:
        if family.name not in written:
            path = tmp_path_factory.mktemp("family") / family.name
            written[family.name] = family.implementation().write_tiny_checkpoint(path, init_std=0.5, seed=2)
        return written[family.name]

    return folder


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real Slurm on this machine (two nodes, n1 and n2), shared by every test that needs one."""
    from support.slurm import local_cluster, missing_reason

    if reason := missing_reason():
        pytest.skip(reason)
    with local_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def glm4_demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace root holding the GLM-4 demo as `glmtui demo --family glm-4-9b-chat` builds it (its model and
    sample data; no configs), its pretraining cut to a few steps (the real 400 take minutes). Tests copy it."""
    from glmcore import demo
    from glmcore.workspace import Workspace

    root = tmp_path_factory.mktemp("glm4-demo") / "ws"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "PRETRAIN_STEPS", 2)
        patch.setattr(demo, "PRETRAIN_TEXTS", 40)
        patch.setattr(demo, "PRETRAIN_BATCH", 4)
        demo.ensure_demo_workspace(Workspace(root), family="glm-4-9b-chat")
    return root


@pytest.fixture(scope="session")
def tool_call_model(tmp_path_factory: pytest.TempPathFactory):
    """`tool_call_model(name)`: a tiny ChatGLM3 or GLM-4 (`tiny-NAME`) trained on first use to make the tool call
    of support.tool_models' conversation and to answer its result."""
    from support.tool_models import write_tool_call_model

    trained: dict[str, Path] = {}

    def folder(name: str) -> Path:
        if name not in trained:
            trained[name] = write_tool_call_model(tmp_path_factory.mktemp("tools") / f"tiny-{name}", name)
        return trained[name]

    return folder


@pytest.fixture(scope="session")
def z1_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GLM-4-0414 with a thinking template, trained to reason before its answer (support.tool_models)."""
    from support.tool_models import write_z1_model

    return write_z1_model(tmp_path_factory.mktemp("z1") / "tiny-z1")
