# Generated from solutions/14_int8.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange, uint64

from kuiper.errors import DTypeError, ShapeError
from kuiper.llm.gguf import dequantize as dequantize_gguf, GGUFFile
from kuiper.llm.model import fuse, LINEAR_WEIGHTS, Llama, model_from_gguf, rope_runs
from kuiper.llm.ops import pack, prefetch
from kuiper.llm.tokenizer import load_tokenizer, Tokenizer


def round_half_away(v: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves away from zero, like C's roundf (np.round picks the even one)."""
    a = np.abs(v)
    whole = np.floor(a)
    return np.copysign(whole + (a - whole >= 0.5), v)


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A weight matrix (N, K) as int8 `q` (N, K) and float32 `scales` (N, K // group): w ≈ q * scale."""

    q: np.ndarray
    scales: np.ndarray
    group: int

    def __post_init__(self) -> None:
        if self.q.dtype != np.int8 or self.scales.dtype != np.float32:
            raise DTypeError(f"QuantizedWeight: q must be int8 and scales float32, got {self.q.dtype} "
                             f"and {self.scales.dtype}")
        if self.q.ndim != 2:
            raise ShapeError(f"QuantizedWeight: q must be a matrix (N, K), got shape {self.q.shape}")
        n, k = self.q.shape
        if self.group <= 0 or k % self.group or self.scales.shape != (n, k // self.group):
            raise ShapeError(f"QuantizedWeight: q {self.q.shape} with group {self.group} needs scales of "
                             f"shape ({n}, K / group), got {self.scales.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        """(N, K), the shape of the float matrix it stands for."""
        return self.q.shape

    @property
    def nbytes(self) -> int:
        """Bytes of int8 weights plus scales."""
        return self.q.nbytes + self.scales.nbytes

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """x (T, K) @ w.T -> (T, N): what `kuiper.llm.ops.matmul` calls for a weight that is not an array."""
        return qmatmul(x, self)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """The float32 rows (T, K) of token ids `rows` (T,): an embedding lookup on an int8 table."""
        return dequantize(QuantizedWeight(self.q[rows], self.scales[rows], self.group))


def dequantize(qw: QuantizedWeight) -> np.ndarray:
    """The float32 matrix (N, K) that `qw` stands for: every weight times its group's scale."""
    n, k = qw.shape
    return (qw.q.reshape(n, -1, qw.group) * qw.scales[:, :, None]).reshape(n, k)


def quantize(w: np.ndarray, group: int = 64) -> QuantizedWeight:
    """Symmetric int8 quantization of `w` (N, K) with one float32 scale per `group` consecutive inputs.

    The int8 values equal llama.cpp's Q8_0 ones at group 32 (`to_q8_0` then rounds the scales to float16)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2 or group <= 0 or w.shape[1] % group:
        raise ShapeError(f"quantize: expected a 2-D weight (N, K) with K a multiple of group {group}, "
                         f"got shape {w.shape}")
    n, k = w.shape
    blocks = w.reshape(n, k // group, group)
    scales = np.abs(blocks).max(axis=-1) / np.float32(127)
    inverse = np.divide(np.float32(1), scales, out=np.zeros_like(scales), where=scales > 0)
    q = np.clip(round_half_away(blocks * inverse[:, :, None]), -127, 127).astype(np.int8)
    return QuantizedWeight(q.reshape(n, k), scales, group)


Q8_0_BLOCK = 32


def to_q8_0(qw: QuantizedWeight) -> np.ndarray:
    """The Q8_0 bytes of a group-32 weight: uint8 (N, K // 32 * 34), each block a float16 scale then 32 int8."""
    if qw.group != Q8_0_BLOCK:
        raise ShapeError(f"to_q8_0: Q8_0 has groups of {Q8_0_BLOCK} weights, got group {qw.group}")
    n, k = qw.shape
    scales = qw.scales.astype(np.float16).view(np.uint8).reshape(n, -1, 2)
    return np.concatenate([scales, qw.q.view(np.uint8).reshape(n, -1, Q8_0_BLOCK)], axis=2).reshape(n, -1)


def from_q8_0(blocks: np.ndarray, shape: tuple[int, int]) -> QuantizedWeight:
    """The weight (N, K) = `shape` stored as Q8_0 bytes `blocks` (N * K // 32 blocks of 34 bytes)."""
    n, k = shape
    if k % Q8_0_BLOCK or blocks.size != n * k // Q8_0_BLOCK * 34:
        raise ShapeError(f"from_q8_0: a ({n}, {k}) Q8_0 weight needs K a multiple of 32 and "
                         f"{n * k // Q8_0_BLOCK * 34} bytes, got {blocks.size}")
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(n, k // Q8_0_BLOCK, 34)
    scales = blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    return QuantizedWeight(blocks[:, :, 2:].copy().view(np.int8).reshape(n, k), scales, Q8_0_BLOCK)


@njit(fastmath=True, cache=True)
def group_dot(x, q, scale):
    """One group's share of an output: (x · q) * scale for x float32 (g,) and q int8 (g,)."""
    acc = np.float32(0.0)
    for j in range(q.size):
        acc += x[j] * np.float32(q[j])
    return acc * scale


@njit(parallel=True, fastmath=True, cache=True)
def qmatvec_kernel(x, q, scales, out):
    """out[n] = Σ_g scales[n, g] * (x_g · q[n, g]): x (K,) float32, q (N, K) int8, scales (N, G)."""
    n_rows, k = q.shape
    n_groups = scales.shape[1]
    x_groups = x.reshape(n_groups, k // n_groups)
    q_groups = q.reshape(n_rows, n_groups, k // n_groups)
    for n in prange(n_rows):
        total = np.float32(0.0)
        for g in range(n_groups):
            total += group_dot(x_groups[g], q_groups[n, g], scales[n, g])
        out[n] = total


ROWS_PER_BLOCK = 16


@njit(fastmath=True, cache=True)
def widen_row(q, scales, out):
    """out (K,) float32 = the int8 row q (K,) times the scale of each group."""
    group = q.size // scales.size
    for g in range(scales.size):
        start = g * group
        for j in range(group):  # range(start, start + group) would not vectorize
            out[start + j] = np.float32(q[start + j]) * scales[g]


@njit(parallel=True, fastmath=True, cache=True)
def qmatmul_kernel(x, q, scales, out):
    """out = x @ dequantize(q, scales).T for x (T, K): blocks of rows widened once, reused by every token."""
    n_tokens, k = x.shape
    n_rows = q.shape[0]
    for block in prange((n_rows + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK):
        first = block * ROWS_PER_BLOCK
        rows = min(ROWS_PER_BLOCK, n_rows - first)
        w = np.empty((rows, k), np.float32)
        for r in range(rows):
            widen_row(q[first + r], scales[first + r], w[r])
        for t in range(n_tokens):
            xt = x[t]
            for r in range(rows):
                wr = w[r]
                acc = np.float32(0.0)
                for j in range(k):
                    acc += xt[j] * wr[j]
                out[t, first + r] = acc


PREFETCH_ROWS = 8  # how far below the rows being computed the kernels prefetch


@njit(parallel=True, fastmath=True, cache=True)
def qmatvec_pairs_kernel(x, q, scales, out):
    """`qmatvec_kernel`'s result for groups of a multiple of 32 weights: rows in pairs sharing each load of x
    (an odd last row with itself), 32 weights at a time, the pair PREFETCH_ROWS rows below prefetched."""
    n_rows, k = q.shape
    n_groups = scales.shape[1]
    chunks = k // n_groups // 32  # chunks of 32 weights in a group
    last_byte = q.size - 1
    for pair in prange((n_rows + 1) // 2):
        n = 2 * pair
        m = min(n + 1, n_rows - 1)  # the odd last row pairs with itself
        ahead = (n + PREFETCH_ROWS) * k  # the first byte of the pair PREFETCH_ROWS rows below
        total0, total1 = np.float32(0.0), np.float32(0.0)
        for g in range(n_groups):
            acc0, acc1 = np.float32(0.0), np.float32(0.0)
            for chunk in range(chunks):
                start = (g * chunks + chunk) * 32
                prefetch(q, min(ahead + 2 * start, last_byte))  # 64 bytes per chunk: both rows below
                for j in range(32):
                    acc0 += x[start + j] * np.float32(q[n, start + j])
                    acc1 += x[start + j] * np.float32(q[m, start + j])
            total0 += acc0 * scales[n, g]
            total1 += acc1 * scales[m, g]
        out[n] = total0
        out[m] = total1


BLAS_TOKENS = 16
BLAS_BYTES = 16 * 2**20  # float32 widened at a time: each of SmolLM2's layer matrices in one piece


@njit(fastmath=True, cache=True)
def widen_rows(q, scales, out):
    """out (n, K) float32 = the int8 rows q (n, K) times their scales (n, G).

    One thread: OpenBLAS's threads, about to multiply the block, would fight numba's for the cores."""
    for n in range(q.shape[0]):
        widen_row(q[n], scales[n], out[n])


def qmatvec(x: np.ndarray, qw: QuantizedWeight) -> np.ndarray:
    """x (K,) @ dequantize(qw).T -> (N,) float32, reading only the int8 weights and their scales."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape != (qw.shape[1],):
        raise ShapeError(f"qmatvec: expected x of shape ({qw.shape[1]},) for a weight {qw.shape}, got {x.shape}")
    out = np.empty(qw.shape[0], np.float32)
    kernel = qmatvec_pairs_kernel if qw.group % 32 == 0 else qmatvec_kernel  # the pairs walk 32 weights at a time
    kernel(x, qw.q, qw.scales, out)
    return out


def qmatmul(x: np.ndarray, qw: QuantizedWeight) -> np.ndarray:
    """x (T, K) @ dequantize(qw).T -> (T, N) float32, never building the whole float32 matrix."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != qw.shape[1]:
        raise ShapeError(f"qmatmul: expected x of shape (T, {qw.shape[1]}) for a weight {qw.shape}, got {x.shape}")
    n_tokens, (n_rows, k) = x.shape[0], qw.shape
    if n_tokens == 1:
        return qmatvec(x[0], qw)[None]
    out = np.empty((n_tokens, n_rows), np.float32)
    if n_tokens < BLAS_TOKENS:
        qmatmul_kernel(x, qw.q, qw.scales, out)
        return out
    rows = max(1, BLAS_BYTES // (4 * k))
    buffer = np.empty((min(rows, n_rows), k), np.float32)
    for first in range(0, n_rows, rows):
        last = min(first + rows, n_rows)
        w = buffer[:last - first]
        widen_rows(qw.q[first:last], qw.scales[first:last], w)
        out[:, first:last] = x @ w.T
    return out


def gguf_value_type(value: object, gguf):
    """The GGUF type of a plain Python metadata value (ints are UINT32 when they fit, as llama.cpp expects)."""
    types = gguf.GGUFValueType
    if isinstance(value, bool):
        return types.BOOL
    if isinstance(value, int):
        return types.UINT32 if 0 <= value < 2**32 else types.INT64
    return gguf.GGUFValueType.get_type(value)


def save_q8_0_gguf(path: str | Path, tensors: dict[str, np.ndarray | QuantizedWeight], metadata: dict) -> None:
    """Write a GGUF file: 2-D weights (and group-32 QuantizedWeights) as Q8_0, everything else float32.

    Needs the `gguf` package. `general.file_type` and `general.quantization_version` are set to Q8_0's."""
    import gguf

    metadata = dict(metadata)
    arch = metadata.pop("general.architecture", "llama")
    writer = gguf.GGUFWriter(str(path), arch[0] if isinstance(arch, tuple) else arch)
    for key, value in metadata.items():
        if key.startswith("GGUF.") or key in ("general.file_type", "general.quantization_version"):
            continue
        value, vtype, *item_type = value if isinstance(value, tuple) else (value, gguf_value_type(value, gguf))
        writer.add_key_value(key, value, vtype, *item_type)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, tensor in tensors.items():
        if isinstance(tensor, QuantizedWeight) and tensor.group != Q8_0_BLOCK:
            raise ShapeError(f"{path}: tensor {name!r} has groups of {tensor.group} weights, Q8_0 needs {Q8_0_BLOCK}")
        if isinstance(tensor, QuantizedWeight) or (tensor.ndim == 2 and tensor.shape[1] % Q8_0_BLOCK == 0):
            qw = tensor if isinstance(tensor, QuantizedWeight) else quantize(tensor, Q8_0_BLOCK)
            writer.add_tensor(name, to_q8_0(qw), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, np.ascontiguousarray(tensor, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize_gguf(source: str | Path, out: str | Path, group: int = Q8_0_BLOCK) -> None:
    """Write the GGUF model `source` as a Q8_0 GGUF file `out`: same metadata and tensors, 2-D weights in Q8_0.

    Needs the `gguf` package. Only group 32 exists as a GGUF type."""
    import gguf

    if group != Q8_0_BLOCK:
        raise ShapeError(f"{out}: GGUF stores int8 weights as Q8_0, groups of {Q8_0_BLOCK} weights, not {group}; "
                         f"to run with groups of {group}, keep {source} and pass `--int8 {group}` at run time")
    file = GGUFFile(source)
    metadata = {name: (field.contents(), *field.types)
                for name, field in gguf.GGUFReader(source).fields.items() if not name.startswith("GGUF.")}
    tensors = {}
    for name in file.tensors:
        w = file.tensor(name)
        tensors[name] = quantize(w, Q8_0_BLOCK) if w.ndim == 2 and w.shape[1] % Q8_0_BLOCK == 0 else w
    save_q8_0_gguf(out, tensors, metadata)


def quantize_conv(weight: np.ndarray) -> np.ndarray:
    """A convolution or linear weight (O, ...) quantized to int8 per output channel and back, as float32."""
    flat = np.asarray(weight, dtype=np.float32).reshape(weight.shape[0], -1)
    return dequantize(quantize(flat, flat.shape[1])).reshape(weight.shape)


def packed_weights(weights: list[QuantizedWeight]) -> list[QuantizedWeight]:
    """The same weights with every `q` and `scales` copied into one buffer in this order (lesson 11's
    `pack`), so that a decode step streams one block of memory, as the float32 model does."""
    arrays = pack([a for w in weights for a in (w.q, w.scales)])
    return [QuantizedWeight(q, scales, w.group) for w, q, scales in zip(weights, arrays[::2], arrays[1::2])]


def quantize_model(model: Llama, group: int = 64) -> Llama:
    """A copy of `model` whose linear weights and output head are int8 (`group` weights per scale).

    The embedding and the norms are shared with `model`, in float32; the copy has its own KV cache."""
    for name in LINEAR_WEIGHTS:
        k = getattr(model.blocks[0], name).shape[1]
        if k % group:
            divisors = [g for g in (32, 64, 128) if k % g == 0]
            raise ShapeError(f"quantize_model: {name} has K = {k} inputs, not a multiple of group {group}; "
                             f"this model takes groups {divisors}")
    weights = packed_weights([quantize(getattr(block, name), group) for block in model.blocks
                              for name in LINEAR_WEIGHTS] + [quantize(model.head, group)])
    quantized, per_block = copy.copy(model), len(LINEAR_WEIGHTS)
    quantized.blocks = [dataclasses.replace(block, **dict(zip(LINEAR_WEIGHTS, weights[i * per_block:(i + 1) * per_block])))
                        for i, block in enumerate(model.blocks)]
    quantized.head = weights[-1]
    quantized.k_cache, quantized.v_cache = np.zeros_like(model.k_cache), np.zeros_like(model.v_cache)
    return quantized


#: Every IEEE half as float32, indexed by its 16 bits: a block's scale is one load.
HALVES = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


@njit(cache=True)
def half(halves, row, at):
    """The float32 value of the float16 whose little-endian bytes are row[at], row[at + 1]."""
    return halves[np.int64(row[at]) | np.int64(row[at + uint64(1)]) << 8]


@njit(parallel=True, fastmath=True, cache=True)
def q4_1_matvec_kernel(x, blocks, halves, out):
    """out[n] = Σ_b d_nb (x_b · q_nb) + m_nb Σ x_b: x (K,) float32, blocks (N, K // 32 * 20) uint8 Q4_1 rows,
    two rows at a time sharing each load of x (an odd last row with itself), the pair PREFETCH_ROWS below prefetched."""
    n_blocks = uint64(x.size // 32)
    sums = np.zeros(n_blocks, np.float32)
    for b in range(n_blocks):
        for j in range(uint64(32)):
            sums[b] += x[uint64(32) * b + j]
    n_rows, row_bytes = blocks.shape
    last_byte = uint64(blocks.size - 1)
    for pair in prange((n_rows + 1) // 2):
        n, m = 2 * pair, min(2 * pair + 1, n_rows - 1)  # the odd last row pairs with itself
        row0, row1 = blocks[n], blocks[m]
        ahead = uint64((n + PREFETCH_ROWS) * row_bytes)  # the first byte of the pair PREFETCH_ROWS rows below
        total0, total1 = np.float32(0.0), np.float32(0.0)
        for b in range(n_blocks):
            at, xb = uint64(20) * b, uint64(32) * b
            prefetch(blocks, min(ahead + uint64(2) * at, last_byte))
            acc0, acc1 = np.float32(0.0), np.float32(0.0)
            for j in range(uint64(16)):
                low, high = x[xb + j], x[xb + uint64(16) + j]
                byte0, byte1 = row0[at + uint64(4) + j], row1[at + uint64(4) + j]
                acc0 += low * np.float32(byte0 & 0x0F) + high * np.float32(byte0 >> 4)
                acc1 += low * np.float32(byte1 & 0x0F) + high * np.float32(byte1 >> 4)
            total0 += half(halves, row0, at) * acc0 + half(halves, row0, at + uint64(2)) * sums[b]
            total1 += half(halves, row1, at) * acc1 + half(halves, row1, at + uint64(2)) * sums[b]
        out[n], out[m] = total0, total1


Q4_1_BLOCK_BYTES = 20


@dataclass(frozen=True, eq=False)
class Q4_1Weight:
    """A weight matrix (N, K) kept as GGUF Q4_1 blocks: `blocks` uint8 (N, K // 32 * 20), often a view of the file."""

    blocks: np.ndarray

    def __post_init__(self) -> None:
        if self.blocks.dtype != np.uint8 or self.blocks.ndim != 2 or self.blocks.shape[1] % Q4_1_BLOCK_BYTES:
            raise ShapeError(f"Q4_1Weight: expected uint8 blocks (N, K // 32 * {Q4_1_BLOCK_BYTES}), "
                             f"got {self.blocks.dtype} {self.blocks.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        """(N, K), the shape of the float matrix it stands for."""
        return self.blocks.shape[0], self.blocks.shape[1] // Q4_1_BLOCK_BYTES * 32

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks."""
        return self.blocks.nbytes

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """x (T, K) @ w.T -> (T, N) float32: fewer than BLAS_TOKENS tokens through `q4_1_matvec_kernel`, more
        through lesson 09's `dequantize` of BLAS_BYTES of float32 rows at a time and BLAS; ShapeError if x is not (T, K)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        (n, k), tokens = self.shape, len(x)
        if x.ndim != 2 or x.shape[1] != k:
            raise ShapeError(f"Q4_1Weight.matmul: expected x of shape (T, {k}) for a weight {self.shape}, got {x.shape}")
        out = np.empty((tokens, n), np.float32)
        if tokens < BLAS_TOKENS:  # a few tokens: the matrix-vector kernel for each, as fast as a widening
            for t in range(tokens):
                q4_1_matvec_kernel(x[t], self.blocks, HALVES, out[t])
            return out
        step = max(1, BLAS_BYTES // (4 * k))  # rows widened at a time
        for first in range(0, n, step):
            rows = self.blocks[first:first + step]
            out[:, first:first + len(rows)] = x @ dequantize_gguf(rows, "Q4_1", (len(rows), k)).T
        return out

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """The float32 rows (T, K) of token ids `rows` (T,): an embedding lookup."""
        blocks = self.blocks[rows]
        return dequantize_gguf(blocks, "Q4_1", (len(blocks), self.shape[1]))


def block_matrix(file: GGUFFile, get: Any, layer: int | None, parts: list[tuple[str, int | None]]) -> Any:
    """The `matrix` of lesson 11's `model_from_gguf` that keeps the file's blocks: Q4_1 as a Q4_1Weight over
    the mapped bytes, Q8_0 as a group-32 QuantizedWeight (`from_q8_0`), any other type (or parts of mixed
    types) in float32 (`fuse`). Stacked parts and GGUF's RoPE order (`rope_runs`) copy rows of blocks, never floats."""
    infos = [file.tensors[get.check(name, layer)] for name, _ in parts]
    kind = infos[0].type
    if kind not in ("Q4_1", "Q8_0") or any(info.type != kind for info in infos):
        return fuse(get, layer, parts)
    runs = [file.raw(info.name).reshape(info.shape[0], -1)[stored]
            for info, (_, heads) in zip(infos, parts) for _, stored in rope_runs(info.shape[0], heads)]
    blocks = runs[0] if len(runs) == 1 else np.concatenate(runs)
    return Q4_1Weight(blocks) if kind == "Q4_1" else from_q8_0(blocks, (len(blocks), infos[0].shape[1]))


def load_gguf_blocks(path: str | Path, max_seq_len: int = 2048) -> tuple[Llama, Tokenizer | None]:
    """The model of a .gguf file with its Q4_1 and Q8_0 matrices kept quantized (`block_matrix`), and its
    tokenizer: what `--weights gguf` runs. GGUFError as lesson 11's loader raises them."""
    file = GGUFFile(path)
    return model_from_gguf(file, max_seq_len, partial(block_matrix, file)), load_tokenizer(file.metadata)
