"""GLM-4 in the download catalog: its four checkpoints under zai-org/ (THUDM/ accepted), unpinned manifests whose
null shard sizes and sha256 come from the hub's listing, and `glmtui verify` knowing those manifests."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants
from support.fileserver import FileServer, running_fileserver

from glmcore.catalog import MODELS, Manifest, ManifestFile, find_model
from glmcore.download import (
    ChecksumMismatch,
    HubSource,
    RetryPolicy,
    plan_download,
    resolve_source,
    run_download,
)
from glmcore.verify import verify_model_folder
from glmtui.cli import main

REFERENCE = Path(__file__).parent / "fixtures" / "reference" / "glm-4-9b-chat"
GLM4 = {
    "glm-4-9b-chat": "zai-org/glm-4-9b-chat",
    "glm-4-9b-chat-hf": "zai-org/glm-4-9b-chat-hf",
    "glm-4-9b-0414": "zai-org/GLM-4-9B-0414",
    "glm-z1-9b-0414": "zai-org/GLM-Z1-9B-0414",
}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with running_fileserver() as server:
        yield server


def test_the_catalog_names_glm4s_checkpoints_under_both_owners_unpinned() -> None:
    assert {name: MODELS[name].hub_repo for name in GLM4} == GLM4
    for name, hub_id in GLM4.items():
        owner, _, repo = hub_id.partition("/")
        assert find_model(f"THUDM/{repo}") is find_model(hub_id.upper()) is MODELS[name]
        assert MODELS[name].revision is None and "follows main" in MODELS[name].note
    chat = MODELS["glm-4-9b-chat"].manifest
    assert chat is not None and chat.total_size is None
    shards = [file for file in chat.files if file.path.endswith(".safetensors")]
    assert len(shards) == 10 and all(file.size is None and file.sha256 is None for file in shards)
    source = resolve_source("THUDM/glm-4-9b-chat-hf")
    assert (
        isinstance(source, HubSource)
        and source.repo_id == "zai-org/glm-4-9b-chat-hf"
        and source.revision is None
    )


def test_null_shard_sizes_and_sha256_come_from_the_hub_and_are_enforced(
    hub: FileServer, tmp_path: Path
) -> None:
    shard = "model-00001-of-00001.safetensors"
    files = {"config.json": b'{"model_type": "chatglm"}', shard: hashlib.sha256(b"w").digest() * 20_000}
    hub.add_hub_repo("zai-org/tiny-glm4", "c" * 40, files, lfs={shard})
    config = ManifestFile(
        "config.json", len(files["config.json"]), hashlib.sha256(files["config.json"]).hexdigest()
    )
    manifest = Manifest("zai-org/tiny-glm4", None, (config, ManifestFile(shard, None, None)))
    source = HubSource(
        "zai-org/tiny-glm4", endpoint=hub.url, manifest=manifest, retry=RetryPolicy(2, 0.01, 0.05)
    )

    plan = plan_download(source, tmp_path)

    listed = next(p.file for p in plan.files if p.file.path == shard)
    assert (listed.size, listed.sha256) == (len(files[shard]), hashlib.sha256(files[shard]).hexdigest())
    hub.faults.corrupt[shard] = 2
    with pytest.raises(
        ChecksumMismatch, match=r"expected .*The hub served bytes that do not match the checksum it lists"
    ):
        run_download(plan)
    assert not (tmp_path / shard).exists() and not (tmp_path / f"{shard}.part").exists()


def test_verify_finds_glm4s_manifest_and_checks_the_shards_it_has_no_sha256_for(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = shutil.copytree(REFERENCE, tmp_path / "glm-4-9b-chat")
    (folder / "model-00002-of-00010.safetensors").write_bytes(b"\0" * 8)  # present: its size is not known

    report = verify_model_folder(folder)

    assert report.manifest is not None and report.manifest.repo_id == "zai-org/glm-4-9b-chat"
    assert "catalog model glm-4-9b-chat" in report.manifest_note
    assert "model-00001-of-00010.safetensors is missing (a file in zai-org/glm-4-9b-chat)" in report.problems
    assert not any("model-00002-of-00010" in problem and "bytes" in problem for problem in report.problems)

    assert main(["verify", str(folder), "--manifest", "glm-z1-9b-0414"]) == 1
    assert capsys.readouterr().err.strip() == (
        "glmtui: the catalog knows no file list of glm-z1-9b-0414 (no reference gives one); verify without "
        "--manifest to check the folder's weight index against its shards"
    )


def test_a_file_updated_on_main_since_the_manifest_was_read_says_how_to_follow_main(
    hub: FileServer, tmp_path: Path
) -> None:
    files = {"config.json": b'{"model_type": "chatglm", "updated": true}'}
    hub.add_hub_repo("zai-org/glm-4-9b-chat", "d" * 40, files)
    source = resolve_source("glm-4-9b-chat", endpoint=hub.url)
    assert isinstance(source, HubSource) and source.manifest is not None
    plan = plan_download(source, tmp_path)
    assert [p.file.path for p in plan.files] == ["config.json"]  # the rest of the manifest is not on this hub

    with pytest.raises(ChecksumMismatch, match="was updated since. Pass --revision main"):
        run_download(plan, retry=RetryPolicy(2, 0.01, 0.05))

    following_main = resolve_source("glm-4-9b-chat", revision="main", endpoint=hub.url)
    run_download(plan_download(following_main, tmp_path))
    assert (tmp_path / "config.json").read_bytes() == files["config.json"]
