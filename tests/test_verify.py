"""`glmtui verify`: a model folder against its manifest (sizes, sha256) and its weight index against its shards."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN

from glmcore.verify import verify_model_folder
from glmtui.cli import main

REFERENCE = Path(__file__).parent / "fixtures" / "reference" / "chatglm-6b"


def write_manifest(folder: Path, destination: Path) -> Path:
    """The folder's manifest in the catalog's format, each file hashed here with hashlib."""
    files = [
        {
            "path": path.name,
            "size": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        for path in sorted(folder.iterdir())
    ]
    destination.write_text(json.dumps({"repo": "test/tiny", "files": files}))
    return destination


def test_a_whole_folder_passes_and_a_truncated_shard_a_missing_tensor_and_a_wrong_sha256_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = shutil.copytree(GOLDEN / "tiny-chatglm6b", tmp_path / "tiny")
    manifest = write_manifest(folder, tmp_path / "manifest.json")
    assert main(["verify", str(folder), "--manifest", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "The folder is whole." in out and "12 files checked" in out and "30 tensors found" in out

    first, second = "pytorch_model-00001-of-00008.bin", "pytorch_model-00002-of-00008.bin"
    (folder / first).write_bytes((folder / first).read_bytes()[:5000])
    tensors = torch.load(folder / second, weights_only=True)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    torch.save(tensors, folder / second)
    tokenizer = bytearray((folder / "ice_text.model").read_bytes())
    tokenizer[100] ^= 0xFF
    (folder / "ice_text.model").write_bytes(bytes(tokenizer))

    assert main(["verify", str(folder), "--manifest", str(manifest)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"{first} is truncated: 5,000 bytes where test/tiny has" in out
    assert "ice_text.model has the wrong sha256" in out
    assert "3 problem(s)" in out  # the re-saved second shard differs in size from the manifest's
    # Outside the catalog only the index is checked against the shards: the missing tensor is named.
    report = verify_model_folder(folder)
    assert report.manifest is None and "no catalog manifest applies" in report.manifest_note
    assert f"{second} lacks 1 tensor(s) pytorch_model.bin.index.json names: {dropped}" in report.problems[1]
    assert first in report.problems[0] and "truncated or damaged" in report.problems[0]


def test_safetensors_shards_and_the_catalog_manifest_found_from_config_json(tmp_path: Path) -> None:
    folder = shutil.copytree(GOLDEN / "chatglm3" / "tiny-chatglm3", tmp_path / "tiny3")
    progress = []
    manifest = write_manifest(folder, tmp_path / "manifest.json")
    from glmcore.verify import read_manifest_file

    whole = verify_model_folder(folder, manifest=read_manifest_file(manifest), progress=progress.append)
    assert whole.ok and whole.tensors_checked > 0
    assert progress[-1].done == progress[-1].total == sum(path.stat().st_size for path in folder.iterdir())
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert verify_model_folder(folder).problems == [
        f"{shard.name} is truncated: {shard.stat().st_size:,} bytes where its header needs "
        f"{shard.stat().st_size + 10:,}; copy or download it again"
    ]

    published = tmp_path / "chatglm-6b"
    shutil.copytree(REFERENCE, published)
    report = verify_model_folder(published)
    assert report.manifest is not None and report.manifest.repo_id == "THUDM/chatglm-6b"
    assert "config.json is THUDM/chatglm-6b's" in report.manifest_note
    assert (
        "pytorch_model-00001-of-00008.bin is missing (1,740,651,802 bytes in THUDM/chatglm-6b)"
        in report.problems
    )
    assert "modeling_chatglm.py" in report.absent_optional
