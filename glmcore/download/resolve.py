"""From what a user types (a catalog name, a hub id, a share link, a path) to a source and a destination."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from glmcore.catalog import DATASETS, MODELS, UnknownCatalogEntry, find_dataset, find_model
from glmcore.download.errors import DownloadError
from glmcore.download.hub import HubSource
from glmcore.download.local import LocalSource
from glmcore.download.modelscope import ModelScopeSource
from glmcore.download.seafile import SeafileFileSource, SeafileShareSource, parse_share_link
from glmcore.download.transfer import Source

SOURCES = ("hf", "modelscope", "thu")
"""Where a catalog model is fetched from: the Hugging Face Hub, ModelScope, or a Tsinghua Cloud share."""
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_source(
    model_or_link: str,
    *,
    source: str | None = None,
    revision: str | None = None,
    password: str | None = None,
    endpoint: str | None = None,
    include_code: bool = False,
) -> Source:
    """The source for a catalog name (``chatglm-6b``, ``advertisegen``), a hub id, a share link or a path.

    ``source`` picks between the hub (``hf``, the default), ModelScope (``modelscope``; also for an owner/name id)
    and Tsinghua Cloud (``thu``) for catalog models; ``revision`` overrides the pinned one (the manifest then no
    longer applies: the source's checksums are used). ``endpoint`` is the hub's or ModelScope's.
    """
    if source is not None and source not in SOURCES:
        raise DownloadError(f"Unknown source {source!r}; use one of: {', '.join(SOURCES)}.")
    text = model_or_link.strip()
    if dataset := find_dataset(text):
        return SeafileFileSource(dataset.link, password=password, name=dataset.folder_name, kind="dataset")
    if model := find_model(text):
        manifest = model.manifest if revision in (None, model.revision) else None
        if source == "modelscope":
            if model.modelscope_repo is None:
                raise DownloadError(f"{model.name} has no ModelScope id in the catalog; use --source hf.")
            return ModelScopeSource(
                model.modelscope_repo,
                revision,
                endpoint=endpoint,
                manifest=manifest,
                include_code=include_code,
                name=model.name,
            )
        if source == "thu":
            if model.tsinghua_share is None:
                raise DownloadError(
                    f"{model.name} has no Tsinghua Cloud share in the catalog; use --source hf."
                )
            return SeafileShareSource(
                model.tsinghua_share,
                password=password,
                manifest=model.manifest,
                include_code=include_code,
                name=model.name,
                folder=model.tsinghua_folder,
            )
        return HubSource(
            model.hub_repo,
            revision or model.revision,
            endpoint=endpoint,
            manifest=manifest,
            include_code=include_code,
            name=model.name,
        )
    if urlsplit(text).scheme in ("http", "https"):
        return _source_for_url(text, revision=revision, password=password, include_code=include_code)
    path = Path(text).expanduser()
    if path.exists():
        return LocalSource(path, include_code=include_code)
    if _HUB_ID.match(text) and source == "modelscope":
        return ModelScopeSource(text, revision, endpoint=endpoint, include_code=include_code)
    if _HUB_ID.match(text) and source != "thu":
        return HubSource(text, revision, endpoint=endpoint, include_code=include_code)
    known = ", ".join([*MODELS, *DATASETS])
    raise UnknownCatalogEntry(
        f"{text!r} is not a known model or data set ({known}), a hub id (owner/name), a share link or an "
        "existing path."
    )


def _source_for_url(url: str, *, revision: str | None, password: str | None, include_code: bool) -> Source:
    parts = urlsplit(url)
    segments = [segment for segment in parts.path.split("/") if segment]
    try:
        _base, link_type, _key = parse_share_link(url)
    except ValueError:
        link_type = None
    if link_type == "d":
        return SeafileShareSource(url, password=password, include_code=include_code)
    if link_type == "f":
        return SeafileFileSource(url, password=password)
    if parts.netloc.endswith("modelscope.cn") and len(segments) >= 3 and segments[0] == "models":
        return ModelScopeSource(  # https://modelscope.cn/models/<owner>/<name>[/files]
            f"{segments[1]}/{segments[2]}",
            revision,
            endpoint=f"{parts.scheme}://{parts.netloc}",
            include_code=include_code,
        )
    if len(segments) >= 2:  # https://huggingface.co/<owner>/<name>[/tree/<revision>] or a mirror of it
        tree_revision = segments[3] if len(segments) >= 4 and segments[2] == "tree" else None
        return HubSource(
            f"{segments[0]}/{segments[1]}",
            revision or tree_revision,
            endpoint=f"{parts.scheme}://{parts.netloc}",
            include_code=include_code,
        )
    raise DownloadError(
        f"{url} is neither a Seafile share link (…/d/<key>/, …/f/<key>/) nor a hub repository URL."
    )


def default_destination(source: Source, models_dir: Path, data_dir: Path) -> Path:
    """``<models_dir>/<name>`` for a model, ``<data_dir>/<name>`` for a data set."""
    return (data_dir if source.kind == "dataset" else models_dir) / source.name
