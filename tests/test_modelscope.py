"""ModelScope as a source, against a stand-in on 127.0.0.1 that answers like its file API (tests/support/fileserver):
listing, download, resume, hostile listings, a wrong sha256; and `glmtui download --source modelscope`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.app import make_app, make_workspace, settle
from support.fileserver import FileServer, running_fileserver
from support.waiting import wait_until_in_app
from textual.widgets import DataTable, Label, Static

from glmcore.catalog import Manifest, ManifestFile
from glmcore.download import (
    ChecksumMismatch,
    DownloadError,
    ModelScopeSource,
    RetryPolicy,
    SourceNotFound,
    UnsafeListing,
    plan_download,
    resolve_source,
    run_download,
)
from glmcore.download.errors import IncompleteBody, NoNetwork

FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
REPO = "ZhipuAI/tiny-glm"
SHARD = "model-00001-of-00002.safetensors"


def payload(seed: int, size: int) -> bytes:
    blocks = bytearray()
    counter = 0
    while len(blocks) < size:
        blocks += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(blocks[:size])


FILES = {
    "config.json": b'{"model_type": "chatglm"}',
    SHARD: payload(1, 900_000),
    "model-00002-of-00002.safetensors": payload(2, 300_000),
    "tokenizer/tokenizer.model": payload(3, 50_000),
    "modeling_chatglm.py": b"# code glmtui never runs\n",
}
FETCHED = {name: data for name, data in FILES.items() if not name.endswith(".py")}


@pytest.fixture
def server() -> Iterator[FileServer]:
    with running_fileserver() as fileserver:
        fileserver.add_modelscope_repo(REPO, "master", FILES)
        yield fileserver


def source(server: FileServer, **options: object) -> ModelScopeSource:
    return ModelScopeSource(REPO, endpoint=server.url, retry=FAST, **options)  # type: ignore[arg-type]


def assert_fetched(folder: Path, files: dict[str, bytes]) -> None:
    assert {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()} - {
        ".glmtui-verified.json"
    } == set(files)
    for name, data in files.items():
        assert (folder / name).read_bytes() == data, name


def test_a_model_is_listed_recursively_fetched_by_file_path_and_checked(
    server: FileServer, tmp_path: Path
) -> None:
    plan = plan_download(source(server), tmp_path / "tiny")
    assert plan.skipped == ("modeling_chatglm.py",)
    assert {p.file.path: p.file.sha256 for p in plan.files} == {
        name: hashlib.sha256(data).hexdigest() for name, data in FETCHED.items()
    }

    result = run_download(plan)

    assert_fetched(tmp_path / "tiny", FETCHED)
    assert result.bytes_fetched == sum(len(data) for data in FETCHED.values())
    paths = [path for method, path, _ in server.requests if method == "GET"]
    assert any("/repo/files?" in path and "Recursive=True" in path for path in paths)
    assert any("FilePath=tokenizer%2Ftokenizer.model" in path for path in paths)


def test_a_manifest_with_null_sizes_takes_them_and_the_sha256_from_the_listing(
    server: FileServer, tmp_path: Path
) -> None:
    """GLM-4's manifests leave the shards' size and sha256 null: ModelScope's listing fills them in, and a shard
    that keeps arriving damaged is refused against the listed sha256, with nothing of it left behind."""
    manifest = Manifest(
        "zai-org/tiny-glm",
        None,
        (
            ManifestFile(
                "config.json", len(FILES["config.json"]), hashlib.sha256(FILES["config.json"]).hexdigest()
            ),
            ManifestFile(SHARD, None, None),
        ),
    )
    plan = plan_download(source(server, manifest=manifest), tmp_path)
    shard = next(p.file for p in plan.files if p.file.path == SHARD)
    assert (shard.size, shard.sha256) == (len(FILES[SHARD]), hashlib.sha256(FILES[SHARD]).hexdigest())
    server.faults.corrupt[SHARD] = 2

    with pytest.raises(ChecksumMismatch, match=f"{SHARD} still does not match its checksum"):
        run_download(plan)

    assert not (tmp_path / SHARD).exists() and not (tmp_path / f"{SHARD}.part").exists()


def test_a_wrong_listed_sha256_is_refused_with_a_sentence_and_nothing_half_written(
    server: FileServer, tmp_path: Path
) -> None:
    server.modelscope[REPO].listed_sha256[SHARD] = "0" * 64

    with pytest.raises(ChecksumMismatch) as refused:
        run_download(plan_download(source(server), tmp_path))

    message = str(refused.value)
    assert SHARD in message and "ModelScope served bytes" in message and "\n" not in message
    assert not (tmp_path / SHARD).exists() and not (tmp_path / f"{SHARD}.part").exists()
    assert server.served[SHARD] == 2 * len(FILES[SHARD])  # fetched again once before giving up


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"Path": "../../escaped.txt", "Size": 3}, "has a '..' part"),
        ({"Path": "/etc/cron.d/x", "Size": 3}, "absolute path"),
        ({"Path": "huge.bin", "Size": 2**50}, "which no model file has"),
        ({"Path": "negative.bin", "Size": -1}, "which no model file has"),
        ({"Path": "text.bin", "Size": "12"}, "which no model file has"),
        ({"Size": 3}, "without a path"),
        ({"Path": "bad-hash.bin", "Size": 3, "Sha256": "not-a-sha256"}, "which is not a sha256"),
    ],
)
def test_a_hostile_listing_is_refused_before_anything_is_written(
    server: FileServer, tmp_path: Path, entry: dict, reason: str
) -> None:
    server.modelscope[REPO].extra_entries.append({"Type": "blob", "Sha256": "", "Revision": "x", **entry})
    destination = tmp_path / "model"

    with pytest.raises(UnsafeListing, match=reason):
        run_download(plan_download(source(server), destination))

    assert not destination.exists()
    assert not server.served


def test_a_dropped_connection_is_resumed_by_the_next_run(server: FileServer, tmp_path: Path) -> None:
    server.faults.drop_after[SHARD] = 400_000
    with pytest.raises((NoNetwork, IncompleteBody)):
        run_download(plan_download(source(server), tmp_path), retry=RetryPolicy(attempts=1))
    kept = (tmp_path / f"{SHARD}.part").stat().st_size
    assert 0 < kept < len(FILES[SHARD]) and not (tmp_path / SHARD).exists()

    plan = plan_download(source(server), tmp_path)
    assert next(p for p in plan.files if p.file.path == SHARD).present == kept
    run_download(plan)

    assert_fetched(tmp_path, FETCHED)
    assert server.served[SHARD] == len(FILES[SHARD])  # the second run asked only for the rest
    ranges = [headers.get("Range") for _, path, headers in server.requests if SHARD in path]
    assert f"bytes={kept}-" in ranges


def test_an_unknown_model_or_revision_is_one_sentence(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match="ModelScope has no model ZhipuAI/nothing at revision master"):
        plan_download(ModelScopeSource("ZhipuAI/nothing", endpoint=server.url, retry=FAST), tmp_path)
    with pytest.raises(
        SourceNotFound, match=r"could not list ZhipuAI/tiny-glm at revision v9 .*: Revision not found"
    ):
        plan_download(source(server, revision="v9"), tmp_path)
    assert not any(tmp_path.iterdir())


def test_sources_resolve_catalog_names_both_hub_owners_and_modelscope_ids() -> None:
    chat = resolve_source("THUDM/glm-4-9b-chat", source="modelscope", endpoint="http://127.0.0.1:9")
    assert isinstance(chat, ModelScopeSource)
    assert (chat.repo_id, chat.name, chat.revision) == ("ZhipuAI/glm-4-9b-chat", "glm-4-9b-chat", "master")
    assert chat.manifest is not None and chat.manifest.repo_id == "zai-org/glm-4-9b-chat"
    z1 = resolve_source("zai-org/GLM-Z1-9B-0414", source="modelscope")
    assert isinstance(z1, ModelScopeSource) and z1.repo_id == "ZhipuAI/GLM-Z1-9B-0414" and z1.manifest is None
    raw = resolve_source("someone/model", source="modelscope")
    assert isinstance(raw, ModelScopeSource) and raw.endpoint == "https://www.modelscope.cn"
    link = resolve_source("https://modelscope.cn/models/ZhipuAI/chatglm3-6b/files")
    assert isinstance(link, ModelScopeSource) and link.repo_id == "ZhipuAI/chatglm3-6b"
    with pytest.raises(DownloadError, match="Unknown source 'ms'; use one of: hf, modelscope, thu"):
        resolve_source("glm-4-9b-chat", source="ms")


def test_glmtui_download_fetches_a_catalog_model_from_modelscope(server: FileServer, tmp_path: Path) -> None:
    """GLM-4-9B-0414 has no manifest: every listed file comes, each checked against its listed sha256."""
    server.add_modelscope_repo("ZhipuAI/GLM-4-9B-0414", "master", FILES)
    workspace = tmp_path / "ws"
    done = subprocess.run(
        [sys.executable, "-m", "glmtui.cli", "--workspace", str(workspace), "download", "glm-4-9b-0414"]
        + ["--source", "modelscope", "--endpoint", server.url],
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    destination = workspace / "models" / "glm-4-9b-0414"
    assert done.stdout.strip() == str(destination)
    assert f"Listing ModelScope ZhipuAI/GLM-4-9B-0414 @ master ({server.url})" in done.stderr
    assert "the catalog pins no revision of GLM-4-9B-0414" in done.stderr
    assert_fetched(destination, FETCHED)


async def test_the_models_screen_downloads_a_catalog_model_from_the_source_chosen_with_s(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.add_modelscope_repo("ZhipuAI/GLM-Z1-9B-0414", "master", FILES)
    monkeypatch.setenv("MODELSCOPE_DOMAIN", server.url)  # the package's variable for another ModelScope site
    app = make_app(make_workspace(tmp_path / "ws", with_model=False))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f2")
        await settle(pilot)
        title = app.screen.query_one("#catalog-title", Label)
        assert "from the Hugging Face Hub" in str(title.render())
        await pilot.press("s")
        assert "from ModelScope (g downloads" in str(title.render())
        catalog = app.screen.query_one("#models-catalog", DataTable)
        catalog.focus()
        catalog.move_cursor(row=catalog.get_row_index("glm-z1-9b-0414"))
        await pilot.press("g")
        status = app.screen.query_one("#download-status", Static)
        await wait_until_in_app(
            pilot, lambda: str(status.render()).startswith("Downloaded glm-z1-9b-0414"), "the download's end"
        )
    assert_fetched(tmp_path / "ws" / "models" / "glm-z1-9b-0414", FETCHED)
    assert not server.served.keys() - FETCHED.keys()
