"""What is in a model folder on disk, whether a weight or checkpoint file is whole, and the one-time conversion
of `.bin` shards to safetensors.

A model folder is usable when it has `config.json`, the tokenizer file and every weight shard each of its indexes
names (`inspect_model_folder`, the one check the loader, the Models list, preflight and serving ask). Pickled `.bin` shards are only ever read with `torch.load(weights_only=True)`. A safetensors header is
checked here before safetensors reads it, and a pickle's globals before torch does, so a garbled or crafted
file is named as damaged instead of failing deep inside a loader (or never failing until its turn comes).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import pickletools
import struct
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from glmcore.errors import GlmError
from glmcore.models import FAMILIES, family_for
from glmcore.models.shards import BIN_INDEX, SAFETENSORS_INDEX, SINGLE_BIN, SINGLE_SAFETENSORS
from glmcore.workspace import atomic_write_text

SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors' own limit
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
PICKLE_MAX_SCANNED = 64 * 2**20
"""A checkpoint's pickle (tensors live beside it in the zip) is kilobytes; a larger one is left to torch."""
TENSOR_PICKLE_GLOBALS = frozenset(
    {
        "collections OrderedDict",
        "torch._utils _rebuild_tensor_v2",
        "torch._utils _rebuild_parameter",
        "_codecs encode",
        "numpy ndarray",
        "numpy dtype",
        "numpy.core.multiarray _reconstruct",
        "numpy._core.multiarray _reconstruct",
    }
)
"""The globals the Trainer's optimizer.pt, scheduler.pt and rng_state.pth use (torch storages and numpy dtype
classes aside): a pickle naming only these holds data. Any other is judged by torch's weights-only unpickler."""

UNREAD_PICKLES = frozenset({"training_args.bin"})
"""Pickles the Trainer writes for people to read, never loaded on resume: they hold a TrainingArguments."""


class DamagedCheckpoint(GlmError):
    """A weight or checkpoint file that is cut short, garbled, or holds pickled code: the message names it.

    Serving catches this per checkpoint; keep the name.
    """


WEIGHT_FORMATS = (("safetensors", SAFETENSORS_INDEX, SINGLE_SAFETENSORS), ("bin", BIN_INDEX, SINGLE_BIN))
"""Each weight format with its index and single-file names, in the order the loader prefers them."""


@dataclass
class ModelFolder:
    """A model folder's state: which weight format it has and what is missing."""

    path: Path
    weight_format: str | None  # "safetensors", "bin" or None when no weights are present
    weight_files: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """The names of the missing parts: config.json, the tokenizer file, shard names."""
    problems: list[str] = field(default_factory=list)
    """One sentence per missing part or group of shards, naming the folder."""

    @property
    def complete(self) -> bool:
        return self.weight_format is not None and not self.missing

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.path.iterdir() if path.is_file())


def _indexed_shards(index_path: Path) -> list[str]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DamagedCheckpoint(f"{index_path} cannot be read as a weight index ({error})") from error


def _tokenizer_files(path: Path, family: str | None) -> list[str]:
    """The tokenizer file of the folder's model family, or every family's when config.json cannot tell."""
    try:
        return [family_for(path, family)[0].tokenizer_file]
    except GlmError:
        return sorted({model_family.tokenizer_file for model_family in FAMILIES})


def inspect_model_folder(path: Path, family: str | None = None) -> ModelFolder:
    """The one completeness check (the loader, the Models list, preflight and serving all ask it): the weight
    format the loader will read (safetensors preferred) and what a complete folder would still need.

    A folder is complete with config.json, its family's tokenizer file (any family's when the family cannot be
    told) and weights: every shard named by the weight index the loader reads (safetensors' when the folder
    holds one; an index naming absent files is a folder half-copied), or a single ``model.safetensors`` /
    ``pytorch_model.bin``. The `.bin` index of a folder converted to safetensors is not read: `glmtui convert`
    says its shards may be deleted. A weight index that cannot be read raises DamagedCheckpoint.
    """
    path = Path(path)
    folder = ModelFolder(path, None)
    if not (path / "config.json").is_file():
        folder.missing.append("config.json")
        folder.problems.append(f"{path} has no config.json")
    tokenizer_files = _tokenizer_files(path, family)
    if not any((path / name).is_file() for name in tokenizer_files):
        folder.missing.append(" or ".join(tokenizer_files))
        folder.problems.append(f"{path} has no {' or '.join(tokenizer_files)}")
    indexes = [(weight_format, path / index) for weight_format, index, _ in WEIGHT_FORMATS]
    indexes = [(weight_format, index) for weight_format, index in indexes if index.is_file()][:1]
    for weight_format, index_path in indexes:
        shards = _indexed_shards(index_path)
        absent = [shard for shard in shards if not (path / shard).is_file()]
        if absent:
            folder.missing.extend(absent)
            folder.problems.append(
                f"{path} lacks {len(absent)} of the {len(shards)} weight shards named by "
                f"{index_path.name}: {', '.join(absent)}"
            )
        folder.weight_format = weight_format
        folder.weight_files = [path / shard for shard in shards if (path / shard).is_file()]
    singles = [(weight_format, path / single) for weight_format, _, single in WEIGHT_FORMATS]
    singles = [(weight_format, single) for weight_format, single in singles if single.is_file()]
    if not indexes and singles:
        folder.weight_format, folder.weight_files = singles[0][0], [singles[0][1]]
    elif not indexes:
        names = [name for _, index, single in WEIGHT_FORMATS for name in (index, single)]
        folder.missing.append("weights (pytorch_model*.bin or *.safetensors)")
        folder.problems.append(f"{path} holds no weights (no {', '.join(names)})")
    return folder


