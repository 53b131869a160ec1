"""`glmtui download` end to end: a real subprocess against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fileserver import FileServer, running_fileserver

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fileserver() -> Iterator[FileServer]:
    with running_fileserver() as server:
        yield server


def glmtui(workspace: Path, *arguments: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    return subprocess.run(
        [sys.executable, "-m", "glmtui.cli", "--workspace", str(workspace), "download", *arguments],
        cwd=REPO_ROOT,
        env={**env, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_hub_model_lands_in_the_workspace_models_folder(fileserver: FileServer, tmp_path: Path) -> None:
    weights = hashlib.sha256(b"w").digest() * 40_000
    files = {"config.json": b"{}", "pytorch_model.bin": weights, "modeling_x.py": b"# skipped"}
    fileserver.add_hub_repo("someone/tiny", "abc1234", files, lfs={"pytorch_model.bin"})

    done = glmtui(tmp_path, "someone/tiny", HF_ENDPOINT=fileserver.url)

    assert done.returncode == 0, done.stderr
    folder = tmp_path / "models" / "tiny"
    assert (folder / "pytorch_model.bin").read_bytes() == weights
    assert not (folder / "modeling_x.py").exists()
    assert done.stdout.strip() == str(folder)
    assert "Skipping 1 Python files" in done.stderr


def test_dataset_archive_is_unpacked_into_the_workspace_data_folder(
    fileserver: FileServer, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in ("AdvertiseGen/train.json", "AdvertiseGen/dev.json"):
            data = f'{{"content": "{name}", "summary": "s"}}\n'.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    link = fileserver.add_single_file("b3f119a0", "AdvertiseGen.tar.gz", buffer.getvalue())

    done = glmtui(tmp_path, link)

    assert done.returncode == 0, done.stderr
    folder = tmp_path / "data" / "AdvertiseGen"
    assert (folder / "train.json").read_text().startswith('{"content": "AdvertiseGen/train.json"')
    assert (folder / "dev.json").is_file() and not (folder / "AdvertiseGen.tar.gz").exists()


def test_password_share_with_the_wrong_password_fails_clearly(fileserver: FileServer, tmp_path: Path) -> None:
    link = fileserver.add_share("locked", {"a/b.bin": b"bytes"}, password="right")

    refused = glmtui(tmp_path, link, "--password", "wrong")
    assert refused.returncode == 1
    assert "did not accept the password" in refused.stderr and "Traceback" not in refused.stderr

    done = glmtui(tmp_path, link, "--password", "right", "--to", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "a" / "b.bin").read_bytes() == b"bytes"


def test_expired_link_fails_with_a_message_not_a_traceback(fileserver: FileServer, tmp_path: Path) -> None:
    failed = glmtui(tmp_path, f"{fileserver.url}/d/expired0/")
    assert failed.returncode == 1
    assert "HTTP 404" in failed.stderr and "expired" in failed.stderr and "Traceback" not in failed.stderr
