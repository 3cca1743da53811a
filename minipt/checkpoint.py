"""The one loader: official checkpoints in, official checkpoints out.

Every minipt model loads and saves through this module. A model class says
three things about itself (a ``config_class``, a ``keymap(config)`` and, where
the checkpoint decides part of the architecture, ``adapt_config``); this
module does the rest:

- find the files (``minipt.hub.resolve``);
- read ``config.json`` and the tensors' names and shapes without reading data
  (``model.safetensors`` checked by ``safe_open``, sharded safetensors through
  their index, ``pytorch_model.bin``/``.pth`` through
  ``torch.load(weights_only=True)``, never full unpickling; numpy ``.npz``
  archives with ``allow_pickle=False``, each array's size checked before it is
  decompressed);
- build the model on the meta device, so no memory is spent on weights that
  are about to be replaced;
- translate names with the key map, check them strictly (one error lists every
  missing, unexpected and mis-shaped tensor) and hand each tensor to the model
  as it is read (copied out of the file, so the model owns its weights, or
  memory-mapped with ``mmap=True``; cast only when ``dtype`` asks for it);
- write the official layout back, atomically: ``model.safetensors``, then
  ``config.json``.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, CheckpointNotFoundError, ConfigError, InputError, KeyMismatchError, MiniptError, SaveError
from .checks import check_bool, check_device, check_dtype, check_path, is_quantized
from .files import atomic_path, make_directory, read_json, write_json
from .hub import resolve
from .keymap import KeyMap
from .nn.sampling import generation_options

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"  # transformers' defaults for generate, beside config.json
_SHOWN = 12  # entries per kind of problem in a key mismatch error
# An .npz may declare at most this many bytes of arrays per byte of archive (or _NPZ_SMALL in all): weights
# barely compress (np.savez stores them, savez_compressed gains ~10% on floats), while deflate can expand
# 1,000-fold, so a 2 MB archive could otherwise make the loader decompress and allocate 2 GB.
_NPZ_EXPANSION = 20
_NPZ_SMALL = 16 << 20
# safetensors dtype names -> torch dtypes (the file is little-endian, as x86 and ARM machines are)
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


# -- reading -----------------------------------------------------------------
def read_config(directory: Path) -> dict[str, Any]:
    if not (Path(directory) / CONFIG).is_file():
        raise ConfigError(f"{directory} has no {CONFIG}")
    return read_json(Path(directory) / CONFIG, what="an object of config fields", error=ConfigError)


def weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint directory (or the file itself; a sharded checkpoint's index: its shards)."""
    if path.is_file():
        if path.name.endswith(".index.json"):  # transformers' index of shards: read through it
            return _indexed_files(path.parent, path)
        shard = re.fullmatch(r"(.+)-\d+-of-\d+\.(safetensors|bin)", path.name)
        index = shard and path.parent / f"{shard[1]}.{shard[2]}.index.json"
        if index and index.is_file() and any(f != path for f in _indexed_files(path.parent, index)):  # one shard of several
            raise CheckpointError(f"{path} is one shard of a sharded checkpoint (its index is {index.name}): pass the folder, {path.parent}, "
                                  "or the index")
        return [path]
    if (path / SAFETENSORS).is_file():
        return [path / SAFETENSORS]
    for index in (SAFETENSORS_INDEX, PYTORCH_BIN_INDEX):  # sharded: transformers' safetensors, and its older .bin shards
        if (path / index).is_file() and not (index == PYTORCH_BIN_INDEX and (path / PYTORCH_BIN).is_file()):
            return _indexed_files(path, path / index)
    if (path / PYTORCH_BIN).is_file():
        return [path / PYTORCH_BIN]
    # a folder holding one weights file under another name (torchvision's resnet50-0676ba61.pth, ...); hidden files
    # are never weights: a killed save's temporary (files.TEMPORARY_PREFIX, safetensors' own .tmp*) is skipped
    single = [f for pattern in ("*.safetensors", "*.pth", "*.pt", "*.bin", "*.npz") for f in sorted(path.glob(pattern)) if not f.name.startswith(".")]
    if len(single) == 1:
        return single
    raise CheckpointNotFoundError(
        f"{path} holds no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {PYTORCH_BIN}, {PYTORCH_BIN_INDEX} or a single weights file"
        + (f" (found several: {', '.join(f.name for f in single)})" if single else "")
    )


