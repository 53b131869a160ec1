"""Inputs that passed the checks and failed later (Hardening III, "Inputs"): each is now refused with one sentence
before anything exists, or, where it is only passed on, passed on without failing.

The CLI cases run `glmtui train|sweep` through ``glmtui.cli.main`` on real files, as tests/test_preflight.py does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from support.waiting import wait_until
from test_preflight import good_lines, refused, workspace, write_config  # noqa: F401 (workspace: a fixture)

from glmcore.config import RunConfig
from glmcore.notify import NOTIFICATIONS_FOLDER, announce_end
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
    run = notified_run(tmp_path / "ws", [str(tmp_path / "no-such-notifier")])

    announce_end(run)

    [marker] = (run.path / NOTIFICATIONS_FOLDER).iterdir()
    said = f"glmtui: the failed notification of run {run.id} was not sent: could not run {tmp_path}/no-such-notifier"
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
