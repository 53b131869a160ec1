"""Inputs that passed the checks and failed later (Hardening III, "Inputs"): each is now refused with one sentence
before anything exists, or, where it is only passed on, passed on without failing.

The CLI cases run `glmtui train|sweep` through ``glmtui.cli.main`` on real files, as tests/test_preflight.py does.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from support.waiting import wait_until
from test_preflight import good_lines, refused, workspace, write_config  # noqa: F401 (workspace: a fixture)

from glmcore.config import RunConfig, cautions, defaults_for, validate
from glmcore.notify import NOTIFICATIONS_FOLDER, announce_end
from glmcore.preflight import visible_gpu_count
from glmcore.runs import Run, RunStore
from glmcore.slurm.script import SlurmOptions, SlurmOptionsError, check_submittable, job_script
from glmtui.cli import main

SEED_SENTENCE = "seed: must be between 0 and 4294967295 (2^32 - 1), not {}"


@pytest.mark.parametrize(
    ("settings", "sentence"),
    [
        ({"save_steps": 0}, "save_steps: must be at least 1, not 0"),
        ({"seed": -1}, SEED_SENTENCE.format(-1)),
        ({"seed": 2**63 - 1}, SEED_SENTENCE.format(2**63 - 1)),
        (
            {"name": "bad\x00name"},
            "name: holds the control character U+0000; use letters, digits, spaces and punctuation",
        ),
        (
            {"name": "two\nlines"},
            "name: holds the control character U+000A; use letters, digits, spaces and punctuation",
        ),
    ],
    ids=["save-steps-0", "seed-negative", "seed-64-bit", "name-nul", "name-newline"],
)
def test_values_that_failed_after_launch_are_refused_by_train(
    settings: dict,
    sentence: str,
    tmp_path: Path,
    workspace: Path,  # noqa: F811
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(good_lines())
    config = write_config(tmp_path / "bad.toml", tiny_model_dir, data, **settings)

    printed = refused(config, workspace, capsys)

    assert f"{config} has 1 problem; nothing was started:\n  • {sentence}\n" in printed


def test_a_sweep_with_save_steps_0_is_refused_before_any_run_exists(
    tmp_path: Path,
    workspace: Path,  # noqa: F811
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(good_lines())
    config = write_config(tmp_path / "sweep.toml", tiny_model_dir, data)

    code = main(["sweep", str(config), "--set", "save_steps=0,5"])

    printed = capsys.readouterr().err
    assert code == 2 and "Traceback" not in printed
    assert "1 of the 2 combinations have problems; nothing was created:" in printed
    assert "  • save_steps=0: save_steps: must be at least 1, not 0" in printed
    assert not (workspace / "runs").exists()


def notified_run(root: Path, command: list[str]) -> Run:
    """A failed run named with a NUL (as a hand-edited or older folder may be), its reason holding a NUL and a
    lone surrogate (status.json is JSON, which can), in a workspace whose notify.toml runs ``command``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "notify.toml").write_text(f"command = {json.dumps(command)}\n", encoding="utf-8")
    config = RunConfig(name="nul\x00name", model_path=Path("model"), train_file=Path("train.json"), gpus=[])
    run = RunStore(root / "runs").create(config)
    run.write_status(state="failed", reason="broke \x00 at \ud800 step 3")
    return run


def test_a_name_and_reason_no_variable_can_carry_are_still_notified(tmp_path: Path) -> None:
    recorder = tmp_path / "record.py"
    recorder.write_text(
        "import json, os, sys\n"
        "facts = {key: value for key, value in os.environ.items() if key.startswith('GLMTUI_')}\n"
        "open(sys.argv[1] + '.part', 'w', encoding='utf-8').write(json.dumps(facts))\n"
        "os.replace(sys.argv[1] + '.part', sys.argv[1])\n",
        encoding="utf-8",
    )
    calls = tmp_path / "calls.json"
    run = notified_run(tmp_path / "ws", [sys.executable, str(recorder), str(calls)])

    [ending] = announce_end(run)

    assert ending.event == "failed"
    wait_until(calls.exists, "the command's call")
    facts = json.loads(calls.read_text(encoding="utf-8"))
    assert facts["GLMTUI_RUN_NAME"] == "nul\ufffdname"
    assert facts["GLMTUI_REASON"] == "broke \ufffd at \ufffd step 3"


