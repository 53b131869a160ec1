"""Bad inputs refused by the real CLI before anything is created, each with the one sentence a user sees.

Every case writes real files (data, config.toml, model folders) and runs `glmtui train|resume|chat|eval` through
``glmtui.cli.main``; a refused run leaves no run folder and no evaluation folder behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from glmcore.config import RunConfig
from glmcore.preflight import visible_gpu_count
from glmcore.runs import RunStore
from glmtui.cli import main

GOOD_ROW = {"content": "类型#裙*颜色#红色", "summary": "红色的裙子"}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace as $GLMTUI_HOME, and a console wide enough that no sentence is wrapped."""
    root = tmp_path / "ws"
    monkeypatch.setenv("GLMTUI_HOME", str(root))
    monkeypatch.setenv("COLUMNS", "400")
    return root


def write_config(path: Path, model: Path, train_file: Path, **settings: object) -> Path:
    values = {
        "name": "bad-input",
        "model_path": str(model),
        "train_file": str(train_file),
        "quantization_bit": 16,
        "pre_seq_len": 4,
        "max_steps": 2,
        "max_source_length": 16,
        "max_target_length": 16,
        "gpus": [],
        **settings,
    }
    path.write_text(tomli_w.dumps(values), encoding="utf-8")
    return path


def refused(config: Path, workspace: Path, capsys: pytest.CaptureFixture) -> str:
    """Run `glmtui train CONFIG`, check it refused with nothing created, and return what it printed."""
    code = main(["train", str(config)])
    output = capsys.readouterr()
    assert code == 2, output
    assert "Traceback" not in output.err
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())
    return output.err


def good_lines(count: int = 2) -> bytes:
    return b"".join(json.dumps(GOOD_ROW, ensure_ascii=False).encode() + b"\n" for _ in range(count))


DATA_CASES = {
    "not UTF-8": (
        "train.jsonl",
        good_lines() + '{"content": "红色", "summary": "裙"}\n'.encode("gb18030"),
        ":3: byte 14 of the line is not UTF-8 (0xba); save the file as UTF-8",
    ),
    "empty": ("train.jsonl", b"", " is empty; it needs one row per example with 'content' and 'summary'"),
    "broken CSV": (
        "train.csv",
        b'content,summary\n"a,b\nc,d\n',
        ":3: not valid CSV (unexpected end of data); check the quotes on that line",
    ),
    "CSV row with extra fields": (
        "train.csv",
        b"content,summary\na,b\nc,d,e\n",
        ":3: 3 fields where the header has 2; put quotes around values that hold commas",
    ),
    "a JSON line that is a list": (
        "train.jsonl",
        good_lines() + b'["a", "b"]\n',
        ':3: a list where a row was expected; each row is one JSON object like {"content": "...", '
        '"summary": "..."}',
    ),
    "a JSON line that is a number": (
        "train.json",
        good_lines(1) + b"42\n",
        ":2: a number (42) where a row was expected",
    ),
    "invalid JSON": (
        "train.jsonl",
        good_lines() + b'{"content": "a", "summary": }\n',
        ":3: not valid JSON (Expecting value at column 29); fix or remove that line",
    ),
    "a number as prompt": (
        "train.jsonl",
        good_lines() + b'{"content": 123, "summary": "b"}\n',
        ":3: 'content' holds a number (123), not text; write it as a JSON string (in quotes)",
    ),
    "a list as response": (
        "train.jsonl",
        b'{"content": "a", "summary": ["a", "b"]}\n',
        ":1: 'summary' holds a list, not text; write it as a JSON string (in quotes)",
    ),
    "an item of a JSON array": (
        "train.json",
        b'[\n  {"content": "a", "summary": "b"},\n\n  {"content": "a", "summary": true}\n]\n',
        ":4: 'summary' holds true/false (true), not text",
    ),
    "a missing column": (
        "train.jsonl",
        b'{"prompt": "a", "summary": "b"}\n',
        " has no column 'content'; its columns are: prompt, summary. Set prompt_column/response_column to "
        "the ones it has",
    ),
}


