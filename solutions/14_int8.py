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
# # Lesson 14 — int8 quantization
#
# Generating text one token at a time, an LLM multiplies a single vector by every weight matrix
# of the model: each weight is read from memory once and used for **one** multiply-add. The CPU can
# do far more multiply-adds per second than memory can deliver float32 weights, so the time per
# token is set by the *bytes* of weights it has to read. Storing the weights as 8-bit integers
# with a few scales — as KuiperLLama and llama.cpp (`Q8_0`) do — reads a quarter of the bytes, at
# an error the model barely notices.
#
# **What you will build.** `kuiper.quant`: the quantizer, the int8 matrix-vector and matrix-matrix
# kernels that use it without ever expanding the whole matrix back to float32, the `Q8_0` block layout
# and a GGUF writer whose bytes are identical to llama.cpp's (`kuiper quantize`), and an int8 SmolLM2
# measured for accuracy and speed.
#
# **Prerequisites.** Lessons 09 (GGUF, Q8_0 blocks) and 11 (the Llama model); numba's `@njit` and
# `prange` as lesson 04 used them. **Time:** about 75 minutes.
#
# | exercise | what |
# |---|---|
# | 14.1 | dequantize: every weight times its group's scale |
# | 14.2 | symmetric per-group int8 quantization of a weight matrix |
# | 14.3 | Q8_0 blocks: pack a quantized weight into llama.cpp's 34-byte blocks, and unpack them |
# | 14.4 | the dot product of one group: int8 weights, float32 inputs, one scale |
# | 14.5 | the quantized matrix-vector kernel of decoding |
# | 14.6 | the prefill kernel: widen a block of rows once, reuse it for every token |
# | 14.7 | perplexity, the error metric a user notices |
# | 14.8 | a matrix-vector kernel on GGUF's Q4_1 blocks as the file stores them |

# %%
#| default_exp quant

# %%
import time

import gguf
import matplotlib.pyplot as plt
import numpy as np

import kuiper
import kuiper.quant
from kuiper.course import DATA, agreement, check

rng = np.random.default_rng(0)

# %% [markdown]
# ## Why int8: bytes per token
#
# SmolLM2-135M, the model of lesson 11, is a stack of 30 identical layers of 7 matrices, plus the
# 49,152 × 576 embedding table that doubles as the output layer (`lm_head`). In a decode step
# every one of these weights is read once. The cell counts the bytes that makes, per token, for
# float32, float16, and int8 with one float32 scale per group of 64 weights (the $4/64$ byte of
# scale per weight is the price of the group):

# %%
SMOLLM2 = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
           "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)}
per_layer = sum(n * k for n, k in SMOLLM2.values())
weights = 30 * per_layer + 49152 * 576
print(f"{weights / 1e6:.1f} M weights read per token")
for name, bytes_per_weight in [("float32", 4), ("float16", 2), ("int8, group 64", 1 + 4 / 64)]:
    print(f"{name:15} {weights * bytes_per_weight / 1e6:6.0f} MB per token")

# %% [markdown]
# At a typical 20–50 GB/s of memory bandwidth, 538 MB is 11–27 ms per token before a single
# multiply; int8 cuts the floor to about a quarter. Prefill — the prompt, many tokens at once — reuses
# each weight for every token and is limited by arithmetic instead, so int8 helps it less.
#
# ## Symmetric per-group quantization
#
# Cut each row of a weight matrix $W$ (shape $N \times K$, PyTorch's `out × in` layout) into groups
# of $g$ consecutive weights. A group gets one scale, chosen so that its largest weight maps to
# $\pm 127$:
#
# $$s = \frac{\max_j |w_j|}{127}, \qquad q_j = \operatorname{round}\!\left(\frac{w_j}{s}\right)
#   \in [-127, 127], \qquad \hat w_j = s\, q_j .$$
#
# *Symmetric*: zero stays exactly zero and there is no offset to store (−128 is left unused, so
# the range is the same on both sides). Rounding to the nearest integer makes the error of every
# weight at most half a step, $|w_j - \hat w_j| \le s/2$. The group size $g$ trades bytes for
# error: one outlier weight inflates the scale — and so the error — of its whole group, and a
# smaller group confines the damage. $g = K$ is one scale per output channel.
#
# Two details make the result match llama.cpp's `Q8_0` bit for bit. The division is a
# multiplication by the reciprocal $1/s$, both in float32, exactly as `ggml` computes it; and
# `round` is C's `roundf`, which sends halves *away* from zero, where `np.round` sends them to the
# nearest even integer ($2.5 \to 2$). `round_half_away` does it with floats only (the obvious
# `np.floor(a + 0.5)` is wrong for $a = 0.49999997$: the sum rounds up to exactly 1 in float32).

# %%
#| export
from dataclasses import dataclass

import numpy as np

from kuiper.errors import DTypeError, ShapeError


