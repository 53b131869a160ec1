"""glmcore: the engine of glmtui. Importing it is cheap; torch and transformers load on first use."""

from __future__ import annotations

from pathlib import Path


def load_model(path: str | Path, **options):
    """See `glmcore.models.loading.load_model`."""
    from glmcore.models.loading import load_model as load

    return load(path, **options)


def load_tokenizer(path: str | Path):
    """See `glmcore.models.loading.load_tokenizer`."""
    from glmcore.models.loading import load_tokenizer as load

    return load(path)


__all__ = ["load_model", "load_tokenizer"]
