"""setup.sh picks the torch build from what `nvidia-smi` says and the index from which one answers, shown by its
--dry-run on a PATH we control, against a PyTorch index stand-in: a real HTTP server on 127.0.0.1 with PyTorch's
layout (``<build>/torch/``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMI_HEADER = (  # a printf format: each \\n ends a line of the fake output
    "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: {cuda}     |\\n"
    "|   0  NVIDIA H200    On   | 00000000:19:00.0 Off |                    0 |\\n"
)


BUILDS = ("cpu", "cu130", "cu128", "cu126", "cu118")


class TorchIndex(BaseHTTPRequestHandler):
    """PyTorch's index as pip sees it: ``/<build>/torch/`` lists torch; anything else is 404. Every request is kept
    in the server's ``asked`` list."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.asked.append(self.path)
        found = self.path in {f"/whl/{build}/torch/" for build in BUILDS}
        body = b'<a href="torch-2.13.0-cp311-none-linux_x86_64.whl">torch</a>' if found else b"not here"
        self.send_response(200 if found else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def torch_index() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), TorchIndex)
    server.asked = []
    server.url = f"http://127.0.0.1:{server.server_port}/whl"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: a connection is refused at once, as by an intranet's firewall."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dry_run(tmp_path: Path, smi: str | None, **env: str) -> subprocess.CompletedProcess:
    """setup.sh --dry-run with only the tools it uses on PATH (python3 for the probe: this interpreter), plus a
    fake nvidia-smi when `smi` is given."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("dirname", "sed", "head"):
        (tools / tool).symlink_to(shutil.which(tool))
    python3 = tools / "python3"
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python3.chmod(0o755)
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
def test_without_a_working_nvidia_smi_the_cpu_build_is_installed(
    tmp_path: Path, smi: str | None, torch_index: ThreadingHTTPServer
) -> None:
    result = dry_run(tmp_path, smi, GLMTUI_TORCH_INDEX=torch_index.url)
    assert torch_command(result).endswith(f"torch==2.13.0 --index-url {torch_index.url}/cpu")
    assert f"setup: {torch_index.url}/cpu answers: installing torch 2.13.0 (cpu) from it" in result.stdout
    assert torch_index.asked == ["/whl/cpu/torch/"]  # asked once


@pytest.mark.parametrize(
    ("cuda", "build"), [("13.0", "cu130"), ("12.8", "cu128"), ("12.6", "cu126"), ("12.4", "cu118")]
)
def test_with_a_driver_the_newest_cuda_build_it_supports_is_installed(
    tmp_path: Path, cuda: str, build: str, torch_index: ThreadingHTTPServer
) -> None:
    result = dry_run(
        tmp_path, f"printf '{SMI_HEADER.format(cuda=cuda)}'\n", GLMTUI_TORCH_INDEX=torch_index.url
    )
    assert torch_command(result).endswith(f"--index-url {torch_index.url}/{build}")
    assert f"supports CUDA {cuda}" in result.stdout


def test_a_driver_too_old_for_every_build_stops_with_what_to_do(tmp_path: Path) -> None:
    result = dry_run(tmp_path, f"printf '{SMI_HEADER.format(cuda='11.4')}'\n")
    assert result.returncode == 1
    assert "update the driver, or run GLMTUI_TORCH=cpu ./setup.sh" in result.stdout
    assert "pip install" not in result.stdout


def test_glmtui_torch_overrides_the_choice(tmp_path: Path, torch_index: ThreadingHTTPServer) -> None:
    result = dry_run(tmp_path, None, GLMTUI_TORCH="cu126", GLMTUI_TORCH_INDEX=torch_index.url)
    assert torch_command(result).endswith(f"--index-url {torch_index.url}/cu126")


def test_an_unreachable_pytorch_index_is_asked_once_then_the_configured_index_is_used(
    tmp_path: Path, closed_port: int
) -> None:
    """PyTorch's own index behind a proxy that refuses (as an intranet's does): one probe, then PIP_INDEX_URL,
    named without its credentials."""
    result = dry_run(
        tmp_path,
        None,
        https_proxy=f"http://127.0.0.1:{closed_port}",
        PIP_INDEX_URL="https://reader:s3cret@pypi.intranet.example/simple",
    )
    assert torch_command(result).endswith("pip install torch==2.13.0+cpu")
    assert (
        "setup: https://download.pytorch.org/whl/cpu could not be reached (one try, 5 s timeout); "
        "GLMTUI_TORCH_INDEX names a mirror of it\n"
        "setup: installing torch==2.13.0+cpu from https://pypi.intranet.example/simple (PIP_INDEX_URL)\n"
    ) in result.stdout
    assert "s3cret" not in result.stdout + result.stderr


def test_a_mirror_that_does_not_answer_is_named_and_a_cuda_build_comes_from_the_package_index(
    tmp_path: Path, closed_port: int
) -> None:
    mirror = f"http://127.0.0.1:{closed_port}/pytorch-wheels"
    result = dry_run(tmp_path, None, GLMTUI_TORCH="cu126", GLMTUI_TORCH_INDEX=mirror)
    assert torch_command(result).endswith("pip install torch==2.13.0")
    assert (
        f"setup: {mirror}/cu126 (GLMTUI_TORCH_INDEX) could not be reached (one try, 5 s timeout)\n"
        in result.stdout
    )
    assert (
        "from pip's configured package index: its Linux wheel is built for one CUDA version" in result.stdout
    )


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