def round_half_away(v: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves away from zero, like C's roundf (np.round picks the even one)."""
    a = np.abs(v)
    whole = np.floor(a)
    return np.copysign(whole + (a - whole >= 0.5), v)


# %%
print(round_half_away(np.array([2.5, -2.5, 0.49999997, 1.5, -0.2], np.float32)), np.round([2.5, -2.5]))

# %% [markdown]
# A quantized weight keeps the int8 matrix, the scales and the group size together. The checks
# in `__post_init__` matter more than usual: the numba kernels below do not check bounds, so a
# scales array of the wrong shape would make them read past its end.

# %%
#| export
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


# %% [markdown]
# ## Exercise 14.1 — dequantize
#
# The float32 matrix a `QuantizedWeight` stands for is $\hat w = s\,q$: view `q` (N, K) as
# `(N, K // group, group)`, multiply by the scales (N, K // group) broadcast over the last axis, and
# reshape back to (N, K).

# %%
#| export
#| exercise: view q as (N, K // group, group), multiply by scales[:, :, None], reshape to (N, K)
def dequantize(qw: QuantizedWeight) -> np.ndarray:
    """The float32 matrix (N, K) that `qw` stands for: every weight times its group's scale."""
    ### BEGIN SOLUTION
    n, k = qw.shape
    return (qw.q.reshape(n, -1, qw.group) * qw.scales[:, :, None]).reshape(n, k)
    ### END SOLUTION


# %%
with check("Exercise 14.1"):
    q = rng.integers(-127, 128, (3, 16)).astype(np.int8)
    scales = rng.uniform(0.5, 2, (3, 4)).astype(np.float32)
    got = dequantize(kuiper.quant.QuantizedWeight(q, scales, 4))
    want = q * np.repeat(scales, 4, axis=1)
    assert got.shape == (3, 16), f"expected shape (3, 16), got {got.shape}"
    assert got.dtype == np.float32, f"expected float32, got {got.dtype}"
    bad = np.argwhere(~np.isclose(got, want))
    assert not bad.size, f"expected {want[tuple(bad[0])]:.4f} at {tuple(bad[0].tolist())}, got {got[tuple(bad[0])]:.4f}"

# %% [markdown]
# ## Exercise 14.2 — the quantizer
#
# View `w` (N, K) as `(N, K // group, group)` so that each group is a row of the last axis. Take
# `scales = max |w| / 127` over that axis in float32, the reciprocal `1 / scales` (0 where a group
# is all zeros: its weights stay 0 instead of becoming NaN — `np.divide(..., where=...)` does it),
# multiply, `round_half_away`, clip to $\pm 127$ and store as int8. Raise `ShapeError` naming the
# expected and actual shapes when `w` is not 2-D or `K` is not a multiple of `group`.

# %%
#| export
#| exercise: scales = max|w| / 127 per group (float32); q = round_half_away(w * (1 / scales)) clipped to ±127, as int8
def quantize(w: np.ndarray, group: int = 64) -> QuantizedWeight:
    """Symmetric int8 quantization of `w` (N, K) with one float32 scale per `group` consecutive inputs.

    The int8 values equal llama.cpp's Q8_0 ones at group 32 (`to_q8_0` then rounds the scales to float16)."""
    ### BEGIN SOLUTION
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
    ### END SOLUTION


# %%
with check("Exercise 14.2"):
    w = rng.standard_normal((48, 256), dtype=np.float32)
    w[3, 64:128] = 0  # an all-zero group
    for group in (32, 64, 128, 256):
        qw = quantize(w, group)
        assert qw.q.shape == (48, 256) and qw.q.dtype == np.int8, f"expected q (48, 256) int8, got {qw.q.shape} {qw.q.dtype}"
        assert qw.scales.shape == (48, 256 // group), f"group {group}: expected scales (48, {256 // group}), got {qw.scales.shape}"
        assert np.abs(qw.q).max() == 127, f"expected the largest weight of a group to map to ±127, got {np.abs(qw.q).max()}"
        want_scales = np.abs(w.reshape(48, -1, group)).max(-1) / np.float32(127)
        assert np.allclose(qw.scales, want_scales), f"group {group}: expected scales max|w| / 127, got {qw.scales[0, :3]}"
        error = np.abs((qw.q.reshape(48, -1, group) * qw.scales[:, :, None]).reshape(48, 256) - w)
        bound = np.repeat(qw.scales, group, axis=1) / 2
        assert (error <= bound * (1 + 1e-6)).all(), f"group {group}: expected errors <= scale / 2, got {(error / bound).max():.2f} × scale / 2"
    assert not quantize(w, 64).q[3, 64:128].any(), "expected an all-zero group to quantize to zeros"
    halves = np.zeros((1, 32), np.float32)
    halves[0, :5] = [127, 2.5, -0.5, 1.5, -3.5]  # scale 1: the values themselves, halves among them
    got = quantize(halves, 32).q[0, :5].tolist()
    assert got == [127, 3, -1, 2, -4], f"halves round away from zero: expected [127, 3, -1, 2, -4], got {got}"
    want = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0).reshape(48, 8, 34)[:, :, 2:]
    got = quantize(w, 32).q
    differ = np.argwhere(got != want.view(np.int8).reshape(48, 256))
    assert not differ.size, f"expected Q8_0's int8 values, {len(differ)} differ, first at {differ[0].tolist()}"
    for bad in (w[:, :100], w[0]):
        try:
            quantize(bad, 64)
        except Exception as err:
            assert isinstance(err, kuiper.ShapeError), f"shape {bad.shape}: expected a ShapeError, got {err!r}"
        else:
            raise AssertionError(f"shape {bad.shape} with group 64: expected a ShapeError, got none")

# %% [markdown]
# ## What the error looks like
#
# Real LLM weights are roughly Gaussian, with a few large *outliers*. Here is a seeded random
# matrix built that way (σ = 0.02, and 40 weights 15–30 σ out), quantized with groups of 32, 64
# and 128 weights. (SmolLM2's rows have $K = 576 = 4.5 \times 128$, so for it only 32 and 64 fit;
# llama.cpp's `Q8_0` uses 32.)

# %%
from kuiper.quant import dequantize, quantize  # the package's version: the cells below also run before 14.2 is done

w = rng.normal(0, 0.02, (512, 1536)).astype(np.float32)
outliers = rng.choice(w.size, 40, replace=False)
w.flat[outliers] = rng.choice([-1, 1], 40) * rng.uniform(0.3, 0.6, 40)
errors = {group: dequantize(quantize(w, group)) - w for group in (32, 64, 128)}

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].hist(w.ravel(), bins=200, color="tab:gray", log=True)
axes[0].set_title("weights (log count): a Gaussian and a few outliers")
for (group, error), colour in zip(errors.items(), ["tab:blue", "tab:orange", "tab:red"]):
    axes[1].hist(error.ravel(), bins=200, range=(-2.5e-3, 2.5e-3), histtype="step", log=True,
                 color=colour, label=f"group {group}")
axes[1].set_title("quantization error $\\hat w - w$ (log count)")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Most groups have a scale near $3\sigma/127$ and an error spread evenly within $\pm s/2$ — the
# central block, much narrower than the weights. A group holding an outlier has a scale ten times
# larger: those groups make the wide skirts, and a larger group puts more weights under an
# outlier's scale. In numbers, with the bytes each weight costs:

# %%
print(f"{'group':>5} {'bytes/weight':>13} {'max |error|':>12} {'mean |error|':>13} {'mean |error| / σ':>17}")
for group, error in errors.items():
    print(f"{group:5} {1 + 4 / group:13.4f} {np.abs(error).max():12.2e} {np.abs(error).mean():13.2e} "
          f"{np.abs(error).mean() / 0.02:17.4f}")

# %% [markdown]
# ## Compatible with llama.cpp's Q8_0
#
# GGUF files store `Q8_0` as blocks of 34 bytes: a float16 scale `d`, then the 32 int8 values.
# `ggml` computes the int8 values with the float32 scale and only then rounds the scale to float16
# for storage — the int8 values therefore equal `quantize(w, 32).q`, and converting is a matter of
# laying the bytes out. kuiper keeps its scales in float32, like KuiperLLama: rounding to float16
# would cost a relative $2^{-11}$ on every scale of a weight quantized here, and nothing when a
# `Q8_0` file is read (a float16 widens exactly to float32). So `from_q8_0(to_q8_0(qw))` equals `qw`
# up to that rounding of the scales, and `to_q8_0(from_q8_0(blocks))` gives back the very same
# bytes.
#
# ## Exercise 14.3 — Q8_0 blocks
#
# `to_q8_0`: each row of a group-32 weight becomes `K // 32` blocks of 34 bytes. Round the scales
# to float16 and view their bytes as uint8 `(N, K // 32, 2)`; view the int8 values as uint8
# `(N, K // 32, 32)`; put each block's 2 scale bytes before its 32 values (`np.concatenate` on the
# last axis) and flatten each row. `from_q8_0` reads it back: check the size, view the bytes as
# `(N, K // 32, 34)`, and take the float16 scale from bytes 0–1 (widened to float32) and the int8
# values from bytes 2–33 (`.copy().view(...)`: a view changes dtype only on contiguous memory).

