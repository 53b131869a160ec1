"""`glmtui verify MODEL_DIR`: is a model folder whole? Every file against its catalog manifest, every tensor the
weight index names present in its shard.

The manifest is the catalog's (glmcore/assets/manifests) whose config.json or weight index is byte for byte the
folder's; a folder outside the catalog has none, and then only its index is checked against its shards. Each file
the manifest lists is checked for its size and sha256 (the bytes hashed reported as progress: 13 GB take
minutes); files a model does not need (code, README, licences) may be absent. A file whose size or sha256 the
manifest leaves null (GLM-4's weight shards: no reference gives them) is checked for presence only; the download
checked it against its source's sha256. Tensor names are read from each
shard without loading the weights: a safetensors header, or a pickled shard through `torch.load(weights_only=True,
mmap=True)` (no code from the folder runs).
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from glmcore.catalog import MODELS, Manifest, ManifestFile
from glmcore.download.transfer import HASH_BLOCK
from glmcore.errors import GlmError
from glmcore.models.shards import BIN_INDEX, SAFETENSORS_INDEX

WEIGHT_INDEX_NAMES = (SAFETENSORS_INDEX, BIN_INDEX)
IDENTIFYING_FILES = ("config.json", *WEIGHT_INDEX_NAMES)
"""The files whose bytes say which catalog manifest a folder holds."""
NEEDED_SUFFIXES = (".json", ".bin", ".safetensors", ".model")
"""Manifest files a model needs to load; the others (code, README, licences) may be absent."""
SAFETENSORS_HEADER_LIMIT = 100 * 2**20


class VerifyError(GlmError):
    """The folder cannot be verified at all (not a folder, a manifest that cannot be read)."""


class VerifyCancelled(GlmError):
    """The check was cancelled before it finished."""


@dataclass(frozen=True)
class VerifyProgress:
    """How far the hashing is: the file being hashed and the bytes done of it and of all files."""

    path: str
    file_done: int
    file_total: int
    done: int
    total: int


@dataclass
class VerifyReport:
    """What `verify_model_folder` found: the manifest used (or why none applies) and every problem."""

    model_dir: Path
    manifest: Manifest | None
    manifest_note: str
    files_checked: int = 0
    bytes_hashed: int = 0
    tensors_checked: int = 0
    absent_optional: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_manifest(model_dir: Path) -> tuple[Manifest | None, str]:
    """The catalog manifest that holds one of the folder's identifying files byte for byte, and why; or None and
    the sentence that says no manifest applies."""
    present = {name: model_dir / name for name in IDENTIFYING_FILES if (model_dir / name).is_file()}
    digests = {name: sha256_of(path) for name, path in present.items()}
    for model in MODELS.values():
        manifest = model.manifest
        if manifest is None:
            continue
        listed = manifest.by_path()
        for name, digest in digests.items():
            if name in listed and listed[name].sha256 == digest:
                revision = f" at revision {manifest.revision[:12]}" if manifest.revision else ""
                return manifest, f"its {name} is {manifest.repo_id}'s{revision} (catalog model {model.name})"
    return None, (
        "no catalog manifest applies (its config.json and weight index are none of "
        f"{', '.join(MODELS)}'s), so only its weight index was checked against its shards"
    )


def read_manifest_file(path: Path) -> Manifest:
    """A manifest JSON in the catalog's format (``{"repo": ..., "files": [{"path", "size", "sha256"}]}``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        files = tuple(
            ManifestFile(
                path=str(entry["path"]),
                size=int(entry["size"]) if entry.get("size") is not None else None,
                sha256=entry.get("sha256"),
            )
            for entry in data["files"]
        )
        return Manifest(repo_id=str(data.get("repo", path)), revision=data.get("revision"), files=files)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise VerifyError(
            f"{path} cannot be read as a manifest ({error}); give a catalog name or a JSON file with "
            '{"files": [{"path", "size", "sha256"}, ...]}'
        ) from None