@pytest.mark.parametrize("case", DATA_CASES, ids=list(DATA_CASES))
def test_a_bad_data_file_is_refused_with_its_line_before_a_run_exists(
    case: str, tmp_path: Path, workspace: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    name, content, sentence = DATA_CASES[case]
    data = tmp_path / name
    data.write_bytes(content)
    config = write_config(tmp_path / "bad.toml", tiny_model_dir, data)

    printed = refused(config, workspace, capsys)

    assert f"{config} has 1 problem; nothing was started:" in printed
    assert f"  • train_file: {data}{sentence}" in printed


def test_a_bad_history_and_a_bad_validation_file_are_both_named(
    tmp_path: Path, workspace: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text('{"content": "a", "summary": "b", "history": [["only a query"]]}\n', encoding="utf-8")
    dev = tmp_path / "dev.jsonl"
    dev.write_bytes(b"")
    config = write_config(
        tmp_path / "bad.toml", tiny_model_dir, train, history_column="history", validation_file=str(dev)
    )

    printed = refused(config, workspace, capsys)

    assert (
        f"  • train_file: {train}:1: 'history' must be a list of [query, response] pairs of text, "
        'like [["q", "a"]]' in printed
    )
    assert f"  • validation_file: {dev} is empty" in printed


@pytest.mark.parametrize(
    ("settings", "sentence"),
    [
        ({"learning_rate": float("inf")}, "learning_rate: must be a finite number, not inf"),
        ({"learning_rate": float("nan")}, "learning_rate: must be a finite number, not nan"),
        (
            {"quantization_bit": 8},
            "quantization_bit: 8-bit (LLM.int8) needs a CUDA GPU and this run trains on the CPU (gpus = []); "
            "use quantization_bit = 4 or 16 on the CPU, or list a GPU in gpus",
        ),
        (
            {"pre_seq_len": 5000},
            "pre_seq_len: a 5000-token prefix leaves no room for the text in ChatGLM-6B's 2048 positions; "
            "use a shorter prefix (128 is usual)",
        ),
        (
            {"gpus": [7]},
            "gpus: GPU 7 is not here (this machine has no GPU); list GPUs that are here, or set gpus = [] to "
            "train on the CPU",
        ),
    ],
    ids=["inf", "nan", "8-bit-on-cpu", "long-prefix", "absent-gpu"],
)
def test_config_values_that_cannot_train_are_refused(
    settings: dict,
    sentence: str,
    tmp_path: Path,
    workspace: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    if "gpus" in settings and visible_gpu_count():
        pytest.skip("this machine has GPUs")
    data = tmp_path / "train.jsonl"
    data.write_bytes(good_lines())
    config = write_config(tmp_path / "bad.toml", tiny_model_dir, data, **settings)

    printed = refused(config, workspace, capsys)

    assert f"{config} has 1 problem; nothing was started:\n  • {sentence}\n" in printed


@pytest.mark.parametrize(
    "change",
    [
        {"padded_vocab_size": 65024, "multi_query_attention": True, "model_type": "glm4_moe"},
        {"model_type": "llama"},
    ],
    ids=["another-glm", "llama"],
)
def test_a_model_folder_of_another_family_is_refused_with_the_loaders_sentence(
    change: dict, tmp_path: Path, workspace: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from glmcore.models import UnsupportedModel, family_for

    model = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, model)
    settings = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (model / "config.json").write_text(json.dumps({**settings, **change}), encoding="utf-8")
    data = tmp_path / "train.jsonl"
    data.write_bytes(good_lines())
    with pytest.raises(UnsupportedModel) as loader:  # what loading the folder would say, after launch
        family_for(model)

    printed = refused(write_config(tmp_path / "bad.toml", model, data), workspace, capsys)

    unwrapped = " ".join(printed.split())  # the terminal wraps a sentence as long as the list of families
    assert f"• model_path: {str(loader.value).rstrip('.')}" in unwrapped


def test_building_a_config_probes_no_gpu_and_defaults_to_gpu_0() -> None:
    code = (
        "import sys\n"
        "from glmcore.config import RunConfig\n"
        "config = RunConfig(name='x', model_path='m', train_file='t.json')\n"
        "print(config.gpus, [name for name in ('glmcore.gpu', 'pynvml', 'glmcore.estimate') if name in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[0] []"


def test_resuming_with_another_prefix_length_names_both_values_and_changes_nothing(
    tmp_path: Path, workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    import torch
    from safetensors.torch import save_file

    store = RunStore(workspace / "runs")
    run = store.create(
        RunConfig(name="resumed", model_path=tmp_path / "m", train_file=tmp_path / "t.json", pre_seq_len=4)
    )
    checkpoint = run.checkpoints_dir / "checkpoint-10"
    checkpoint.mkdir(parents=True)
    save_file(
        {"transformer.prefix_encoder.embedding.weight": torch.zeros(4, 256)},
        checkpoint / "prefix.safetensors",
    )
    (checkpoint / "trainer_state.json").write_text("{}")
    run.write_status(state="stopped", step=10)
    edited = RunConfig.load(run.config_path)
    edited.pre_seq_len = 8
    edited.save(run.config_path)
    events_before = run.events_path.read_bytes() if run.events_path.exists() else b""

    code = main(["resume", run.id])

    printed = capsys.readouterr().err
    assert code == 1
    assert (
        f"error: {checkpoint} was trained with pre_seq_len = 4, but the run's config.toml now says "
        "pre_seq_len = 8; set it back to 4 to resume, or start a new run with the new value." in printed
    )
    assert run.stored_status().state == "stopped"
    assert (run.events_path.read_bytes() if run.events_path.exists() else b"") == events_before


@pytest.fixture(scope="module")
def damaged_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Model folders whose second shard is truncated (both formats) or is a pickle that would run code."""
    import torch

    from glmcore.models.chatglm6b.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("damaged")
    folders: dict[str, tuple[Path, Path]] = {}
    for weight_format in ("bin", "safetensors"):
        model = write_tiny_checkpoint(
            root / f"truncated-{weight_format}", weight_format=weight_format, num_shards=2
        )
        shard = sorted(model.glob(f"*-00002-of-00002.{weight_format}"))[0]
        os.truncate(shard, shard.stat().st_size // 2)
        folders[f"truncated {weight_format}"] = (model, shard)
    model = root / "unsafe-bin"
    shutil.copytree(root / "truncated-bin", model)
    shard = model / "pytorch_model-00002-of-00002.bin"
    marker = root / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weight": RunsCode()}, shard)
    folders["unsafe pickle"] = (model, shard)
    return folders


WEIGHT_SENTENCES = {
    "truncated bin": "is truncated or damaged (",
    "truncated safetensors": "is cut short (",
    "unsafe pickle": "holds pickled code besides tensors, so glmtui did not load it (code in a checkpoint never "
    "runs); use weights from a source you trust, or in safetensors.",
}


@pytest.mark.parametrize("damage", WEIGHT_SENTENCES, ids=list(WEIGHT_SENTENCES))
def test_chat_and_eval_name_a_damaged_or_unsafe_weight_file_in_one_sentence(
    damage: str,
    damaged_models: dict,
    tmp_path: Path,
    workspace: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    model, shard = damaged_models[damage]
    data = tmp_path / "dev.jsonl"
    data.write_bytes(good_lines())
    monkeypatch.setattr("sys.stdin", io.StringIO("你好\n"))
    chat_code = main(["chat", "--model", str(model), "--greedy", "--max-new-tokens", "2"])
    chat = capsys.readouterr()
    out = tmp_path / "evaluation"
    eval_code = main(
        ["eval", "--model", str(model), "--checkpoint", "base", "--data", str(data), "--out", str(out)]
    )
    evaluation = capsys.readouterr()

    for code, printed in ((chat_code, chat.err), (eval_code, evaluation.err)):
        assert code == 1
        assert "Traceback" not in printed
        assert f"error: {shard} {WEIGHT_SENTENCES[damage]}" in printed, printed
    assert not out.exists()
    assert not (shard.parent.parent / "code-ran").exists()