def _indexed_files(path: Path, index_path: Path) -> list[Path]:
    """The shards an index's weight_map names, each once."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise CheckpointError(f"{index_path} is not a readable index of weight files (a JSON object with a weight_map of file names): {type(err).__name__}: {err}") from None
    if not names or not all(isinstance(n, str) and n and "/" not in n and "\\" not in n and n not in (".", "..") for n in names):
        raise CheckpointError(f"{index_path}: weight_map must name files in {path}, found {names[:5]}")
    return [path / name for name in names]


# What a file given as a checkpoint may be instead, by its first bytes: named in the error, not "objects other than tensors".
_OTHER_FORMATS = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"II*\x00": "a TIFF image",
                  b"MM\x00*": "a TIFF image", b"{": "JSON text (a config?)", b"%PDF": "a PDF document"}


def _check_torch_file(file: Path) -> None:
    """``CheckpointError`` unless ``file`` begins as torch.save writes: a zip archive, or (the legacy format) a pickle."""
    try:
        with open(file, "rb") as opened:
            head = opened.read(8)
    except OSError as err:
        raise CheckpointError(f"cannot read {file}: {err.strerror or err}") from None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or not head:
        return  # a zip archive or a pickle (torch.load names an empty file as truncated)
    what = next((name for magic, name in _OTHER_FORMATS.items() if head.lstrip().startswith(magic)), None)
    raise CheckpointError(f"{file} is not a checkpoint: " + (f"it is {what}" if what else f"torch.save writes a zip archive or a pickle, and it begins with {head!r}"))


class Checkpoint:
    """The tensors of a checkpoint: names and shapes up front, data read on demand.

    By default every tensor read is a copy the caller owns (plain reads into fresh memory, at most
    one copy of the weights in memory). With ``mmap=True`` safetensors and zip-format pickle tensors
    are memory-mapped views of the file instead: no copy, but they change if the file is rewritten in
    place and fault (SIGBUS) if it is truncated. Replacing the file by a rename, as every minipt save
    does, leaves both kinds untouched.
    """

    def __init__(self, path: str | os.PathLike, *, mmap: bool = False):
        self.path = Path(path)
        self.mmap = check_bool("mmap", mmap)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._where: dict[str, Any] = {}  # key -> safetensors handle or reader, or the loaded state dict
        self._file: dict[str, Path] = {}  # key -> the file that holds it (a key in two shards is refused)
        for file in weight_files(self.path):
            if file.suffix == ".safetensors":
                self._open_safetensors(file)
            elif file.suffix == ".npz":
                self._open_npz(file)
            else:
                self._open_pickle(file)

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the files held open for reading (tensors already read stay valid)."""
        for source in self._where.values():
            if isinstance(source, _SafetensorsReader):
                source.close()

    def _open_safetensors(self, file: Path) -> None:
        from safetensors import safe_open

        if not file.is_file():
            raise CheckpointNotFoundError(f"{file} is listed in the checkpoint index but does not exist")
        reader = None
        try:
            if self.mmap:
                handle = safe_open(str(file), framework="pt")
            else:  # safe_open checks the header of the very file the reader holds open, even if the path is replaced meanwhile
                reader = _SafetensorsReader(open(file, "rb", buffering=0))
                handle = safe_open(reader.same_file(), framework="pt")
                reader.read_header()
            for key in handle.keys():
                self._add(key, tuple(handle.get_slice(key).get_shape()), reader or handle, file)
        except Exception as err:  # safetensors raises SafetensorError from Rust for every kind of damage
            if reader is not None:
                reader.close()
            if isinstance(err, MiniptError):  # a key in two shards
                raise
            raise CheckpointError(f"{file} is truncated or corrupted ({err}); it is not a readable safetensors file") from err

    def _open_pickle(self, file: Path) -> None:
        _check_torch_file(file)
        try:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=self.mmap)
            except RuntimeError as err:
                if not self.mmap or "mmap" not in str(err):
                    raise
                state = torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) format: no mapping
        except Exception as err:
            if "weights_only" in str(err) or "Unsupported global" in str(err):
                raise CheckpointError(f"{file} holds objects other than tensors; minipt only loads with weights_only=True") from err
            raise CheckpointError(f"{file} is truncated or corrupted ({type(err).__name__}: {err})") from err
        for wrapper in ("state_dict", "model"):  # {"state_dict": {...}, "epoch": ...}
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        if not isinstance(state, dict):
            raise CheckpointError(f"{file} does not hold a state dict (found {type(state).__name__})")
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{file}: entry {key!r} is a {type(value).__name__}, not a tensor")
            self._add(key, tuple(value.shape), state, file)

    def _open_npz(self, file: Path) -> None:
        try:
            state = _read_npz(file)
        except MiniptError:
            raise
        except Exception as err:
            if "allow_pickle" in str(err):
                raise CheckpointError(f"{file} holds objects other than arrays; minipt only loads numeric arrays") from err
            raise CheckpointError(f"{file} is truncated or corrupted ({type(err).__name__}: {err})") from err
        for key, value in state.items():
            self._add(key, tuple(value.shape), state, file)

    def _add(self, key: str, shape: tuple[int, ...], source: Any, file: Path) -> None:
        if key in self._file:
            raise KeyMismatchError(f"checkpoint {self.path}: {key} is in two of its files, {self._file[key].name} and {file.name}; "
                                   "which one is meant is not clear")
        self._shapes[key], self._where[key], self._file[key] = shape, source, file

    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def __contains__(self, key: str) -> bool:
        return key in self._shapes

    def get(self, key: str) -> torch.Tensor:
        source = self._where[key]
        if isinstance(source, dict):
            return source[key]
        try:
            return source.get_tensor(key)
        except Exception as err:
            raise CheckpointError(f"{self.path}: tensor {key!r} cannot be read ({err}); the file is truncated or corrupted") from err