def model_folder_problems(path: Path) -> list[str]:
    """What is missing from a model folder for it to load (`inspect_model_folder`'s sentences); empty when it
    is complete."""
    if not Path(path).is_dir():
        return [f"the model folder {path} does not exist"]
    try:
        return inspect_model_folder(path).problems
    except DamagedCheckpoint as error:
        return [str(error)]


SAFETENSORS_FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
"""safetensors' codes for the floating dtypes, as torch names them (`torch.float16` is "float16")."""


def stored_tensor_dtypes(folder: ModelFolder) -> dict[str, str]:
    """The tensors the weight files really hold (not what the index says they hold), each with its dtype as torch
    names it ("float16"; safetensors' code for a dtype torch has no name for here): safetensors headers, or
    memory-mapped pickles. DamagedCheckpoint names a file that cannot be read."""
    dtypes: dict[str, str] = {}
    for shard in folder.weight_files:
        if shard.suffix == ".safetensors":
            header = safetensors_header(shard)
            dtypes.update(
                (name, SAFETENSORS_FLOAT_DTYPES.get(entry["dtype"], entry["dtype"]))
                for name, entry in header.items()
                if name != "__metadata__"
            )
        else:
            dtypes.update(
                (name, str(tensor.dtype).removeprefix("torch."))
                for name, tensor in read_bin_shard(shard).items()
            )
    return dtypes


def require_complete(path: Path, family: str | None = None) -> ModelFolder:
    folder = inspect_model_folder(path, family)
    if not folder.complete:
        raise GlmError(
            f"The model folder {path} is incomplete: missing {', '.join(folder.missing)}. "
            "Finish its download (glmtui download) or point to another folder."
        )
    return folder


def unreadable_weights_message(shard: Path, error: BaseException) -> str:
    """One sentence for a weight file that failed to load: code refused, or a damaged or truncated file."""
    if isinstance(error, pickle.UnpicklingError) and "weights only load failed" in str(error).lower():
        return (
            f"{shard} holds pickled code besides tensors, so glmtui did not load it (code in a checkpoint never "
            "runs); use weights from a source you trust, or in safetensors."
        )
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    return f"{shard} is truncated or damaged ({reason}); copy or download it again."