# %%
#| export
#| exercise: to_q8_0: [float16 scale bytes | 32 int8 bytes] per block, each row flattened; from_q8_0: the reverse, size checked
Q8_0_BLOCK = 32


def to_q8_0(qw: QuantizedWeight) -> np.ndarray:
    """The Q8_0 bytes of a group-32 weight: uint8 (N, K // 32 * 34), each block a float16 scale then 32 int8."""
    if qw.group != Q8_0_BLOCK:
        raise ShapeError(f"to_q8_0: Q8_0 has groups of {Q8_0_BLOCK} weights, got group {qw.group}")
    n, k = qw.shape
    ### BEGIN SOLUTION
    scales = qw.scales.astype(np.float16).view(np.uint8).reshape(n, -1, 2)
    return np.concatenate([scales, qw.q.view(np.uint8).reshape(n, -1, Q8_0_BLOCK)], axis=2).reshape(n, -1)
    ### END SOLUTION


def from_q8_0(blocks: np.ndarray, shape: tuple[int, int]) -> QuantizedWeight:
    """The weight (N, K) = `shape` stored as Q8_0 bytes `blocks` (N * K // 32 blocks of 34 bytes)."""
    n, k = shape
    ### BEGIN SOLUTION
    if k % Q8_0_BLOCK or blocks.size != n * k // Q8_0_BLOCK * 34:
        raise ShapeError(f"from_q8_0: a ({n}, {k}) Q8_0 weight needs K a multiple of 32 and "
                         f"{n * k // Q8_0_BLOCK * 34} bytes, got {blocks.size}")
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(n, k // Q8_0_BLOCK, 34)
    scales = blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    return QuantizedWeight(blocks[:, :, 2:].copy().view(np.int8).reshape(n, k), scales, Q8_0_BLOCK)
    ### END SOLUTION


# %%
with check("Exercise 14.3"):
    w = rng.standard_normal((64, 576), dtype=np.float32)
    w[5, :32] *= 1000  # a scale that float16 must round
    blocks = to_q8_0(kuiper.quant.quantize(w, 32))
    want = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    assert blocks.shape == want.shape and blocks.dtype == np.uint8, \
        f"to_q8_0: expected uint8 {want.shape}, got {blocks.dtype} {blocks.shape}"
    differ = np.argwhere(blocks != want)
    assert not differ.size, f"to_q8_0: expected gguf's Q8_0 bytes, {len(differ)} differ, first at (row, byte) {differ[0].tolist()}"
    qw = from_q8_0(want, w.shape)
    want_w = gguf.quants.dequantize(want, gguf.GGMLQuantizationType.Q8_0)
    assert qw.scales.dtype == np.float32 and qw.scales.shape == (64, 18), \
        f"from_q8_0: expected float32 scales (64, 18), got {qw.scales.dtype} {qw.scales.shape}"
    got_w = qw.q * np.repeat(qw.scales, 32, axis=1)
    assert np.array_equal(got_w, want_w), f"from_q8_0: expected gguf's weights, max |Δ| {np.abs(got_w - want_w).max():.3g}"
    try:
        from_q8_0(want[:, :-1], w.shape)
    except Exception as err:
        assert isinstance(err, kuiper.ShapeError), f"from_q8_0 of one byte too few per row: expected a ShapeError, got {err!r}"
    else:
        raise AssertionError("from_q8_0 of one byte too few per row: expected a ShapeError, got none")

# %% [markdown]
# ## Exercise 14.4 — the dot product of one group
#
# Output $n$ of `x @ W.T` is $\sum_k x_k w_{nk}$. With $w_{nk} = s_{ng}\, q_{nk}$ and the scale
# constant over a group, it factors group by group:
#
# $$y_n = \sum_{g} s_{ng} \sum_{k \in g} x_k\, q_{nk}$$
#
# so the inner sum works on the int8 values directly and the scale is multiplied in once per group
# rather than once per weight. No float32 copy of $W$ is ever made: the int8 bytes go from memory
# to the registers, where they are widened to float32 just before the multiply. Write the inner
# sum for one group as a numba function: accumulate `x[j] * q[j]` in a float32 `acc` (start it at
# `np.float32(0)`, and widen each weight with `np.float32(q[j])`: numba would otherwise compute in
# float64, twice slower), then return `acc * scale`.

# %%
#| export
from numba import njit, prange

# %%
#| export
#| exercise: acc = np.float32(0); add x[j] * np.float32(q[j]) over the group; return acc * scale
@njit(fastmath=True, cache=True)
def group_dot(x, q, scale):
    """One group's share of an output: (x · q) * scale for x float32 (g,) and q int8 (g,)."""
    ### BEGIN SOLUTION
    acc = np.float32(0.0)
    for j in range(q.size):
        acc += x[j] * np.float32(q[j])
    return acc * scale
    ### END SOLUTION


# %%
with check("Exercise 14.4"):
    x = rng.standard_normal(64, dtype=np.float32)
    q = rng.integers(-127, 128, 64).astype(np.int8)
    got = group_dot(x, q, np.float32(0.01))
    want = float(x.astype(np.float64) @ q * 0.01)
    assert isinstance(got, (float, np.floating)), f"expected a float, got {type(got)}"
    assert abs(got - want) < 1e-5 * abs(x) @ np.abs(q) * 0.01, f"got {got}, expected {want:.6f}"
    assert group_dot(x[:0], q[:0], np.float32(0.01)) == 0, "an empty group sums to 0"

# %% [markdown]
# ## Exercise 14.5 — the matrix-vector kernel
#
# A decode step is one token: `qmatvec_kernel` runs the rows of $W$ in parallel (`prange`), each
# row group by group with `group_dot`. numba inlines the call, and with `fastmath` LLVM turns the
# loop into AVX2 instructions that load 8 int8 weights, widen them to float32 and fuse multiply and
# add — streaming a quarter of the bytes that numpy's float32 `x @ w.T` must read.
#
# View `x` (K,) as `(G, K // G)` and `q` (N, K) as `(N, G, K // G)` (G = the number of groups, the
# second axis of `scales`; reshapes of contiguous arrays are free). For each row `n` in `prange`,
# add up `group_dot` of every group in a float32 `total`, and write it to `out[n]`.

# %%
#| export
#| exercise: x as (G, K // G), q as (N, G, K // G); for n in prange(N): out[n] = sum over g of group_dot(x[g], q[n, g], scales[n, g])
@njit(parallel=True, fastmath=True, cache=True)
def qmatvec_kernel(x, q, scales, out):
    """out[n] = Σ_g scales[n, g] * (x_g · q[n, g]): x (K,) float32, q (N, K) int8, scales (N, G)."""
    ### BEGIN SOLUTION
    n_rows, k = q.shape
    n_groups = scales.shape[1]
    x_groups = x.reshape(n_groups, k // n_groups)
    q_groups = q.reshape(n_rows, n_groups, k // n_groups)
    for n in prange(n_rows):
        total = np.float32(0.0)
        for g in range(n_groups):
            total += group_dot(x_groups[g], q_groups[n, g], scales[n, g])
        out[n] = total
    ### END SOLUTION


# %%
with check("Exercise 14.5"):
    for n, k, group in [(37, 256, 32), (8, 192, 64), (5, 128, 128)]:
        q = rng.integers(-127, 128, (n, k)).astype(np.int8)
        scales = rng.uniform(0.001, 0.01, (n, k // group)).astype(np.float32)
        x = rng.standard_normal(k, dtype=np.float32)
        out = np.full(n, np.nan, np.float32)
        qmatvec_kernel(x, q, scales, out)
        want = (q * np.repeat(scales, group, axis=1)).astype(np.float64) @ x
        bad = np.flatnonzero(~(np.abs(out - want) <= 1e-5 * np.abs(want).max()))
        assert not bad.size, f"({n}, {k}) group {group}: expected {want[bad[0]]:.5f} at row {bad[0]}, got {out[bad[0]]:.5f}"

# %% [markdown]
# ## Exercise 14.6 — the prefill kernel
#
# `qmatmul` handles a block of $T$ tokens — the prompt, in prefill — and there the trade-off
# changes: each weight is used $T$ times, so it pays to widen a row to float32 once and reuse it for
# every token. `qmatmul_kernel` does that 16 rows at a time (`ROWS_PER_BLOCK`), in a buffer that
# stays in the fastest cache, and a row's product with a token is then one plain float32 sum.
#
# Write `widen_row`: `out[start + j] = float32(q[start + j]) * scales[g]` for the `group` weights of
# each group `g` (loop over `j` in `range(group)`, not over `range(start, start + group)`: numba
# vectorises the first, not the second). Then `qmatmul_kernel`: in `prange` over the blocks of 16
# rows (the last one may be shorter), widen the block's rows into a `(rows, K)` float32 buffer, and
# for every token `t` and row `r` write the dot product of `x[t]` with the widened row to
# `out[t, first + r]`.

# %%
#| export
#| exercise: widen_row: out[g*group + j] = float32(q[...]) * scales[g]; qmatmul_kernel: per block of 16 rows, widen them once, then out[t, row] = x[t] · widened row
ROWS_PER_BLOCK = 16


@njit(fastmath=True, cache=True)
def widen_row(q, scales, out):
    """out (K,) float32 = the int8 row q (K,) times the scale of each group."""
    ### BEGIN SOLUTION
    group = q.size // scales.size
    for g in range(scales.size):
        start = g * group
        for j in range(group):  # range(start, start + group) would not vectorize
            out[start + j] = np.float32(q[start + j]) * scales[g]
    ### END SOLUTION


@njit(parallel=True, fastmath=True, cache=True)
def qmatmul_kernel(x, q, scales, out):
    """out = x @ dequantize(q, scales).T for x (T, K): blocks of rows widened once, reused by every token."""
    ### BEGIN SOLUTION
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
    ### END SOLUTION


# %%
with check("Exercise 14.6"):
    q = rng.integers(-127, 128, (37, 128)).astype(np.int8)
    scales = rng.uniform(0.001, 0.01, (37, 4)).astype(np.float32)
    w = q * np.repeat(scales, 32, axis=1)
    row = np.full(128, np.nan, np.float32)
    widen_row(q[3], scales[3], row)
    bad = np.flatnonzero(~np.isclose(row, w[3]))
    assert not bad.size, f"widen_row: expected {w[3, bad[0]]:.5f} at {bad[0]}, got {row[bad[0]]:.5f}"
    for tokens in (2, 5):
        x = rng.standard_normal((tokens, 128), dtype=np.float32)
        out = np.full((tokens, 37), np.nan, np.float32)
        qmatmul_kernel(x, q, scales, out)
        want = x.astype(np.float64) @ w.T
        bad = np.argwhere(~(np.abs(out - want) <= 1e-5 * np.abs(want).max()))
        assert not bad.size, (f"T={tokens}, 37 rows: expected {want[tuple(bad[0])]:.5f} at (token, row) {tuple(bad[0].tolist())}, "
                              f"got {out[tuple(bad[0])]:.5f}")

# %% [markdown]
# ## Two rows at a time, and the next rows asked for early
#
# `qmatvec_kernel` is far from what the memory delivers, for two reasons. The first is arithmetic:
# each weight costs a widening, a convert and a multiply-add, each group a sum across the vector
# register, and loading $x$ is the same work for every row. So `qmatvec_pairs_kernel` works on two
# rows at once, which loads each value of $x$ once for both and gives the processor two independent
# sums to interleave, and it walks each group in chunks of 32 weights: a loop whose length numba
# knows at compile time, which LLVM unrolls whole into four 8-wide multiply-adds per row, with no
# checks for a remainder. (The other lever, llama.cpp's, rounds $x$ to integers and sums int8
# products with `vpmaddwd`; written in numba it measured 0.7–0.9 × this float kernel, because LLVM
# picks 256-bit `vpmulld` for most of the loop.)
#
# The second reason is waiting. On a matrix already in cache that kernel ran 13.8 G weights/s on one
# core, yet only about 7 GB/s of int8 weights came from memory: the core computes on the rows it
# has, asks for the next cache line, waits about 100 ns for it, and computes again — the two never
# overlap, so their times add. A **software prefetch** overlaps them: lesson 11's `prefetch(a, offset)`
# (Exercise 11.10), LLVM's `llvm.prefetch` on the byte `offset` of an array's data, asks the memory
# for a cache line the kernel will need soon and does not wait for it. It never faults, so an offset
# past the end is harmless, but the kernels keep it inside the array anyway. Lesson 11's float32
# `_matvec` prefetches a whole row, 4 rows ahead, before it sums a row; this kernel, already written in
# chunks, puts one prefetch in each chunk. While it computes the pair $(n, n+1)$, the kernel prefetches the pair `PREFETCH_ROWS` = 8 rows below, one cache line (64 bytes) per chunk:
# the two rows' $2K$ bytes in the $K / 32$ chunks of this pair. In one same-run timing under load, the
# chunks and the prefetch together made SmolLM2's matrices 1.7–2.6 × faster: 10–13 GB/s of int8, where
# the pairs of rows without them streamed 5–7 GB/s (most of the gain is the prefetch).

# %%
#| export
from kuiper.llm.ops import prefetch

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


# %%
qw = quantize(rng.standard_normal((97, 576), dtype=np.float32), 32)
x = rng.standard_normal(576, dtype=np.float32)
pairs, single = np.empty(97, np.float32), np.empty(97, np.float32)
qmatvec_pairs_kernel(x, qw.q, qw.scales, pairs)
qmatvec_kernel(x, qw.q, qw.scales, single)
print("pairs vs one row at a time:", agreement(pairs, single), "| vs float64:", agreement(pairs, dequantize(qw) @ x))

# %% [markdown]
# From `BLAS_TOKENS` tokens on, the arithmetic outweighs the memory traffic and OpenBLAS's matrix
# multiply is the better engine: rows are widened into one float32 buffer of at most `BLAS_BYTES`
# (16 MB) and multiplied there, so only the 113 MB `lm_head` comes in pieces and the whole float32 copy
# of it never exists. The pieces should be large: with 256-row pieces a 64-token int8 prefill of
# SmolLM2 measured 0.30–0.48 × float32's speed on a busy machine, with one piece per layer matrix
# 0.63–0.65 × (on a quiet one both measured 0.84 ×: the rest is the widening, which float32 does not
# need). The widening runs on
# one thread so that numba's threads, which wait spinning after a parallel loop, do not take the
# cores OpenBLAS is about to use. `qmatvec` and `qmatmul` check the shapes and pick the kernel: one
# token (decode) goes through `qmatvec_pairs_kernel` (through Exercise 14.5's kernel when the group is not a
# multiple of 32).

# %%
#| export
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


# %% [markdown]
# The package's `qmatmul` on the three paths — one token, a few, many — against numpy's float32
# product with the dequantized matrix:

# %%
for (n, k), group in [((96, 576), 32), ((40, 576), 64), ((33, 256), 256)]:
    qw = kuiper.quant.quantize(rng.standard_normal((n, k), dtype=np.float32), group)
    for tokens in (1, 5, 20):
        x = rng.standard_normal((tokens, k), dtype=np.float32)
        print(f"({n}, {k}) group {group:3} T={tokens:2}:",
              agreement(kuiper.quant.qmatmul(x, qw), x @ kuiper.quant.dequantize(qw).T))

# %% [markdown]
# ## How fast
#
# The decode shapes of SmolLM2 that matter most are the MLP's 1536 × 576 and 576 × 1536 and the
# 49,152 × 576 `lm_head`. The reference is numpy's float32 `x @ w.T` (OpenBLAS), timed in alternating
# rounds with the int8 kernels so that both see the same machine load. A single matrix multiplied again
# and again stays in the processor's cache when it is small, which flatters float32; a model does
# not fit in any cache (538 MB in float32), so the middle column cycles through enough copies of the
# weights — over 64 MB even in int8 — that each comes from memory, as in a real decode step. The
# last column is a 64-token prefill of one matrix.

# %%
import kuiper.quant as kq  # the package's kernels: this cell also runs before 14.5 is done


def speedup(numpy_fn, kuiper_fn, calls):
    """Fastest numpy time / fastest kuiper time of fn(i), in three alternating rounds of `calls` calls."""
    best = [np.inf, np.inf]
    for _ in range(3):
        for which, fn in enumerate((numpy_fn, kuiper_fn)):
            for i in range(calls):
                start = time.perf_counter()
                fn(i)
                best[which] = min(best[which], time.perf_counter() - start)
    return best[0] / best[1]


def speedups(n, k):
    """qmatvec in cache, qmatvec from memory, and qmatmul on 64 tokens, against numpy float32."""
    w = rng.standard_normal((n, k), dtype=np.float32)
    qw = kq.quantize(w, 64)
    copies = -(-64_000_000 // qw.nbytes) + 1
    ws = [w.copy() for _ in range(copies)]
    qws = [kq.QuantizedWeight(qw.q.copy(), qw.scales.copy(), qw.group) for _ in range(copies)]
    x, xs = rng.standard_normal(k, dtype=np.float32), rng.standard_normal((64, k), dtype=np.float32)
    kq.qmatvec(x, qw), kq.qmatmul(xs, qw)  # compile
    return (speedup(lambda i: x @ w.T, lambda i: kq.qmatvec(x, qw), 20),
            speedup(lambda i: x @ ws[i % copies].T, lambda i: kq.qmatvec(x, qws[i % copies]), max(copies, 10)),
            speedup(lambda i: xs @ w.T, lambda i: kq.qmatmul(xs, qw), 5))


# %%
# NBVAL_SKIP
from kuiper.course import LONG

if LONG:  # a benchmark: runs when asked (KUIPER_LONG=1), its stored output is shown here
    print("int8 speed-up over numpy float32, group 64")
    print(f"{'weight':>14} {'decode, in cache':>17} {'decode, from memory':>20} {'prefill, 64 tokens':>19}")
    for n, k in [(1536, 576), (576, 1536), (49152, 576)]:
        cached, memory, prefill = speedups(n, k)
        print(f"{n:>7} × {k:<5} {cached:16.1f}× {memory:19.1f}× {prefill:18.1f}×")

# %% [markdown]
# Read the columns as a lesson in what limits a kernel. A small matrix already in cache costs
# arithmetic, not bytes, and there int8 buys nothing: every weight needs an extra instruction or two to
# be widened to float32, so `qmatvec` runs about as fast as OpenBLAS, at best. Once the weights come
# from memory — the matrices of a real model, or the 113 MB `lm_head` even alone — the quarter of
# the bytes shows, and `qmatvec` is several times faster. Prefill is arithmetic again, and
# `qmatmul` comes close to OpenBLAS because OpenBLAS does its multiplying. (The stored table was
# measured with Exercise 14.5's one-row kernel. `qmatvec` now runs `qmatvec_pairs_kernel`: in one
# same-run timing under load, from memory, group 32, it ran SmolLM2's matrices at 3.1–3.4 × numpy's
# float32 product (10–10.5 GB/s of int8) and the `lm_head` at 8 ×, where the pairs of rows without the
# prefetch ran 1.6–1.9 × and 2 ×.)

# %% [markdown]
# ## Saving a Q8_0 GGUF file
#
# To hand a quantized model to llama.cpp — or to read it back in lesson 09's loader — it goes into a
# GGUF file. The `gguf` package (llama.cpp's own Python writer) lays the file out; this function
# only chooses each tensor's type: 2-D weights become `Q8_0` (the bytes of `to_q8_0`), vectors
# such as norm weights stay float32. `gguf` is a tool, not a dependency of kuiper, so it is
# imported inside the function. Metadata values are plain Python values, or `(value, type)` pairs
# (`(value, GGUFValueType.ARRAY, item_type)` for arrays) when the exact GGUF type matters — llama.cpp
# insists that `llama.context_length` is a `UINT32`, say.

# %%
#| export
from pathlib import Path


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


# %% [markdown]
# Read back with `gguf`'s own reader, the `Q8_0` bytes are the ones written, and they dequantize
# to the same floats (GGUF lists dimensions innermost first: the 96 × 64 weight reads `[64, 96]`):

# %%
import tempfile

weights = {"blk.0.ffn_up.weight": rng.standard_normal((96, 64), dtype=np.float32),
           "blk.0.attn_norm.weight": rng.standard_normal(64, dtype=np.float32)}
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "tiny-q8_0.gguf"
    save_q8_0_gguf(path, weights, {"general.name": "tiny", "llama.context_length": 2048})
    reader = gguf.GGUFReader(path)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        want = weights[tensor.name]
        expected = dequantize(from_q8_0(to_q8_0(quantize(want, 32)), want.shape)) if want.ndim == 2 else want
        print(f"{tensor.name:24} {tensor.tensor_type.name:4} {[int(d) for d in tensor.shape]} identical:",
              np.array_equal(data.reshape(want.shape), expected))
    field = reader.fields["llama.context_length"]
    print("llama.context_length:", field.contents(), field.types[0].name)

# %% [markdown]
# `quantize_gguf` — what `kuiper quantize` runs — turns any GGUF model into a `Q8_0` one. It copies
# every metadata field with its exact GGUF type (the tokenizer included) and re-quantizes each tensor
# from the source's dequantized values **in the file's own layout**: lesson 09 un-permutes the q and k
# rows of a Llama when it loads them, but the file must keep llama.cpp's order, so the tensors are
# read straight from the file, not from a loaded model. One tensor at a time is dequantized, so the
# float32 model never exists in memory.

# %%
#| export
from kuiper.llm.gguf import GGUFFile


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


# %% [markdown]
# ## The same trick for a CNN
#
# Convolution weights quantize just as well, with one scale per output channel (the group is a
# whole filter, `I × kh × kw` weights). `quantize_conv` returns the *fake-quantized* float32
# weights — quantized and dequantized — so that an unchanged CNN runs on them and shows what int8
# weights alone cost in accuracy. MobileNetV2 with every convolution and the classifier so treated:

# %%
#| export
def quantize_conv(weight: np.ndarray) -> np.ndarray:
    """A convolution or linear weight (O, ...) quantized to int8 per output channel and back, as float32."""
    flat = np.asarray(weight, dtype=np.float32).reshape(weight.shape[0], -1)
    return dequantize(quantize(flat, flat.shape[1])).reshape(weight.shape)


# %%
# NBVAL_SKIP
from kuiper.graph import RuntimeGraph
from kuiper.pnnx import load_pnnx
from kuiper.registry import create_layer
from kuiper.vision.classify import classify

if LONG:  # two MobileNetV2 runs over the photos: runs when asked (KUIPER_LONG=1)
    IMAGES = sorted((DATA / "images").glob("*.jpg"))
    model = load_pnnx(DATA / "models" / "mobilenet_v2.pnnx.param")
    float32 = classify(RuntimeGraph(model, create_layer), IMAGES)
    for op in model.operators:
        if op.type in ("nn.Conv2d", "nn.Linear"):
            op.attrs["weight"].data = quantize_conv(op.attrs["weight"].data)
    int8 = classify(RuntimeGraph(model, create_layer), IMAGES)
    print("top-1 identical on", len(IMAGES), "photos:", (float32.argmax(1) == int8.argmax(1)).all())
    print("probabilities:", agreement(int8, float32, 0.1))

# %% [markdown]
# ## Int8 inside lesson 11's model
#
# Lesson 11's model never multiplies a weight itself: every projection goes through
# `kuiper.llm.ops.matmul(x, w)`, which hands any weight that is not a numpy array to the weight's own
# `w.matmul(x)`. `QuantizedWeight.matmul` is `qmatmul`, so quantizing a model is nothing more than
# swapping the four linear weights of every block — `wqkv`, `wo`, `w_gate_up`, `w_down`, 90 % of
# SmolLM2's per-token bytes outside the head — for `QuantizedWeight`s. Not a line of model code is copied.
#
# The **embedding** table and the **norm** gains stay float32, as in KuiperLLama: a token reads one
# row of the embedding (576 floats), so int8 would save nothing per token, and the gains are a few KB
# in all. The **output head** is a linear layer like the others and is quantized too: at 113 MB in
# float32 it would otherwise be half of everything an int8 model reads per token. SmolLM2 ties it
# to the embedding, so the int8 model keeps both: the float32 table for looking rows up, and an int8
# copy of it (29 MB) for the logits.
#
# `quantize_model` returns a copy that shares the float32 embedding and norms with the original
# and has its own KV cache; once the float32 model is dropped, its block weights are freed and the
# process holds only the int8 ones.

# %%
#| export
import copy
import dataclasses

from kuiper.llm.model import LINEAR_WEIGHTS, Llama
from kuiper.llm.ops import pack


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


# %% [markdown]
# First on a small random Llama (2 blocks, dimension 64), where it takes a moment: the int8 model's
# logits, for a prompt and for one decode step, against the float32 model's.

# %%
from kuiper.llm.model import Block, Config, Llama
from kuiper.quant import quantize_model  # the package's version: runs before the exercises are done too


def tiny_llama(seed: int = 0) -> Llama:
    """A random Llama: 2 blocks, dimension 64, 4 query and 2 KV heads, a vocabulary of 100."""
    rng = np.random.default_rng(seed)
    config = Config(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128, vocab_size=100,
                    norm_eps=1e-5, rope_theta=1e4, context_length=32)
    w = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)  # noqa: E731
    blocks = [Block(attn_norm=1 + w(64), wqkv=w(128, 64), wo=w(64, 64), ffn_norm=1 + w(64),
                    w_gate_up=w(256, 64), w_down=w(64, 128)) for _ in range(2)]
    return Llama(config, w(100, 64), blocks, 1 + w(64), w(100, 64), max_seq_len=32)


tiny = tiny_llama()
tiny_int8 = quantize_model(tiny, 32)
prompt = np.array([5, 17, 42, 99, 0])
print("prompt logits, int8 vs float32:",
      agreement(tiny_int8.forward(prompt, 0, all_logits=True), tiny.forward(prompt, 0, all_logits=True), 0.02))
print("decode logits, int8 vs float32:",
      agreement(tiny_int8.forward(np.array([7]), 5), tiny.forward(np.array([7]), 5), 0.02))
print("the same next token:", int(tiny_int8.forward(np.array([8]), 6).argmax()) == int(tiny.forward(np.array([8]), 6).argmax()))

# %% [markdown]
# `Llama.weight_bytes` adds up the `.nbytes` of the weights read per token, and a `QuantizedWeight`'s
# `.nbytes` counts its int8 values and its scales, so the same property gives int8's bytes. On
# SmolLM2 (quantizing its 135 M weights twice takes half a minute, so this cell and the measurements
# below run when asked, `KUIPER_LONG=1`; their stored outputs are shown):

# %%
# NBVAL_SKIP
from kuiper.llm.model import load

SMOLLM2 = DATA / "models" / "smollm2-135m-instruct-q4_1.gguf"
if LONG:
    fp32, tokenizer = load(SMOLLM2, max_seq_len=600)
    models = {"fp32": fp32} | {f"int8 g{group}": quantize_model(fp32, group) for group in (32, 64)}
    for name, model in models.items():
        head = model.head.nbytes
        print(f"{name:9} {model.weight_bytes / 1e6:4.0f} MB per token: blocks and norms "
              f"{(model.weight_bytes - head) / 1e6:4.0f} MB + head {head / 1e6:.0f} MB")
    try:
        quantize_model(fp32, 128)
    except kuiper.ShapeError as err:
        print(err)

# %% [markdown]
# ## Accuracy on SmolLM2
#
# First, what "fp32" means here: the SmolLM2 file of lesson 09 is itself quantized (`Q4_1`, 4-bit
# blocks), and there are no original float32 weights on this machine. **fp32 is the shipped Q4_1
# weights dequantized to float32** — the model kuiper runs by default — and the question is how far
# int8 moves the model away from *that*. (The Q8_0 file that `kuiper quantize` writes — byte for
# byte what llama.cpp's own quantizer writes from the same weights — is in the table too, read back by
# lesson 09's loader.)
#
# Three measurements, in order of how much a user would notice:
#
# * **perplexity** on a fixed English text — the first 512 tokens of the Python documentation's
#   topic index, `pydoc_data.topics`, which ships with every Python: $\exp$ of the mean negative
#   log-probability of each next token, all positions in one `all_logits` forward. Lower is better;
#   a quantization that hurts the model raises it.
# * **greedy agreement**: the fraction of 64 greedily generated tokens (after a chat prompt) that are
#   the same as fp32's. One different token sends the two texts down different paths, so this counts
#   tokens up to the first difference plus however many happen to match after it.
# * the **logit error** on the same text: max and mean $|\Delta|$ against fp32, and the max
#   relative to the largest logit.
#
# ## Exercise 14.7 — perplexity
#
# The logits at position $t$ predict token $t + 1$, so the last row predicts nothing and the first
# token is never predicted. In float64, take the log-softmax of `logits[:-1]` — subtract each row's
# maximum first, or `exp` overflows on logits in the hundreds — pick, in row $t$, the entry of token
# `ids[t + 1]`, and return $\exp$ of minus their mean. A model that spreads its probability evenly
# over V tokens has perplexity exactly V: perplexity is "how many tokens it hesitates between".

# %%
#| exercise: log_probs = logits[:-1] (float64) - max - log(sum exp(... - max)); return exp(-mean of log_probs[t, ids[t + 1]])
def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    """exp of the mean negative log-probability of ids[1:] under logits[:-1] (float64)."""
    ### BEGIN SOLUTION
    logits = logits[:-1].astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    return float(np.exp(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean()))
    ### END SOLUTION


# %%
with check("Exercise 14.7"):
    got = perplexity(np.zeros((5, 40), np.float32), np.arange(5))
    assert abs(got - 40) < 1e-9, f"uniform logits over 40 tokens: expected perplexity 40, got {got}"
    logits = rng.standard_normal((6, 11)).astype(np.float32) * 3
    logits[:, 7] += 2
    ids = np.array([1, 7, 3, 7, 0, 10])
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(1, keepdims=True)
    want = float(np.exp(-np.log(p[np.arange(5), ids[1:]]).mean()))
    got = perplexity(logits, ids)
    assert abs(got - want) < 1e-6 * want, f"expected perplexity {want:.6f}, got {got:.6f}"
    got = perplexity(logits.astype(np.float64) + 1000, ids)
    assert abs(got - want) < 1e-6 * want, f"logits + 1000 (the same probabilities): expected {want:.6f}, got {got}"

# %%
def greedy(model: Llama, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens after the prompt."""
    logits, out = model.forward(np.array(prompt), 0), []
    for _ in range(n):
        out.append(int(np.argmax(logits[-1])))
        logits = model.forward(np.array(out[-1:]), len(prompt) + len(out) - 1)
    return out


# %%
# NBVAL_SKIP
import tempfile
from pathlib import Path

import pydoc_data.topics

from kuiper.llm.gguf import GGUFFile
from kuiper.llm.model import model_from_gguf
from kuiper.llm.tokenizer import chat_prompt
from kuiper.quant import quantize_gguf

if LONG:  # 4 models × (512 tokens + 64 greedy steps): runs when asked (KUIPER_LONG=1)
    TEXT = "".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
    ids = np.array(tokenizer.encode(TEXT[:20000])[:512])  # the first 512 tokens need far fewer characters
    prompt = tokenizer.encode(chat_prompt([{"role": "user", "content": "Write a short poem about the sea."}],
                                         tokenizer.chat_template))
    with tempfile.TemporaryDirectory() as folder:  # nothing left behind in the temp folder
        q8_0_file = Path(folder) / "smollm2-135m-instruct-kuiper-q8_0.gguf"
        quantize_gguf(SMOLLM2, q8_0_file, 32)  # what `kuiper quantize` writes: llama.cpp's Q8_0 format
        accuracy = models | {"Q8_0 file": model_from_gguf(GGUFFile(q8_0_file), max_seq_len=600)}
        results = {name: (model.forward(ids, 0, all_logits=True), greedy(model, prompt, 64))
                   for name, model in accuracy.items()}
    want_logits, want_tokens = results["fp32"]
    print(f"{'weights':15} {'MB/token':>8} {'perplexity':>10} {'greedy same':>11} {'max |Δ|':>8} {'mean |Δ|':>9} "
          f"{'max |Δ| / max |logit|':>22}")
    for name, (logits, tokens) in results.items():
        error = np.abs(logits - want_logits)
        same = sum(a == b for a, b in zip(tokens, want_tokens))
        print(f"{name:15} {accuracy[name].weight_bytes / 1e6:8.0f} {perplexity(logits, ids):10.2f} {same:8}/64 "
              f"{error.max():8.2f} {error.mean():9.3f} {error.max() / np.abs(want_logits).max():21.1%}")
    del accuracy, results

# %% [markdown]
# (The Q8_0 file's row counts its weights as kuiper holds them once loaded: dequantized to float32.)
#
# int8 moves the perplexity by a few hundredths on a value near 18 — far less than the gap between
# two model sizes. Greedy text is the harsh test: one token that differs sends the two texts down
# different paths, and everything after it counts as disagreement — on this prompt group 32 keeps all
# 64 of fp32's tokens, while group 64 parts ways after a handful (on other prompts group 32 can part
# ways early too). The logit errors — a tenth on average, about one at worst on logits that reach
# forty — are smaller at group 32, for 6 % more bytes per token. kuiper's group 32 and the `Q8_0` file
# hold the same int8 values and scales (`kuiper quantize`, below, writes a file whose tensors are byte
# for byte llama.cpp's), so their rows agree to every printed digit.
#
# ## Speed
#
# `kuiper.bench.bench_llm` — the engine behind `kuiper bench` — times prefill (a 64-token prompt at
# once) and decode (64 greedy tokens, one at a time) for kuiper in float32 and in int8, in one process,
# and prints the bytes of weights each reads per token with the *decode bound*: the measured read
# bandwidth of this machine divided by those bytes, the rate no engine could beat.

# %%
# NBVAL_SKIP
from kuiper.bench import bench_llm, format_llm_rows

if LONG:  # a benchmark: runs when asked (KUIPER_LONG=1)
    del models
    print(format_llm_rows(bench_llm(SMOLLM2, 64, 64, llama_cpp=False, transformers=False, int8=32)))

# %% [markdown]
# The int8 row reads about 3.6 times fewer bytes per token (538 → 151 MB at group 32) but is faster by
# less: 2.35–2.5 × float32's decode in same-run timings on a busy machine (1.4 × before the kernels
# prefetched). Turning each int8 weight back into a float costs arithmetic that float32 does not
# need, and the rest of a decode step — attention over the cache, RoPE, norms, a hundred and twenty
# kernel launches — does not shrink. The same rule as in lesson 06 applies: the part you did not
# optimise becomes the bottleneck. From the command line:
#
# ```
# kuiper bench data/models/smollm2-135m-instruct-q4_1.gguf --int8 32 --llama-cpp data/models/smollm2-135m-instruct-q8_0.gguf
# kuiper quantize data/models/smollm2-135m-instruct-q4_1.gguf smollm2-135m-instruct-kuiper-q8_0.gguf
# kuiper generate smollm2-135m-instruct-kuiper-q8_0.gguf --prompt "What is the capital of France?"
# kuiper generate data/models/smollm2-135m-instruct-q4_1.gguf --int8 64 --prompt "What is the capital of France?"
# ```
#
# `kuiper quantize` writes a standard GGUF `Q8_0` file that llama.cpp runs as it runs its own: all
# metadata and the tokenizer copied, every 2-D weight — the embedding too, as llama.cpp's `Q8_0`
# does — quantized from the source's dequantized tensors in the source's own layout, norms in
# float32. Groups of 64 or 128 have no GGUF type; they exist only in memory, with `--int8`.

# %% [markdown]
# ## The file's own blocks: no float32 model at all
#
# Everything so far starts from float32. But SmolLM2's file is *already* quantized, and lesson 11's
# loader expands it: 98 MB of Q4_1 and Q8_0 blocks become 538 MB of float32, the process's largest
# piece of memory, and the 538 MB every decode step reads. `kuiper generate MODEL.gguf --weights gguf`
# keeps the blocks instead — lesson 11's `model_from_gguf` with another `matrix` function:
#
# * a **Q8_0** matrix is a group-32 `QuantizedWeight`: `from_q8_0` (Exercise 14.3) unpacks its blocks
#   into int8 values and float32 scales once, at load, and `qmatmul` runs it — nothing new;
# * a **Q4_1** matrix stays the very bytes of the mapped file, a `Q4_1Weight`: no copy at all. Its
#   kernel decodes each block in registers. With $w_j = d\,q_j + m$,
#   $\;x \cdot w = d\,(x \cdot q) + m \sum_j x_j$: the minimum's share needs only the sum of $x$
#   over the block, the same for every row, so it is computed once per vector, and each row costs
#   32 multiply-adds on the 4-bit codes plus two per block;
# * stacked matrices (q | k | v, gate | up) and GGUF's RoPE order of q and k (lesson 11's
#   `rope_runs`) copy **rows of blocks**, never floats; the embedding, Q8_0 in this file, is the
#   int8 table, and a token's row is widened when it is looked up.
#
# The scales are float16 bits. Lesson 09's `half_to_float` decodes them exactly, but with a branch
# and an `ldexp` for every block of every row it would cost more than the block's 32 products;
# `HALVES`, all 65,536 halves as float32, makes each scale one load from a 256 KB table. Prefill
# of 16 tokens or more widens 256 rows at a time with lesson 09's `dequantize` and hands them to BLAS,
# as `qmatmul` does; fewer tokens run the matrix-vector kernel once each.
#
# ## Exercise 14.8 — the Q4_1 matrix-vector kernel
#
# `blocks` is a Q4_1 matrix as the file stores it, `(N, K // 32 * 20)` uint8: row `n` is `K // 32`
# blocks of 20 bytes, `d` at bytes 0–1, `m` at 2–3 (`half(halves, row, at)`, given, reads the float16 at
# `row[at]`), and 16 bytes of codes, byte $4 + j$ holding element $j$ in its low nibble and element
# $j + 16$ in its high one (Exercise 9.4). First add up `x` over each block into `sums`. Then, as
# `qmatvec_pairs_kernel` does, take the rows **two at a time** in `prange` (rows $2p$ and $2p + 1$; an
# odd last row pairs with itself), so each value of `x` is loaded once for both: for each block, the
# dot product of the block's 32 values of `x` with each row's codes, times that row's `d`, plus its
# `m` times the block's sum; write the two totals to `out`. At each block, `prefetch` the bytes the pair
# `PREFETCH_ROWS` rows below will need, at twice the pace as `qmatvec_pairs_kernel` does: byte
# `ahead + 2 * at` (`ahead` is the first byte of row $n$ + `PREFETCH_ROWS`), kept within the array. Index
# with `uint64` numbers, as the given lines start to: numba checks a *signed* index for being negative,
# and that check keeps LLVM from vectorizing the loop (about 3 × slower); and `uint64` plus a signed
# number is a float64 in numba, so make `ahead` a `uint64` too. One same-run timing, under load, put this
# kernel at 1.9–2.6 × the float32 matrix-vector product on SmolLM2's matrices (the prefetch made it
# 1.2–1.35 × faster), while reading 0.625 bytes per weight: the decoding of the nibbles, not the memory,
# is what limits it.

# %%
#| export
#| exercise: sums[b] = sum of x over block b; rows in pairs in prange: out[n] = sum over blocks of d * (x_b . codes) + m * sums[b]; byte 4 + j: low nibble -> j, high -> j + 16; prefetch byte ahead + 2 * at
from numba import uint64

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
    ### BEGIN SOLUTION
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
    ### END SOLUTION


# %%
from kuiper.llm.gguf import GGUFFile
from kuiper.llm.gguf import dequantize as dequantize_gguf

with check("Exercise 14.8"):
    ffn_down = GGUFFile(DATA / "models" / "smollm2-135m-instruct-q4_1.gguf").raw("blk.0.ffn_down.weight")
    w = rng.standard_normal((37, 64), dtype=np.float32) + 0.5
    w[1, :32] = -0.25  # a constant block: d = 0, only its minimum m counts
    cases = {"(37, 64) random": gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1).reshape(37, -1),
             "SmolLM2's blk.0.ffn_down (576, 1536)": ffn_down.reshape(576, -1)}
    for name, blocks in cases.items():
        n, k = blocks.shape[0], blocks.shape[1] // 20 * 32
        x = rng.standard_normal(k, dtype=np.float32)
        out = np.full(n, np.nan, np.float32)
        q4_1_matvec_kernel(x, blocks, kuiper.quant.HALVES, out)
        want = dequantize_gguf(blocks, "Q4_1", (n, k)).astype(np.float64) @ x
        bad = np.flatnonzero(~(np.abs(out - want) <= 1e-5 * np.abs(want).max()))
        assert not bad.size, f"{name}: expected {want[bad[0]]:.5f} at row {bad[0]} (the dequantized blocks times x), got {out[bad[0]]:.5f}"

# %%
#| export
from functools import partial
from typing import Any

from kuiper.llm.gguf import dequantize as dequantize_gguf
from kuiper.llm.model import fuse, model_from_gguf, rope_runs
from kuiper.llm.tokenizer import Tokenizer, load_tokenizer

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