class _SafetensorsReader:
    """One safetensors file, its tensors read into fresh memory with plain reads (no memory map).

    The file stays open from the header to the last tensor, so a load reads one file whole even
    while a save replaces it. Its header is parsed only after ``safe_open`` has checked it."""

    def __init__(self, file):
        self.file = file

    def same_file(self) -> str:
        """A name that opens the file this reader holds (``/dev/fd/N`` where the OS has it)."""
        held = f"/dev/fd/{self.file.fileno()}"
        return held if os.path.exists(held) else self.file.name

    def read_header(self) -> None:
        self.file.seek(0)
        (length,) = struct.unpack("<Q", self.file.read(8))
        self.header = json.loads(self.file.read(length))
        self.data_start = 8 + length

    def get_tensor(self, key: str) -> torch.Tensor:
        entry = self.header[key]
        dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise CheckpointError(f"dtype {entry['dtype']} is not one minipt loads ({', '.join(_SAFETENSORS_DTYPES)})")
        begin, end = entry["data_offsets"]
        size = math.prod(entry["shape"]) * dtype.itemsize
        if end - begin != size:  # safe_open checked this; only a file rewritten in place since can differ
            raise CheckpointError(f"its header gives {end - begin} bytes for shape {entry['shape']} of {entry['dtype']}")
        data = torch.empty(size, dtype=torch.uint8)
        self.file.seek(self.data_start + begin)
        if _read_into(self.file, data.numpy()) != size:
            raise CheckpointError(f"the file ends before the tensor's {size} bytes")
        return data.view(dtype).reshape(entry["shape"])

    def close(self) -> None:
        self.file.close()

    __del__ = close


def _read_into(file, buffer) -> int:
    """Fill ``buffer`` from ``file``; the number of bytes read (less at the end of the file)."""
    view, filled = memoryview(buffer).cast("B"), 0
    while filled < len(view):
        count = file.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled


def _read_npz(file: Path) -> dict[str, torch.Tensor]:
    """The arrays of an ``.npz`` archive, refused before anything is decompressed when the sizes its
    members declare exceed ``_NPZ_EXPANSION`` times the archive, or disagree with their npy headers."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(file) as archive:
        members = archive.infolist()
        declared, stored = sum(m.file_size for m in members), file.stat().st_size
        if declared > max(_NPZ_EXPANSION * stored, _NPZ_SMALL):
            raise CheckpointError(f"{file} declares {declared:,} bytes of arrays in {stored:,} bytes of archive "
                                  f"(more than {_NPZ_EXPANSION} times as much); refused without decompressing it")
        for member in members:  # each npy header is a few hundred bytes at the start of its member
            if not member.filename.endswith(".npy"):
                raise CheckpointError(f"{file}: member {member.filename!r} is not an .npy array")
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                if version not in ((1, 0), (2, 0)):
                    raise CheckpointError(f"{file}: member {member.filename!r} is npy format {version}, not 1.0 or 2.0")
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(stream)
                size = stream.tell() + math.prod(shape) * dtype.itemsize
            if dtype.hasobject:
                raise CheckpointError(f"{file} holds objects other than arrays ({member.filename!r}); minipt only loads numeric arrays")
            if size != member.file_size:
                raise CheckpointError(f"{file}: member {member.filename!r} declares {member.file_size:,} bytes, "
                                      f"but its header describes {size:,} (a {dtype} array of shape {shape})")
        state = {}
        for member in members:
            with archive.open(member) as stream:
                state[member.filename[: -len(".npy")]] = torch.from_numpy(np.lib.format.read_array(stream, allow_pickle=False))
    return state


# -- matching names ----------------------------------------------------------
def model_keys(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """A model's tensors by name with their shapes; a tied tensor counts once (first name)."""
    return {name: tuple(tensor.shape) for name, tensor in _model_tensors(model).items()}


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            tensors[name] = tensor
    return tensors


def match(checkpoint: Checkpoint, keymap: KeyMap, expected: dict[str, tuple], owner: str, init_missing=()) -> dict[str, str | torch.Tensor]:
    """Map every minipt key to the checkpoint key that fills it (or the key map's default for a
    tensor the format may lack), or raise one error naming every problem.

    Keys under the module names in ``init_missing`` may be absent (a new head to train).
    """
    sources: dict[str, str | torch.Tensor] = {}
    unexpected, wrong_shape, duplicate, missing, missing_keys = [], [], [], [], []
    fresh = tuple(name + "." for name in init_missing)
    for row in keymap.table(list(expected), checkpoint.keys()):  # every file key classified, then the missing ones
        key, file_key = row.minipt, row.file_key
        if row.status == "mapped":
            if key in sources:
                duplicate.append(f"{sources[key]} and {file_key} both fill {key}")
            elif keymap.minipt_shapes(row.official, checkpoint.shape(file_key))[key] != expected[key]:
                wrong_shape.append(f"{file_key}: checkpoint has {checkpoint.shape(file_key)}, {owner} expects {keymap.official_shape(key, expected[key])}")
            sources[key] = file_key
        elif row.status == "unexpected":
            unexpected.append(f"{file_key} {checkpoint.shape(file_key)}")
        elif row.status == "missing" and not key.startswith(fresh):
            default = keymap.default(row.official) if row.official else None
            if default is not None and tuple(default.shape) == expected[key]:
                sources[key] = default
            else:
                missing.append(f"{row.official or f'(no official name for {key})'} {keymap.official_shape(key, expected[key])}")
                missing_keys.append(key)
    if missing or unexpected or wrong_shape or duplicate:
        message = _mismatch_message(checkpoint.path, owner, missing, unexpected, wrong_shape, duplicate)
        modules = _whole_modules(missing_keys, expected)
        if modules and not (unexpected or wrong_shape or duplicate):
            message += f"\n  to start them afresh (a new head on a pre-trained encoder): init_missing={tuple(init_missing) + tuple(modules)!r}"
        raise KeyMismatchError(message)
    return sources


