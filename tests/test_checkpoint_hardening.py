"""Checkpoints and model folders that are not what they claim (Hardening III, issue 29 items 9–12).

A garbled or crafted safetensors header, a pickle that carries code, a model folder missing a tensor, and an
evaluation over checkpoints one of which is damaged. The damaged files are crafted in tmp copies of real ones:
a prefix checkpoint of the session's tiny model, with the optimizer, scheduler and RNG files the Trainer writes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from pathlib import Path

import numpy
import pytest
import torch
from conftest import GOLDEN
from rich.console import Console
from safetensors.torch import load_file
from support.app import make_app, make_workspace, settle, tiny_config, write_run
from test_runs import make_config
from textual.widgets import DataTable, Input, SelectionList, Static

import glmcore
from glmcore.errors import GlmError
from glmcore.evaluate import COMPARISON_FILE, EvalError, EvalSettings, compare_checkpoints
from glmcore.models.checkpoint import DamagedCheckpoint, checkpoint_file_problem
from glmcore.prefix import PREFIX_WEIGHTS, read_prefix_checkpoint, save_prefix_checkpoint
from glmcore.runs import Run, RunStore, describe_resume, record_resume
from glmcore.sample_data import write_sample_dataset
from glmtui.cli import build_parser
from glmtui.commands.chat import chat_plan
from glmtui.commands.eval import metrics_table

SETTINGS = EvalSettings(max_source_length=24, max_target_length=4, batch_size=2)


@pytest.fixture(scope="module")
def trainer_checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A P-tuning checkpoint as the Trainer leaves it: the prefix, and real optimizer, scheduler, RNG files."""
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(3)
    model = glmcore.load_model(tiny_model_dir, pre_seq_len=3)
    folder = save_prefix_checkpoint(model, tmp_path_factory.mktemp("trainer") / "checkpoint")
    parameters = list(model.transformer.prefix_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    for parameter in parameters:
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 10)
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    rng = {
        "python": random.getstate(),
        "numpy": numpy.random.get_state(),
        "cpu": torch.random.get_rng_state(),
    }
    torch.save(rng, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 20}))
    return folder


def run_with_checkpoints(root: Path, source: Path, steps: tuple[int, ...] = (20, 40)) -> Run:
    """A stopped P-tuning run on the tiny model whose checkpoints are copies of ``source``."""
    run = RunStore(root / "runs").create(make_config(root, pre_seq_len=3))
    for step in steps:
        with run.saving_checkpoint(step) as partial:
            shutil.copytree(source, partial, dirs_exist_ok=True)
    run.write_status(state="stopped")
    return run


def with_header(path: Path, header: bytes, *, length: int | None = None) -> None:
    """Replace a safetensors file's header (its data kept), optionally claiming another header length."""
    data = path.read_bytes()
    (old_length,) = struct.unpack("<Q", data[:8])
    body = data[8 + old_length :]
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + body)


def entries(path: Path) -> dict:
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    return json.loads(path.read_bytes()[8 : 8 + length])


def garble(path: Path, how: str) -> None:
    header = entries(path)
    name = next(key for key in header if key != "__metadata__")
    if how == "a list header":
        with_header(path, b"[]")
    elif how == "length 2**62":
        with_header(path, json.dumps(header).encode(), length=2**62)
    elif how == "no data_offsets":
        del header[name]["data_offsets"]
        with_header(path, json.dumps(header).encode())
    elif how == "offsets past the end":
        header[name]["data_offsets"][1] += 10**12
        with_header(path, json.dumps(header).encode())
    elif how == "not JSON":
        with_header(path, b"\xff{garbage" + b" " * 20)
    elif how == "nested 100000 deep":
        with_header(path, b"[" * 100_000 + b"]" * 100_000)


GARBLED = [
    "a list header",
    "length 2**62",
    "no data_offsets",
    "offsets past the end",
    "not JSON",
    "nested 100000 deep",
]


