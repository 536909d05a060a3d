# Generated from solutions/09_weights.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import json
import math
import mmap
import struct
from difflib import get_close_matches
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from kuiper.errors import SafetensorsError


#: safetensors dtype -> numpy dtype of the stored bytes (BF16 is read as its 16 raw bits).
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


class TensorEntry(NamedTuple):
    """A tensor's safetensors dtype name and shape."""

    dtype: str
    shape: tuple[int, ...]


class SafetensorsFile:
    """A memory-mapped .safetensors file: `.tensors` (name -> (dtype, shape)), `.metadata`, and
    `.tensor(name)` as numpy (floats as float32)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            file = open(self.path, "rb")
        except OSError as err:
            raise SafetensorsError(f"{self.path}: cannot open it: {err.strerror}") from None
        with file:
            size = file.seek(0, 2)
            if size < 8:
                raise SafetensorsError(f"{self.path}: {size} bytes is too short for the 8-byte header length")
            self._buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        (length,) = struct.unpack_from("<Q", self._buffer)
        if length > size - 8:
            raise SafetensorsError(f"{self.path}: header length {length} is past the end of the file "
                                   f"({size - 8} bytes follow it)")
        header = parse_json(self._buffer[8:8 + length], f"{self.path}: the header")
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: the header must be a JSON object, got {type(header).__name__}")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict) or not all(isinstance(v, str) for v in self.metadata.values()):
            raise SafetensorsError(f"{self.path}: __metadata__ must be a JSON object of strings, "
                                   f"got {str(self.metadata)[:80]}")
        self._data_start = 8 + length
        self._starts: dict[str, int] = {}
        self.tensors: dict[str, TensorEntry] = {name: self._entry(name, spec) for name, spec in header.items()}
        self._check_disjoint()

    def _entry(self, name: str, spec: Any) -> TensorEntry:
        """Check one header entry against the file and remember where its bytes are."""
        dtype, shape, offsets = (spec.get(key) if isinstance(spec, dict) else None
                                 for key in ("dtype", "shape", "data_offsets"))
        if not (isinstance(dtype, str) and isinstance(shape, list) and all(map(is_count, shape))
                and isinstance(offsets, list) and len(offsets) == 2 and all(map(is_count, offsets))):
            raise SafetensorsError(f"{self.path}: tensor {name!r} needs a dtype string, a shape of integers >= 0 and "
                                   f"data_offsets [begin, end]; got {str(spec)[:120]}")
        shape, (begin, end) = tuple(shape), offsets
        available = len(self._buffer) - self._data_start
        if not 0 <= begin <= end <= available:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has data_offsets [{begin}, {end}] outside the "
                                   f"{available} data bytes")
        size = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize if dtype in DTYPES else end - begin
        if end - begin != size:
            raise SafetensorsError(f"{self.path}: tensor {name!r} ({dtype} {shape}) should take {size} bytes, "
                                   f"its data_offsets give {end - begin}")
        self._starts[name] = self._data_start + begin
        return TensorEntry(dtype, shape)

    def _check_disjoint(self) -> None:
        """SafetensorsError if the bytes of two tensors overlap: each would read the other's data."""
        spans = sorted((self._starts[name], self._starts[name] + self.nbytes(name), name) for name in self.tensors)
        for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
            if begin < end:
                raise SafetensorsError(f"{self.path}: the bytes of tensors {first!r} and {second!r} overlap")

    def nbytes(self, name: str) -> int:
        """How many bytes tensor `name` takes in the file."""
        dtype, shape = self.tensors[name]
        return math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize if dtype in DTYPES else 0

    def tensor(self, name: str, out: np.ndarray | None = None, rows: slice = slice(None)) -> np.ndarray:
        """Tensor `name` as numpy: F16 and BF16 widened to float32, other dtypes as read-only views; with
        `rows` (a slice of the first axis) only those rows; written into `out` (float32) when given, as
        lesson 09's GGUF `dequantize` does (BF16 shifted straight into out's bits, no temporary)."""
        if name not in self.tensors:
            close = get_close_matches(name, self.tensors, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise SafetensorsError(f"{self.path}: no tensor {name!r} among its {len(self.tensors)}{hint}")
        dtype, shape = self.tensors[name]
        if dtype not in DTYPES:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has dtype {dtype}, which kuiper cannot read; "
                                   f"supported: {', '.join(DTYPES)}")
        array = np.frombuffer(self._buffer, DTYPES[dtype], math.prod(shape), self._starts[name]).reshape(shape)
        array = array if rows == slice(None) else array[rows]  # a 0-d tensor has no rows to slice
        if out is None and dtype not in ("F16", "BF16"):
            return array
        out = np.empty(array.shape, np.float32) if out is None else out
        if out.shape != array.shape or out.dtype != np.float32:
            raise SafetensorsError(f"{self.path}: tensor {name!r} rows {rows} are {dtype} {array.shape}, "
                                   f"which do not fit out {out.dtype} {out.shape}")
        if dtype == "BF16":
            np.left_shift(array, 16, out=out.view(np.uint32), dtype=np.uint32)
        else:
            out[...] = array
        return out


