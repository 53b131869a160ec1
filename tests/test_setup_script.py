"""setup.sh picks the torch build from what `nvidia-smi` says, shown by its --dry-run on a PATH we control."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMI_HEADER = (  # a printf format: each \\n ends a line of the fake output
    "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: {cuda}     |\\n"
    "|   0  NVIDIA H200    On   | 00000000:19:00.0 Off |                    0 |\\n"
)


def dry_run(tmp_path: Path, smi: str | None, **env: str) -> subprocess.CompletedProcess:
    """setup.sh --dry-run with only the tools it uses on PATH, plus a fake nvidia-smi when `smi` is given."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("dirname", "sed", "head"):
        (tools / tool).symlink_to(shutil.which(tool))
    if smi is not None:
        fake = tools / "nvidia-smi"
        fake.write_text("#!/bin/sh\n" + smi)
        fake.chmod(0o755)
    return subprocess.run(
        [shutil.which("bash"), str(REPO / "setup.sh"), "--dry-run"],
        env={"PATH": str(tools), "GLMTUI_VENV": str(tmp_path / "venv"), **env},
        capture_output=True,
        text=True,
    )


def torch_command(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [line for line in result.stdout.splitlines() if line.startswith("+ ") and "torch==" in line]
    assert len(commands) == 1, result.stdout
    return commands[0]


@pytest.mark.parametrize(
    "smi", [None, "exit 9\n", "echo 'NVIDIA-SMI has failed because it could not communicate with the driver'"]
)
def test_without_a_working_nvidia_smi_the_cpu_build_is_installed(tmp_path: Path, smi: str | None) -> None:
    command = torch_command(dry_run(tmp_path, smi))
    assert command.endswith("torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")


@pytest.mark.parametrize(
    ("cuda", "build"), [("13.0", "cu130"), ("12.8", "cu128"), ("12.6", "cu126"), ("12.4", "cu118")]
)
def test_with_a_driver_the_newest_cuda_build_it_supports_is_installed(
    tmp_path: Path, cuda: str, build: str
) -> None:
    result = dry_run(tmp_path, f"printf '{SMI_HEADER.format(cuda=cuda)}'\n")
    assert torch_command(result).endswith(f"--index-url https://download.pytorch.org/whl/{build}")
    assert f"supports CUDA {cuda}" in result.stdout


def test_a_driver_too_old_for_every_build_stops_with_what_to_do(tmp_path: Path) -> None:
    result = dry_run(tmp_path, f"printf '{SMI_HEADER.format(cuda='11.4')}'\n")
    assert result.returncode == 1
    assert "update the driver, or run GLMTUI_TORCH=cpu ./setup.sh" in result.stdout
    assert "pip install" not in result.stdout


def test_glmtui_torch_overrides_the_choice(tmp_path: Path) -> None:
    result = dry_run(tmp_path, None, GLMTUI_TORCH="cu126")
    assert torch_command(result).endswith("--index-url https://download.pytorch.org/whl/cu126")


def test_an_installed_torch_is_kept_and_glmtui_installed_beside_it(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # this interpreter has torch
    python.chmod(0o755)
    result = dry_run(tmp_path, None)
    assert result.returncode == 0, result.stderr
    assert "keeping the installed torch 2." in result.stdout
    assert "torch==" not in result.stdout
    assert "venv -m pip install -q -e .[test]" in result.stdout.replace(str(venv) + "/bin/python", "venv")
