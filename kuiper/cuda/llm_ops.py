# Generated from solutions/13_cuda.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np

from kuiper.cuda import cuda_c
from kuiper.cuda.device import array_module
from kuiper.cuda.kernels import (
    argmax_kernel,
    attention_kernel,
    block_threads,
    blocks_for,
    embedding_kernel,
    matvec_kernel,
    rmsnorm_kernel,
    rope_kernel,
    softmax_kernel,
    swiglu_kernel,
)
from kuiper.errors import LayerError, ShapeError


MATMUL_METHODS = ("cublas", "matvec", "sgemv_f32x4")


def contiguous(a):
    """`a` with its elements in one row-major block (a kernel indexes memory, not strides): a copy only if needed."""
    return array_module(a).ascontiguousarray(a)


def expect(ok: bool, message: str) -> None:
    """ShapeError(message) unless ok."""
    if not ok:
        raise ShapeError(message)


def rmsnorm(x, weight, eps: float):
    """x / sqrt(mean(x²) + eps) * weight over the last axis of x (T, D): one block per row."""
    expect(weight.shape == x.shape[-1:], f"rmsnorm: weight {weight.shape} for x {x.shape}, expected ({x.shape[-1]},)")
    rows = contiguous(x).reshape(-1, x.shape[-1])
    out = array_module(x).empty_like(rows)
    rmsnorm_kernel[rows.shape[0], block_threads(rows.shape[1])](rows, weight, np.float32(eps), out)
    return out.reshape(x.shape)


def softmax(x):
    """Softmax over the last axis, with max subtraction: one block per row."""
    rows = contiguous(x).reshape(-1, x.shape[-1])
    out = array_module(x).empty_like(rows)
    softmax_kernel[rows.shape[0], block_threads(rows.shape[1])](rows, out)
    return out.reshape(x.shape)


def rope(x, cos, sin):
    """Rotate-half RoPE of x (T, H, hd) with the cos, sin (T, hd/2) of its T positions."""
    expect(x.ndim == 3 and x.shape[2] % 2 == 0, f"rope: x should be (T, H, even hd), got {x.shape}")
    want = (x.shape[0], x.shape[2] // 2)
    expect(cos.shape == want and sin.shape == want, f"rope: cos {cos.shape}, sin {sin.shape}, expected {want}")
    x = contiguous(x)
    out = array_module(x).empty_like(x)
    pairs = x.size // 2
    threads = block_threads(pairs)
    rope_kernel[blocks_for(pairs, threads), threads](x, cos, sin, out)
    return out


def attention(q, k_cache, v_cache, pos: int):
    """Causal grouped-query attention of q (T, H, hd) at positions pos.. over caches (KV, S, hd)."""
    n_tokens, n_heads, head_dim = q.shape
    expect(k_cache.shape == v_cache.shape and k_cache.ndim == 3 and k_cache.shape[2] == head_dim,
           f"attention: k_cache {k_cache.shape} and v_cache {v_cache.shape} should both be (KV, S, {head_dim})")
    expect(n_heads % k_cache.shape[0] == 0, f"attention: {n_heads} query heads for {k_cache.shape[0]} KV heads")
    expect(0 <= pos and pos + n_tokens <= k_cache.shape[1],
           f"attention: positions {pos}..{pos + n_tokens - 1} outside a cache of {k_cache.shape[1]}")
    xp, q = array_module(q), contiguous(q)
    scores = xp.empty((n_tokens, n_heads, pos + n_tokens), np.float32)
    out = xp.empty_like(q)
    attention_kernel[(n_heads, n_tokens), block_threads(max(pos + n_tokens, head_dim))](
        q, k_cache, v_cache, pos, scores, out)
    return out


def swiglu(gate_up):
    """silu(gate) * up for gate_up (T, 2F) = [gate | up] -> (T, F)."""
    expect(gate_up.ndim == 2 and gate_up.shape[1] % 2 == 0, f"swiglu: expected (T, 2F), got {gate_up.shape}")
    out = array_module(gate_up).empty((gate_up.shape[0], gate_up.shape[1] // 2), np.float32)
    threads = block_threads(out.size)
    swiglu_kernel[blocks_for(out.size, threads), threads](gate_up, out)
    return out


def matmul(x, w, method: str = "cublas"):
    """x (T, K) @ w.T for a weight w (N, K) in PyTorch layout -> (T, N)."""
    expect(x.ndim == 2 and w.ndim == 2 and x.shape[1] == w.shape[1],
           f"matmul: x {x.shape} and weight {w.shape} should be (T, K) and (N, K)")
    if method == "cublas":
        return x @ w.T
    if method == "sgemv_f32x4":
        return cuda_c.sgemv(x, w)
    if method != "matvec":
        raise LayerError(f"matmul: unknown method {method!r}, expected one of {', '.join(MATMUL_METHODS)}")
    out = array_module(x).empty((x.shape[0], w.shape[0]), np.float32)
    matvec_kernel[(w.shape[0], x.shape[0]), block_threads(x.shape[1])](x, w, out)
    return out


def embedding(table, ids):
    """The rows table[ids] of the table (V, D) for token ids (T,) -> (T, D)."""
    xp = array_module(table)
    ids = xp.asarray(ids)
    expect(ids.ndim == 1 and ids.dtype.kind in "iu", f"embedding: ids should be a 1-d int array, got {ids.dtype} {ids.shape}")
    if ids.size and not (0 <= int(ids.min()) and int(ids.max()) < table.shape[0]):
        bad = int(ids.max()) if int(ids.max()) >= table.shape[0] else int(ids.min())
        raise ShapeError(f"embedding: token id {bad} is outside the table of {table.shape[0]} rows")
    out = xp.empty((ids.size, table.shape[1]), np.float32)
    threads = block_threads(table.shape[1])
    embedding_kernel[(blocks_for(table.shape[1], threads), max(ids.size, 1)), threads](table, ids, out)
    return out


def argmax(logits) -> int:
    """The index of the largest logit (the first on ties), for greedy decoding."""
    out = array_module(logits).zeros(1, np.int64)
    argmax_kernel[1, block_threads(logits.size)](logits.ravel(), out)
    return int(out[0])
