"""Loading a model folder: 16-bit, 8-bit (LLM.int8) or 4-bit (NF4) through bitsandbytes, or 4-bit int4 through
torchao for inference (glmcore/models/int4.py), with a prefix.

Nothing from the checkpoint folder is executed: the architecture is ours, `config.json` is read as data,
`.bin` shards are unpickled with `weights_only=True` by transformers, and the published `auto_map` is
ignored.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.models import family_for, int4
from glmcore.models.checkpoint import (
    ModelFolder,
    find_unreadable_weights,
    require_complete,
    stored_tensor_dtypes,
)
from glmcore.prefix import read_checked_prefix, resolve_spec, set_prefix

QUANTIZATION_BITS = (4, 8, 16)
# The prefix trains in fp32, and bitsandbytes leaves the LM head / output layer alone: it becomes int8 rows
# with the embedding (glmcore/models/quantized_embedding.py, docs/decisions.md).
NOT_QUANTIZED = ["lm_head", "output_layer", "prefix_encoder"]
NAMES_SHOWN = 3
SIXTEEN_BIT = ("float16", "bfloat16")
TOKENIZER_FILE_PREFIXES = ("tokenizer", "special_tokens_map", "added_tokens")
"""Besides the family's tokenizer file, the files a tokenizer is read from (their size and mtime key its check)."""
_tokenizer_verdicts: dict[str, tuple[tuple, str | None]] = {}
"""Per model folder: the files (name, size, mtime) and family its tokenizer was checked at, and its problem."""


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str):
    """bf16 on GPUs that have it, fp16 on older ones, fp32 on the CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(bits: int, compute_dtype):
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=NOT_QUANTIZED)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
        llm_int8_skip_modules=NOT_QUANTIZED,
    )


def load_model(
    path: str | Path,
    *,
    quantization_bit: int = 16,
    dtype=None,
    device: str | None = None,
    prefix_checkpoint: str | Path | None = None,
    pre_seq_len: int | None = None,
    prefix_projection: bool | None = None,
    quantize_embedding: bool | None = None,
    family: str | None = None,
    four_bit: str = int4.NF4,
):
    """The model in `path`, in eval mode, optionally quantized and with a P-tuning v2 prefix.

    `family` (the `family = ...` setting) names the model family when config.json alone cannot tell.

    `four_bit` says how 4-bit weights are stored: "nf4" (bitsandbytes, the default and training's) or "int4"
    (torchao's int4 weight-only kernels, quantized from the 16-bit weights at load; for inference only, and an
    optional extra: glmcore/models/int4.py).

    At 4 and 8 bits the embedding and the LM head (one tied matrix in ChatGLM-6B, two in ChatGLM2/3) are also
    stored in int8 (`quantize_embedding`, on by default there), which halves the largest pieces left in 16-bit;
    see glmcore/models/quantized_embedding.py.

    With `prefix_checkpoint`, `pre_seq_len` and `prefix_projection` default to the checkpoint's and must
    agree with it when given. With only `pre_seq_len`, a freshly initialised prefix is attached.
    """
    import torch

    path = Path(path)
    if quantization_bit not in QUANTIZATION_BITS:
        raise GlmError(f"quantization_bit must be one of 4, 8 or 16, not {quantization_bit}.")
    int4.check_four_bit(four_bit, quantization_bit)
    model_family, _ = family_for(path, family)
    folder = require_complete(path, family)
    if problem := tokenizer_problem(path, family):
        raise GlmError(f"{problem}.")
    implementation = model_family.implementation()
    config = load_config(path, family)
    stored_dtypes = stored_tensor_dtypes(folder)
    check_tensor_names(folder, implementation.model_class, config, stored_dtypes.keys())

    prefix_state = None
    checkpoint_spec = None
    if prefix_checkpoint is not None:
        checkpoint_spec, prefix_state = read_checked_prefix(prefix_checkpoint, config)
    spec = resolve_spec(checkpoint_spec, pre_seq_len, prefix_projection, where=str(prefix_checkpoint or ""))

    device = device or default_device()
    dtype = dtype or default_dtype(device)
    if isinstance(dtype, str):  # "float32", as a config or a caller names it
        dtype = getattr(torch, dtype)
    extra = {}
    if four_bit == int4.INT4:
        if device.startswith("cuda") and dtype != torch.bfloat16:
            raise GlmError(int4.NEEDS_BF16.format(dtype=dtype))
    elif quantization_bit != 16:
        if not device.startswith("cuda") and quantization_bit == 8:
            raise GlmError("8-bit (LLM.int8) loading needs a CUDA GPU; use 4-bit or 16-bit on the CPU.")
        extra["quantization_config"] = quantization_config(quantization_bit, dtype)
    read_dtype = dtype if extra else reading_dtype(stored_dtypes.values(), dtype)
    try:
        model = implementation.model_class.from_pretrained(
            path, config=config, dtype=read_dtype, device_map={"": device}, **extra
        )
        cast_parameters(model, read_dtype, dtype)
    except torch.OutOfMemoryError as error:
        if four_bit == int4.INT4:
            raise GlmError(
                f"Not enough GPU memory to load {path} for int4: its 16-bit weights are loaded first and quantized "
                "after; use --four-bit nf4, or free the GPU."
            ) from error
        raise GlmError(
            f"Not enough GPU memory to load {path} at {quantization_bit}-bit: try quantization_bit 4 or 8, "
            "or free the GPU."
        ) from error
    except Exception as error:  # a damaged or unsafe weight file: name it rather than show the loader's trace
        problem = find_unreadable_weights(path)
        if problem is None:
            raise
        raise GlmError(problem) from error
    model.model_family = model_family  # see glmcore.models.family_of
    if four_bit == int4.INT4:
        int4.quantize_blocks(model, device, NOT_QUANTIZED)
    if quantize_embedding if quantize_embedding is not None else quantization_bit != 16:
        from glmcore.models import quantized_embedding

        if model.config.tie_word_embeddings:
            quantized_embedding.quantize_tied_embedding(model)
        else:
            quantized_embedding.quantize_untied_embeddings(model)
    set_prefix(model, spec, prefix_state)
    return model.eval()


def load_config(path: str | Path, family: str | None = None):
    """The model folder's config.json, read as data by its family's config class."""
    model_family, _ = family_for(Path(path), family)
    return model_family.implementation().config_class.from_pretrained(path)


def reading_dtype(stored_dtypes: Iterable[str], dtype):
    """The dtype to read the weights at: the one they are all stored in when it is 16-bit, else `dtype`.

    Read at another dtype, each tensor is converted on the CPU before it is copied to the GPU (torch converts
    a cross-device copy on the host, into a fresh host buffer), which for a 12 GB checkpoint costs a second pass
    over the weights before the first token. Read as stored, the copy is a plain one and the conversion runs where
    the weights land (`cast_parameters`), giving the same numbers.
    """
    import torch

    stored = set(stored_dtypes)
    if len(stored) == 1 and (only := stored.pop()) in SIXTEEN_BIT:
        return getattr(torch, only)
    return dtype


def cast_parameters(model, read_dtype, dtype) -> None:
    """Bring the tensors read at `read_dtype` to `dtype` where they are (tied ones once), as loading them at
    `dtype` would have: tensors the model keeps in another dtype are left alone."""
    if read_dtype == dtype:
        return
    # Through the model's own `_apply`, as `.to()` goes: a model that lays parameters out together (GLM-4's
    # q/k/v in one storage) lays them out again.
    model._apply(lambda tensor: tensor.to(dtype) if tensor.dtype == read_dtype else tensor)
    model.config.dtype = dtype


def check_tensor_names(folder: ModelFolder, model_class: type, config, stored: Collection[str]) -> None:
    """Refuse a model folder whose weight files lack a tensor the model has, or hold one it does not know.

    transformers would load such a folder with the absent weights randomly initialised (and only log it), so
    the names in the files are checked against the model's own, built on the meta device (no memory). Tied
    weights count as present when one of their names is; the names the model class declares it ignores (the
    stored rotary frequencies, a prefix encoder) are left out.
    """
    import torch

    with torch.device("meta"):
        model = model_class(config)
    tied: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        tied.setdefault(id(tensor), []).append(name)
    stored = set(stored)
    missing = sorted(
        names[0]
        for names in tied.values()
        if not stored.intersection(names)
        and not _ignored(names[0], model_class._keys_to_ignore_on_load_missing)
    )
    expected = {name for names in tied.values() for name in names}
    unexpected = sorted(
        name
        for name in stored - expected
        if not _ignored(name, model_class._keys_to_ignore_on_load_unexpected)
    )
    for names, what in (
        (missing, "lacks the tensors"),
        (unexpected, "holds tensors the model does not have:"),
    ):
        if names:
            more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
            raise GlmError(
                f"The model folder {folder.path} {what} {', '.join(names[:NAMES_SHOWN])}{more}; download or copy "
                f"the folder again, and check it with `glmtui verify {folder.path}`."
            )


def _ignored(name: str, patterns: list[str] | None) -> bool:
    return any(re.search(pattern, name) for pattern in patterns or ())


def tokenizer_problem(path: str | Path, family: str | None = None) -> str | None:
    """Why the tokenizer of a complete model folder cannot feed its model, in one sentence without its full stop,
    or None: it cannot be read, or it gives token ids past the embedding rows config.json declares (a tokenizer
    copied from another model, which would otherwise fail deep inside the first forward pass). The weights are
    not read; the verdict is kept while config.json and the tokenizer's files keep their size and mtime (the
    config editor asks on every keystroke)."""
    from glmcore.models.family import ModelShape

    path = Path(path)
    model_family, _ = family_for(path, family)
    version = (model_family.name, _tokenizer_files_version(path, model_family.tokenizer_file))
    key = str(path.absolute())
    checked = _tokenizer_verdicts.get(key)
    if checked is not None and checked[0] == version:
        return checked[1]
    rows = ModelShape.from_model_dir(path, family).vocab_size
    try:
        ids = max(load_tokenizer(path, family=family).get_vocab().values()) + 1
    except Exception as error:  # a damaged tokenizer file: name it rather than show the reader's trace
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        verdict = (
            f"{path / model_family.tokenizer_file} cannot be read as {model_family.title}'s tokenizer ({reason}); "
            "copy in the tokenizer files that came with the model"
        )
    else:
        verdict = (
            None
            if ids <= rows
            else f"{path}'s tokenizer has token ids up to {ids - 1} (special tokens included), but config.json "
            f"gives the model only {rows} embedding rows (ids 0 to {rows - 1}), so its tokenizer files come from "
            "another model; copy in the tokenizer files that came with these weights"
        )
    _tokenizer_verdicts[key] = (version, verdict)
    return verdict


def _tokenizer_files_version(path: Path, tokenizer_file: str) -> tuple:
    """(name, size, mtime) of config.json and of every file the tokenizer is read from."""
    names = sorted(
        entry.name
        for entry in path.iterdir()
        if entry.name in ("config.json", tokenizer_file) or entry.name.startswith(TOKENIZER_FILE_PREFIXES)
    )
    return tuple((name, (stat := (path / name).stat()).st_size, stat.st_mtime_ns) for name in names)


def load_tokenizer(path: str | Path, *, family: str | None = None):
    """The tokenizer of the model folder `path` (left padding, batched `__call__`, `save_pretrained`)."""
    path = Path(path)
    model_family, _ = family_for(path, family)
    if not (path / model_family.tokenizer_file).is_file():
        raise GlmError(f"{path} has no {model_family.tokenizer_file}; the model folder is incomplete.")
    return model_family.implementation().tokenizer_class.from_pretrained(str(path))