@pytest.mark.parametrize("how", GARBLED)
def test_a_garbled_prefix_header_is_damaged_and_resume_and_chat_fall_back(
    trainer_checkpoint: Path, tmp_path: Path, how: str
) -> None:
    run = run_with_checkpoints(tmp_path, trainer_checkpoint)
    damaged = run.checkpoints_dir / "checkpoint-40"
    garble(damaged / PREFIX_WEIGHTS, how)

    point = record_resume(run)
    assert point.checkpoint.step == 20
    ((passed_over, problem),) = point.skipped
    assert passed_over.path == damaged and problem.startswith(f"{PREFIX_WEIGHTS} ")
    assert "damaged" in problem or "cut short" in problem
    assert describe_resume(run) == (
        f"Resuming run {run.id} from checkpoint-20. checkpoint-40 cannot be loaded ({problem}), so it was "
        "passed over."
    )
    assert run.default_checkpoint().step == 20  # what chat --run and serve use

    with pytest.raises(DamagedCheckpoint) as refused:
        read_prefix_checkpoint(damaged)
    assert str(refused.value).startswith(str(damaged / PREFIX_WEIGHTS))
    assert str(refused.value).endswith("; copy or download it again.")


def test_chat_with_a_run_says_which_damaged_checkpoint_it_passed_over(
    trainer_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path))
    run = run_with_checkpoints(tmp_path, trainer_checkpoint)
    garble(run.checkpoints_dir / "checkpoint-40" / PREFIX_WEIGHTS, "a list header")
    notices = Console(record=True, width=400)
    args = build_parser().parse_args(["chat", "--run", run.id])

    checkpoint = chat_plan(args, notices).checkpoint

    assert checkpoint == run.checkpoints_dir / "checkpoint-20"
    assert notices.export_text().strip() == (
        "checkpoint-40 cannot be loaded (prefix.safetensors has a damaged header (a JSON list, not an object)); "
        "using checkpoint-20."
    )


class Payload:
    """Unpickled, it would create the file it names."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    ("name", "protocol"),
    [("optimizer.pt", 2), ("rng_state.pth", 2), ("scheduler.pt", 2), ("optimizer.pt", 4)],
)
def test_pickled_code_in_a_resume_file_never_runs_and_the_checkpoint_is_passed_over(
    trainer_checkpoint: Path, tmp_path: Path, name: str, protocol: int
) -> None:
    run = run_with_checkpoints(tmp_path, trainer_checkpoint)
    marker = tmp_path / "code-ran"
    torch.save(
        {"state": Payload(marker)}, run.checkpoints_dir / "checkpoint-40" / name, pickle_protocol=protocol
    )

    point = record_resume(run)  # what `glmtui resume` checks before it launches the trainer

    assert point.checkpoint.step == 20
    assert point.skipped[0][1] == f"{name} holds pickled code (posix.system), which glmtui does not load"
    assert not marker.exists()


def test_the_trainers_own_files_are_whole(trainer_checkpoint: Path) -> None:
    assert [checkpoint_file_problem(path) for path in sorted(trainer_checkpoint.iterdir())] == [None] * 8


# --- model folders -----------------------------------------------------------------------------------------


FAMILY_FOLDERS = {
    "chatglm-6b": GOLDEN / "tiny-chatglm6b",
    "chatglm2-6b": GOLDEN / "chatglm2" / "tiny-chatglm2",
    "chatglm3-6b": GOLDEN / "chatglm3" / "tiny-chatglm3",
}


def stored_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder's weight files, read with the libraries' own loaders."""
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    for shard in sorted(folder.glob("*.bin")):
        tensors.update(torch.load(shard, weights_only=True))
    return tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["32-bit", "16-bit"])
@pytest.mark.parametrize("family", sorted(FAMILY_FOLDERS))
def test_every_loaded_parameter_equals_the_tensor_in_the_files(family: str, dtype: torch.dtype) -> None:
    """transformers #46620 re-initialised weights of model classes defined outside it (ours are) while its
    loading report stayed clean: compare the tensors themselves."""
    folder = FAMILY_FOLDERS[family]
    stored = stored_tensors(folder)

    model = glmcore.load_model(folder, dtype=dtype, device="cpu")

    parameters = dict(model.named_parameters(remove_duplicate=False))
    assert parameters and set(parameters) <= set(stored)
    for name, parameter in parameters.items():
        assert parameter.dtype == dtype, name
        assert torch.equal(parameter.detach(), stored[name].to(dtype)), name