def test_a_notification_that_cannot_be_sent_says_so_in_its_marker_and_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    notifier = tmp_path / "no-such-notifier"
    run = notified_run(tmp_path / "ws", [str(notifier)])

    announce_end(run)

    [marker] = (run.path / NOTIFICATIONS_FOLDER).iterdir()
    said = f"glmtui: the failed notification of run {run.id} was not sent: could not run {notifier}"
    assert said in marker.read_text(encoding="utf-8")
    assert said in capsys.readouterr().err  # a training process's stderr is its train.log


SBATCH_MANGLED = {
    "quote": ("it's", "a quote"),
    "double-quote": ('say"hi', "a double quote"),
    "backslash": ("back\\slash", "a backslash"),
    "percent": ("job%j", "a '%'"),
    "hash": ("lab#2", "a '#'"),
    "space": ("my runs", "a space"),
}


@pytest.mark.parametrize("case", SBATCH_MANGLED, ids=list(SBATCH_MANGLED))
def test_a_workspace_path_sbatch_would_change_is_refused_before_any_slurm_command(
    case: str, tmp_path: Path
) -> None:
    folder, what = SBATCH_MANGLED[case]
    runs_dir = tmp_path / folder / "runs"
    # Checked before Slurm's commands are even looked for, so no command runs (none is installed here).
    with pytest.raises(SlurmOptionsError) as refusal:
        check_submittable(SlurmOptions(), runs_dir)
    assert str(refusal.value) == (
        f"the path {runs_dir} has {what}, which sbatch would change in the job script's #SBATCH lines; use a "
        "workspace whose path has only letters, digits and / . _ - (set GLMTUI_HOME or pass --workspace)"
    )
    with pytest.raises(SlurmOptionsError, match=f"has {what}"):
        job_script(runs_dir / "20261201-run", "20261201-run", SlurmOptions(), resume=False)


