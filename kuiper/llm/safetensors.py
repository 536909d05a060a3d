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
        with open(self.path, "rb") as file:
            size = file.seek(0, 2)
            if size < 8:
                raise SafetensorsError(f"{self.path}: {size} bytes is too short for the 8-byte header length")
            self._buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        (length,) = struct.unpack_from("<Q", self._buffer)
        if length > size - 8:
            raise SafetensorsError(f"{self.path}: header length {length} is past the end of the file "
                                   f"({size - 8} bytes follow it)")
        try:
            header = json.loads(self._buffer[8:8 + length].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SafetensorsError(f"{self.path}: the header is not valid JSON: {err}") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: the header must be a JSON object, got {type(header).__name__}")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict):
            raise SafetensorsError(f"{self.path}: __metadata__ must be a JSON object of strings, got {self.metadata!r}")
        self._data_start = 8 + length
        self._starts: dict[str, int] = {}
        self.tensors: dict[str, TensorEntry] = {name: self._entry(name, spec) for name, spec in header.items()}

    def _entry(self, name: str, spec: Any) -> TensorEntry:
        """Check one header entry against the file and remember where its bytes are."""
        try:
            dtype, shape = spec["dtype"], tuple(int(n) for n in spec["shape"])
            begin, end = (int(n) for n in spec["data_offsets"])
        except (TypeError, KeyError, ValueError) as err:
            raise SafetensorsError(f"{self.path}: tensor {name!r} needs dtype, shape and data_offsets [begin, end]: "
                                   f"{err!r} in {spec!r}") from None
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

    def tensor(self, name: str) -> np.ndarray:
        """Tensor `name` as numpy: F16 and BF16 widened to float32, other dtypes as read-only views."""
        if name not in self.tensors:
            close = get_close_matches(name, self.tensors, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise SafetensorsError(f"{self.path}: no tensor {name!r} among its {len(self.tensors)}{hint}")
        dtype, shape = self.tensors[name]
        if dtype not in DTYPES:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has dtype {dtype}, which kuiper cannot read; "
                                   f"supported: {', '.join(DTYPES)}")
        array = np.frombuffer(self._buffer, DTYPES[dtype], math.prod(shape), self._starts[name])
        if dtype == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif dtype == "F16":
            array = array.astype(np.float32)
        return array.reshape(shape)


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
    """A model's config.json as a dict; `path` is the file or the folder that holds it."""
    path = Path(path)
    path = path / "config.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsError(f"{path}: not valid JSON: {err}") from None