LAYER_1_OUTPUT = {
    "chatglm-6b": "transformer.layers.1.attention.dense.weight",
    "chatglm2-6b": "transformer.encoder.layers.1.self_attention.dense.weight",
    "chatglm3-6b": "transformer.encoder.layers.1.self_attention.dense.weight",
}


def edit_weights(folder: Path, beside: str, change) -> None:
    """Apply ``change`` to the tensors of the shard holding ``beside``, and update the index to match."""
    index_path = next(folder.glob("*.index.json"))
    index = json.loads(index_path.read_text())
    shard = folder / index["weight_map"][beside]
    tensors = (
        load_file(str(shard)) if shard.suffix == ".safetensors" else torch.load(shard, weights_only=True)
    )
    change(tensors)
    if shard.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(shard), metadata={"format": "pt"})
    else:
        torch.save(tensors, shard)
    index["weight_map"] = {
        name: file for name, file in index["weight_map"].items() if file != shard.name or name in tensors
    } | dict.fromkeys(set(tensors) - set(index["weight_map"]), shard.name)
    index_path.write_text(json.dumps(index))


def family_copy(family: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FAMILY_FOLDERS[family], tmp_path / family))


@pytest.mark.parametrize("family", ["chatglm-6b", "chatglm3-6b"])  # .bin shards, safetensors shards
def test_a_model_folder_missing_a_tensor_is_refused_naming_it(family: str, tmp_path: Path) -> None:
    folder = family_copy(family, tmp_path)
    missing = LAYER_1_OUTPUT[family]
    edit_weights(folder, missing, lambda tensors: tensors.pop(missing))

    with pytest.raises(GlmError) as refused:
        glmcore.load_model(folder, device="cpu")

    assert str(refused.value) == (
        f"The model folder {folder} lacks the tensors {missing}; download or copy the folder again, and check "
        f"it with `glmtui verify {folder}`."
    )


def test_a_model_folder_with_unexpected_tensors_is_refused_naming_the_first_few(tmp_path: Path) -> None:
    folder = family_copy("chatglm2-6b", tmp_path)
    extra = [f"transformer.encoder.layers.{number}.adapter.weight" for number in range(5)]
    edit_weights(
        folder,
        LAYER_1_OUTPUT["chatglm2-6b"],
        lambda tensors: tensors.update(dict.fromkeys(extra, torch.zeros(2))),
    )

    with pytest.raises(GlmError) as refused:
        glmcore.load_model(folder, device="cpu")

    assert str(refused.value) == (
        f"The model folder {folder} holds tensors the model does not have: {', '.join(extra[:3])} and 2 more; "
        f"download or copy the folder again, and check it with `glmtui verify {folder}`."
    )


# --- evaluating every checkpoint -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, dev = write_sample_dataset(tmp_path_factory.mktemp("data"), train_count=1, dev_count=1, seed=3)
    return dev


def test_an_evaluation_skips_a_damaged_checkpoint_and_says_why(
    tiny_model_dir: Path, trainer_checkpoint: Path, dev_file: Path, tmp_path: Path
) -> None:
    run = run_with_checkpoints(tmp_path, trainer_checkpoint)
    garble(run.checkpoints_dir / "checkpoint-20" / PREFIX_WEIGHTS, "no data_offsets")
    checkpoints = ["base", *(checkpoint.path for checkpoint in run.checkpoints())]

    comparison = compare_checkpoints(tiny_model_dir, checkpoints, dev_file, SETTINGS, tmp_path / "out")

    assert comparison.complete
    assert [evaluation.label for evaluation in comparison.evaluations] == ["base", "checkpoint-40"]
    ((skipped),) = comparison.skipped
    assert (skipped.label, skipped.checkpoint) == ("checkpoint-20", str(checkpoints[1]))
    assert skipped.reason == (
        f"{checkpoints[1] / PREFIX_WEIGHTS} has a damaged header (tensor "
        "'transformer.prefix_encoder.embedding.weight': data_offsets None are not [begin, end]); copy or download "
        "it again."
    )
    summary = json.loads((tmp_path / "out" / COMPARISON_FILE).read_text(encoding="utf-8"))
    assert summary["skipped"] == [
        {"label": "checkpoint-20", "checkpoint": skipped.checkpoint, "reason": skipped.reason}
    ]
    assert not (tmp_path / "out" / "checkpoint-20").exists()
    console = Console(record=True, width=600)
    console.print(metrics_table(comparison))
    shown = console.export_text()
    row = next(line for line in shown.splitlines() if "checkpoint-20" in line)
    assert "skipped because" in shown and skipped.reason in row


