# Generated from solutions/11_llama.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import math
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic


@njit(fastmath=True, error_model="numpy", cache=True)  # numpy: x / 0 is inf, never an exception
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


@njit(fastmath=True, error_model="numpy", cache=True)
def swiglu(gate_up: np.ndarray) -> np.ndarray:
    """SiLU(gate) · up for the fused projection [gate | up] (T, 2F): (T, F)."""
    half = gate_up.shape[1] // 2
    out = np.empty((gate_up.shape[0], half), np.float32)
    for t in range(gate_up.shape[0]):
        for i in range(half):
            gate = gate_up[t, i]
            out[t, i] = gate / (np.float32(1.0) + np.exp(-gate)) * gate_up[t, half + i]
    return out


def matmul(x: np.ndarray, w: Any) -> np.ndarray:
    """x (T, K) times a weight w (N, K) stored as PyTorch stores it: x @ w.T, (T, N)."""
    if not isinstance(w, np.ndarray):
        return w.matmul(x)
    if x.shape[0] != 1:
        return x @ w.T
    out = np.empty((1, w.shape[0]), np.float32)
    _matvec(w, np.ascontiguousarray(x[0]), out[0])
    return out


def rope_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> np.ndarray:
    """θ_i = theta^(-2i/d) for each of the head_dim/2 pairs, scaled as transformers' rope_type says:
    linear divides every θ_i by `factor`; dynamic (NTK) changes nothing up to the model's context,
    which bounds our cache; llama3 divides only the long wavelengths (Meta's Llama 3.1 formula)."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = scaling.get("rope_type", scaling.get("type")) if scaling else None
    if kind == "linear":
        inv = inv / scaling["factor"]
    if kind == "yarn":
        inv = yarn_frequencies(inv, head_dim, theta, scaling)
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelength = 2 * math.pi / inv
        smooth = np.clip((old / wavelength - low) / (high - low), 0.0, 1.0)
        inv = (1 - smooth) * inv / factor + smooth * inv
    return inv


def yarn_frequencies(inv: np.ndarray, head_dim: int, theta: float, scaling: dict[str, Any]) -> np.ndarray:
    """YaRN's θ_i (Peng et al. 2023, as transformers' _compute_yarn_parameters): θ_i / factor for the
    pairs that turn fewer than beta_slow times in the original context, θ_i for those that turn more
    than beta_fast times, a linear ramp over the pair index between."""
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]

    def pair_turning(rotations: float) -> float:  # the pair index that turns `rotations` times in `original`
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_turning(scaling.get("beta_fast") or 32), pair_turning(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    ramp = np.clip((np.arange(head_dim // 2) - low) / ((high + 0.001 if low == high else high) - low), 0.0, 1.0)
    return inv / factor * ramp + inv * (1 - ramp)


def rope_attention_factor(scaling: dict[str, Any] | None) -> float:
    """The factor YaRN multiplies cos and sin by (its attention_factor, else 0.1·ln(factor) + 1, or
    the ratio of two such with mscale and mscale_all_dim); 1 for every other scaling."""
    if not scaling or scaling.get("rope_type", scaling.get("type")) != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return scaling["attention_factor"]

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    factor, m, m_all = scaling["factor"], scaling.get("mscale"), scaling.get("mscale_all_dim")
    return mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)


def rope_tables(head_dim: int, theta: float, positions: int, scaling: dict[str, Any] | None = None,
                factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos(mθ_i) and sin(mθ_i), float32 (positions, head_dim/2), times YaRN's attention factor;
    `factors` divide θ_i (GGUF's rope_freqs)."""
    inv = rope_frequencies(head_dim, theta, scaling)
    if factors is not None:
        inv = inv / factors
    angles = np.outer(np.arange(positions, dtype=np.float64), inv)
    scale = rope_attention_factor(scaling)
    return (scale * np.cos(angles)).astype(np.float32), (scale * np.sin(angles)).astype(np.float32)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Queries or keys x (T, H, d) rotated by RoPE; cos and sin (T, d/2) are those of the T positions."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def causal_attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int) -> np.ndarray:
    """Causal attention of T new queries (T, H, d) at positions pos… over the first pos+T cached keys and values."""
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


@njit(fastmath=True, error_model="numpy", cache=True)
def _attention_one(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int, out: np.ndarray) -> None:
    """Attention of one token's queries q (H, d) at position `pos` over the caches (KV, S, d), into out (H, d)."""
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
        out[h] = 0.0
        for j in range(pos + 1):  # row by row: each cached value row is read in order, once
            for i in range(dim):
                out[h, i] += scores[j] * values[j, i]


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int) -> np.ndarray:
    """Causal attention of T new queries (T, H, d) over the KV cache: numba for one token, BLAS for more."""
    if q.shape[0] != 1:
        return causal_attention(q, k_cache, v_cache, pos)
    out = np.empty_like(q)
    _attention_one(q[0], k_cache, v_cache, pos, out[0])
    return out


ALIGN = 64  # bytes: a cache line


def pack(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Copies of `arrays` (any shapes and dtypes) in one buffer, in order, each C-contiguous and starting
    on an ALIGN-byte boundary: one stream for the prefetcher, 2 MB pages for a large buffer."""
    offsets, size = [], 0
    for a in arrays:
        size = -(-size // ALIGN) * ALIGN
        offsets.append(size)
        size += a.nbytes
    buffer = np.empty(size + ALIGN, np.uint8)
    start = -buffer.ctypes.data % ALIGN
    copies = []
    for a, offset in zip(arrays, offsets):
        view = buffer[start + offset:start + offset + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        copies.append(view)
    return copies


@intrinsic
def prefetch(typingctx, array, offset):
    """Ask the CPU to bring the cache line holding byte `offset` of `array`'s data (C order) into its caches,
    without waiting for it (LLVM's llvm.prefetch: read, keep in all levels). Never faults; returns nothing."""
    byte_ptr = ir.IntType(8).as_pointer()

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.gep(builder.bitcast(data, byte_ptr), [args[1]])
        i32 = ir.IntType(32)
        llvm_prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), "llvm.prefetch.p0i8")
        builder.call(llvm_prefetch, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    if isinstance(array, types.Array) and isinstance(offset, types.Integer):
        return types.void(array, offset), codegen
    return None


MATVEC_PREFETCH_ROWS = 4  # how many float32 rows below the one it sums `_matvec` prefetches


@njit(parallel=True, fastmath=True, cache=True)
def _matvec(w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out (N,) = w (N, K) @ x (K,), float32, w C-contiguous; before summing row i, every cache line of row
    i + MATVEC_PREFETCH_ROWS is prefetched (no prefetch past the last byte of w)."""
    n_rows, k = w.shape
    row_bytes, last_byte = 4 * k, 4 * w.size - 1
    for i in prange(n_rows):
        ahead = (i + MATVEC_PREFETCH_ROWS) * row_bytes  # the first byte of the row prefetched
        for line in range(0, row_bytes, 64):
            prefetch(w, min(ahead + line, last_byte))
        total = np.float32(0.0)
        for j in range(k):
            total += w[i, j] * x[j]
        out[i] = total
