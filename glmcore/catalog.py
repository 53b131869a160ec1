"""What glmtui knows how to download: models with pinned hub revisions and file manifests, and datasets.

A manifest is the file list of a published checkpoint with every file's size and sha256 (the JSON files under
``glmcore/assets/manifests/``, read from the real repositories). It lets a download verify every byte it fetched,
whatever the source (the hub, a Tsinghua Cloud share, a folder copied by hand), and notice when a source no longer
holds the files the catalog pinned.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.models import FAMILIES

MANIFESTS_DIR = Path(__file__).parent / "assets" / "manifests"


class UnknownCatalogEntry(GlmError):
    """A name that is neither in the catalog nor a link or path."""


@dataclass(frozen=True)
class ManifestFile:
    """One file of a published checkpoint."""

    path: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class Manifest:
    """The file list of one revision of a repository (sizes and sha256 of every file)."""

    repo_id: str
    revision: str | None
    files: tuple[ManifestFile, ...]

    def by_path(self) -> dict[str, ManifestFile]:
        return {file.path: file for file in self.files}

    @property
    def total_size(self) -> int:
        return sum(file.size for file in self.files)


@dataclass(frozen=True)
class CatalogModel:
    """A model glmtui can fetch: where it lives on the hub and, optionally, on a Tsinghua Cloud share."""

    name: str
    title: str
    hub_repo: str
    manifest_name: str
    tsinghua_share: str | None = None
    tsinghua_folder: str = "/"
    """The folder of the share that holds this model's files."""
    note: str = ""

    @property
    def manifest(self) -> Manifest:
        return load_manifest(self.manifest_name)

    @property
    def revision(self) -> str | None:
        """The hub commit the manifest was read from; None where only a mirror's copy is known."""
        return self.manifest.revision


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
        ManifestFile(path=entry["path"], size=int(entry["size"]), sha256=entry.get("sha256"))
        for entry in data["files"]
    )
    return Manifest(repo_id=data["repo"], revision=data.get("revision"), files=files)


MODELS: dict[str, CatalogModel] = {
    family.name: CatalogModel(name=family.name, title=family.title, **dataclasses.asdict(family.download))
    for family in FAMILIES
    if family.download
}
"""Every family's published checkpoint that glmtui can fetch (its `download`), by the family's name."""

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
    """The catalog model named ``name`` (case-insensitive) or with that hub id, else None."""
    wanted = name.strip().lower()
    for model in MODELS.values():
        if wanted in (model.name, model.hub_repo.lower()):
            return model
    return None


def find_dataset(name: str) -> CatalogDataset | None:
    return DATASETS.get(name.strip().lower())