def test_train_on_slurm_from_a_workspace_with_a_quote_creates_nothing(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    quoted = tmp_path / "lab's"
    monkeypatch.setenv("GLMTUI_HOME", str(quoted))
    monkeypatch.setenv("COLUMNS", "400")
    data = tmp_path / "train.jsonl"
    data.write_bytes(good_lines())
    config = write_config(tmp_path / "slurm.toml", tiny_model_dir, data)

    code = main(["train", str(config), "--slurm"])

    printed = capsys.readouterr().err
    assert code == 2 and "Traceback" not in printed
    assert f"error: the path {quoted / 'runs'} has a quote, which sbatch would change" in printed
    assert not quoted.exists()


# --- Day one III §7: defaults that fit the machine, a config found in the workspace -------------------------


def test_a_new_run_fits_the_machine_and_says_why() -> None:
    cpu = defaults_for(0)
    config = RunConfig(name="x", model_path=Path("m"), train_file=Path("t"), **cpu.values)
    assert (config.gpus, config.quantization_bit, config.max_steps, config.save_steps) == ([], 16, 200, 100)
    assert validate(config) == [] and cautions(config) == []
    assert cpu.reason == (
        "Defaults for this machine (no NVIDIA GPU): 16-bit, as 4-bit is about 4× slower on a CPU, and 200 steps "
        "instead of the published 3,000."
    )
    gpu = defaults_for(2)
    assert RunConfig(name="x", model_path=Path("m"), train_file=Path("t"), **gpu.values).gpus == [0]
    assert (
        gpu.reason == "Defaults for this machine (2 GPUs): the published 4-bit, 3,000-step recipe on GPU 0."
    )
    [caution] = cautions(dataclasses.replace(config, quantization_bit=4))
    assert caution.field == "quantization_bit" and caution.message.startswith(
        "4-bit on the CPU trains about 4×"
    )


@pytest.fixture
def cpu_only() -> None:
    if visible_gpu_count():
        pytest.skip("this machine has GPUs: its defaults are the GPU recipe")


def test_train_finds_configs_in_the_workspace_fills_what_they_leave_out_and_warns_of_4_bit_on_the_cpu(
    cpu_only: None,
    tmp_path: Path,
    workspace: Path,  # noqa: F811
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(good_lines())
    configs = workspace / "configs"
    configs.mkdir(parents=True)
    (configs / "minimal.toml").write_text(
        f"name = 'minimal'\nmodel_path = '{tiny_model_dir}'\ntrain_file = '{data}'\nquantization_bit = 4\n"
        "max_steps = 0\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)  # a folder without configs/, as the repository is

    code = main(["train", "configs/minimal.toml"])  # refused for max_steps, after saying what it used

    output = capsys.readouterr()
    assert code == 2 and "Traceback" not in output.err
    assert f"Using {configs / 'minimal.toml'} from the workspace." in output.out
    assert (
        "Not in minimal.toml, so set for this machine (no NVIDIA GPU): gpus = [], save_steps = 100, "
        "logging_steps = 5." in output.out
    )
    assert f"{configs / 'minimal.toml'} has 1 problem; nothing was started:" in output.err

    assert (
        "warning: quantization_bit: 4-bit on the CPU trains about 4× slower than 16-bit; use quantization_bit = "
        "16 unless the 16-bit model does not fit in memory" in output.out
    )

    assert (
        main(["sweep", "minimal.toml", "--set", "max_steps=0,1"]) == 2
    )  # a bare name: the workspace's configs/
    output = capsys.readouterr()
    assert f"Using {configs / 'minimal.toml'} from the workspace." in output.out
    assert "  • max_steps=0: max_steps: must be at least 1, not 0" in output.err
    assert not (workspace / "runs").exists()

    assert main(["train", "configs/absent.toml"]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: the config file configs/absent.toml is neither in {tmp_path} nor in the workspace "
        f"({workspace / 'configs' / 'absent.toml'}); give its path, or make one with `glmtui demo`"
    )


async def test_a_new_run_in_the_editor_has_the_cpu_recipe_says_why_and_notes_4_bit(
    cpu_only: None, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """New run on a CPU machine: 16-bit and 200 steps with the reason; 4-bit is noted, not refused; save_steps 0
    gets its real reason; a file loaded with ctrl+o gets the machine's defaults for what it leaves out."""
    from support.app import make_app, make_workspace, settle
    from textual.widgets import Input, Select, Static

    from glmtui.screens.config import ConfigScreen

    bench = make_workspace(tmp_path / "ws", with_model=False)
    (bench.models_dir / "tiny").symlink_to(tiny_model_dir)  # the session's tiny model, not a new one
    data = tmp_path / "train.jsonl"
    data.write_bytes(good_lines())
    async with make_app(bench).run_test(size=(120, 40)) as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, ConfigScreen)
        await settle(pilot)
        values = [screen.query_one(f"#{name}", Input).value for name in ("max_steps", "save_steps", "gpus")]
        assert (screen.query_one("#quantization_bit", Select).value, values) == (16, ["200", "100", ""])
        side = str(screen.query_one("#config-problems", Static).render())
        assert side.startswith(defaults_for(0).reason)

        screen.query_one("#quantization_bit", Select).value = 4
        screen.query_one("#train_file", Input).value = str(data)
        await settle(pilot)
        side = " ".join(str(screen.query_one("#config-problems", Static).render()).split())
        assert screen.problems == []  # a warning, not a refusal
        assert "Note: Quantization: 4-bit on the CPU trains about 4× slower than 16-bit" in side

        screen.query_one("#save_steps", Input).focus()
        await pilot.press("ctrl+a", "ctrl+k", "0")
        await settle(pilot)
        assert [str(problem) for problem in screen.problems] == ["save_steps: must be at least 1, not 0"]

        # A config file loaded with ctrl+o gets the same defaults for what it leaves out as `glmtui train` gives.
        minimal = tmp_path / "minimal.toml"
        minimal.write_text(f"name = 'minimal'\nmodel_path = '{tiny_model_dir}'\ntrain_file = '{data}'\n")
        await pilot.press("ctrl+o")
        await settle(pilot)
        pilot.app.screen.query_one("#load-path", Input).value = str(minimal)
        await pilot.press("enter")
        await settle(pilot)
        assert screen.query_one("#quantization_bit", Select).value == 16
        assert [screen.query_one(f"#{name}", Input).value for name in ("max_steps", "save_steps")] == [
            "200",
            "100",
        ]


def test_a_tokenizer_with_ids_past_the_models_embedding_gets_one_sentence_from_every_verb(
    tmp_path: Path,
    workspace: Path,  # noqa: F811
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """A tokenizer copied from another model (its ids, special tokens included, past config.json's embedding
    rows) trained until `IndexError: index out of range in self`; train, eval, chat and serve now refuse the
    folder in one sentence before anything exists, without reading the weights. The verdict follows the files."""
    import shutil

    from glmcore.preflight import model_problems

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "mixed-model"))
    config_json = folder / "config.json"
    published = config_json.read_text(encoding="utf-8")
    values = json.loads(published)
    rows = values["vocab_size"] - 40
    config_json.write_text(json.dumps({**values, "vocab_size": rows}), encoding="utf-8")
    sentence = (
        f"{folder}'s tokenizer has token ids up to {values['vocab_size'] - 1} (special tokens included), but "
        f"config.json gives the model only {rows} embedding rows (ids 0 to {rows - 1}), so its tokenizer files "
        "come from another model; copy in the tokenizer files that came with these weights"
    )
    data = tmp_path / "train.jsonl"
    data.write_bytes(good_lines())

    assert sentence in refused(write_config(tmp_path / "run.toml", folder, data), workspace, capsys)
    for verb in (
        ["eval", "--model", str(folder), "--data", str(data), "--checkpoint", "base"],
        ["chat", "--model", str(folder)],
        ["serve", "--model", str(folder)],
    ):
        code = main(verb)
        printed = capsys.readouterr()
        assert code == 1 and "Traceback" not in printed.err, printed
        assert " ".join(printed.err.split()).endswith(f"error: {sentence}."), verb[0]
    made = [
        path
        for path in workspace.rglob("*")
        if path.is_file() or path.parent.name in ("evaluations", "servers")
    ]
    assert made == [], "nothing was created beside the workspace's empty folders"

    config_json.write_text(published, encoding="utf-8")
    assert model_problems(folder) == []


def test_a_tokenizer_file_that_cannot_be_read_is_named_in_one_sentence(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A tokenizer file cut short is said to be one, before anything loads (the config editor's check too)."""
    import shutil

    from glmcore.errors import GlmError
    from glmcore.models.loading import load_model
    from glmcore.preflight import model_problems

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "cut-tokenizer"))
    tokenizer = folder / "ice_text.model"
    tokenizer.write_bytes(tokenizer.read_bytes()[:100])

    (problem,) = model_problems(folder)
    assert problem.field == "model_path"
    assert problem.message.startswith(f"{tokenizer} cannot be read as ChatGLM-6B's tokenizer (")
    assert problem.message.endswith("); copy in the tokenizer files that came with the model")
    with pytest.raises(GlmError) as refused_load:
        load_model(folder)
    assert str(refused_load.value) == f"{problem.message}."
