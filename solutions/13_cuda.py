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
# # Lesson 13 — CUDA: kernels for the GPU
#
# Generating one token of an LLM reads every weight of the model once: for a 1-billion-parameter
# model in float32 that is 4 GB per token. A laptop CPU streams memory at perhaps 50 GB/s; an H100
# GPU streams it at over 3,000 GB/s. Decoding is limited by that bandwidth, not by arithmetic —
# which is why inference engines live on the GPU, and why this lesson writes **kernels**: functions
# that thousands of GPU threads run at once.
#
# **What you will build.** `kuiper.cuda`: numba.cuda kernels for every operator of the Llama model
# and of the CNNs, a GPU backend that runs lesson 11's model and lesson 02's graph unchanged with
# `.to("cuda")`, and two CUDA C kernels with float4 loads and warp shuffles.
#
# **Prerequisites.** Lessons 04 (im2col convolution) and 11 (the Llama model and its operators);
# no GPU needed. **Time:** about 90 minutes.
#
# We write them in Python with **numba.cuda** (KuiperLLama writes the same kernels in CUDA C++),
# and two of them in **CUDA C**, where vector loads and warp shuffles are easier to show. On a
# machine without an NVIDIA GPU — like the one that built this page — numba's **CUDA simulator**
# runs every GPU thread as a Python thread on the CPU: slow, but the same code, the same
# `__syncthreads`, the same answers. With a GPU and cupy the same cells run on the GPU.
#
# | exercise | what |
# |---|---|
# | 13.1 | vector add: one thread per element |
# | 13.2 | RMSNorm: a block-wide tree reduction in shared memory |
# | 13.3 | softmax: two reductions per row, a max and a sum |
# | 13.4 | the matrix-vector product of LLM decoding: one block per output, coalesced loads |
# | 13.5 | RoPE: one thread per rotated pair |
# | 13.6 | argmax: a reduction that carries an index, the first maximum on ties |
# | 13.7 | attention over the KV cache: one block per head and token, three passes |
# | 13.8 | im2col for convolutions: one thread per entry of the column matrix |
# | 13.9 | depthwise convolution: one thread per output, a direct sum over its window |

# %%
#| default_exp cuda.kernels

# %% [markdown]
# First, where will the kernels run? numba chooses between the real GPU and the simulator once,
# when `numba.cuda` is first imported, from the environment variable `NUMBA_ENABLE_CUDASIM`. So
# the very first thing the lesson does is look for a GPU (cupy and a CUDA device) and, if there
# is none, switch the simulator on. (`import kuiper` already imported numba, which read its
# settings then: `config.reload_config()` makes it read them again.)

# %%
import os

from numba.core import config

from kuiper.cuda.device import cuda_available

GPU = cuda_available()
if not GPU:  # numba's simulator runs every CUDA thread as a Python thread on the CPU
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba.cuda is imported
    config.reload_config()

# %%
import math
import subprocess

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import FancyArrowPatch, Rectangle
from numba import cuda, float32

from kuiper.course import agreement, check
from kuiper.cuda.device import array_module, to_device
from kuiper.errors import KuiperError

DEVICE = "cuda" if GPU else "cpu"  # where kernel arguments live: cupy arrays on a GPU, numpy for the simulator
rng = np.random.default_rng(0)


def dev(array: np.ndarray):
    """A numpy array copied to DEVICE: a cupy array on a GPU, itself for the simulator."""
    return to_device(array, DEVICE)


def launch(kernel, grid, threads, *args) -> None:
    """kernel[grid, threads](*args) in a check: an index out of bounds (the simulator catches it) fails the check."""
    try:
        kernel[grid, threads](*args)
    except IndexError as err:
        raise AssertionError(f"expected every thread to stay inside its arrays, got IndexError {err}") from None

# %% [markdown]
# ## The CUDA execution model
#
# A **kernel** is one function that many threads run, each on its own piece of the data. You
# launch it over a **grid** of **blocks** of **threads**: `kernel[blocks, threads](args)` starts
# `blocks × threads` copies. Each copy finds out who it is from three built-in variables:
#
# | variable | what |
# |---|---|
# | `cuda.blockIdx.x` | which block this thread is in, `0 .. blocks-1` |
# | `cuda.blockDim.x` | threads per block |
# | `cuda.threadIdx.x` | which thread in its block, `0 .. blockDim.x-1` |
#
# so the thread's position in the whole grid is `blockIdx.x * blockDim.x + threadIdx.x`
# (`cuda.grid(1)` computes it). Grids and blocks may also be 2-d or 3-d (`.y`, `.z`).
#
# The hardware explains the two levels. A GPU has many **streaming multiprocessors** (SMs; 132 on
# an H100). Each block runs on one SM, start to finish; blocks run in any order and cannot wait for
# each other. Within a block, threads run in **warps** of 32 that execute the same instruction at
# the same time, and they can cooperate: they share the SM's fast on-chip **shared memory** (up to
# 228 KB per SM) and can wait for each other at a barrier, `cuda.syncthreads()`. Everything else
# lives in the big, slow **global memory** (80 GB of HBM on an H100), where the arrays are.

# %%
def draw_launch(ax, n: int, blocks: int, threads: int) -> None:
    """A 1-d launch over n elements: each thread's block, thread index and global index."""
    for b in range(blocks):
        ax.add_patch(Rectangle((b * (threads + 1) - 0.3, -0.4), threads + 0.6, 2.3, fill=False, lw=1.5))
        ax.text(b * (threads + 1) + threads / 2 - 0.5, 2.15, f"blockIdx.x = {b}", ha="center")
        for t in range(threads):
            i = b * threads + t
            x = b * (threads + 1) + t
            idle = i >= n
            ax.add_patch(Rectangle((x, 0.9), 0.9, 0.9, color="lightgray" if idle else "tab:orange", alpha=0.8))
            ax.text(x + 0.45, 1.35, str(t), ha="center", va="center", fontsize=8)
            ax.text(x + 0.45, 0.2, "—" if idle else str(i), ha="center", va="center", fontsize=8,
                    color="gray" if idle else "black")
    ax.text(-0.5, 1.35, "threadIdx.x", ha="right", va="center", fontsize=9)
    ax.text(-0.5, 0.2, "element i", ha="right", va="center", fontsize=9)
    ax.set_xlim(-5, blocks * (threads + 1))
    ax.set_ylim(-0.6, 2.6)
    ax.axis("off")
    ax.set_title(f"kernel[{blocks}, {threads}] over n = {n}: i = blockIdx.x × {threads} + threadIdx.x; "
                 f"the {blocks * threads - n} grey threads have nothing to do")