def verify_model_folder(
    model_dir: Path,
    *,
    manifest: Manifest | None = None,
    progress: Callable[[VerifyProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> VerifyReport:
    """Check `model_dir` against `manifest` (default: the catalog's that applies, `find_manifest`) and its weight
    index against its shards; every problem is one sentence naming the file (and tensor)."""
    model_dir = Path(model_dir).expanduser().absolute()
    if not model_dir.is_dir():
        raise VerifyError(f"{model_dir} is not a folder; name a model folder")
    if manifest is None:
        manifest, note = find_manifest(model_dir)
    else:
        note = f"checked against the manifest of {manifest.repo_id}, as asked"
    report = VerifyReport(model_dir, manifest, note)
    damaged: set[str] = set()
    if manifest is not None:
        damaged = _check_files(report, manifest, progress, cancel or threading.Event())
    _check_tensors(report, damaged)
    return report


def _check_files(
    report: VerifyReport,
    manifest: Manifest,
    progress: Callable[[VerifyProgress], None] | None,
    cancel: threading.Event,
) -> set[str]:
    """Size and sha256 of every manifest file present; returns the files found damaged."""
    model_dir = report.model_dir
    damaged: set[str] = set()
    present: list[ManifestFile] = []
    for file in manifest.files:
        path = model_dir / file.path
        if not path.is_file():
            if file.path.endswith(NEEDED_SUFFIXES):
                size = f"{file.size:,} bytes" if file.size is not None else "a file"
                report.problems.append(f"{file.path} is missing ({size} in {manifest.repo_id})")
                damaged.add(file.path)
            else:
                report.absent_optional.append(file.path)
            continue
        size = path.stat().st_size
        if file.size is not None and size != file.size:
            shorter = "truncated" if size < file.size else "longer than published"
            report.problems.append(
                f"{file.path} is {shorter}: {size:,} bytes where {manifest.repo_id} has {file.size:,}; "
                "download it again (glmtui download resumes and checks it)"
            )
            damaged.add(file.path)
        else:
            present.append(file)
    total = sum(file.size or 0 for file in present if file.sha256)
    for file in present:
        if file.sha256 is None:
            report.files_checked += 1
            continue
        digest = _hash_with_progress(report, model_dir / file.path, file.path, total, progress, cancel)
        report.files_checked += 1
        if digest != file.sha256:
            report.problems.append(
                f"{file.path} has the wrong sha256 ({digest[:12]}…, {manifest.repo_id} has {file.sha256[:12]}…): "
                "its bytes are damaged or another version; download it again"
            )
            damaged.add(file.path)
    return damaged


def _hash_with_progress(
    report: VerifyReport,
    path: Path,
    label: str,
    total: int,
    progress: Callable[[VerifyProgress], None] | None,
    cancel: threading.Event,
) -> str:
    digest = hashlib.sha256()
    file_total = path.stat().st_size
    file_done = 0
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            if cancel.is_set():
                raise VerifyCancelled(f"the check of {report.model_dir} was cancelled; nothing was changed")
            digest.update(block)
            file_done += len(block)
            report.bytes_hashed += len(block)
            if progress is not None:
                progress(VerifyProgress(label, file_done, file_total, report.bytes_hashed, total))
    return digest.hexdigest()


def _check_tensors(report: VerifyReport, damaged: set[str]) -> None:
    """Every tensor each weight index names is in the shard it names (shards already found damaged skipped)."""
    model_dir = report.model_dir
    indexes = [name for name in WEIGHT_INDEX_NAMES if (model_dir / name).is_file()]
    if not indexes:
        report.problems.extend(_single_file_problems(model_dir))
        return
    for index_name in indexes:
        try:
            weight_map = json.loads((model_dir / index_name).read_text(encoding="utf-8"))["weight_map"]
            by_shard: dict[str, list[str]] = {}
            for tensor, shard in weight_map.items():
                by_shard.setdefault(str(shard), []).append(str(tensor))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
            report.problems.append(f"{index_name} cannot be read as a weight index ({error})")
            continue
        for shard, tensors in sorted(by_shard.items()):
            path = model_dir / shard
            if shard in damaged:
                continue
            if Path(shard).is_absolute() or ".." in Path(shard).parts:
                report.problems.append(f"{index_name} names {shard}, outside the folder; it is not read")
                continue
            if not path.is_file():
                report.problems.append(
                    f"{shard}, named by {index_name} for {len(tensors)} tensors, is missing"
                )
                continue
            try:
                names = shard_tensor_names(path)
            except GlmError as error:
                report.problems.append(str(error))
                continue
            absent = [tensor for tensor in tensors if tensor not in names]
            report.tensors_checked += len(tensors) - len(absent)
            if absent:
                shown = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
                report.problems.append(
                    f"{shard} lacks {len(absent)} tensor(s) {index_name} names: {shown}; download or copy it again"
                )


def _single_file_problems(model_dir: Path) -> list[str]:
    """A folder with one weight file and no index: the file's tensors must be readable."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            try:
                shard_tensor_names(model_dir / name)
            except GlmError as error:
                return [str(error)]
            return []
    return [f"{model_dir} holds no weights (no weight index, model.safetensors or pytorch_model.bin)"]


def shard_tensor_names(path: Path) -> set[str]:
    """The tensor names a weight file holds, read without loading its tensors; GlmError when it is damaged."""
    if path.suffix == ".safetensors":
        return _safetensors_names(path)
    from glmcore.models.checkpoint import read_bin_shard

    return set(read_bin_shard(path))


def _safetensors_names(path: Path) -> set[str]:
    """A safetensors header's tensor names, after checking that the file holds every byte the header promises."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(size - 8, SAFETENSORS_HEADER_LIMIT):
                raise ValueError("its header is longer than the file")
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError) as error:
        raise GlmError(f"{path.name} is truncated or damaged ({error}); copy or download it again") from None
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        raise GlmError(
            f"{path.name} is truncated: {size:,} bytes where its header needs {needed:,}; copy or download it again"
        )
    return {key for key in header if key != "__metadata__"}
