"""What glmtui knows how to download: models with pinned hub revisions and file manifests, and datasets.

A manifest is the file list of a published checkpoint with every file's size and sha256 (the JSON files under
``glmcore/assets/manifests/``, read from the real repositories). It lets a download verify every byte it fetched,
whatever the source (the hub, a Tsinghua Cloud share, a folder copied by hand), and notice when a source no longer
holds the files the catalog pinned. A manifest read from a mirror names no hub revision, and GLM-4's leave the
weight shards' sizes and sha256 null (no reference gives them): such an entry follows the default branch and takes
each missing size and sha256 from the source's own listing (the hub's LFS sha256, ModelScope's Sha256).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.models import FAMILIES
from glmcore.models.family import Download

MANIFESTS_DIR = Path(__file__).parent / "assets" / "manifests"


class UnknownCatalogEntry(GlmError):
    """A name that is neither in the catalog nor a link or path."""


@dataclass(frozen=True)
class ManifestFile:
    """One file of a published checkpoint."""

    path: str
    size: int | None
    """None where no reference gives it (GLM-4's weight shards): the source's listing says it."""
    sha256: str | None


@dataclass(frozen=True)
class Manifest:
    """The file list of one revision of a repository (sizes and sha256 of every file)."""

    repo_id: str
    revision: str | None
    files: tuple[ManifestFile, ...]

    def by_path(self) -> dict[str, ManifestFile]:
        return {file.path: file for file in self.files}

    def lists_sha256(self, path: str) -> bool:
        """Whether the manifest gives `path`'s sha256 (a mismatch then means the source's file differs from it)."""
        return any(file.path == path and file.sha256 for file in self.files)

    @property
    def total_size(self) -> int | None:
        """The bytes of every file, None while some file's size is not known."""
        sizes = [file.size for file in self.files]
        return None if None in sizes else sum(size for size in sizes if size is not None)


@dataclass(frozen=True)
class CatalogModel:
    """A model glmtui can fetch: where it lives on the hub and, optionally, on ModelScope and a Tsinghua Cloud
    share."""

    name: str
    title: str
    hub_repo: str
    manifest_name: str | None
    modelscope_repo: str | None = None
    tsinghua_share: str | None = None
    tsinghua_folder: str = "/"
    """The folder of the share that holds this model's files."""
    note: str = ""

    @property
    def manifest(self) -> Manifest | None:
        return load_manifest(self.manifest_name) if self.manifest_name else None

    @property
    def revision(self) -> str | None:
        """The hub commit the manifest was read from; None where only a mirror's copy is known."""
        return self.manifest.revision if self.manifest else None

    @property
    def total_size(self) -> int | None:
        return self.manifest.total_size if self.manifest else None

    def ids(self) -> tuple[str, ...]:
        """Every name it is found by, lower case: its name, its hub id under both owners, its ModelScope id."""
        hub = self.hub_repo.lower()
        owner, _, repo = hub.partition("/")
        moved = {"zai-org": "thudm", "thudm": "zai-org"}.get(owner)
        return tuple(
            name.lower()
            for name in (self.name, hub, f"{moved}/{repo}" if moved else None, self.modelscope_repo)
            if name
        )


@dataclass(frozen=True)
class CatalogDataset:
    """A dataset published as one archive behind a Seafile single-file link."""

    name: str
    title: str
    link: str
    folder_name: str
    files: tuple[str, ...] = field(default=())
    note: str = ""


@cache
def load_manifest(name: str) -> Manifest:
    """Read ``assets/manifests/<name>.json`` (the format of shared/reference/*/files.json)."""
    data = json.loads((MANIFESTS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    files = tuple(
        ManifestFile(
            path=entry["path"],
            size=int(entry["size"]) if entry.get("size") is not None else None,
            sha256=entry.get("sha256"),
        )
        for entry in data["files"]
    )
    return Manifest(repo_id=data["repo"], revision=data.get("revision"), files=files)


GLM4_NOTE = (
    "no revision or weight sha256 is published in glmtui's reference: the download follows main and checks "
    "each file against the sha256 its source lists"
)
UNREGISTERED_DOWNLOADS: dict[str, tuple[str, Download]] = {
    "glm-4-9b-chat-hf": (
        "GLM-4-9B-Chat-HF",
        Download(
            hub_repo="zai-org/glm-4-9b-chat-hf",
            manifest_name="glm-4-9b-chat-hf",
            modelscope_repo="ZhipuAI/glm-4-9b-chat-hf",
            note=f"GLM-4-9B-Chat in transformers' own Glm layout (no remote code); {GLM4_NOTE}",
        ),
    ),
    "glm-4-9b-0414": (
        "GLM-4-9B-0414",
        Download(
            hub_repo="zai-org/GLM-4-9B-0414",
            manifest_name=None,
            modelscope_repo="ZhipuAI/GLM-4-9B-0414",
            note=f"GLM-4's April 2025 9B chat model (Glm4ForCausalLM); no file list is known either: {GLM4_NOTE}",
        ),
    ),
    "glm-z1-9b-0414": (
        "GLM-Z1-9B-0414",
        Download(
            hub_repo="zai-org/GLM-Z1-9B-0414",
            manifest_name=None,
            modelscope_repo="ZhipuAI/GLM-Z1-9B-0414",
            note=f"GLM-4-9B-0414 trained to reason before it answers; no file list is known either: {GLM4_NOTE}",
        ),
    ),
}
"""Checkpoints of layouts whose family is not registered yet (issue 32's -hf and 0414), by catalog name and
title. A family of the same name whose FAMILY sets `download` takes the entry's place."""

_DOWNLOADS = {family.name: (family.title, family.download) for family in FAMILIES if family.download}
MODELS: dict[str, CatalogModel] = {
    name: CatalogModel(name=name, title=title, **dataclasses.asdict(download))
    for name, (title, download) in {**_DOWNLOADS, **UNREGISTERED_DOWNLOADS, **_DOWNLOADS}.items()
}
"""Every checkpoint glmtui can fetch: each family's (its `download`) by the family's name, and the unregistered
ones."""

DATASETS: dict[str, CatalogDataset] = {
    dataset.name: dataset
    for dataset in (
        CatalogDataset(
            name="advertisegen",
            title="AdvertiseGen (ADGEN)",
            # ChatGLM-6B's ptuning README; its other link (Google Drive) cannot be fetched without a browser.
            link="https://cloud.tsinghua.edu.cn/f/b3f119a008264b1cabd1/?dl=1",
            folder_name="AdvertiseGen",
            files=("train.json", "dev.json"),
            note="the advertisement-generation data set of ChatGLM-6B's P-tuning v2 example",
        ),
    )
}


def find_model(name: str) -> CatalogModel | None:
    """The catalog model named ``name`` (case-insensitive) or with that hub id (THUDM/ or zai-org/) or ModelScope
    id, else None."""
    wanted = name.strip().lower()
    return next((model for model in MODELS.values() if wanted in model.ids()), None)


def find_dataset(name: str) -> CatalogDataset | None:
    return DATASETS.get(name.strip().lower())
