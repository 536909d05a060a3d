# Generated from solutions/13_cuda.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import math

from numba import cuda, float32, int32


BLOCK = 256  # the most threads per block the kernels here launch; also the size of their shared scratch


def blocks_for(n: int, threads: int) -> int:
    """How many blocks of `threads` threads cover n items (the last block may be partly idle)."""
    return max(1, -(-n // threads))


def block_threads(n: int) -> int:
    """Threads for a block that works on n items: the smallest power of two >= n, at most BLOCK."""
    return min(BLOCK, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@cuda.jit
def vector_add(a, b, out):
    """out = a + b for 1-d arrays, one thread per element; threads past the end do nothing."""
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] + b[i]


@cuda.jit(device=True)
def block_sum(shared, value):
    """The sum of `value` over the threads of the block, returned to every thread (blockDim a power of 2)."""
    tid = cuda.threadIdx.x
    shared[tid] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            shared[tid] += shared[tid + stride]
        cuda.syncthreads()
        stride //= 2
    total = shared[0]
    cuda.syncthreads()
    return total


@cuda.jit
def rmsnorm_kernel(x, weight, eps, out):
    """out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight for x (rows, D): one block per row."""
    row, tid = cuda.blockIdx.x, cuda.threadIdx.x
    shared = cuda.shared.array(BLOCK, float32)
    squares = float32(0.0)
    for i in range(tid, x.shape[1], cuda.blockDim.x):
        squares += x[row, i] * x[row, i]
    scale = float32(1.0) / math.sqrt(block_sum(shared, squares) / float32(x.shape[1]) + eps)
    for i in range(tid, x.shape[1], cuda.blockDim.x):
        out[row, i] = x[row, i] * scale * weight[i]


@cuda.jit(device=True)
def block_max(shared, value):
    """The maximum of `value` over the threads of the block, returned to every thread."""
    tid = cuda.threadIdx.x
    shared[tid] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            other = shared[tid + stride]
            if other > shared[tid]:
                shared[tid] = other
        cuda.syncthreads()
        stride //= 2
    top = shared[0]
    cuda.syncthreads()
    return top


@cuda.jit
def softmax_kernel(x, out):
    """Softmax of each row of x (rows, n) into out: one block per row."""
    row, tid, step = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    shared = cuda.shared.array(BLOCK, float32)
    top = float32(-math.inf)
    for i in range(tid, x.shape[1], step):
        if x[row, i] > top:
            top = x[row, i]
    top = block_max(shared, top)
    total = float32(0.0)
    for i in range(tid, x.shape[1], step):
        e = math.exp(x[row, i] - top)
        out[row, i] = e
        total += e
    scale = float32(1.0) / block_sum(shared, total)
    for i in range(tid, x.shape[1], step):
        out[row, i] *= scale


@cuda.jit
def matvec_kernel(x, w, out):
    """out[t, n] = x[t] · w[n] for x (T, K), w (N, K): one block per (n, t), coalesced reads along k."""
    n, t, tid = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
    shared = cuda.shared.array(BLOCK, float32)
    partial = float32(0.0)
    for k in range(tid, x.shape[1], cuda.blockDim.x):
        partial += w[n, k] * x[t, k]
    total = block_sum(shared, partial)
    if tid == 0:
        out[t, n] = total


@cuda.jit
def rope_kernel(x, cos, sin, out):
    """Rotate-half RoPE of x (T, H, hd) with cos, sin (T, hd/2): one thread per (t, h, i < hd/2) pair."""
    idx = cuda.grid(1)
    n_tokens, n_heads, head_dim = x.shape
    half = head_dim // 2
    if idx < n_tokens * n_heads * half:
        t, h, i = idx // (n_heads * half), idx // half % n_heads, idx % half
        x1, x2, c, s = x[t, h, i], x[t, h, i + half], cos[t, i], sin[t, i]
        out[t, h, i] = x1 * c - x2 * s
        out[t, h, i + half] = x2 * c + x1 * s


@cuda.jit
def swiglu_kernel(gate_up, out):
    """out[t, f] = silu(gate_up[t, f]) * gate_up[t, F + f] for out (T, F): one thread per output."""
    idx = cuda.grid(1)
    n_tokens, width = out.shape
    if idx < n_tokens * width:
        t, f = idx // width, idx % width
        gate = gate_up[t, f]
        out[t, f] = gate / (float32(1.0) + math.exp(-gate)) * gate_up[t, width + f]


@cuda.jit
def embedding_kernel(table, ids, out):
    """out[t] = table[ids[t]]: grid row t copies token t, one thread per column."""
    t = cuda.blockIdx.y
    d = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if d < out.shape[1]:
        out[t, d] = table[ids[t], d]


@cuda.jit
def argmax_kernel(x, out):
    """out[0] = the index of the largest of x (n,), the first on ties: one block of threads."""
    tid, step = cuda.threadIdx.x, cuda.blockDim.x
    best = cuda.shared.array(BLOCK, float32)
    where = cuda.shared.array(BLOCK, int32)
    value, index = float32(-math.inf), x.size  # index x.size loses every tie
    for i in range(tid, x.size, step):
        if x[i] > value:
            value, index = x[i], i
    best[tid], where[tid] = value, index
    cuda.syncthreads()
    stride = step // 2
    while stride > 0:
        if tid < stride:
            other, at = best[tid + stride], where[tid + stride]
            if other > best[tid] or (other == best[tid] and at < where[tid]):
                best[tid], where[tid] = other, at
        cuda.syncthreads()
        stride //= 2
    if tid == 0:
        out[0] = where[0]


@cuda.jit
def attention_kernel(q, k_cache, v_cache, pos, scores, out):
    """Causal GQA attention of q (T, H, hd) over caches (KV, S, hd) for positions pos..pos+T-1;
    scores (T, H, >= pos+T) is scratch. One block per (head, token): grid (H, T)."""
    h, t, tid, step = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x, cuda.blockDim.x
    head_dim = q.shape[2]
    kv = h // (q.shape[1] // k_cache.shape[0])
    n_keys = pos + t + 1
    scale = float32(1.0) / math.sqrt(float32(head_dim))
    shared = cuda.shared.array(BLOCK, float32)
    top = float32(-math.inf)
    for j in range(tid, n_keys, step):
        dot = float32(0.0)
        for d in range(head_dim):
            dot += q[t, h, d] * k_cache[kv, j, d]
        score = dot * scale
        scores[t, h, j] = score
        if score > top:
            top = score
    top = block_max(shared, top)
    total = float32(0.0)
    for j in range(tid, n_keys, step):
        e = math.exp(scores[t, h, j] - top)
        scores[t, h, j] = e
        total += e
    total = block_sum(shared, total)
    for d in range(tid, head_dim, step):
        acc = float32(0.0)
        for j in range(n_keys):
            acc += scores[t, h, j] * v_cache[kv, j, d]
        out[t, h, d] = acc / total