def _whole_modules(missing: list[str], expected) -> list[str]:
    """The largest submodules all of whose tensors are among the ``missing`` minipt keys (``bert.pooler``, not each of
    its tensors): what ``init_missing`` names to start them afresh."""
    missing_set, modules = set(missing), []

    def whole(module: str) -> bool:
        return bool(module) and all(k in missing_set for k in expected if k.startswith(module + "."))

    for key in missing:
        module = key.rpartition(".")[0]
        if not whole(module):
            continue  # a module the file fills in part: not one to start afresh
        while whole(module.rpartition(".")[0]):
            module = module.rpartition(".")[0]
        if module not in modules:
            modules.append(module)
    return modules


def _mismatch_message(path, owner, missing, unexpected, wrong_shape, duplicate) -> str:
    lines = [f"checkpoint {path} does not fit {owner}:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape), ("duplicate", duplicate)):
        items = list(dict.fromkeys(items))  # the parts of one split tensor share its line
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines += [f"    {item}" for item in items[:_SHOWN]]
            if len(items) > _SHOWN:
                lines.append(f"    ... and {len(items) - _SHOWN} more")
    return "\n".join(lines)


# -- loading and saving --------------------------------------------------------
def load_weights(
    model: nn.Module,
    checkpoint: Checkpoint,
    keymap: KeyMap,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    init_missing: tuple[str, ...] = (),
) -> nn.Module:
    """Fill a (meta-device) model from a checkpoint, strictly, one tensor at a time.

    The submodules named in ``init_missing`` (say ``("classifier",)`` for a new
    head) may be absent from the checkpoint; they are freshly initialised.
    """
    for name in init_missing:
        try:
            model.get_submodule(name)
        except AttributeError:
            children = ", ".join(n for n, _ in model.named_children())
            raise InputError(f"init_missing names {name!r}, which is no submodule of {type(model).__name__} (its modules: {children}; "
                             "deeper ones by dotted path, as in its state dict)") from None
    targets = _model_tensors(model)
    keep_float32 = set(getattr(model, "keep_in_float32", ()))  # modules whose weights stay float32 when the rest loads in float16
    sources = match(checkpoint, keymap, {k: tuple(t.shape) for k, t in targets.items()}, type(model).__name__, init_missing)
    state, read = {}, {}  # read: file key -> its minipt tensors not yet placed (a split tensor is read once)
    for key, file_key in sources.items():
        if isinstance(file_key, torch.Tensor):  # the key map's default for a tensor the format may lack
            tensor = file_key
        else:
            if file_key not in read:
                read[file_key] = keymap.minipt_tensors(keymap.canonical(file_key), checkpoint.get(file_key), views=checkpoint.mmap)
            tensor = read[file_key].pop(key)
            if not read[file_key]:
                del read[file_key]
        tensor = _fit_kind(tensor, targets[key], checkpoint.path, file_key)
        wanted = dtype
        if (dtype or tensor.dtype) == torch.float16 and key.split(".")[-2:-1] and key.split(".")[-2] in keep_float32:
            wanted = torch.float32  # float16's range is too narrow for it (T5's wo, as transformers keeps it)
        if wanted is not None and tensor.is_floating_point():
            tensor = tensor.to(wanted)
        if device is not None:
            tensor = tensor.to(device)
        state[key] = tensor
    model.load_state_dict(state, strict=False, assign=True)
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    fresh_dtype = dtype or (max(set(floats), key=floats.count) if floats else None)  # a new head computes in the file's dtype
    for name in init_missing:
        module = model.get_submodule(name)
        if any(t.is_meta for t in module.state_dict().values()):
            loaded = {k: t.detach() for k, t in module.state_dict().items() if not t.is_meta}  # what the file filled (to_empty swaps .data)
            module.to_empty(device=device or "cpu")
            module.apply(getattr(model, "init_weights", _reset_parameters))
            if fresh_dtype is not None:
                module.to(fresh_dtype)
            module.load_state_dict(loaded, strict=False, assign=True)  # only what the file lacks starts afresh
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # assign=True replaced the tied parameter; share it again
    left_on_meta = [name for name, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    if left_on_meta:
        raise CheckpointError(f"{type(model).__name__} has tensors no checkpoint key fills: {left_on_meta}")
    return model


def _fit_kind(tensor: torch.Tensor, target: torch.Tensor, path, file_key) -> torch.Tensor:
    """A tensor of the right kind for its place: floating for weights, integer for counters.

    A header that says int32 where a weight is stored would otherwise load
    integers into a float parameter without a word.
    """
    if target.is_floating_point():
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: tensor {file_key!r} has dtype {tensor.dtype}, but the model keeps floating-point values there")
        return tensor
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise CheckpointError(f"{path}: tensor {file_key!r} has dtype {tensor.dtype}, but the model keeps {target.dtype} values there")
    return tensor.to(target.dtype)


def _reset_parameters(module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()


def official_state_dict(model: nn.Module, keymap: KeyMap) -> dict[str, torch.Tensor]:
    """The model's tensors under their official names and in the official layout."""
    return keymap.official_tensors({key: _tensor(model, key) for key in model_keys(model)}, type(model).__name__)


def _tensor(model: nn.Module, key: str) -> torch.Tensor:
    module_name, _, name = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return getattr(module, name).detach()


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (``files.atomic_path``): readers see the old file or the new one."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    storages, ready = set(), {}
    for key, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        ready[key] = tensor.clone() if ptr in storages else tensor  # safetensors refuses shared storage
        storages.add(ptr)
    with atomic_path(path) as temporary:
        try:
            save_file(ready, str(temporary), metadata={"format": "pt"})
        except SafetensorError as err:  # its I/O errors (a full disk) come as SafetensorError
            raise SaveError(f"cannot write {path}: {err}") from err


class Pretrained:
    """``from_pretrained`` / ``save_pretrained``: the one loading protocol every minipt model follows.

    A model class declares:

    - ``config_class``: its ``minipt.config.Config`` dataclass;
    - ``keymap(config)``: the official names of its tensors;
    - ``checkpoint_fields``: what the checkpoint's tensors fix in the config,
      ``{field: (minipt key, dim)}`` for a size and ``{field: "prefix."}`` for
      the number of numbered blocks under a prefix; checked before any module
      is built, so an inconsistent config is refused without allocating;
    - for an official format without a ``config.json`` (torchvision, EfficientNet-Lite,
      EasyOCR, g2p-en): ``config_from_checkpoint(path, checkpoint)``, the
      config read off the tensors (and the files beside them);
    - optionally ``weights_file`` (the file to read in a folder that holds
      several) and ``adapt_config`` (what the checkpoint decides, such as a
      pooler present or not).

    ``save_pretrained`` writes ``config.json`` (every config writes itself)
    and ``model.safetensors`` under the official names; ``from_pretrained``
    reads that back, and the official files too.
    """

    config_class: type
    checkpoint_fields: dict = {}
    weights_file: str | None = None
    default_checkpoint: str | None = None  # what from_pretrained() loads when given no name

    @classmethod
    def keymap(cls, config) -> KeyMap:  # pragma: no cover - every model defines it
        raise NotImplementedError

    @classmethod
    def config_from_checkpoint(cls, path: Path, checkpoint: Checkpoint):
        """The config of an official file that comes without ``config.json``; None: the format has one."""
        return None

    @classmethod
    def adapt_config(cls, config, checkpoint: Checkpoint):
        """What the checkpoint decides about the architecture (default: nothing)."""
        return config

    @classmethod
    def open_checkpoint(cls, path: Path, *, mmap: bool = False) -> Checkpoint:
        if path.is_dir() and cls.weights_file and (path / cls.weights_file).is_file():
            path = path / cls.weights_file
        return Checkpoint(path, mmap=mmap)

    @classmethod
    def load_config(cls, path: Path, checkpoint: Checkpoint, **overrides):
        """The config for the checkpoint at ``path``, checked against its tensors' names and shapes."""
        directory = path if path.is_dir() else path.parent
        if (directory / CONFIG).is_file():
            config = cls.config_class.from_dict(read_config(directory), source=directory / CONFIG, **overrides)
        else:
            found = cls.config_from_checkpoint(path, checkpoint)
            if found is None:
                from .registry import describe

                raise ConfigError(f"{path} has no {CONFIG}, which {cls.__name__} needs; {describe(path, checkpoint)}")
            config = found.replace(source=f"the config read off {path}", **overrides)
        config = cls.adapt_config(config, checkpoint)
        cls.check_config(config, checkpoint)
        return config

    @classmethod
    def check_config(cls, config, checkpoint: Checkpoint) -> None:
        """Refuse a config that disagrees with the checkpoint's tensors, naming each field (no module is built)."""
        keymap = cls.keymap(config)
        found: dict[str, tuple[str, tuple]] = {}  # minipt key -> (file key, shape in minipt's layout)
        for file_key in checkpoint.keys():
            for key, shape in keymap.minipt_shapes(keymap.canonical(file_key), checkpoint.shape(file_key)).items():
                if shape is not None:  # a split tensor that does not split evenly: the loader names it
                    found[key] = (file_key, shape)
        problems = []
        for name, where in cls.checkpoint_fields.items():
            value = getattr(config, name)
            if isinstance(where, str):  # a count of numbered blocks
                under = [file_key for key, (file_key, _) in found.items() if key.startswith(where)]
                held = len({key[len(where) :].split(".")[0] for key in found if key.startswith(where)})
                if value != held:
                    example = f" (such as {under[0]})" if under else ""
                    problems.append(f"{name} = {value!r}, but the checkpoint holds {held}{example}")
            elif where[0] in found:  # a size
                file_key, shape = found[where[0]]
                if len(shape) <= where[1] or shape[where[1]] != value:
                    problems.append(f"{name} = {value!r}, but {file_key} has shape {checkpoint.shape(file_key)}")
                    if name == getattr(cls, "transfer_head", (None, None))[1]:  # the head's size: a new task, most likely
                        problems[-1] += f" (for a new head of {value}: load the file as it is, then reset_classifier({value}))"
        if problems:
            raise ConfigError(f"the config of {cls.__name__} does not match the checkpoint {checkpoint.path}: " + "; ".join(problems))

    @classmethod
    def from_pretrained(cls, name_or_path=None, *, dtype: torch.dtype | str | None = None, torch_dtype: torch.dtype | str | None = None,
                        device=None, init_missing=(), mmap: bool = False, **config_overrides):
        """Load official weights from a local path, a catalogued name or a hub repo id (eval mode).

        ``dtype`` (a floating-point dtype) and ``device`` cast the tensors on
        the way in; without ``dtype`` (or with ``"auto"``) the tensors keep the
        dtype the file stores. ``torch_dtype`` is the same argument under the
        name older transformers code passes. ``init_missing`` names submodules
        the checkpoint may lack and that are initialised afresh (a classifier
        head on a pre-trained encoder); every other missing tensor is an error.
        ``config_overrides`` replace fields of the checkpoint's config
        (``num_labels=3``).

        The model owns its weights: they are copied out of the file (at most
        one copy in memory), so rewriting or deleting the file afterwards
        changes nothing. ``mmap=True`` memory-maps safetensors and zip-format
        ``.bin``/``.pth`` files instead: no copy, pages read on first use and
        shared with the page cache, but the tensors alias the file: writing
        into it in place (``cp`` over it, a non-atomic save) changes the
        model's weights, and truncating it makes reading them crash the
        process with SIGBUS. Replacing the file by a rename (every minipt
        save) is safe either way. A cast by ``dtype``/``device`` copies;
        ``.npz`` archives are always read whole.
        """
        if torch_dtype is not None:
            if dtype is not None and check_dtype(dtype) != check_dtype(torch_dtype):
                raise InputError(f"{cls.__name__}.from_pretrained got dtype={dtype!r} and torch_dtype={torch_dtype!r}; pass one (they are the same argument)")
            dtype = torch_dtype
        dtype, device = check_dtype(dtype), check_device(device)
        if isinstance(init_missing, str) or not isinstance(init_missing, (tuple, list)) or not all(isinstance(n, str) for n in init_missing):
            hint = f" (one module: init_missing=({init_missing!r},))" if isinstance(init_missing, str) else ""
            raise InputError(f"init_missing must be a tuple of module names, got {type(init_missing).__name__} {init_missing!r:.80}{hint}")
        if name_or_path is None:
            if cls.default_checkpoint is None:
                raise CheckpointNotFoundError(f"{cls.__name__}.from_pretrained needs a path, catalogue name or hub repo id")
            name_or_path = cls.default_checkpoint
        path = resolve(name_or_path)
        with cls.open_checkpoint(path, mmap=mmap) as checkpoint:
            config = cls.load_config(path, checkpoint, **config_overrides)
            model = cls._build_unfilled(config, path)
            load_weights(model, checkpoint, cls.keymap(config), dtype=dtype, device=device, init_missing=tuple(init_missing))
        generation = (path if path.is_dir() else path.parent) / GENERATION_CONFIG
        if callable(getattr(cls, "generate", None)) and generation.is_file():  # generate's defaults, as transformers reads them
            model.generation_config = read_json(generation, what="an object of generation options", error=ConfigError)
            _, ignored = generation_options(cls.generate, model.generation_config)
            stops = model.generation_config.get("eos_token_id")
            if isinstance(stops, list) and len(set(map(repr, stops))) > 1:
                warnings.warn(f"{generation} lists several stop ids (eos_token_id = {stops!r}); minipt's generate stops on the first, "
                              f"{stops[0]!r}, only", UserWarning, stacklevel=2)
            if ignored:
                warnings.warn(f"{generation} sets {', '.join(ignored)}, which {cls.__name__}.generate does not take: its outputs "
                              "may differ from transformers' generate on this folder", UserWarning, stacklevel=2)
        return model.eval()

    @classmethod
    def _build_unfilled(cls, config, path: Path):
        """The model for ``config`` on the meta device (no memory), for the loader to fill. The config has passed its
        checks and agrees with the checkpoint's shapes; a size it derives that no tensor holds (a width multiplier, a
        product of counts) can still be out of torch's range, which is refused here naming the file, not left to
        fail inside torch."""
        try:
            with torch.device("meta"):
                return cls(config)
        except (TypeError, OverflowError, ValueError, RuntimeError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"torch cannot build the {cls.__name__} that the config for {path} describes ({reason}): "
                              "one of its sizes is out of range") from error

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` with the official key names, then ``config.json``.

        Each file is written atomically (``files.atomic_path``) and the config last, so a reader
        sees the folder's old model or the new one, and a save that fails midway (a full disk, the
        process killed) leaves the old model loadable. A save that changes the config as well has
        one moment where the new weights sit beside the old config; loading then refuses them if
        the shapes disagree. A folder or file that cannot be written raises ``SaveError`` naming it.
        """
        if getattr(self, "fused", False):
            raise ConfigError(
                f"a fused {type(self).__name__} is an inference copy (BatchNorm folded into convolutions, weights packed) "
                "and cannot be saved in the official format; "
                "save the model before fuse()"
            )
        if is_quantized(self):
            raise ConfigError(f"an int8 {type(self).__name__} (torchao tensors) has no official format to be saved in: "
                              "save the float model, and quantise it after loading (minipt.quantize.quantize_int8)")
        if any(hasattr(p, "full_tensor") for p in self.parameters()):  # FSDP2's DTensors: each process holds shards
            raise ConfigError(f"{type(self).__name__}'s parameters are sharded (FSDP's fully_shard), and the official format holds whole "
                              "tensors: gather them on every process with torch.distributed.checkpoint.state_dict.get_model_state_dict(model, "
                              "options=StateDictOptions(full_state_dict=True, cpu_offload=True)), load that into an unsharded model on one "
                              "process and save it there, or save the shards with torch.distributed.checkpoint")
        directory = make_directory(check_path("directory", directory), "directory")
        save_safetensors(official_state_dict(self, self.keymap(self.config)), directory / SAFETENSORS)
        if getattr(self, "generation_config", None):
            write_json(directory / GENERATION_CONFIG, self.generation_config)  # as read: generate's defaults for the next reader
        write_json(directory / CONFIG, {"architectures": [type(self).__name__], **self.config.to_dict()})
        return directory