def safetensors_header(path: Path) -> dict:
    """The header of a safetensors file, checked as safetensors would: bounded in size, a JSON object whose
    every entry has a known dtype, a shape and data offsets that tile the data exactly to the file's end.

    Raises DamagedCheckpoint naming the file and what is wrong ("is cut short" when the data stops early).
    """
    header, problem = _checked_safetensors_header(path)
    if problem:
        raise DamagedCheckpoint(f"{path} {problem}; copy or download it again.")
    return header


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file ("is cut short (…)", "has a damaged header (…)"), None when it
    is whole. Reads the header only."""
    return _checked_safetensors_header(path)[1]


def _checked_safetensors_header(path: Path) -> tuple[dict, str | None]:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return {}, "is cut short (no header)"
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > SAFETENSORS_MAX_HEADER:
            return {}, f"has a damaged header (it claims {header_size:,} bytes of header)"
        if 8 + header_size > size:
            return {}, f"is cut short ({size} of at least {8 + header_size} bytes: the header is incomplete)"
        try:
            header = json.loads(handle.read(header_size))
        except (ValueError, RecursionError) as error:
            return {}, f"has a damaged header (not JSON: {error})"
    if not isinstance(header, dict):
        return {}, f"has a damaged header (a JSON {type(header).__name__}, not an object)"
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        return header, "has a damaged header (__metadata__ is not an object of strings)"
    extents = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if problem := _tensor_entry_problem(entry):
            return header, f"has a damaged header (tensor {name!r}: {problem})"
        extents.append((tuple(entry["data_offsets"]), name))
    end = 0
    for (begin, stop), name in sorted(extents):
        if begin != end:
            return (
                header,
                f"has a damaged header (tensor {name!r} starts at byte {begin} of the data, not {end})",
            )
        end = stop
    expected = 8 + header_size + end
    if size < expected:
        return header, f"is cut short ({size} of {expected} bytes)"
    if size > expected:
        return header, f"has {size - expected} bytes past its last tensor (damaged)"
    return header, None


def _tensor_entry_problem(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return "not an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPE_BYTES:
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        return f"shape {shape!r} is not a list of sizes"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(n) is int for n in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        return f"data_offsets {offsets!r} are not [begin, end]"
    if offsets[1] - offsets[0] != math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]:
        return f"data_offsets {offsets} do not hold a {dtype} tensor of shape {shape}"
    return None


def pickle_problem(path: Path) -> str | None:
    """What is wrong with a file in torch.save's zip layout (optimizer.pt, rng_state.pth…): cut short, or
    holding pickled code; None when it holds data only. Nothing is unpickled unless torch's weights-only
    unpickler has to judge a global the Trainer does not write."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [info for info in archive.infolist() if info.filename.endswith(".pkl")]
            if not pickles:
                return "is damaged (no pickle in it)"
            strangers = []
            for info in pickles:
                with archive.open(info) as member:
                    data = member.read(PICKLE_MAX_SCANNED + 1)
                if len(data) > PICKLE_MAX_SCANNED:
                    strangers.append(f"{info.filename}, too long to scan")
                    continue
                strangers += [name for name in _pickled_globals(data) if not _is_tensor_global(name)]
    # zipfile raises the last three for odd or encrypted members.
    except (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile) as error:
        return f"is cut short or damaged ({error})"
    if strangers and _torch_refuses(path):
        return f"holds pickled code ({strangers[0].replace(' ', '.')}), which glmtui does not load"
    return None


def _pickled_globals(data: bytes) -> list[str]:
    """The globals a pickle names, as "module name". Protocol 4's STACK_GLOBAL takes its two names from the
    stack: the last two strings pushed (or fetched from the memo) stand for them, as a pickler writes them."""
    found, strings, memo = [], [], {}
    pushed = None  # the string the previous opcode pushed, if it pushed one
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name == "MEMOIZE":
            memo[len(memo)] = pushed
        elif opcode.name.endswith("PUT"):
            memo[argument] = pushed
        elif opcode.name.endswith("GET") and isinstance(memo.get(argument), str):
            strings.append(memo[argument])
        pushed = argument if isinstance(argument, str) and "UNICODE" in opcode.name else None
        if pushed is not None:
            strings.append(pushed)
        if opcode.name in ("GLOBAL", "INST"):
            found.append(str(argument))
        elif opcode.name == "STACK_GLOBAL":
            found.append(" ".join(strings[-2:]) if len(strings) >= 2 else "a global named at unpickling time")
        elif opcode.name.startswith("EXT"):
            found.append(f"extension global {argument}")
    return found


def _is_tensor_global(name: str) -> bool:
    module, _, attribute = name.partition(" ")
    return (
        name in TENSOR_PICKLE_GLOBALS
        or (module == "torch" and attribute.endswith("Storage"))
        or (module == "numpy.dtypes" and attribute.endswith("DType"))
    )


def _torch_refuses(path: Path) -> bool:
    """Whether torch's weights-only unpickler, with the numpy types the Trainer allows, refuses ``path``."""
    import numpy
    import torch

    numpy_types = [numpy.ndarray, numpy.dtype, type(numpy.dtype(numpy.uint32))]
    try:
        with torch.serialization.safe_globals(numpy_types), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns of pickle protocols it did not write
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return True
    except Exception:  # damaged in some other way: that is for the load to report
        return False
    return False


def checkpoint_file_problem(path: Path) -> str | None:
    """Why one file of a checkpoint cannot be loaded, starting with its name; None when it looks whole.

    Checks the structure that truncation or tampering breaks, without loading tensors: JSON files parse,
    safetensors headers are sound and match the length, torch.save zips end with their central directory and
    their pickles name no code.
    """
    try:
        if path.stat().st_size == 0:
            return f"{path.name} is empty"
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
            problem = None
        elif path.suffix == ".safetensors":
            problem = safetensors_problem(path)
        elif path.name in UNREAD_PICKLES:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
            problem = None
        elif path.suffix in (".pt", ".pth", ".bin"):
            problem = pickle_problem(path)
        else:
            problem = None
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        problem = f"is cut short or damaged ({error})"
    return f"{path.name} {problem}" if problem else None


