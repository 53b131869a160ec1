"""glmcore.download against a real HTTP server on 127.0.0.1 that acts as the hub and as a Seafile server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants
from support.fileserver import FileServer, running_fileserver
from support.tmpfs import small_tmpfs

from glmcore.catalog import Manifest, ManifestFile, find_model, load_manifest
from glmcore.download import (
    AccessDenied,
    ChecksumMismatch,
    DownloadError,
    DownloadProgress,
    HubSource,
    IncompleteBody,
    LocalSource,
    NotEnoughDiskSpace,
    RetryPolicy,
    SeafileFileSource,
    SeafileShareSource,
    ServerUnavailable,
    SourceNotFound,
    UnsafeArchive,
    UnsafeListing,
    WrongPassword,
    plan_download,
    resolve_source,
    run_download,
)
from glmcore.download.transfer import VERIFIED_FILE

REVISION = "8b7d33596d18c5e83e2da052d05ca4db02e60620"
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
SHARD = "pytorch_model-00001-of-00002.bin"


@pytest.fixture
def fileserver() -> Iterator[FileServer]:
    with running_fileserver() as server:
        yield server


@pytest.fixture(autouse=True)
def hub_online(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest puts huggingface_hub offline against accidental downloads; these tests talk to 127.0.0.1 only."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def payload(seed: int, size: int) -> bytes:
    """Deterministic incompressible-looking bytes."""
    blocks = bytearray()
    counter = 0
    while len(blocks) < size:
        blocks += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(blocks[:size])


FILES = {
    "config.json": b'{"model_type": "chatglm"}',
    "ice_text.model": payload(1, 300_000),
    SHARD: payload(2, 1_500_000),
    "pytorch_model-00002-of-00002.bin": payload(3, 700_000),
    "modeling_chatglm.py": b"# code glmtui never runs\n",
}
LFS = {"ice_text.model", SHARD, "pytorch_model-00002-of-00002.bin"}


def manifest_of(files: dict[str, bytes], revision: str | None = REVISION) -> Manifest:
    entries = tuple(
        ManifestFile(name, len(data), hashlib.sha256(data).hexdigest()) for name, data in files.items()
    )
    return Manifest(repo_id="THUDM/tiny-glm", revision=revision, files=entries)


def hub_source(server: FileServer, **options: object) -> HubSource:
    server.add_hub_repo("THUDM/tiny-glm", REVISION, FILES, LFS)
    return HubSource(
        "THUDM/tiny-glm", REVISION, endpoint=server.url, manifest=manifest_of(FILES), retry=FAST, **options
    )


def assert_same_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (folder / name).read_bytes() == data, name
    assert not list(folder.rglob("*.part"))


def test_hub_download_fetches_every_file_but_code_and_verifies_it(
    fileserver: FileServer, tmp_path: Path
) -> None:
    plan = plan_download(hub_source(fileserver), tmp_path / "model")
    assert plan.skipped == ("modeling_chatglm.py",)
    assert plan.bytes_to_fetch == sum(len(data) for name, data in FILES.items() if not name.endswith(".py"))
    snapshots: list[DownloadProgress] = []

    result = run_download(plan, progress=snapshots.append)

    wanted = {name: data for name, data in FILES.items() if not name.endswith(".py")}
    assert_same_files(tmp_path / "model", wanted)
    assert not (tmp_path / "model" / "modeling_chatglm.py").exists()
    assert result.bytes_fetched == plan.bytes_to_fetch and not result.cancelled
    assert fileserver.served[SHARD] == len(FILES[SHARD])
    final = snapshots[-1]
    assert final.state == "done" and final.bytes_done == final.bytes_total == plan.bytes_to_fetch
    assert {file.path: file.done for file in final.files} == {
        name: len(data) for name, data in wanted.items()
    }
    # The LFS files went through the CDN redirect, which must not receive the token header.
    assert any(path.startswith("/cdn/") for _, path, _ in fileserver.requests)


def test_second_run_skips_verified_files_without_fetching(fileserver: FileServer, tmp_path: Path) -> None:
    run_download(plan_download(hub_source(fileserver), tmp_path))
    fileserver.served.clear()

    plan = plan_download(hub_source(fileserver), tmp_path)

    assert plan.is_complete and plan.bytes_to_fetch == 0
    assert run_download(plan).bytes_fetched == 0
    assert sum(fileserver.served.values()) == 0
    assert SHARD in json.loads((tmp_path / VERIFIED_FILE).read_text())["files"]


def test_cancelled_download_resumes_with_only_the_remainder(fileserver: FileServer, tmp_path: Path) -> None:
    source = hub_source(fileserver)
    cancel = threading.Event()

    def cancel_halfway(snapshot: DownloadProgress) -> None:
        shard = next(file for file in snapshot.files if file.path == SHARD)
        if shard.done >= len(FILES[SHARD]) // 2:
            cancel.set()

    first = run_download(
        plan_download(source, tmp_path), progress=cancel_halfway, cancel=cancel, progress_interval=0
    )

    assert first.cancelled
    part = tmp_path / f"{SHARD}.part"
    kept = part.stat().st_size
    assert len(FILES[SHARD]) // 2 <= kept < len(FILES[SHARD])
    assert not (tmp_path / SHARD).exists()
    fileserver.served.clear()

    plan = plan_download(hub_source(fileserver), tmp_path)
    assert next(p for p in plan.files if p.file.path == SHARD).present == kept
    run_download(plan)

    assert fileserver.served[SHARD] == len(FILES[SHARD]) - kept
    assert_same_files(tmp_path, {SHARD: FILES[SHARD]})


def test_corrupted_file_is_caught_and_fetched_again(fileserver: FileServer, tmp_path: Path) -> None:
    fileserver.faults.corrupt[SHARD] = 1
    result = run_download(plan_download(hub_source(fileserver), tmp_path))

    assert_same_files(tmp_path, {SHARD: FILES[SHARD]})
    assert fileserver.served[SHARD] == 2 * len(FILES[SHARD])
    assert any(SHARD in note and "checksum" in note for note in result.notes)


def test_a_hub_that_moved_on_is_reported_instead_of_looping(fileserver: FileServer, tmp_path: Path) -> None:
    source = hub_source(fileserver)
    changed = payload(99, len(FILES[SHARD]))
    fileserver.hub["THUDM/tiny-glm"].files[SHARD] = changed

    with pytest.raises(ChecksumMismatch, match="moved on from the pinned revision"):
        run_download(plan_download(source, tmp_path))

    assert fileserver.served[SHARD] == 2 * len(changed)
    assert not (tmp_path / SHARD).exists() and not (tmp_path / f"{SHARD}.part").exists()


def test_connection_dropped_mid_file_is_resumed_by_retry(fileserver: FileServer, tmp_path: Path) -> None:
    fileserver.faults.drop_after[SHARD] = 400_000
    result = run_download(plan_download(hub_source(fileserver), tmp_path))

    assert_same_files(tmp_path, {SHARD: FILES[SHARD]})
    assert fileserver.served[SHARD] == len(FILES[SHARD])  # the retry asked only for the rest
    assert any("broke off" in note or "ended before" in note for note in result.notes)


@pytest.mark.parametrize("fault", ["too_many_requests", "unavailable"])
def test_429_and_503_are_retried(fileserver: FileServer, tmp_path: Path, fault: str) -> None:
    getattr(fileserver.faults, fault)[SHARD] = 2
    result = run_download(plan_download(hub_source(fileserver), tmp_path))

    assert_same_files(tmp_path, {SHARD: FILES[SHARD]})
    assert sum("Retrying" in note for note in result.notes) == 2


def test_503_that_does_not_go_away_is_reported(fileserver: FileServer, tmp_path: Path) -> None:
    fileserver.faults.unavailable[SHARD] = 100
    with pytest.raises(ServerUnavailable, match="HTTP 503.*Try again later"):
        run_download(plan_download(hub_source(fileserver), tmp_path))
    assert fileserver.faults.unavailable[SHARD] == 100 - FAST.attempts


def test_missing_file_is_a_404_with_a_clear_message(fileserver: FileServer, tmp_path: Path) -> None:
    fileserver.faults.not_found.add(SHARD)
    with pytest.raises(SourceNotFound, match=rf"{SHARD}.*not found \(HTTP 404\).*expired"):
        run_download(plan_download(hub_source(fileserver), tmp_path))


def test_unknown_repository_and_revision(fileserver: FileServer, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match="no repository THUDM/nope"):
        plan_download(HubSource("THUDM/nope", endpoint=fileserver.url, retry=FAST), tmp_path)
    hub_source(fileserver)
    with pytest.raises(SourceNotFound, match="no revision 'v9'"):
        plan_download(HubSource("THUDM/tiny-glm", "v9", endpoint=fileserver.url, retry=FAST), tmp_path)


def test_no_network_is_reported(tmp_path: Path) -> None:
    server = FileServer()
    closed_port_url = server.url
    server.httpd.server_close()  # the port is free again: connections are refused
    with pytest.raises(Exception, match="Could not connect to 127.0.0.1"):
        plan_download(HubSource("THUDM/tiny-glm", endpoint=closed_port_url, retry=FAST), tmp_path)


def test_refuses_to_start_when_the_disk_is_too_small(fileserver: FileServer, tmp_path: Path) -> None:
    source = hub_source(fileserver)
    fileserver.hub["THUDM/tiny-glm"].listed_sizes[SHARD] = shutil.disk_usage(tmp_path).free + 1
    unpinned = HubSource("THUDM/tiny-glm", REVISION, endpoint=fileserver.url, retry=FAST)

    with pytest.raises(NotEnoughDiskSpace, match="needs .* more but .* free"):
        run_download(plan_download(unpinned, tmp_path / "model"))

    assert sum(fileserver.served.values()) == 0
    del source


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_filling_up_while_writing_is_reported(fileserver: FileServer, tmp_path: Path) -> None:
    (tmp_path / f"{SHARD}.part").symlink_to("/dev/full")  # every write answers ENOSPC, like a full disk
    with pytest.raises(NotEnoughDiskSpace, match="filled up while writing"):
        run_download(plan_download(hub_source(fileserver), tmp_path))


SHARE_FILES = {
    "chatglm-6b/config.json": FILES["config.json"],
    "chatglm-6b/weights/" + SHARD: FILES[SHARD],
    "chatglm-6b/weights/deeper/notes.txt": b"nested twice",
}


def test_seafile_share_is_listed_recursively_and_downloaded(fileserver: FileServer, tmp_path: Path) -> None:
    link = fileserver.add_share("abc123", SHARE_FILES)
    result = run_download(plan_download(SeafileShareSource(link, retry=FAST), tmp_path))

    assert_same_files(tmp_path, SHARE_FILES)
    assert result.bytes_fetched == sum(len(data) for data in SHARE_FILES.values())


def test_seafile_share_with_manifest_matches_files_by_name(fileserver: FileServer, tmp_path: Path) -> None:
    link = fileserver.add_share("abc123", SHARE_FILES)
    manifest = manifest_of({name: FILES[name] for name in ("config.json", SHARD, "ice_text.model")})
    plan = plan_download(SeafileShareSource(link, manifest=manifest, retry=FAST), tmp_path)

    assert plan.missing == ("ice_text.model",)
    run_download(plan)
    assert_same_files(tmp_path, {"config.json": FILES["config.json"], SHARD: FILES[SHARD]})


def test_seafile_share_folder_lists_only_that_models_files(fileserver: FileServer, tmp_path: Path) -> None:
    """THUDM's share holds several models whose file names repeat; the catalog's folder picks one."""
    shared = {"chatglm-6b/tokenizer.model": b"v1", "chatglm2-6b/tokenizer.model": b"v2", "README.md": b"x"}
    link = fileserver.add_share("many", shared)
    manifest = manifest_of({"tokenizer.model": b"v2"})
    run_download(
        plan_download(
            SeafileShareSource(link, manifest=manifest, folder="/chatglm2-6b", retry=FAST), tmp_path
        )
    )
    assert_same_files(tmp_path, {"tokenizer.model": b"v2"})
    thu = resolve_source("chatglm2-6b", source="thu")
    assert isinstance(thu, SeafileShareSource) and thu.folder == "/chatglm2-6b"
    with pytest.raises(DownloadError, match="no Tsinghua Cloud share"):
        resolve_source("chatglm3-6b", source="thu")


def test_seafile_share_resumes_through_fresh_one_time_links(fileserver: FileServer, tmp_path: Path) -> None:
    link = fileserver.add_share("abc123", SHARE_FILES)
    fileserver.faults.drop_after["chatglm-6b/weights/" + SHARD] = 500_000
    run_download(plan_download(SeafileShareSource(link, retry=FAST), tmp_path))

    assert_same_files(tmp_path, SHARE_FILES)
    assert fileserver.served["chatglm-6b/weights/" + SHARD] == len(FILES[SHARD])


def test_password_share_is_opened_with_csrf_token_and_cookie(fileserver: FileServer, tmp_path: Path) -> None:
    link = fileserver.add_share("locked1", SHARE_FILES, password="s3cret")

    with pytest.raises(AccessDenied, match="--password"):
        plan_download(SeafileShareSource(link, retry=FAST), tmp_path)
    with pytest.raises(WrongPassword, match="did not accept the password"):
        plan_download(SeafileShareSource(link, password="guess", retry=FAST), tmp_path)

    run_download(plan_download(SeafileShareSource(link, password="s3cret", retry=FAST), tmp_path))
    assert_same_files(tmp_path, SHARE_FILES)


def test_expired_share_link_is_a_clear_404(fileserver: FileServer, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match="expired"):
        plan_download(SeafileShareSource(f"{fileserver.url}/d/gone/", retry=FAST), tmp_path)


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


ADGEN = {
    "AdvertiseGen/train.json": '{"content": "类型#裙", "summary": "一条裙子"}\n'.encode(),
    "AdvertiseGen/dev.json": '{"content": "类型#上衣", "summary": "一件上衣"}\n'.encode(),
}


def test_single_file_archive_is_downloaded_and_unpacked(fileserver: FileServer, tmp_path: Path) -> None:
    link = fileserver.add_single_file("b3f119", "AdvertiseGen.tar.gz", tar_gz(ADGEN))
    destination = tmp_path / "data" / "AdvertiseGen"
    run_download(plan_download(SeafileFileSource(link, retry=FAST), destination))

    assert (destination / "train.json").read_bytes() == ADGEN["AdvertiseGen/train.json"]
    assert (destination / "dev.json").read_bytes() == ADGEN["AdvertiseGen/dev.json"]
    assert not (destination / "AdvertiseGen.tar.gz").exists()
    fileserver.served.clear()

    again = plan_download(SeafileFileSource(link, retry=FAST), destination)
    assert again.is_complete
    run_download(again)
    assert fileserver.served["AdvertiseGen.tar.gz"] <= 1  # only the probe's first byte


def test_archive_that_escapes_its_folder_is_refused(fileserver: FileServer, tmp_path: Path) -> None:
    link = fileserver.add_single_file("evil", "data.tar.gz", tar_gz({"../escaped.txt": b"gotcha"}))
    with pytest.raises(UnsafeArchive, match="outside its folder"):
        run_download(plan_download(SeafileFileSource(link, retry=FAST), tmp_path / "data"))
    assert not (tmp_path / "escaped.txt").exists()


def test_local_folder_is_checked_against_the_manifest(tmp_path: Path) -> None:
    copied = tmp_path / "usb" / "chatglm"
    copied.mkdir(parents=True)
    for name, data in FILES.items():
        (copied / name).write_bytes(data)
    (copied / SHARD).write_bytes(payload(7, len(FILES[SHARD])))  # a damaged copy

    with pytest.raises(ChecksumMismatch, match="damaged"):
        run_download(plan_download(LocalSource(copied, manifest=manifest_of(FILES)), tmp_path / "model"))
    assert (tmp_path / "model" / "config.json").read_bytes() == FILES["config.json"]


def test_catalog_pins_chatglm_6b_and_resolves_sources() -> None:
    model = find_model("chatglm-6b")
    assert model is not None and model.revision == REVISION
    manifest = load_manifest("chatglm-6b")
    assert len(manifest.files) == 21 and all(file.sha256 for file in manifest.files)
    assert manifest.total_size > 13_000_000_000

    hub = resolve_source("THUDM/chatglm-6b", endpoint="http://127.0.0.1:9")
    assert isinstance(hub, HubSource) and hub.revision == REVISION and hub.manifest == manifest
    assert isinstance(resolve_source("chatglm-6b", source="thu"), SeafileShareSource)
    dataset = resolve_source("advertisegen")
    assert (
        isinstance(dataset, SeafileFileSource)
        and dataset.kind == "dataset"
        and dataset.name == "AdvertiseGen"
    )
    with pytest.raises(Exception, match="not a known model"):
        resolve_source("no-such-model")


# Hostile listings, damaged bodies, a disk that fills up (Hardening I)


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize("listed", ["../../x", "sub/../../../x", "sub/a\x00b"])
def test_seafile_listing_that_escapes_the_destination_is_refused_before_any_fetch(
    fileserver: FileServer, tmp_path: Path, listed: str
) -> None:
    link = fileserver.add_share("evil", SHARE_FILES)
    fileserver.shares["evil"].extra_entries.append(
        {"is_dir": False, "file_name": "x", "file_path": f"/{listed}", "size": 6}
    )
    destination = tmp_path / "a" / "b" / "to"

    with pytest.raises(
        UnsafeListing, match=rf"Seafile share {fileserver.url}/d/evil/ names a file .*outside"
    ):
        run_download(plan_download(SeafileShareSource(link, retry=FAST), destination))

    assert files_under(tmp_path) == [] and sum(fileserver.served.values()) == 0


@pytest.mark.parametrize(
    ("listed", "problem"),
    [("../../escaped.txt", "it has a '..' part"), ("/tmp/escaped.txt", "it is an absolute path")],
)
def test_hub_listing_with_an_escaping_file_name_is_refused_before_any_fetch(
    fileserver: FileServer, tmp_path: Path, listed: str, problem: str
) -> None:
    fileserver.add_hub_repo("evil/repo", "abc", {"config.json": b"{}", listed: b"gotcha"})
    source = HubSource("evil/repo", endpoint=fileserver.url, retry=FAST)

    with pytest.raises(UnsafeListing, match=rf"names a file '{listed}' .*\({re.escape(problem)}\)"):
        plan_download(source, tmp_path / "deep" / "model")

    assert files_under(tmp_path) == [] and sum(fileserver.served.values()) == 0


def test_index_with_shard_names_outside_the_folder_is_refused_before_the_weights(
    fileserver: FileServer, tmp_path: Path
) -> None:
    index = {"weight_map": {"a.weight": "model-1.safetensors", "b.weight": "../../stolen.safetensors"}}
    files = {
        "model-1.safetensors": payload(5, 200_000),
        "model.safetensors.index.json": json.dumps(index).encode(),
    }
    fileserver.add_hub_repo("evil/index", "abc", files, lfs={"model-1.safetensors"})
    source = HubSource("evil/index", endpoint=fileserver.url, retry=FAST)

    with pytest.raises(UnsafeListing, match=r"in model.safetensors.index.json\) names a shard '../../stolen"):
        run_download(plan_download(source, tmp_path / "m"))

    assert files_under(tmp_path) == ["m/" + VERIFIED_FILE] and fileserver.served["model-1.safetensors"] == 0
    assert json.loads((tmp_path / "m" / VERIFIED_FILE).read_text())["files"] == {}


def test_a_refused_archive_is_not_counted_as_downloaded_next_time(
    fileserver: FileServer, tmp_path: Path
) -> None:
    link = fileserver.add_single_file("evil", "data.tar.gz", tar_gz({"../escaped.txt": b"gotcha"}))
    for _attempt in range(2):
        plan = plan_download(SeafileFileSource(link, retry=FAST), tmp_path / "data")
        assert not plan.is_complete
        with pytest.raises(UnsafeArchive, match="outside its folder"):
            run_download(plan)
    assert files_under(tmp_path / "data") == [VERIFIED_FILE]
    assert json.loads((tmp_path / "data" / VERIFIED_FILE).read_text()) == {"files": {}, "unpacked": {}}


@pytest.mark.parametrize("fault", ["short_body", "chunked_short", "chunked_long"])
def test_a_body_of_the_wrong_length_is_retried_then_accepted_whole(
    fileserver: FileServer, tmp_path: Path, fault: str
) -> None:
    archive = tar_gz({"AdvertiseGen/train.json": payload(8, 300_000)})
    link = fileserver.add_single_file("adgen", "AdvertiseGen.tar.gz", archive)
    getattr(fileserver.faults, fault)["AdvertiseGen.tar.gz"] = 1

    result = run_download(plan_download(SeafileFileSource(link, retry=FAST), tmp_path / "AdvertiseGen"))

    assert (tmp_path / "AdvertiseGen" / "train.json").read_bytes() == payload(8, 300_000)
    assert any("AdvertiseGen.tar.gz" in note for note in result.notes)


@pytest.mark.parametrize("fault", ["short_body", "chunked_short", "chunked_long"])
def test_a_body_that_keeps_its_wrong_length_fails_clearly(
    fileserver: FileServer, tmp_path: Path, fault: str
) -> None:
    link = fileserver.add_single_file("adgen", "AdvertiseGen.tar.gz", tar_gz(ADGEN))
    getattr(fileserver.faults, fault)["AdvertiseGen.tar.gz"] = 100

    with pytest.raises(
        IncompleteBody,
        match="broke off before the whole file|another length than announced|ended AdvertiseGen.tar.gz after",
    ):
        run_download(plan_download(SeafileFileSource(link, retry=FAST), tmp_path / "AdvertiseGen"))

    assert not (tmp_path / "AdvertiseGen" / "AdvertiseGen.tar.gz").exists()
    assert not (tmp_path / "AdvertiseGen" / "train.json").exists()


def test_disk_full_on_a_file_of_unknown_size_says_so_and_leaves_no_stray_file(
    fileserver: FileServer, tmp_path: Path
) -> None:
    link = fileserver.add_single_file("big", "weights.bin", payload(9, 600_000), unknown_size=True)
    with small_tmpfs(tmp_path / "small", "256k") as disk:
        plan = plan_download(SeafileFileSource(link, kind="model", retry=FAST), disk / "model")
        assert plan.files[0].file.size is None

        with pytest.raises(NotEnoughDiskSpace, match="disk filled up while writing .*weights.bin.part"):
            run_download(plan)

        left = files_under(disk)
        assert not [name for name in left if name.endswith(".tmp")]
        assert left in ([], ["model/weights.bin.part"])  # only a part file to resume from, never an empty one
        if left:
            assert (disk / left[0]).stat().st_size > 0