def draw_grid(ax, grid: tuple[int, int], block: tuple[int, int], warp: int) -> None:
    """A 2-d grid of 2-d blocks; threads coloured by the warp they run in."""
    colours = ["tab:blue", "tab:green", "tab:purple", "tab:red"]
    gap = 1.5
    for by in range(grid[1]):
        for bx in range(grid[0]):
            x0, y0 = bx * (block[0] + gap), (grid[1] - 1 - by) * (block[1] + gap)
            ax.add_patch(Rectangle((x0 - 0.2, y0 - 0.2), block[0] + 0.4, block[1] + 0.4, fill=False, lw=1.5))
            ax.text(x0 + block[0] / 2, y0 + block[1] + 0.3, f"block ({bx}, {by})", ha="center", fontsize=9)
            for ty in range(block[1]):
                for tx in range(block[0]):
                    linear = ty * block[0] + tx
                    ax.add_patch(Rectangle((x0 + tx + 0.1, y0 + block[1] - 1 - ty + 0.1), 0.8, 0.8,
                                           color=colours[linear // warp % len(colours)], alpha=0.7))
    ax.set_xlim(-0.5, grid[0] * (block[0] + gap))
    ax.set_ylim(-0.5, grid[1] * (block[1] + gap) + 0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"grid {grid} of blocks {block}: a colour per warp (of {warp} here, 32 on real GPUs)\n"
                 "one block runs on one SM and shares its shared memory", fontsize=10)


fig, axes = plt.subplots(2, 1, figsize=(11, 6.5), gridspec_kw={"height_ratios": [1, 1.6]})
draw_launch(axes[0], n=29, blocks=4, threads=8)
draw_grid(axes[1], grid=(3, 2), block=(8, 4), warp=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Two launch helpers: how many blocks cover `n` items, and how many threads a block that works
# on one row of `n` numbers should have — a power of two (the reductions below halve it), at most
# `BLOCK`, and no more than the row needs (which keeps the simulator fast on small examples).

# %%
#| export
import math

BLOCK = 256  # the most threads per block the kernels here launch; also the size of their shared scratch


def blocks_for(n: int, threads: int) -> int:
    """How many blocks of `threads` threads cover n items (the last block may be partly idle)."""
    return max(1, -(-n // threads))


def block_threads(n: int) -> int:
    """Threads for a block that works on n items: the smallest power of two >= n, at most BLOCK."""
    return min(BLOCK, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


# %% [markdown]
# ## Exercise 13.1 — vector add
#
# The "hello world" of CUDA. A numba kernel is a Python function decorated with `@cuda.jit`: it
# returns nothing and writes its result into an output array. Each thread adds one element:
# compute the global index `i = cuda.grid(1)`, and — because the grid usually has more threads
# than elements (the grey threads above) — do nothing when `i` is past the end.

# %%
#| export
from numba import cuda, float32


# %%
#| export
#| exercise: i = cuda.grid(1); if i < out.size: out[i] = a[i] + b[i]
@cuda.jit
def vector_add(a, b, out):
    """out = a + b for 1-d arrays, one thread per element; threads past the end do nothing."""
    ### BEGIN SOLUTION
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] + b[i]
    ### END SOLUTION


# %%
with check("Exercise 13.1"):
    n, threads = 100, 32
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    a_dev, b_dev = dev(a), dev(b)
    out_dev = array_module(a_dev).zeros_like(a_dev)
    launch(vector_add, blocks_for(n, threads), threads, a_dev, b_dev, out_dev)
    out = to_device(out_dev, "cpu")
    bad = np.flatnonzero(out != a + b)
    assert not bad.size, f"expected {a[bad[0]] + b[bad[0]]:.4f} at {bad[0]}, got {out[bad[0]]:.4f} ({bad.size} wrong sums)"
    print(f"{blocks_for(n, threads)} blocks × {threads} threads added {n} numbers")

# %% [markdown]
# On a GPU, `to_device(a, "cuda")` copied `a` into GPU memory as a cupy array; the kernel read
# and wrote GPU memory only, and `to_device(out_dev, "cpu")` copied the result back. Those copies
# cross the PCIe bus at ~25 GB/s, 100 times slower than the GPU's own memory: a real engine
# copies the weights to the GPU once and keeps every activation there. (The simulator simply
# takes numpy arrays.)
#
# ## Reductions: a tree in shared memory
#
# RMSNorm, softmax, a dot product: each boils a row of numbers down to one. One thread per row
# would leave most of the GPU idle and read memory badly, so **one block works on one row**. Each
# thread first sums its share of the row — elements `tid, tid + blockDim, tid + 2·blockDim, …` —
# into a register. Then the block combines its `blockDim` partial sums as a tree in shared memory:
# at each step the first half of the threads adds in the second half, and everybody waits at
# `cuda.syncthreads()` before the next step. After log₂(blockDim) steps `shared[0]` holds the
# total.

# %%
fig, ax = plt.subplots(figsize=(9, 3.2))
values = [3, 1, 4, 1, 5, 9, 2, 6]
levels = [values]
while len(levels[-1]) > 1:
    half = len(levels[-1]) // 2
    levels.append([levels[-1][i] + levels[-1][i + half] for i in range(half)])
for depth, level in enumerate(levels):
    y = -depth
    for i, v in enumerate(level):
        ax.add_patch(Rectangle((i - 0.4, y - 0.3), 0.8, 0.6, color="tab:orange" if depth else "tab:blue", alpha=0.7))
        ax.text(i, y, str(v), ha="center", va="center")
        if depth:
            half = len(level)
            for src in (i, i + half):
                ax.add_patch(FancyArrowPatch((src, y + 0.7), (i, y + 0.3), arrowstyle="->", color="gray",
                                             mutation_scale=10))
    if depth:
        who = "thread 0 adds" if len(level) == 1 else f"threads 0..{len(level) - 1} add"
        ax.text(8.2, y, f"stride {len(level)}: {who} shared[tid + {len(level)}]", va="center", fontsize=9)
ax.text(8.2, 0, "each thread's partial sum in shared[tid]", va="center", fontsize=9)
ax.set_xlim(-0.6, 14)
ax.set_ylim(-len(levels) + 0.4, 0.6)
ax.axis("off")
ax.set_title("a block of 8 threads sums its values in log₂ 8 = 3 steps, with a syncthreads after each")
plt.show()

# %% [markdown]
# ## Exercise 13.2 — RMSNorm
#
# Write the tree as a **device function** (`@cuda.jit(device=True)`: callable from kernels, not
# launchable) `block_sum(shared, value)`: every thread passes its partial sum, every thread gets
# back the block's total. Store `value` in `shared[tid]`, sync, then halve `stride` from
# `blockDim.x // 2` down to 1: threads with `tid < stride` add `shared[tid + stride]`, and all
# sync after each step (a `syncthreads` inside an `if` that only some threads reach would hang
# the block). Read the total from `shared[0]`, and sync once more before returning, so that no
# thread reuses `shared` while a slower one still reads it.
#
# Then the kernel: block `row = cuda.blockIdx.x` normalises `x[row]` (D numbers):
# $\text{out} = x / \sqrt{\overline{x^2} + \varepsilon} \cdot w$. The shared scratch is declared
# in the kernel, with a size fixed at compile time: `cuda.shared.array(BLOCK, float32)`.
# Accumulate in `float32(0.0)`: a bare `0.0` is a float64 to numba, and float64 arithmetic is
# up to 64 times slower on gaming GPUs.

# %%
#| export
#| exercise: block_sum: tree in shared[] with syncthreads; rmsnorm_kernel: each thread sums squares of x[row, tid::blockDim], block_sum, then scales
@cuda.jit(device=True)
def block_sum(shared, value):
    """The sum of `value` over the threads of the block, returned to every thread (blockDim a power of 2)."""
    ### BEGIN SOLUTION
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
    ### END SOLUTION


@cuda.jit
def rmsnorm_kernel(x, weight, eps, out):
    """out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight for x (rows, D): one block per row."""
    ### BEGIN SOLUTION
    row, tid = cuda.blockIdx.x, cuda.threadIdx.x
    shared = cuda.shared.array(BLOCK, float32)
    squares = float32(0.0)
    for i in range(tid, x.shape[1], cuda.blockDim.x):
        squares += x[row, i] * x[row, i]
    scale = float32(1.0) / math.sqrt(block_sum(shared, squares) / float32(x.shape[1]) + eps)
    for i in range(tid, x.shape[1], cuda.blockDim.x):
        out[row, i] = x[row, i] * scale * weight[i]
    ### END SOLUTION


# %%
def rmsnorm_reference(x, weight, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


with check("Exercise 13.2"):
    x, weight = rng.standard_normal((3, 40)).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    x_dev = dev(x)
    out_dev = array_module(x_dev).zeros_like(x_dev)
    launch(rmsnorm_kernel, 3, 16, x_dev, dev(weight), np.float32(1e-5), out_dev)
    out, want = to_device(out_dev, "cpu"), rmsnorm_reference(x, weight, 1e-5)
    print("3 blocks × 16 threads:", agreement(out, want))
    bad = np.argwhere(~np.isclose(out, want, rtol=1e-5, atol=1e-6))
    assert not bad.size, f"expected {want[tuple(bad[0])]:.5f} at {tuple(bad[0].tolist())}, got {out[tuple(bad[0])]:.5f}"

# %% [markdown]
# The scalar `eps` went in as `np.float32(1e-5)`: a Python float would make numba compile the
# kernel for a float64 `eps`, and the whole expression would be computed in float64.
#
# The maximum is the same tree with a comparison in place of `+`. A comparison, not the built-in
# `max(a, b)`: numba 0.66 and later cannot compile two-argument `max` and `min` for the GPU
# (numba issue #10753), and the simulator, which runs plain Python, would never notice. That is
# the simulator's blind spot — it checks what a kernel computes, not whether numba can compile
# it — so `tests/test_cuda.py` also compiles every kernel to PTX with NVVM (no GPU needed) and
# checks that none computes in float64.

# %%
#| export
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


# %% [markdown]
# ## Exercise 13.3 — softmax
#
# Softmax of a row: $\text{out}_i = e^{x_i - m} / \sum_j e^{x_j - m}$ with $m = \max_j x_j$
# (subtracting the maximum keeps `exp` from overflowing, lesson 11). One block per row, three
# passes over it: each thread's maximum of its elements, `block_max`; then each thread writes
# `exp(x - m)` into `out` and sums what it wrote, `block_sum`; then each thread divides its own
# elements by the total. Start the maximum at `float32(-math.inf)`, and raise it with an `if`.

# %%
#| export
#| exercise: one block per row: thread max -> block_max; out = exp(x - max), thread sum -> block_sum; out /= total
@cuda.jit
def softmax_kernel(x, out):
    """Softmax of each row of x (rows, n) into out: one block per row."""
    ### BEGIN SOLUTION
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
    ### END SOLUTION


# %%
def softmax_reference(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


with check("Exercise 13.3"):
    x = (rng.standard_normal((4, 37)) * 5).astype(np.float32)
    x[1, 3] = 100  # exp(100) overflows float32: the max subtraction must save it
    x_dev = dev(x)
    out_dev = array_module(x_dev).zeros_like(x_dev)
    launch(softmax_kernel, 4, 16, x_dev, out_dev)
    out, want = to_device(out_dev, "cpu"), softmax_reference(x)
    print("4 rows of 37:", agreement(out, want))
    bad = np.argwhere(~np.isclose(out, want, rtol=1e-5, atol=1e-7))
    assert not bad.size, f"expected {want[tuple(bad[0])]:.6f} at {tuple(bad[0].tolist())}, got {out[tuple(bad[0])]:.6f}"

# %% [markdown]
# ## Exercise 13.4 — the matrix-vector product
#
# During decoding every linear layer multiplies a weight matrix $W$ (N × K, PyTorch's layout:
# one row per output) by one activation vector: $y_n = \sum_k W_{nk} x_k$. Each weight is used
# once, so the kernel's speed is the speed at which it streams $W$ from memory. That depends on
# **coalescing**: when the 32 threads of a warp read 32 *neighbouring* floats, the hardware
# serves them with one 128-byte transaction; 32 scattered reads cost up to 32 transactions.
#
# So give each output its own block, and let the block's threads walk along row $n$ of $W$
# together: thread `tid` takes `k = tid, tid + blockDim, …` — in each step the warp reads 32
# consecutive floats of the row. Then `block_sum` the partial dot products; thread 0 writes the
# result. For a prompt of T tokens the grid is 2-d: `blockIdx.x` is the output `n`,
# `blockIdx.y` the token `t`, and `out[t, n] = x[t] · W[n]`.

# %%
#| export
#| exercise: n, t = blockIdx.x, blockIdx.y; each thread sums w[n, k] * x[t, k] for k = tid, tid + blockDim, ...; block_sum; thread 0 writes out[t, n]
@cuda.jit
def matvec_kernel(x, w, out):
    """out[t, n] = x[t] · w[n] for x (T, K), w (N, K): one block per (n, t), coalesced reads along k."""
    ### BEGIN SOLUTION
    n, t, tid = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
    shared = cuda.shared.array(BLOCK, float32)
    partial = float32(0.0)
    for k in range(tid, x.shape[1], cuda.blockDim.x):
        partial += w[n, k] * x[t, k]
    total = block_sum(shared, partial)
    if tid == 0:
        out[t, n] = total
    ### END SOLUTION


# %%
with check("Exercise 13.4"):
    x, w = rng.standard_normal((2, 50)).astype(np.float32), rng.standard_normal((6, 50)).astype(np.float32)
    x_dev, w_dev = dev(x), dev(w)
    out_dev = array_module(x_dev).zeros((2, 6), np.float32)
    launch(matvec_kernel, (6, 2), 16, x_dev, w_dev, out_dev)
    out, want = to_device(out_dev, "cpu"), x @ w.T
    print("(2, 50) @ (6, 50).T:", agreement(out, want))
    bad = np.argwhere(~np.isclose(out, want, rtol=1e-5, atol=1e-5))
    assert not bad.size, f"expected {want[tuple(bad[0])]:.5f} at (t, n) {tuple(bad[0].tolist())}, got {out[tuple(bad[0])]:.5f}"

# %% [markdown]
# One block per output is simple and reads $W$ well, but a block of 256 threads for a row of
# K = 4096 gives each thread only 16 elements, and the tree costs 8 barriers. The CUDA C version
# at the end of the lesson does better: one *warp* per output, 4 floats per load, and a reduction
# in registers without shared memory.
#
# ## The other LLM kernels
#
# Everything else a Llama layer does is element-wise or a reduction like the ones above.
#
# ## Exercise 13.5 — RoPE
#
# **RoPE** rotates the pairs $(x_i, x_{i+hd/2})$ of every head by the angle of its position
# (lesson 11): $x_i' = x_i \cos - x_{i+hd/2} \sin$, $x_{i+hd/2}' = x_{i+hd/2} \cos + x_i \sin$,
# with the `cos`, `sin` of token `t` and frequency `i`. One thread per pair: thread `idx` of the
# 1-d grid takes token `t = idx // (H·hd/2)`, head `h = idx // (hd/2) % H` and `i = idx % (hd/2)`,
# so consecutive threads work on consecutive `i` and their reads coalesce. Threads past the
# `T·H·hd/2` pairs do nothing.

# %%
#| export
#| exercise: idx = cuda.grid(1); if idx < T*H*half: t, h, i from idx; out[t, h, i] = x1*c - x2*s; out[t, h, i + half] = x2*c + x1*s
@cuda.jit
def rope_kernel(x, cos, sin, out):
    """Rotate-half RoPE of x (T, H, hd) with cos, sin (T, hd/2): one thread per (t, h, i < hd/2) pair."""
    ### BEGIN SOLUTION
    idx = cuda.grid(1)
    n_tokens, n_heads, head_dim = x.shape
    half = head_dim // 2
    if idx < n_tokens * n_heads * half:
        t, h, i = idx // (n_heads * half), idx // half % n_heads, idx % half
        x1, x2, c, s = x[t, h, i], x[t, h, i + half], cos[t, i], sin[t, i]
        out[t, h, i] = x1 * c - x2 * s
        out[t, h, i + half] = x2 * c + x1 * s
    ### END SOLUTION


# %%
def reference_rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


with check("Exercise 13.5"):
    x = rng.standard_normal((3, 2, 8)).astype(np.float32)
    angles = (np.arange(4, 7)[:, None] * 0.3 ** np.arange(4)).astype(np.float32)
    out = np.full_like(x, np.nan)
    launch(rope_kernel, 4, 8, x, np.cos(angles), np.sin(angles), out)  # 32 threads for 24 pairs
    want = reference_rope(x, np.cos(angles), np.sin(angles))
    bad = np.argwhere(~np.isclose(out, want, rtol=1e-5, atol=1e-6))
    assert not bad.size, f"expected {want[tuple(bad[0])]:.5f} at (t, h, d) {tuple(bad[0].tolist())}, got {out[tuple(bad[0])]:.5f}"

# %% [markdown]
# **SwiGLU** is $\text{silu}(g) \cdot u$ for the two halves of the gate-up projection, one thread
# per output. The **embedding** lookup copies row `ids[t]` of the table: block row `t` of the grid
# copies token `t`, its threads neighbouring columns.

# %%
#| export
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


# %% [markdown]
# ## Exercise 13.6 — argmax
#
# **Argmax** (greedy sampling) is a reduction that carries an index along with the value: two
# shared arrays, and at each step of the tree the larger value wins, the smaller index on a tie —
# `np.argmax`'s rule, the first maximum. The vocabulary fits one block: 256 threads scanning
# 128,000 logits is 500 each. Each thread first finds the best of its own elements
# `tid, tid + blockDim, …` (a thread with none keeps `-inf` and the index `x.size`, which loses
# every tie), then the tree of `block_sum` with the comparison in place of `+`; thread 0 writes
# the winning index to `out[0]`.

# %%
#| export
#| exercise: each thread: best (value, index) of x[tid::blockDim]; tree over shared best[]/where[]: larger value wins, smaller index on ties; thread 0 writes where[0]
from numba import int32


@cuda.jit
def argmax_kernel(x, out):
    """out[0] = the index of the largest of x (n,), the first on ties: one block of threads."""
    ### BEGIN SOLUTION
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
    ### END SOLUTION


# %%
with check("Exercise 13.6"):
    for n, threads, top in [(50, 16, [7, 31, 44]), (50, 16, [35, 19, 3]), (50, 16, [13]), (50, 16, [49]), (5, 8, [2]), (40, 8, [39, 3])]:
        x = rng.standard_normal(n).astype(np.float32)
        x[top] = 9  # ties: the first index wins
        out = np.full(1, -1, np.int64)
        launch(argmax_kernel, 1, threads, x, out)
        assert out[0] == min(top), f"{n} logits, maximum at {top}, {threads} threads: expected {min(top)}, got {out[0]}"


# %% [markdown]
# ## Exercise 13.7 — attention over the KV cache
#
# Query token `t` (at absolute position `pos + t`) of head `h` attends to the keys `0 .. pos + t`
# of its KV head `h // (H / KV)` (grouped-query attention: several query heads share one KV
# head). One block per `(h, t)`, three passes like softmax:
#
# 1. each thread takes keys `j = tid, tid + blockDim, …`, computes the score $q \cdot k_j /
#    \sqrt{hd}$, writes it to a scratch array and keeps its maximum; `block_max`;
# 2. each thread turns its scores into $e^{s_j - m}$ and sums them; `block_sum`;
# 3. now the threads switch roles: thread `tid` owns output dimensions `d = tid, tid + blockDim, …`
#    and adds up $\sum_j p_j v_{j,d}$ over all keys — neighbouring threads read neighbouring `d`
#    of each value row, so these reads coalesce.
#
# The scores live in a global scratch array `(T, H, pos + T)` (llama2.c's `att` buffer): a prompt
# of thousands of tokens would not fit in shared memory. The barrier inside `block_sum` also makes
# every thread's score writes visible to the whole block before pass 3 reads them.

# %%
#| export
#| exercise: block (h, t): kv = h // (H // KV); scores of keys 0..pos+t with block_max; exp and block_sum; then thread tid sums p_j v[j, d] for d = tid, tid + blockDim, ...
@cuda.jit
def attention_kernel(q, k_cache, v_cache, pos, scores, out):
    """Causal GQA attention of q (T, H, hd) over caches (KV, S, hd) for positions pos..pos+T-1;
    scores (T, H, >= pos+T) is scratch. One block per (head, token): grid (H, T)."""
    ### BEGIN SOLUTION
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
    ### END SOLUTION


# %%
def reference_attention(q, k_cache, v_cache, pos):
    n_tokens, n_heads, head_dim = q.shape
    group = n_heads // k_cache.shape[0]
    out = np.empty_like(q)
    for t in range(n_tokens):
        for h in range(n_heads):
            k, v = k_cache[h // group, :pos + t + 1], v_cache[h // group, :pos + t + 1]
            out[t, h] = softmax_reference(k @ q[t, h] / np.sqrt(head_dim)) @ v
    return out


with check("Exercise 13.7"):
    q = rng.standard_normal((3, 4, 8)).astype(np.float32)
    k_cache, v_cache = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    k_cache[1, 4] *= 10  # a key that wins the softmax: a head that reads the wrong KV head misses it
    for pos in (0, 2):
        out = np.full_like(q, np.nan)
        launch(attention_kernel, (4, 3), 8, q, k_cache, v_cache, pos, np.zeros((3, 4, pos + 3), np.float32), out)
        want = reference_attention(q, k_cache, v_cache, pos)
        bad = np.argwhere(~np.isclose(out, want, rtol=1e-4, atol=1e-5))
        assert not bad.size, (f"pos {pos}: expected {want[tuple(bad[0])]:.5f} at (t, h, d) {tuple(bad[0].tolist())}, "
                              f"got {out[tuple(bad[0])]:.5f}")


# %% [markdown]
# ## A GPU backend for the model
#
# The Llama model of lessons 11–12 calls eight operators — `rmsnorm`, `rope`, `attention`,
# `swiglu`, `matmul`, `embedding`, `argmax`, `softmax` — through a *backend* chosen by the
# device: the CPU backend computes them with numpy and numba, `kuiper.cuda.llm_ops` launches
# the kernels above. Both take and return arrays of their device (numpy, cupy) and compute exactly
# the same thing, so one model runs on both.
#
# First the device helpers. `cuda_available()` never raises: it says False when cupy is missing
# or sees no GPU. `array_module(a)` is cupy for an array in GPU memory (anything with a
# `__cuda_array_interface__`) and numpy otherwise, so a launcher allocates its output next to
# its input with the same code on both devices. `use_simulator()` does what this lesson's first
# cell did, for scripts.

# %%
#| export cuda.device
import os
import sys
from functools import cache
from types import ModuleType

import numpy as np
from numba.core import config

from kuiper.errors import DeviceError


@cache
def cuda_problem() -> str | None:
    """Why device 'cuda' cannot be used here (no cupy, no driver, no GPU), or None when it can."""
    try:
        import cupy
    except ImportError:
        return "cupy is not installed (pip install cupy-cuda12x, or cupy-cuda11x for CUDA 11)"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError when there is no driver
        return f"cupy finds no usable CUDA driver ({type(err).__name__}: {err})"
    return None if count > 0 else "cupy finds no CUDA GPU"


def cuda_available() -> bool:
    """True when cupy is installed and sees a GPU, so device 'cuda' works; never raises."""
    return cuda_problem() is None


def cupy_module() -> ModuleType:
    """The cupy module; DeviceError saying why when device 'cuda' is not available."""
    problem = cuda_problem()
    if problem:
        raise DeviceError(f"device 'cuda' is not available: {problem}")
    import cupy
    return cupy


def array_module(array: object) -> ModuleType:
    """cupy for an array in GPU memory, numpy otherwise: launchers allocate outputs beside inputs."""
    return cupy_module() if hasattr(array, "__cuda_array_interface__") else np


def device_module() -> ModuleType:
    """The array module of device 'cuda': cupy on a GPU, numpy under numba's simulator (whose kernels
    read host memory); DeviceError saying why when there is neither."""
    if simulating():
        return np
    cupy = cupy_module()
    config.CUDA_ARRAY_INTERFACE_SYNC = False  # cupy and numba launch on the same default stream: no wait between
    return cupy


def to_device(array: object, device: str) -> object:
    """`array` as a numpy array ('cpu') or an array of device 'cuda'; copied only when it moves."""
    if device == "cpu":
        return cupy_module().asnumpy(array) if hasattr(array, "__cuda_array_interface__") else np.asarray(array)
    if device == "cuda" and simulating():  # the simulator copies every kernel argument back: keep it writable
        return np.require(array, requirements="W")
    if device == "cuda":
        return device_module().asarray(array)
    raise DeviceError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def use_simulator() -> None:
    """Run numba.cuda kernels on numba's CPU simulator; call it before numba.cuda is first imported."""
    if "numba.cuda" in sys.modules and not config.ENABLE_CUDASIM:
        raise DeviceError("numba.cuda is already imported for the GPU: call use_simulator() before "
                          "importing kuiper.cuda.kernels, or start Python with NUMBA_ENABLE_CUDASIM=1")
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    config.reload_config()


def simulating() -> bool:
    """True when numba.cuda kernels run on the CPU simulator."""
    return bool(config.ENABLE_CUDASIM)


# %% [markdown]
# The launchers: check the shapes (a kernel that indexes out of bounds does not raise, it reads
# garbage or crashes the context), allocate the output, pick the grid, launch. `matmul` has
# three methods: cuBLAS through cupy's `x @ w.T` (the default: NVIDIA's tuned GEMM), the numba
# kernel of Exercise 13.4, and the CUDA C `sgemv_f32x4` from the end of this lesson.

# %%
#| export cuda.llm_ops
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


# %% [markdown]
# Every operator against the numpy reference — the CPU backend's exact semantics — on a tiny
# grouped-query layer: 3 tokens at positions 2–4 of a cache of 8, 4 query heads over 2 KV heads
# of dimension 8. (A kernel that can be wrong is wrong at the edges: odd sizes, a head count
# that is not a power of two, positions that do not start at 0.)

# %%
from kuiper.cuda import llm_ops


T, H, KV, HD, S, POS, D, HIDDEN = 3, 4, 2, 8, 8, 2, 12, 10
x = rng.standard_normal((T, D)).astype(np.float32)
q = rng.standard_normal((T, H, HD)).astype(np.float32)
k_cache, v_cache = rng.standard_normal((2, KV, S, HD)).astype(np.float32)
angles = (np.arange(POS, POS + T)[:, None] * 0.3 ** np.arange(HD // 2)).astype(np.float32)
cos, sin = np.cos(angles), np.sin(angles)
gate_up = rng.standard_normal((T, 2 * HIDDEN)).astype(np.float32)
w = rng.standard_normal((7, D)).astype(np.float32)
table, ids = rng.standard_normal((11, D)).astype(np.float32), np.array([3, 0, 10])
logits = rng.standard_normal(50).astype(np.float32)
cases = {
    "rmsnorm": (llm_ops.rmsnorm(dev(x), dev(x[0]), 1e-5), rmsnorm_reference(x, x[0], 1e-5)),
    "rope": (llm_ops.rope(dev(q), dev(cos), dev(sin)), reference_rope(q, cos, sin)),
    "attention": (llm_ops.attention(dev(q), dev(k_cache), dev(v_cache), POS),
                  reference_attention(q, k_cache, v_cache, POS)),
    "swiglu": (llm_ops.swiglu(dev(gate_up)),
               gate_up[:, :HIDDEN] / (1 + np.exp(-gate_up[:, :HIDDEN])) * gate_up[:, HIDDEN:]),
    "matmul": (llm_ops.matmul(dev(x), dev(w), method="matvec"), x @ w.T),
    "embedding": (llm_ops.embedding(dev(table), dev(ids)), table[ids]),
    "softmax": (llm_ops.softmax(dev(x)), softmax_reference(x)),
}
for name, (got, want) in cases.items():
    print(f"{name:10s}", agreement(to_device(got, "cpu"), want))
print(f"{'argmax':10s}", llm_ops.argmax(dev(logits)), "==", int(np.argmax(logits)))

# %% [markdown]
# ## One model, two devices
#
# Moving to the GPU is a copy of the weights across the PCIe bus, done once; after that the
# activations never leave the GPU except the logits of each step (196 KB for SmolLM2), which the
# sampler reads. `Tensor.to` moves a tensor; `Llama.to` moves the model's weights, KV cache and
# RoPE tables and swaps its `ops` for the backend above (`Tensor.to` of lesson 01 already works: its
# `backend('cuda')` is cupy when this lesson's `cupy_module` finds a GPU). The model's code — lesson 11's
# `forward` and `attend` — is the same on both devices.
#
# On numba's simulator (no GPU here) `'cuda'` keeps numpy arrays and runs the GPU kernels, thread
# by thread, on the CPU: slow, but it runs exactly the kernel code, so the seam is tested on any
# laptop. A weight the GPU backend has no kernel for (lesson 14's int8) is refused with a clear error.

# %%
from typing import Any

import kuiper.llm.model
from kuiper.course import DATA, patch_to
from kuiper.graph import RuntimeGraph
from kuiper.llm.model import Block, Llama, cpu_ops
from kuiper.tensor import Tensor

# %%
#| export llm.model
import importlib

from kuiper.cuda.device import to_device
from kuiper.errors import DeviceError


@patch_to(Llama)
def to(self, device: str) -> Llama:
    """The model with weights, KV cache and RoPE tables on `device` ('cpu' or 'cuda') and that device's kernels."""
    if device not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")
    if device == "cuda" and any(not hasattr(w, "__array__") for b in self.blocks for w in vars(b).values()
                                if w is not None):
        raise DeviceError("the GPU backend runs float32 weights only: load the model without int8 quantization")
    def move(array: Any) -> Any:
        return None if array is None else to_device(array, device)

    self.embed, self.norm, self.head = move(self.embed), move(self.norm), move(self.head)
    self.cos, self.sin, self.k_cache, self.v_cache = map(move, (self.cos, self.sin, self.k_cache, self.v_cache))
    self.blocks = [Block(**{name: move(w) for name, w in vars(b).items()}) for b in self.blocks]
    self.ops = cpu_ops if device == "cpu" else importlib.import_module("kuiper.cuda.llm_ops")
    return self


# %%
def tiny_llama(seed: int = 0) -> kuiper.llm.model.Llama:
    """A random Llama small enough for the simulator: 2 layers, dimension 32, 4 query and 2 KV heads."""
    rng = np.random.default_rng(seed)
    config = kuiper.llm.model.Config(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, hidden_dim=48,
                                     vocab_size=50, norm_eps=1e-5, rope_theta=1e4, context_length=16)
    w = lambda *shape: (rng.standard_normal(shape) * 0.3).astype(np.float32)  # noqa: E731
    blocks = [kuiper.llm.model.Block(attn_norm=1 + w(32), wqkv=w(64, 32), wo=w(32, 32), ffn_norm=1 + w(32),
                                     w_gate_up=w(96, 32), w_down=w(32, 48)) for _ in range(2)]
    return kuiper.llm.model.Llama(config, w(50, 32), blocks, 1 + w(32), w(50, 32), max_seq_len=16)


cpu_model, gpu_model = tiny_llama(), tiny_llama().to("cuda")
prompt = np.array([3, 14, 15, 9])
want = [cpu_model.forward(prompt, 0, all_logits=True), cpu_model.forward(np.array([26]), 4)]
got = [gpu_model.forward(prompt, 0, all_logits=True), gpu_model.forward(np.array([26]), 4)]
print("backend:", gpu_model.ops.__name__, "| simulated:", simulating())
print("prefill logits, GPU kernels vs CPU:", agreement(to_device(got[0], "cpu"), want[0], 1e-5))
print("decode logits,  GPU kernels vs CPU:", agreement(to_device(got[1], "cpu"), want[1], 1e-5))
print(Tensor.ones(2, 3).to("cpu").device, "| on this machine 'cuda' is", "available" if GPU else "not available")


# %% [markdown]
# ## Convolutions on the GPU: im2col + cuBLAS
#
# The GPU version of lesson 04's convolution keeps its plan: unfold the receptive fields into a
# matrix (im2col), then one GEMM with the weights — and on the GPU the GEMM is cuBLAS, through
# cupy's `@`. im2col is a pure gather, one thread per entry of the column matrix
# `(C·kh·kw, oh·ow)`: consecutive threads fill consecutive output pixels of one row, so both
# their writes and (for stride 1) their reads coalesce.
#
# ## Exercise 13.8 — im2col
#
# Thread `idx` of the 1-d grid fills `cols[row, col]` with `row, col = idx // n_cols, idx % n_cols`.
# The row names the channel and the kernel tap, `c, i, j = row // (kh·kw), row // kw % kh, row % kw`;
# the column the output pixel, `y, x' = col // ow, col % ow`. The input pixel is
# `(y·sh - ph + i·dh, x'·sw - pw + j·dw)`, and 0 when it falls in the padding, outside the image.

# %%
#| export cuda.cnn
#| exercise: row, col = idx // n_cols, idx % n_cols; c, i, j from row; iy, ix from col, stride, padding, dilation; cols[row, col] = x[c, iy, ix] inside the image, else 0
import math

import numpy as np
from numba import cuda, float32

from kuiper.cuda.device import array_module
from kuiper.cuda.kernels import block_threads, blocks_for
from kuiper.errors import LayerError, ShapeError
from kuiper.layers.conv import out_size


@cuda.jit
def im2col_kernel(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, ow):
    """cols[(c·kh + i)·kw + j, y·ow + x'] = x[c, y·sh - ph + i·dh, x'·sw - pw + j·dw], 0 outside the image."""
    ### BEGIN SOLUTION
    idx = cuda.grid(1)
    n_rows, n_cols = cols.shape
    if idx < n_rows * n_cols:
        row, col = idx // n_cols, idx % n_cols
        c, i, j = row // (kh * kw), row // kw % kh, row % kw
        iy = col // ow * sh - ph + i * dh
        ix = col % ow * sw - pw + j * dw
        inside = 0 <= iy < x.shape[1] and 0 <= ix < x.shape[2]
        cols[row, col] = x[c, iy, ix] if inside else float32(0.0)
    ### END SOLUTION


# %%
with check("Exercise 13.8"):
    x = rng.standard_normal((2, 5, 7)).astype(np.float32)
    for (kh, kw), (sh, sw), (ph, pw), (dh, dw) in [((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 3), (1, 2), (1, 0), (2, 2))]:
        want = F.unfold(torch.from_numpy(x)[None], (kh, kw), (dh, dw), (ph, pw), (sh, sw))[0].numpy()
        oh, ow = (5 + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (7 + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = np.full((2 * kh * kw, oh * ow), np.nan, np.float32)
        launch(im2col_kernel, blocks_for(cols.size, 32), 32, x, cols, kh, kw, sh, sw, ph, pw, dh, dw, ow)
        bad = np.argwhere(~(cols == want))
        assert not bad.size, (f"kernel {kh}×{kw}, stride {sh},{sw}, padding {ph},{pw}, dilation {dh},{dw}: expected "
                              f"{want[tuple(bad[0])]:.4f} at (row, col) {tuple(bad[0].tolist())}, got {cols[tuple(bad[0])]:.4f}")

# %%
#| export cuda.cnn
def pairs(*values) -> list[tuple[int, int]]:
    """Each int or (int, int) as a pair."""
    return [(v, v) if isinstance(v, int) else tuple(v) for v in values]


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1):
    """2-d convolution of x (N, C, H, W) with weight (K, C/groups, kh, kw) -> (N, K, OH, OW): a direct
    kernel for depthwise, one GEMM for 1×1, the im2col kernel + a GEMM per image for the rest."""
    n_batch, channels, height, width = x.shape
    k_out, c_group, kh, kw = weight.shape
    if channels != c_group * groups or k_out % groups:
        raise ShapeError(f"conv2d: input {x.shape} and weight {weight.shape} do not match with groups={groups}")
    (sh, sw), (ph, pw), (dh, dw) = pairs(stride, padding, dilation)
    oh, ow = out_size(height, kh, sh, ph, dh), out_size(width, kw, sw, pw, dw)
    xp = array_module(x)
    gemm_weight = weight.reshape(groups, k_out // groups, c_group * kh * kw)
    if groups == channels > 1:  # depthwise: 9 multiply-adds per output, no GEMM to speak of
        out = xp.empty((n_batch, k_out, oh, ow), np.float32)
        threads = block_threads(out.size)
        depthwise_conv_kernel[blocks_for(out.size, threads), threads](x, weight, out, sh, sw, ph, pw, dh, dw)
    elif (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):  # 1×1: the image already is the column matrix
        out = xp.matmul(gemm_weight, x.reshape(n_batch, groups, c_group, height * width))
    else:
        cols = xp.empty((channels * kh * kw, oh * ow), np.float32)
        out = xp.empty((n_batch, k_out, oh * ow), np.float32)
        threads = block_threads(cols.size)
        for n in range(n_batch):
            im2col_kernel[blocks_for(cols.size, threads), threads](x[n], cols, kh, kw, sh, sw, ph, pw, dh, dw, ow)
            out[n] = xp.matmul(gemm_weight, cols.reshape(groups, -1, oh * ow)).reshape(k_out, oh * ow)
    out = out.reshape(n_batch, k_out, oh, ow)
    if bias is not None:
        out += bias[:, None, None]
    return out


# %% [markdown]
# ## Exercise 13.9 — depthwise convolution
#
# MobileNet's depthwise convolutions (`groups` = channels) do 9 multiply-adds per output: a GEMM
# per channel would be all launch and no work. One thread per output `out[n, k, y, x']` sums its
# window directly: output channel `k` reads input channel `k // m`, where `m = K / C` outputs share
# an input, and taps that fall in the padding add nothing. `conv2d` above sends depthwise layers here.

# %%
#| export cuda.cnn
#| exercise: idx = cuda.grid(1); n, k, y, x' from idx; c = k // (K // C); total the taps w[k, 0, i, j] * x[n, c, iy, ix] that lie inside the image; write out[n, k, y, x']
@cuda.jit
def depthwise_conv_kernel(x, w, out, sh, sw, ph, pw, dh, dw):
    """out[n, k, y, x'] = Σ_ij w[k, 0, i, j] · x[n, k // m, y·sh - ph + i·dh, x'·sw - pw + j·dw], m = K / C."""
    ### BEGIN SOLUTION
    idx = cuda.grid(1)
    n_batch, k_out, oh, ow = out.shape
    if idx < out.size:
        n, k, y, x_ = idx // (k_out * oh * ow), idx // (oh * ow) % k_out, idx // ow % oh, idx % ow
        c = k // (k_out // x.shape[1])
        total = float32(0.0)
        for i in range(w.shape[2]):
            iy = y * sh - ph + i * dh
            for j in range(w.shape[3]):
                ix = x_ * sw - pw + j * dw
                if 0 <= iy < x.shape[2] and 0 <= ix < x.shape[3]:
                    total += w[k, 0, i, j] * x[n, c, iy, ix]
        out[n, k, y, x_] = total
    ### END SOLUTION


# %%
with check("Exercise 13.9"):
    for c, m, kernel, stride, padding, dilation in [(3, 1, 3, 1, 1, 1), (2, 2, 3, 2, 1, 2), (2, 1, (1, 3), 1, (0, 2), 1)]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pairs(kernel, stride, padding, dilation)
        x, w = rng.standard_normal((2, c, 5, 6)).astype(np.float32), rng.standard_normal((c * m, 1, kh, kw)).astype(np.float32)
        want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, stride, padding, dilation, groups=c).numpy()
        out = np.full(want.shape, np.nan, np.float32)
        launch(depthwise_conv_kernel, blocks_for(out.size, 32), 32, x, w, out, sh, sw, ph, pw, dh, dw)
        bad = np.argwhere(~np.isclose(out, want, rtol=1e-4, atol=1e-5))
        assert not bad.size, (f"{c} channels × {m}, kernel {kh}×{kw}, stride {sh}, padding {ph},{pw}, dilation {dh}: "
                              f"expected {want[tuple(bad[0])]:.4f} at (n, k, y, x) {tuple(bad[0].tolist())}, "
                              f"got {out[tuple(bad[0])]:.4f}")

# %% [markdown]
# Pooling, activations and nearest-neighbour resizing (YOLO's upsampling) need no GEMM: one thread
# per output, each reading its own window (or element, or source pixel). Max pooling ignores the
# padding; average pooling counts it or not, as PyTorch's `count_include_pad` says — the same
# rules as lesson 04's numba versions. Below, every path of `conv2d` (im2col, 1×1, depthwise) and
# each of these kernels meets PyTorch.

# %%
#| export cuda.cnn
@cuda.jit
def max_pool2d_kernel(x, out, kh, kw, sh, sw, ph, pw, dh, dw):
    """The largest value of each window of x (N, C, H, W): one thread per output; padding never wins."""
    idx = cuda.grid(1)
    n_batch, channels, oh, ow = out.shape
    if idx < out.size:
        n, c, y, x_ = idx // (channels * oh * ow), idx // (oh * ow) % channels, idx // ow % oh, idx % ow
        best = float32(-math.inf)
        for i in range(kh):
            iy = y * sh - ph + i * dh
            for j in range(kw):
                ix = x_ * sw - pw + j * dw
                if 0 <= iy < x.shape[2] and 0 <= ix < x.shape[3] and x[n, c, iy, ix] > best:
                    best = x[n, c, iy, ix]
        out[n, c, y, x_] = best


@cuda.jit
def avg_pool2d_kernel(x, out, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
    """The mean of each window of x (N, C, H, W) by PyTorch's rules: one thread per output."""
    idx = cuda.grid(1)
    n_batch, channels, oh, ow = out.shape
    height, width = x.shape[2], x.shape[3]
    if idx < out.size:
        n, c, y, x_ = idx // (channels * oh * ow), idx // (oh * ow) % channels, idx // ow % oh, idx % ow
        y0, x0 = y * sh - ph, x_ * sw - pw  # the window, padding included: [y0, y1) × [x0, x1)
        y1 = y0 + kh if y0 + kh < height + ph else height + ph
        x1 = x0 + kw if x0 + kw < width + pw else width + pw
        top, bottom = (y0 if y0 > 0 else 0), (y1 if y1 < height else height)  # the part inside the image
        left, right = (x0 if x0 > 0 else 0), (x1 if x1 < width else width)
        total = float32(0.0)
        for iy in range(top, bottom):
            for ix in range(left, right):
                total += x[n, c, iy, ix]
        if divisor > 0:
            area = divisor
        elif count_include_pad:
            area = (y1 - y0) * (x1 - x0)
        else:
            area = (bottom - top) * (right - left)
        out[n, c, y, x_] = total / float32(area)


def pool2d(x, mode: str, kernel, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
           count_include_pad: bool = True, divisor: int = 0):
    """Max or average pooling of x (N, C, H, W); stride defaults to the kernel size."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pairs(kernel, kernel if stride is None else stride, padding, dilation)
    if mode not in ("max", "avg"):
        raise LayerError(f"pool2d: mode {mode!r}, expected 'max' or 'avg'")
    oh = out_size(x.shape[2], kh, sh, ph, dh, ceil_mode)
    ow = out_size(x.shape[3], kw, sw, pw, dw, ceil_mode)
    out = array_module(x).empty((*x.shape[:2], oh, ow), np.float32)
    threads = block_threads(out.size)
    grid = blocks_for(out.size, threads)
    if mode == "max":
        max_pool2d_kernel[grid, threads](x, out, kh, kw, sh, sw, ph, pw, dh, dw)
    else:
        avg_pool2d_kernel[grid, threads](x, out, kh, kw, sh, sw, ph, pw, count_include_pad, divisor)
    return out


@cuda.jit
def relu_kernel(x, out):
    """out = max(x, 0), element by element."""
    i = cuda.grid(1)
    if i < x.size:
        out[i] = x[i] if x[i] > float32(0.0) else float32(0.0)


@cuda.jit
def sigmoid_kernel(x, out):
    """out = 1 / (1 + exp(-x))."""
    i = cuda.grid(1)
    if i < x.size:
        out[i] = float32(1.0) / (float32(1.0) + math.exp(-x[i]))


@cuda.jit
def silu_kernel(x, out):
    """out = x · sigmoid(x)."""
    i = cuda.grid(1)
    if i < x.size:
        out[i] = x[i] / (float32(1.0) + math.exp(-x[i]))


@cuda.jit
def hardswish_kernel(x, out):
    """out = x · relu6(x + 3) / 6."""
    i = cuda.grid(1)
    if i < x.size:
        gate = x[i] + float32(3.0)
        gate = float32(0.0) if gate < float32(0.0) else float32(6.0) if gate > float32(6.0) else gate
        out[i] = x[i] * gate / float32(6.0)


@cuda.jit
def relu6_kernel(x, out):
    """out = min(max(x, 0), 6)."""
    i = cuda.grid(1)
    if i < x.size:
        out[i] = float32(0.0) if x[i] < float32(0.0) else float32(6.0) if x[i] > float32(6.0) else x[i]


@cuda.jit
def hardsigmoid_kernel(x, out):
    """out = min(max(x / 6 + 1/2, 0), 1)."""
    i = cuda.grid(1)
    if i < x.size:
        gate = x[i] / float32(6.0) + float32(0.5)
        out[i] = float32(0.0) if gate < float32(0.0) else float32(1.0) if gate > float32(1.0) else gate


ACTIVATIONS = {"relu": relu_kernel, "relu6": relu6_kernel, "sigmoid": sigmoid_kernel, "silu": silu_kernel,
               "hardswish": hardswish_kernel, "hardsigmoid": hardsigmoid_kernel}


def activation(x, name: str):
    """The activation `name` (relu, sigmoid, silu, hardswish) of x, any shape."""
    if name not in ACTIVATIONS:
        raise LayerError(f"activation: unknown {name!r}, expected one of {', '.join(ACTIVATIONS)}")
    flat = x.reshape(-1)
    out = array_module(x).empty_like(flat)
    threads = block_threads(flat.size)
    ACTIVATIONS[name][blocks_for(flat.size, threads), threads](flat, out)
    return out.reshape(x.shape)


@cuda.jit
def gather2d_kernel(x, rows, cols, out):
    """out[n, c, y, x'] = x[n, c, rows[y], cols[x']]: nearest-neighbour resizing, one thread per output."""
    idx = cuda.grid(1)
    n_batch, channels, oh, ow = out.shape
    if idx < out.size:
        n, c, y, x_ = idx // (channels * oh * ow), idx // (oh * ow) % channels, idx // ow % oh, idx % ow
        out[n, c, y, x_] = x[n, c, rows[y], cols[x_]]


def resize_nearest(x, rows, cols):
    """x (N, C, H, W) resized to (N, C, len(rows), len(cols)) by reading source row rows[y], column cols[x']."""
    if x.ndim != 4 or (rows.size and int(rows.max()) >= x.shape[2]) or (cols.size and int(cols.max()) >= x.shape[3]):
        raise ShapeError(f"resize_nearest: rows up to {rows.max()} and columns up to {cols.max()} for x {x.shape}")
    out = array_module(x).empty((*x.shape[:2], rows.size, cols.size), np.float32)
    threads = block_threads(out.size)
    gather2d_kernel[blocks_for(out.size, threads), threads](x, rows, cols, out)
    return out


# %%
x = rng.standard_normal((1, 2, 7, 7)).astype(np.float32)
tx = torch.from_numpy(x)
weights = [rng.standard_normal(shape).astype(np.float32) for shape in [(4, 2, 3, 3), (3, 2, 1, 1), (4, 1, 3, 3)]]
bias = rng.standard_normal(4).astype(np.float32)


def conv(w: np.ndarray, stride: int, padding: int, groups: int) -> tuple:
    """(kuiper's conv2d, torch's) of x with weight w and the first len(w) biases."""
    b = bias[:len(w)]
    return (conv2d(dev(x), dev(w), dev(b), stride, padding, groups=groups),
            F.conv2d(tx, torch.from_numpy(w), torch.from_numpy(b), stride, padding, groups=groups))


checks = {
    "conv2d 3×3, stride 2 (im2col)": conv(weights[0], 2, 1, 1),
    "conv2d 1×1 (one GEMM)": conv(weights[1], 1, 0, 1),
    "conv2d depthwise × 2": conv(weights[2], 1, 1, 2),
    "max pool 3, stride 2, pad 1": (pool2d(dev(x), "max", 3, 2, 1), F.max_pool2d(tx, 3, 2, 1)),
    "avg pool 3, stride 2, pad 1": (pool2d(dev(x), "avg", 3, 2, 1, count_include_pad=False),
                                    F.avg_pool2d(tx, 3, 2, 1, count_include_pad=False)),
    "relu": (activation(dev(x), "relu"), F.relu(tx)),
    "sigmoid": (activation(dev(x), "sigmoid"), torch.sigmoid(tx)),
    "silu": (activation(dev(x), "silu"), F.silu(tx)),
    "hardswish": (activation(dev(x), "hardswish"), F.hardswish(tx)),
    "relu6, hardsigmoid": (np.stack([to_device(activation(dev(x), n), "cpu") for n in ("relu6", "hardsigmoid")]),
                           torch.stack([F.relu6(tx), F.hardsigmoid(tx)])),
    "nearest 2× upsampling": (resize_nearest(dev(x), dev(np.arange(14) // 2), dev(np.arange(14) // 2)),
                              F.interpolate(tx, scale_factor=2, mode="nearest")),
}
for name, (got, want) in checks.items():
    print(f"{name:28s}", agreement(to_device(got, "cpu"), want.numpy()))

# %% [markdown]
# ## One graph, two devices
#
# Lesson 02's `RuntimeGraph` runs one layer per operator on `Tensor`s; a tensor on device `'cuda'`
# holds a cupy array (under the simulator: a numpy array that the kernels treat as GPU memory). To
# put a CNN on the GPU, each layer gets a GPU twin, by a table from the layer's class to a `Kernel`:
# the function that runs it on device arrays (using the host layer's checked parameters) and the
# names of the weights to copy to the GPU once. Shape operators (flatten, reshape, permute, split,
# concat) are array methods that cupy runs on the GPU; lesson 05's expressions run there too, since
# numpy's ufuncs hand cupy arrays to cupy.
#
# A layer with no kernel (a bilinear resize, a transposed convolution, ...) still runs — on the
# host, with its inputs copied from the GPU and its outputs copied back. That is slow, so it is never
# silent: placing it logs a warning that names the operator.

# %%
#| export cuda.layers
import logging
import math
from collections.abc import Callable
from operator import attrgetter
from typing import NamedTuple

import numpy as np

from kuiper.cuda.cnn import activation, conv2d, pool2d, resize_nearest
from kuiper.cuda.device import device_module, to_device
from kuiper.errors import DeviceError, ShapeError
from kuiper.expression import evaluate
from kuiper.layer import Layer
from kuiper.layers.activation import Hardsigmoid, Hardswish, ReLU, ReLU6, Sigmoid, SiLU
from kuiper.layers.conv import Conv2d, Convolution
from kuiper.layers.expression import Expression
from kuiper.layers.linear import Linear
from kuiper.layers.pooling import AdaptiveAvgPool2d, MaxPool2d
from kuiper.layers.resize import resample_table, Upsample
from kuiper.layers.shape import batch_shape, Concat, Constant, Flatten, Identity, Permute, Reshape, Split
from kuiper.tensor import Tensor

log = logging.getLogger("kuiper.cuda")


class Kernel(NamedTuple):
    """How device 'cuda' runs a layer class: run(layer, *input arrays, *weights) -> array or tuple of arrays,
    the layer attributes holding weights (dotted names reach inside; copied to the GPU once), and which layers
    of the class it can run."""

    run: Callable[..., object]
    weights: tuple[str, ...] = ()
    fits: Callable[[Layer], bool] = lambda layer: True


def upsample(layer: Upsample, x):
    """Nearest resizing of x (N, C, H, W) as `layer` says; the source pixels from lesson 04's resample_table."""
    size = layer.size or tuple(math.floor(d * s) for d, s in zip(x.shape[2:], layer.scale))
    if min(size) < 1:
        raise ShapeError(f"{layer.op.where()}: scale_factor {layer.scale} makes {x.shape} empty: {size}")
    scales = (None, None) if layer.size else tuple(float(s) for s in layer.scale)
    rows, cols = (to_device(resample_table(n, m, s, "nearest", False)[0][:, 0], "cuda")  # (m,) int64 sources
                  for n, m, s in zip(x.shape[2:], size, scales))
    return resize_nearest(x, rows, cols)


def split(layer: Split, x) -> tuple:
    """x cut along layer.dim where the host layer cuts: it splits an empty array of the same length
    along that axis (no data, no copy), and the sizes of its pieces are the cuts."""
    proxy = np.empty([n if axis == layer.dim % x.ndim else 0 for axis, n in enumerate(x.shape)], np.float32)
    sizes = [piece.shape[layer.dim] for piece in layer(Tensor(proxy))]
    return tuple(device_module().split(x, [int(c) for c in np.cumsum(sizes)[:-1]], axis=layer.dim))


ACTIVATION_NAMES = {ReLU: "relu", ReLU6: "relu6", Sigmoid: "sigmoid", SiLU: "silu", Hardswish: "hardswish",
                    Hardsigmoid: "hardsigmoid"}
KERNELS: dict[type[Layer], Kernel] = {
    Conv2d: Kernel(lambda layer, x, w, b: conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups),
                   ("weight_", "bias")),
    Convolution: Kernel(lambda layer, x, w, b: conv2d(x, w, b, layer.conv.stride, layer.conv.padding,
                                                       layer.conv.dilation, layer.conv.groups),
                        ("conv.weight_", "conv.bias"), fits=lambda layer: layer.dims == 2 and not layer.pad_first),
    **{cls: Kernel(lambda layer, x: activation(x, ACTIVATION_NAMES[type(layer)])) for cls in ACTIVATION_NAMES},
    MaxPool2d: Kernel(lambda layer, x: pool2d(x, "max", layer.kernel, layer.stride, layer.padding, layer.dilation,
                                              layer.ceil_mode)),
    AdaptiveAvgPool2d: Kernel(lambda layer, x: x.mean(axis=(2, 3), keepdims=True),
                              fits=lambda layer: layer.size == (1, 1)),
    Linear: Kernel(lambda layer, x, w_t, b: x @ w_t if b is None else x @ w_t + b, ("weight_t", "bias")),
    Upsample: Kernel(upsample, fits=lambda layer: layer.mode == "nearest"),
    Concat: Kernel(lambda layer, *xs: device_module().concatenate(xs, axis=layer.dim)),
    Flatten: Kernel(lambda layer, x: x.reshape(*x.shape[:layer.start % x.ndim], -1, *x.shape[layer.end % x.ndim + 1:])),
    Reshape: Kernel(lambda layer, x: x.reshape(batch_shape(layer.shape, x))),
    Permute: Kernel(lambda layer, x: x.transpose(layer.dims)),
    Split: Kernel(split),
    Identity: Kernel(lambda layer, x: x),
    Expression: Kernel(lambda layer, *xs: device_module().asarray(evaluate(layer.program, list(xs)))),
    Constant: Kernel(lambda layer, value: value, ("value",)),
}


def on_device(out: object) -> Tensor | tuple[Tensor, ...]:
    """An array, or a tuple of them, as tensors on device 'cuda'."""
    return tuple(Tensor(o, device="cuda") for o in out) if isinstance(out, tuple) else Tensor(out, device="cuda")


class DeviceLayer:
    """A host layer run on device 'cuda' by its Kernel, with the layer's weights copied to the GPU once."""

    def __init__(self, layer: Layer, kernel: Kernel):
        self.layer, self.kernel = layer, kernel
        found = [attrgetter(name)(layer) for name in kernel.weights]
        self.weights = [None if w is None else to_device(np.asarray(w), "cuda") for w in found]

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        return on_device(self.kernel.run(self.layer, *(x.data for x in inputs), *self.weights))


class HostFallback:
    """A layer with no GPU kernel, run on the host: inputs copied from the GPU, outputs copied back."""

    def __init__(self, layer: Layer):
        self.layer = layer
        log.warning("%s has no GPU kernel: it runs on the CPU, copying its inputs from the GPU and its outputs "
                    "back", layer.op.where())

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        out = self.layer(*(x.to("cpu") for x in inputs))
        return tuple(o.to("cuda") for o in out) if isinstance(out, tuple) else out.to("cuda")


def place(layer: object, device: str) -> object:
    """`layer` (a host layer, or one placed before) ready for `device`: the host layer for 'cpu'; for
    'cuda' a DeviceLayer, or a HostFallback when no kernel fits. DeviceError when 'cuda' is not available."""
    host = layer.layer if isinstance(layer, (DeviceLayer, HostFallback)) else layer
    if device == "cpu":
        return host
    if device != "cuda":
        raise DeviceError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")
    device_module()
    kernel = KERNELS.get(type(host))
    return DeviceLayer(host, kernel) if kernel is not None and kernel.fits(host) else HostFallback(host)


# %%
#| export graph
import importlib


@patch_to(RuntimeGraph)
def to(self, device: str) -> RuntimeGraph:
    """This graph with every layer placed on `device` by kuiper.cuda.layers.place; forward still takes and
    gives numpy arrays (or tensors), and moves them. DeviceError when the device is not available."""
    placement = importlib.import_module("kuiper.cuda.layers")  # late: it imports the layers, which import us
    self.layers = {name: placement.place(layer, device) for name, layer in self.layers.items()}
    self.make_plan()  # the old plan holds the CPU layers it fused
    self.device = device
    return self


# %%
import kuiper

graph = kuiper.load(DATA / "tiny.pnnx.param")
x, want = np.load(DATA / "tiny.input.npy"), np.load(DATA / "tiny.output.npy")
on_cpu = graph(x)
graph.to("cuda")
print({name: type(layer).__name__ for name, layer in graph.layers.items()})
print("tiny graph on 'cuda' vs PyTorch:", agreement(graph(x), want), "| vs the CPU:", agreement(graph(x), on_cpu))

# %% [markdown]
# ## CUDA C: float4 loads and warp shuffles
#
# numba compiles a kernel to the same PTX that `nvcc` makes from CUDA C, but two tricks of fast
# kernels are clearer in CUDA C. Here is `kuiper/cuda/sgemv.cu`, the matrix-vector product again, and
# the block reduction of `kuiper/cuda/norm.cu`:

# %%
from importlib.resources import files

print((files("kuiper.cuda") / "sgemv.cu").read_text())
norm_source = (files("kuiper.cuda") / "norm.cu").read_text()
start = norm_source.index("// The sum of `value` over the block")
print(norm_source[start:norm_source.index("}\n", start) + 1])

# %% [markdown]
# * **One warp per output row.** `threadIdx.x` is the lane (0–31), `threadIdx.y` picks the row
#   among the block's 4 warps. A warp finishes its row without waiting for anybody else.
# * **float4 loads.** Reinterpreted as `float4`, the row is read 16 bytes per lane per
#   instruction: a warp moves 512 bytes at once, four times fewer load instructions for the same
#   bytes. (K must be a multiple of 4 and the rows 16-byte aligned.)
# * **Warp shuffles.** `__shfl_down_sync(mask, v, offset)` hands each lane the `v` of the lane
#   `offset` above it, straight from register to register. Five steps (16, 8, 4, 2, 1) leave the
#   sum in lane 0: no shared memory, no `__syncthreads` — the 32 lanes of a warp run in step.
#
# `kuiper/cuda/norm.cu` uses shuffles for RMSNorm and softmax: each warp reduces its values with
# `__shfl_xor_sync` (every lane gets the result), lane 0 of each warp puts its warp's total in
# shared memory, and one more warp-level step combines those — two barriers instead of log₂ 256
# = 8. Its reduction is printed above, after `sgemv.cu`.

# %% [markdown]
# cupy compiles a `.cu` file at run time (with NVRTC, for whatever GPU it finds) into a
# `RawModule`; its kernels are launched as `kernel(grid, block, args)`, with every integer as
# `np.int32` and every float as `np.float32`, since C gets raw bytes and no types. The module
# `kuiper.cuda.cuda_c` wraps the two files. A missing or broken source raises a new error:

# %%
#| export errors
class KernelError(KuiperError, RuntimeError):
    """A CUDA C source that is missing or does not compile; the message names the .cu file."""


# %%
#| export cuda.cuda_c
import shutil
import subprocess
import tempfile
from functools import cache
from importlib.resources import files
from pathlib import Path

import numpy as np

from kuiper.cuda.device import cupy_module
from kuiper.errors import KernelError, ShapeError

WARPS_PER_BLOCK = 4  # sgemv: a block of 32 × 4 threads computes 4 outputs


def sources() -> list[str]:
    """The names of the CUDA C files in kuiper/cuda, without '.cu'."""
    return sorted(p.name[:-3] for p in files("kuiper.cuda").iterdir() if p.name.endswith(".cu"))


def source(name: str) -> str:
    """The text of kuiper/cuda/{name}.cu."""
    path = files("kuiper.cuda") / f"{name}.cu"
    if not path.is_file():
        raise KernelError(f"kuiper/cuda/{name}.cu: no such CUDA source, expected one of {', '.join(sources())}")
    return path.read_text()


def compile_cubin(name: str, arch: str = "sm_80") -> bytes:
    """kuiper/cuda/{name}.cu compiled by nvcc for `arch` (sm_80: A100, sm_90: H100); needs no GPU."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise KernelError(f"kuiper/cuda/{name}.cu: nvcc is not on PATH (it comes with the CUDA toolkit)")
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = Path(tmp) / f"{name}.cu", Path(tmp) / f"{name}.cubin"
        src.write_text(source(name))
        run = subprocess.run([nvcc, f"-arch={arch}", "--cubin", "-o", str(cubin), str(src)],
                             capture_output=True, text=True)
        if run.returncode:
            raise KernelError(f"kuiper/cuda/{name}.cu: nvcc -arch={arch} failed:\n{run.stderr}")
        return cubin.read_bytes()


@cache
def module(name: str):
    """kuiper/cuda/{name}.cu compiled by cupy for this process's GPU (once): a cupy.RawModule."""
    return cupy_module().RawModule(code=source(name))


def sgemv(x, w, vectorised: bool = True):
    """x (T, K) @ w.T for w (N, K), cupy arrays: one warp per output; float4 loads when vectorised."""
    cp = cupy_module()
    (n_tokens, k), n = x.shape, w.shape[0]
    if vectorised and (k % 4 or x.data.ptr % 16 or w.data.ptr % 16):
        raise ShapeError(f"sgemv_f32x4: K = {k} must be a multiple of 4 and x, w 16-byte aligned")
    x, w = cp.ascontiguousarray(x, cp.float32), cp.ascontiguousarray(w, cp.float32)
    out = cp.empty((n_tokens, n), cp.float32)
    kernel = module("sgemv").get_function("sgemv_f32x4" if vectorised else "sgemv_f32")
    kernel((-(-n // WARPS_PER_BLOCK), n_tokens), (32, WARPS_PER_BLOCK), (w, x, out, np.int32(n), np.int32(k)))
    return out


def rmsnorm(x, weight, eps: float, threads: int = 256):
    """RMSNorm of each row of the cupy array x (rows, D) with warp-shuffle reductions."""
    cp = cupy_module()
    out = cp.empty_like(x)
    module("norm").get_function("rmsnorm_f32")((x.shape[0],), (threads,),
                                                (x, weight, out, np.int32(x.shape[1]), np.float32(eps)))
    return out


def softmax(x, threads: int = 256):
    """Softmax of each row of the cupy array x (rows, n) with warp-shuffle reductions."""
    cp = cupy_module()
    out = cp.empty_like(x)
    module("norm").get_function("softmax_f32")((x.shape[0],), (threads,), (x, out, np.int32(x.shape[1])))
    return out


# %% [markdown]
# A CUDA C source that does not compile would only fail on a GPU machine, at run time. `nvcc`
# needs no GPU to compile, so the course checks every `.cu` file for the A100 (`sm_80`) and H100
# (`sm_90`) wherever the CUDA toolkit is installed. The cubin is an ELF file holding the machine
# code of each `extern "C"` kernel, under its C name:

# %%
# NBVAL_SKIP
from kuiper.course import LONG
from kuiper.cuda import cuda_c

if LONG:  # four nvcc runs: when asked (KUIPER_LONG=1); tests/test_cuda.py compiles them too
    for name in cuda_c.sources():
        for arch in ("sm_80", "sm_90"):
            try:
                cubin = cuda_c.compile_cubin(name, arch)
            except Exception as err:
                print(f"{name}.cu for {arch}: {err}")
                continue
            kernels = [k for k in ("sgemv_f32", "sgemv_f32x4", "rmsnorm_f32", "softmax_f32") if k.encode() in cubin]
            kind = "an ELF cubin" if cubin[:4] == b"\x7fELF" else "not an ELF file"
            print(f"{name}.cu for {arch}: {kind} of {len(cubin):,} bytes, kernels {', '.join(kernels)}")
# `nvcc --resource-usage` shows what each kernel costs the SM: registers per thread and shared
# memory per block, which bound how many warps fit on an SM at once (the *occupancy*):
if LONG and shutil.which("nvcc"):
    run = subprocess.run(["nvcc", "-arch=sm_90", "--cubin", "--resource-usage", "-o", os.devnull,
                          str(files("kuiper.cuda") / "sgemv.cu")], capture_output=True, text=True)
    print("\n".join(line for line in run.stderr.splitlines() if "Used" in line or "Function properties" in line))
elif LONG:
    print("nvcc is not installed here")

# %% [markdown]
# ## GPU benchmark
#
# On a GPU, this cell times the matrix-vector product of a 4096 × 4096 layer (64 MB of weights)
# four ways and converts the time to memory bandwidth — the number that matters for decoding.
# Expect cuBLAS and `sgemv_f32x4` near the card's peak (about 2–3 TB/s on an H100), the scalar
# CUDA C version a little behind, and the one-block-per-row numba kernel well behind. Without a
# GPU it only says so: timing the simulator would measure Python threads.

# %%
# NBVAL_SKIP
def benchmark_matvec(k: int = 4096, n: int = 4096, repeat: int = 50) -> None:
    """Print time and bandwidth of x @ w.T for one token, by every method."""
    import cupy as cp
    from cupyx.profiler import benchmark

    x = cp.asarray(rng.standard_normal((1, k)), cp.float32)
    w = cp.asarray(rng.standard_normal((n, k)), cp.float32)
    want = x @ w.T
    methods = {"cuBLAS (x @ w.T)": lambda: x @ w.T,
               "numba, a block per row": lambda: llm_ops.matmul(x, w, method="matvec"),
               "CUDA C sgemv_f32": lambda: cuda_c.sgemv(x, w, vectorised=False),
               "CUDA C sgemv_f32x4": lambda: cuda_c.sgemv(x, w)}
    print(f"{cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, x (1, {k}) @ w ({n}, {k}).T")
    for name, fn in methods.items():
        assert float(cp.abs(fn() - want).max() / cp.abs(want).max()) < 1e-4, name
        seconds = benchmark(fn, n_repeat=repeat, n_warmup=5).gpu_times.mean()
        print(f"  {name:24s} {seconds * 1e6:8.1f} µs   {w.nbytes / seconds / 1e9:6.0f} GB/s")


if GPU and LONG:  # a benchmark: runs when asked (KUIPER_LONG=1)
    benchmark_matvec()
elif LONG:
    print("no GPU here: the kernels above ran on numba's CUDA simulator, so there is nothing to time")

# %% [markdown]
# ## What we built
#
# * `kuiper.cuda.kernels`: numba.cuda kernels — vector add, the block reductions `block_sum` and
#   `block_max`, RMSNorm, softmax, the matrix-vector product, RoPE, SwiGLU, embedding, argmax and
#   attention over the KV cache.
# * `kuiper.cuda.llm_ops`: the GPU backend of the LLM operator seam, launching those kernels on
#   cupy arrays (and, under the simulator, on numpy arrays).
# * `kuiper.cuda.cnn`: im2col + cuBLAS convolution (one GEMM for 1×1, a direct kernel for depthwise),
#   pooling, activations and nearest-neighbour resizing.
# * `kuiper.cuda.layers` and `RuntimeGraph.to`: every zoo CNN on the GPU, each layer on its kernel or,
#   named in a warning, on the host (`kuiper run/detect/segment ... --device cuda`).
# * `kuiper.cuda.cuda_c` with `sgemv.cu` and `norm.cu`: CUDA C kernels with float4 loads and warp
#   shuffles, compiled by cupy at run time and checked by nvcc without a GPU.
# * `kuiper.cuda.device`: `cuda_available()`, `device_module()`, `to_device()`, `use_simulator()`.
#
# Importing any of them needs neither cupy nor a GPU: cupy is imported only when an array is
# put on the GPU.