def read_bin_shard(shard: Path) -> dict:
    """A pickled shard's tensors, loaded without running any code it may carry."""
    import torch

    try:
        try:
            return torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap can only be used" not in str(error):
                raise
            # A pickle in torch's legacy (pre-zip) format cannot be memory-mapped; read it whole.
            return torch.load(shard, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged or unsafe pickles
        raise DamagedCheckpoint(unreadable_weights_message(shard, error)) from error


def read_weights(shard: Path) -> dict:
    """The tensors of one weight file, either format; DamagedCheckpoint when it cannot be read."""
    if shard.suffix == ".safetensors":
        from safetensors.torch import load_file

        safetensors_header(shard)
        try:
            return load_file(str(shard))
        except Exception as error:  # safetensors raises its own error type for a damaged file
            raise DamagedCheckpoint(unreadable_weights_message(shard, error)) from error
    return read_bin_shard(shard)


def find_unreadable_weights(path: Path) -> str | None:
    """The sentence for the first weight file of a model folder that cannot be read, or None when all can.

    Used after a load failed, to name the file: safetensors headers are read, pickles loaded (memory-mapped).
    """
    for shard in inspect_model_folder(path).weight_files:
        try:
            if shard.suffix == ".safetensors":
                safetensors_header(shard)
            else:
                read_bin_shard(shard)
        except GlmError as error:
            return str(error)
    return None


def convert_to_safetensors(path: Path, *, progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Write a safetensors copy of the `.bin` shards beside them (they stay, and are no longer read).

    Safetensors load faster (memory-mapped) and cannot carry code. Each shard is written to a temporary
    name and renamed, and the index last, so an interrupted conversion leaves the folder as it was.
    """
    from safetensors.torch import save_file

    folder = require_complete(path)
    if folder.weight_format == "safetensors":
        return path / SAFETENSORS_INDEX
    shards = folder.weight_files
    weight_map: dict[str, str] = {}
    total_size = 0
    for number, shard in enumerate(shards, start=1):
        if progress is not None:
            progress(number - 1, len(shards), shard.name)
        tensors = {}
        seen_storage: set[int] = set()
        for name, tensor in read_bin_shard(shard).items():
            # safetensors refuses tensors that share storage (a pickle may hold views of one buffer).
            storage = tensor.untyped_storage().data_ptr()
            tensors[name] = tensor.clone() if storage in seen_storage else tensor.contiguous()
            seen_storage.add(storage)
        target_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        temporary = path / (target_name + ".tmp")
        save_file(tensors, str(temporary), metadata={"format": "pt"})
        os.replace(temporary, path / target_name)
        for name, tensor in tensors.items():
            weight_map[name] = target_name
            total_size += tensor.numel() * tensor.element_size()
    index_path = path / SAFETENSORS_INDEX
    atomic_write_text(
        index_path, json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2)
    )
    if progress is not None:
        progress(len(shards), len(shards), "done")
    return index_path


def rewrite_weights(path: Path, state: dict) -> None:
    """Replace the tensors of a model folder's weight files in place, keeping its shard layout and index.

    Used to save a model trained in place (the demo) in exactly the layout it was loaded from.
    """
    import torch
    from safetensors.torch import save_file

    folder = require_complete(path)
    index_name = SAFETENSORS_INDEX if folder.weight_format == "safetensors" else BIN_INDEX
    if (path / index_name).is_file():
        weight_map = json.loads((path / index_name).read_text(encoding="utf-8"))["weight_map"]
    else:
        weight_map = dict.fromkeys(state, folder.weight_files[0].name)
    unknown = set(state) - set(weight_map)
    if unknown:
        raise GlmError(f"{path} has no place for the tensors {', '.join(sorted(unknown))}.")
    for shard in sorted(set(weight_map.values())):
        # Tensors the model does not hold as state (the stored rotary frequencies) keep their stored values.
        tensors = read_weights(path / shard)
        tensors.update(
            {
                name: state[name].contiguous()
                for name, file in weight_map.items()
                if file == shard and name in state
            }
        )
        temporary = path / (shard + ".tmp")
        if folder.weight_format == "safetensors":
            save_file(tensors, str(temporary), metadata={"format": "pt"})
        else:
            torch.save(tensors, temporary)
        os.replace(temporary, path / shard)
