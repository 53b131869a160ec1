"""Keeping the libraries' own chatter (warnings, log records, progress bars) away from what a user reads.

transformers, bitsandbytes, peft, datasets and torch warn about things that are not the user's business (a
kernel package bitsandbytes could use on a CPU, a deprecated argument inside Trainer) and draw tqdm bars for
steps glmtui reports itself. What concerns the user, glmtui says in its own words; the rest goes to a
separate file (a run's ``library.log``) or nowhere. Call ``quiet_libraries`` before the libraries are used.
Without a log file, a library not imported yet is silenced through the environment variables it reads at
import, so the CLI's fast paths never import transformers just to silence it; with one (the training
process, which needs transformers anyway) transformers is imported and its records are sent to the file.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LIBRARY_LOG_NAME = "library.log"
LIBRARY_LOGGERS = (
    "transformers",
    "bitsandbytes",
    "torchao",
    "peft",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "jieba",
    "py.warnings",
)
PROGRESS_BAR_SWITCHES = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def quiet_libraries(log_file: Path | None = None) -> None:
    """Send library warnings and log records to ``log_file`` (appended), or drop them; turn progress bars off.

    Without a log file, library records below ERROR are dropped; with one, warnings and errors are kept
    there. Python warnings are routed through logging (``py.warnings``), so they follow the same rule. torch
    is left alone: its loggers carry their own handlers, and what it warns about comes as Python warnings.
    """
    os.environ.update(PROGRESS_BAR_SWITCHES)
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    handler: logging.Handler
    if log_file is None:
        handler = logging.NullHandler()
    else:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    level = logging.WARNING if log_file else logging.ERROR
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(level)
    logging.captureWarnings(True)
    if log_file is not None or "transformers" in sys.modules:
        _quiet_imported_transformers(handler, level)
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def _quiet_imported_transformers(handler: logging.Handler, level: int) -> None:
    """Replace transformers' stderr handler with ours and switch its progress bars off."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.add_handler(handler)
    transformers_logging.set_verbosity(level)
    transformers_logging.disable_progress_bar()
