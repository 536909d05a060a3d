# Generated from solutions/09_weights.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from kuiper.errors import GGUFError, ShapeError


#: ggml type id -> (name, elements per block, bytes per block).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}

#: ggml type name -> id, the other way round.
TYPE_IDS = {name: type_id for type_id, (name, _, _) in GGML_TYPES.items()}

#: GGUF metadata value type id -> struct format of a scalar; 8 is a string, 9 an array.
VALUE_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives in a GGUF file: numpy shape, ggml type name, absolute byte offset, size."""

    name: str
    shape: tuple[int, ...]
    type: str
    offset: int
    nbytes: int


class Cursor:
    """Reads little-endian GGUF values from `buffer`, starting at `at`, never past its end."""

    def __init__(self, buffer: mmap.mmap, path: Path, at: int = 0):
        self.buffer, self.path, self.at = buffer, path, at

    def take(self, n: int, what: str) -> int:
        """Step over the next `n` bytes and return where they start; GGUFError if the file ends first."""
        if self.at + n > len(self.buffer):
            raise GGUFError(f"{self.path}: truncated {what}: needs {n} bytes at offset {self.at}, "
                            f"but the file ends at {len(self.buffer)}")
        self.at += n
        return self.at - n

    def scalar(self, fmt: str, what: str) -> Any:
        """One value of struct format `fmt` (e.g. '<I')."""
        return struct.unpack_from(fmt, self.buffer, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        """A u64 length, then that many UTF-8 bytes."""
        start = self.take(self.scalar("<Q", what), what)
        try:
            return self.buffer[start:self.at].decode("utf-8")
        except UnicodeDecodeError as err:
            raise GGUFError(f"{self.path}: {what} at offset {start} is not UTF-8: {err}") from None

    def value(self, type_id: int, what: str) -> Any:
        """A metadata value of GGUF type `type_id`: a scalar, a string, or an array of them."""
        if type_id in VALUE_FORMATS:
            return self.scalar(VALUE_FORMATS[type_id], what)
        if type_id == STRING:
            return self.string(what)
        if type_id != ARRAY:
            raise GGUFError(f"{self.path}: {what} has unknown value type {type_id} (0 to 12)")
        item_type, n = self.scalar("<I", what), self.scalar("<Q", what)
        if item_type == ARRAY:
            raise GGUFError(f"{self.path}: {what} is an array of arrays, which GGUF metadata never holds")
        if n > len(self.buffer) - self.at:  # every element takes at least a byte
            raise GGUFError(f"{self.path}: truncated {what}: an array of {n} elements at offset "
                            f"{self.at}, but the file ends at {len(self.buffer)}")
        if item_type in VALUE_FORMATS:
            dtype = np.dtype(VALUE_FORMATS[item_type])
            return np.frombuffer(self.buffer, dtype, n, self.take(n * dtype.itemsize, what)).copy()
        return [self.value(item_type, what) for _ in range(n)]


class GGUFFile:
    """A memory-mapped GGUF file: `.metadata` (key -> value), `.tensors` (name -> TensorInfo), and
    `.tensor(name)`, the float32 values of one tensor."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            file = open(self.path, "rb")
        except OSError as err:
            raise GGUFError(f"{self.path}: cannot open it: {err.strerror}") from None
        with file:
            size = file.seek(0, 2)
            if size < 24:
                raise GGUFError(f"{self.path}: {size} bytes is too short for a GGUF header (24 bytes)")
            self._buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        if self._buffer[:4] != b"GGUF":
            raise GGUFError(f"{self.path}: not a GGUF file: it starts with {self._buffer[:4]!r}, not b'GGUF'")
        cursor = Cursor(self._buffer, self.path, at=4)
        self.version = cursor.scalar("<I", "header")
        if self.version not in (2, 3):
            hint = " (a big-endian file?)" if self.version >> 24 in (2, 3) else ""
            raise GGUFError(f"{self.path}: GGUF version {self.version}{hint} is not supported, only 2 and 3")
        n_tensors, n_kv = cursor.scalar("<Q", "header"), cursor.scalar("<Q", "header")
        for count, what, least in ((n_kv, "metadata entries", 13), (n_tensors, "tensors", 24)):
            if count * least > size:  # the smallest entry: an empty name, its type and its value or info
                raise GGUFError(f"{self.path}: the header promises {count} {what}, more than {size} bytes can hold")
        self.metadata = self._read_metadata(cursor, n_kv)
        self.tensors = self._read_tensor_infos(cursor, n_tensors)

    def _read_metadata(self, cursor: Cursor, n_kv: int) -> dict[str, Any]:
        """The n_kv (key, type, value) entries that follow the header."""
        metadata = {}
        for i in range(n_kv):
            key = cursor.string(f"metadata key #{i}")
            if key in metadata:
                raise GGUFError(f"{self.path}: metadata key {key!r} appears twice")
            metadata[key] = cursor.value(cursor.scalar("<I", f"metadata {key!r}"), f"metadata {key!r}")
        return metadata

    def _place(self, name: str, ne: list[int], type_id: int, start: int, misalignment: int) -> TensorInfo:
        """The TensorInfo of one tensor, after checking its type and that its bytes lie in the file."""
        if type_id not in GGML_TYPES:
            raise GGUFError(f"{self.path}: tensor {name!r} has unknown ggml type id {type_id}; expected one of "
                            f"ggml's {len(GGML_TYPES)} types (ids 0 to {max(GGML_TYPES)})")
        type_name, block, block_bytes = GGML_TYPES[type_id]
        shape = tuple(reversed(ne))
        if min(ne) == 0:
            raise GGUFError(f"{self.path}: tensor {name!r} has a dimension of 0 in {shape}")
        if ne[0] % block:
            raise GGUFError(f"{self.path}: tensor {name!r} ({type_name}) has rows of {ne[0]} elements, "
                            f"not a multiple of its block size {block}")
        if misalignment:
            raise GGUFError(f"{self.path}: tensor {name!r} starts {misalignment} bytes past an aligned offset")
        nbytes = math.prod(ne) // block * block_bytes
        if start + nbytes > len(self._buffer):
            raise GGUFError(f"{self.path}: tensor {name!r} ({type_name} {shape}) needs bytes {start} to "
                            f"{start + nbytes}, but the file has only {len(self._buffer)} bytes (truncated?)")
        return TensorInfo(name, shape, type_name, start, nbytes)

    def info(self, name: str) -> TensorInfo:
        """The TensorInfo of tensor `name`; GGUFError naming the closest names if there is none."""
        if name not in self.tensors:
            close = get_close_matches(name, self.tensors, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise GGUFError(f"{self.path}: no tensor {name!r} among its {len(self.tensors)}{hint}")
        return self.tensors[name]

    def release(self) -> None:
        """Drop the pages of the file read so far from this process's memory (madvise MADV_DONTNEED, where the
        system has it): they stay in the operating system's page cache and come back when touched again."""
        if hasattr(mmap, "MADV_DONTNEED"):
            self._buffer.madvise(mmap.MADV_DONTNEED)

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of tensor `name`, as a read-only uint8 view of the mapped file."""
        info = self.info(name)
        return np.frombuffer(self._buffer, np.uint8, info.nbytes, info.offset)

    def _read_tensor_infos(self, cursor: Cursor, n_tensors: int) -> dict[str, TensorInfo]:
        """The tensor infos, each placed in the aligned data section that follows them."""
        found = []
        for i in range(n_tensors):
            name = cursor.string(f"name of tensor #{i}")
            what = f"info of tensor {name!r}"
            n_dims = cursor.scalar("<I", what)
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError(f"{self.path}: tensor {name!r} has {n_dims} dimensions; GGUF allows 1 to {MAX_DIMS}")
            ne = [cursor.scalar("<Q", what) for _ in range(n_dims)]
            found.append((name, ne, cursor.scalar("<I", what), cursor.scalar("<Q", what)))
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"{self.path}: general.alignment must be a power of two, got {alignment!r}")
        data_start = -(-cursor.at // alignment) * alignment
        tensors = {}
        for name, ne, type_id, offset in found:
            if name in tensors:
                raise GGUFError(f"{self.path}: tensor {name!r} appears twice")
            tensors[name] = self._place(name, ne, type_id, data_start + offset, offset % alignment)
        check_disjoint(self.path, tensors.values())
        return tensors

    def tensor(self, name: str, out: np.ndarray | None = None, rows: slice = slice(None)) -> np.ndarray:
        """The float32 values of tensor `name` in numpy shape (for F32, a read-only view of the file); with
        `rows`, a slice of the first axis, only those rows; written into `out` when given (see `dequantize`)."""
        info = self.info(name)
        if info.type not in ("F32", "F16", "BF16", *KERNELS):
            raise GGUFError(f"{self.path}: tensor {name!r} has type {info.type} (id {TYPE_IDS[info.type]}), "
                            f"which kuiper cannot dequantize; supported: F32, F16, BF16, {', '.join(KERNELS)}")
        raw, shape = self.raw(name), info.shape
        if rows != slice(None):
            raw = raw.reshape(shape[0], -1)[rows]  # (rows, bytes per row): a view, strided when rows.step > 1
            shape = (len(raw), *shape[1:])
        return dequantize(raw, info.type, shape, out)


def check_disjoint(path: Path, infos: Any) -> None:
    """GGUFError if the bytes of two tensors overlap: each would read the other's data."""
    previous = None
    for info in sorted(infos, key=lambda info: (info.offset, info.nbytes)):
        if previous is not None and info.offset < previous.offset + previous.nbytes:
            raise GGUFError(f"{path}: tensors {previous.name!r} (bytes {previous.offset} to "
                            f"{previous.offset + previous.nbytes}) and {info.name!r} (from byte {info.offset}) overlap")
        previous = info


@njit(cache=True)
def half_to_float(low: int, high: int) -> np.float32:
    """The IEEE half-precision number whose little-endian bytes are `low`, `high`, as float32."""
    bits = int(low) | int(high) << 8
    sign = -1.0 if bits & 0x8000 else 1.0
    exponent, fraction = bits >> 10 & 0x1F, bits & 0x3FF
    if exponent == 0x1F:
        return np.float32(sign * np.inf if fraction == 0 else np.nan)
    if exponent == 0:
        return np.float32(sign * math.ldexp(fraction, -24))
    return np.float32(sign * math.ldexp(fraction + 0x400, exponent - 25))


@njit(parallel=True, cache=True)
def dequantize_q8_0(blocks: np.ndarray, out: np.ndarray) -> None:
    """Q8_0 blocks (n, 34 bytes: f16 scale d, 32 int8 q) into out (n, 32) float32: d * q."""
    for i in prange(blocks.shape[0]):
        d = half_to_float(blocks[i, 0], blocks[i, 1])
        for j in range(32):
            q = int(blocks[i, 2 + j])
            out[i, j] = d * np.float32(q - 256 if q >= 128 else q)


@njit(parallel=True, cache=True)
def dequantize_q4_1(blocks: np.ndarray, out: np.ndarray) -> None:
    """Q4_1 blocks (n, 20 bytes: f16 d, f16 m, 32 packed 4-bit q) into out (n, 32) float32: d * q + m."""
    for i in prange(blocks.shape[0]):
        d = half_to_float(blocks[i, 0], blocks[i, 1])
        m = half_to_float(blocks[i, 2], blocks[i, 3])
        for j in range(16):
            byte = blocks[i, 4 + j]
            out[i, j] = d * np.float32(byte & 0x0F) + m
            out[i, j + 16] = d * np.float32(byte >> 4) + m


@njit(parallel=True, cache=True)
def dequantize_q4_0(blocks: np.ndarray, out: np.ndarray) -> None:
    """Q4_0 blocks (n, 18 bytes: f16 d, 32 packed 4-bit q) into out (n, 32) float32: d * (q - 8)."""
    for i in prange(blocks.shape[0]):
        d = half_to_float(blocks[i, 0], blocks[i, 1])
        for j in range(16):
            byte = int(blocks[i, 2 + j])
            out[i, j] = d * np.float32((byte & 0x0F) - 8)
            out[i, j + 16] = d * np.float32((byte >> 4) - 8)


#: The block quantizations kuiper decodes: ggml type name -> kernel(blocks, out).
KERNELS = {"Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1, "Q8_0": dequantize_q8_0}


def dequantize(raw: np.ndarray, ggml_type: str, shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """The float32 values of a tensor stored as `ggml_type` in the bytes `raw`, in numpy `shape`: written
    into `out` (C-contiguous float32 of that shape) when given, else a new array, or for F32 a view of `raw`.
    ShapeError if `out` is not such an array."""
    if out is not None and (out.shape != tuple(shape) or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ShapeError(f"dequantize: out must be C-contiguous float32 of shape {tuple(shape)}, "
                         f"got {out.dtype} {out.shape}")
    if ggml_type == "F32" and out is None:
        return raw.view("<f4").reshape(shape)
    out = np.empty(shape, np.float32) if out is None else out
    if ggml_type in ("F32", "F16"):
        out[...] = raw.view("<f4" if ggml_type == "F32" else "<f2").reshape(shape)
    elif ggml_type == "BF16":
        np.left_shift(raw.view("<u2").reshape(shape), 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        _, block, block_bytes = GGML_TYPES[TYPE_IDS[ggml_type]]
        KERNELS[ggml_type](raw.reshape(-1, block_bytes), out.reshape(-1, block))
    return out