def parse_json(data: bytes, what: str) -> Any:
    """The JSON value in UTF-8 `data`; SafetensorsError naming `what` if it is not JSON or nests too deep."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsError(f"{what} is not valid JSON: {err}") from None
    except RecursionError:
        raise SafetensorsError(f"{what} nests JSON values too deep to read") from None


def is_count(value: Any) -> bool:
    """True for a JSON integer >= 0 (not a bool, a float or a string)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def save_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write numpy arrays as a .safetensors file (no BF16: numpy has no such dtype)."""
    names = {np.dtype(v).newbyteorder("<"): k for k, v in DTYPES.items() if k != "BF16"}
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    arrays, offset = [], 0
    for name, array in tensors.items():
        array = np.asarray(array)
        if array.dtype.newbyteorder("<") not in names:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {array.dtype}, which safetensors cannot store")
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": names[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        arrays.append(array)
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(text)) + text)
        for array in arrays:
            file.write(array.tobytes())


def load_config(path: str | Path) -> dict[str, Any]:
    """A model's config.json (or any JSON object file) as a dict; `path` is the file or the folder
    that holds config.json. SafetensorsError if it cannot be read or is not a JSON object."""
    path = Path(path)
    path = path / "config.json" if path.is_dir() else path
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SafetensorsError(f"{path}: cannot read it: {err.strerror}") from None
    config = parse_json(data, f"{path}: the file")
    if not isinstance(config, dict):
        raise SafetensorsError(f"{path}: must hold a JSON object, got {type(config).__name__}")
    return config


INDEX = "model.safetensors.index.json"


class ShardedSafetensors:
    """The tensors of a checkpoint split over several .safetensors files, as `model.safetensors.index.json`'s
    `weight_map` (tensor name -> shard file name) places them; the same `.tensors` and `.tensor(name)`
    as a SafetensorsFile."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        weight_map = load_config(self.path).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise SafetensorsError(f"{self.path}: weight_map must be a JSON object of tensor name -> file name")
        self.shards: dict[str, SafetensorsFile] = {}
        for file_name in sorted(set(weight_map.values())):
            if Path(file_name).name != file_name or not file_name.endswith(".safetensors"):
                raise SafetensorsError(f"{self.path}: shard {file_name!r} is not a .safetensors file next to the index")
            self.shards[file_name] = SafetensorsFile(self.path.parent / file_name)
        self._where = {name: self.shards[file_name] for name, file_name in weight_map.items()}
        for name, shard in self._where.items():
            if name not in shard.tensors:
                raise SafetensorsError(f"{self.path}: weight_map puts {name!r} in {shard.path.name}, which lacks it")
        self.tensors = {name: shard.tensors[name] for name, shard in self._where.items()}

    def tensor(self, name: str, out: np.ndarray | None = None, rows: slice = slice(None)) -> np.ndarray:
        """Tensor `name` from the shard that holds it (as SafetensorsFile.tensor reads it)."""
        if name not in self._where:
            close = get_close_matches(name, self.tensors, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise SafetensorsError(f"{self.path}: no tensor {name!r} among its {len(self.tensors)}{hint}")
        return self._where[name].tensor(name, out, rows)


def open_checkpoint(folder: str | Path) -> SafetensorsFile | ShardedSafetensors:
    """The weights of a Hugging Face folder: model.safetensors, or the shards its index lists."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return SafetensorsFile(folder / "model.safetensors")
    if (folder / INDEX).is_file():
        return ShardedSafetensors(folder / INDEX)
    raise SafetensorsError(f"{folder}: has neither model.safetensors nor {INDEX}")