def test_an_evaluation_of_damaged_checkpoints_only_is_refused_before_any_work(
    tiny_model_dir: Path, trainer_checkpoint: Path, dev_file: Path, tmp_path: Path
) -> None:
    run = run_with_checkpoints(tmp_path, trainer_checkpoint, steps=(20,))
    damaged = run.checkpoints_dir / "checkpoint-20"
    (damaged / PREFIX_WEIGHTS).write_bytes((damaged / PREFIX_WEIGHTS).read_bytes()[:100])

    with pytest.raises(EvalError) as refused:
        compare_checkpoints(tiny_model_dir, [damaged], dev_file, SETTINGS, tmp_path / "out")

    assert str(refused.value).startswith(
        f"None of the checkpoints can be evaluated. checkpoint-20: {damaged / PREFIX_WEIGHTS} is cut short ("
    )
    assert not (tmp_path / "out").exists()


async def test_the_evaluate_screen_skips_a_damaged_checkpoint_and_shows_why(
    tiny_model_dir: Path, trainer_checkpoint: Path, dev_file: Path, tmp_path: Path
) -> None:
    workspace = make_workspace(tmp_path / "ws", with_model=False)
    config = tiny_config(workspace, model_path=tiny_model_dir, validation_file=dev_file, pre_seq_len=3)
    run = write_run(workspace, "20260501-103000-done", config, state="finished", step=40, losses=[2.0])
    for step in (20, 40):
        with run.saving_checkpoint(step) as partial:
            shutil.copytree(trainer_checkpoint, partial, dirs_exist_ok=True)
    garble(run.checkpoints_dir / "checkpoint-20" / PREFIX_WEIGHTS, "length 2**62")
    app = make_app(workspace)
    async with app.run_test(size=(160, 40)) as pilot:
        evaluate = app.workbench_screen("evaluate")
        evaluate.select_run(run)
        app.action_show("evaluate")
        await settle(pilot)
        evaluate.query_one("#evaluate-checkpoints", SelectionList).select_all()
        evaluate.query_one("#evaluate-limit", Input).value = "1"
        evaluate.query_one("#evaluate-data", Input).focus()
        await pilot.press("ctrl+g")
        await settle(pilot)
        table = evaluate.query_one("#evaluate-metrics", DataTable)
        columns = [str(column.label) for column in table.columns.values()]
        cells = [[str(cell) for cell in table.get_row_at(row)] for row in range(table.row_count)]
        status = str(evaluate.query_one("#evaluate-status", Static).render())

    assert columns == ["ptuning", "base", "checkpoint-40", "checkpoint-20"]
    assert all(row[3] == "skipped" for row in cells[:-1]) and cells[-1][0] == "skipped because"
    reason = (
        f"{run.checkpoints_dir / 'checkpoint-20' / PREFIX_WEIGHTS} has a damaged header (it claims "
        f"{2**62:,} bytes of header); copy or download it again."
    )
    assert status.splitlines()[1] == f"checkpoint-20 was skipped: {reason}"
    (evaluation,) = (run.path / "evaluations").iterdir()
    assert (
        json.loads((evaluation / COMPARISON_FILE).read_text(encoding="utf-8"))["skipped"][0]["reason"]
        == reason
    )
