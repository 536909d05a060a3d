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
# # Lesson 04 — Convolution, pooling and the operator set
#
# A CNN spends almost all its time in convolutions. This lesson builds the convolution three ways —
# the definition as loops, **im2col + matrix multiply** (how KuiperInfer, Caffe and most CPU
# engines do it), and a direct **numba** kernel for depthwise convolutions — then pooling and the
# rest of the operators that the course's models (ResNet, MobileNet, UNet, YOLOv5) contain. Every
# layer is checked against `torch.nn.functional` on the same inputs.
#
# | exercise | what |
# |---|---|
# | 4.1 | the output size of a convolution or pooling window |
# | 4.2 | im2col: unfold every receptive field into a column (numba) |
# | 4.3 | the direct depthwise convolution kernel (numba) |
# | 4.4 | col2im: scatter columns back into an image, for the transposed convolution (numba) |
# | 4.5 | max pooling with padding, dilation and `ceil_mode` (numba) |
# | 4.6 | average pooling: `count_include_pad`, `ceil_mode`, `divisor_override` (numba) |
# | 4.7 | adaptive average pooling to any output size (numba) |
# | 4.8 | the activation kernels ReLU6 and Hardswish (numba) |
# | 4.9 | the resampling table of one axis: nearest, nearest-exact, linear and cubic, either `align_corners` |
# | 4.10 | Keys' bicubic convolution weights |
# | 4.11 | the kernel that applies a resampling table to any axis (numba) |
#
# Lesson 08 adds what segmentation networks use beyond this: padding modes, 1-D and functional
# convolutions, max pooling with indices, adaptive max and power-average pooling, Fold and Unfold.

# %%
#| default_exp layers.conv

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from kuiper.course import agreement, check, patch_to, raises
from kuiper.pnnx import Attribute, Operator
from kuiper.tensor import Tensor

torch.manual_seed(0)
rng = np.random.default_rng(0)

# %% [markdown]
# ## What a convolution computes
#
# A 2-d convolution slides a $K_h \times K_w$ window over each input channel. For output channel
# $k$ at position $(y, x)$, with stride $s$, padding $p$ and dilation $d$:
#
# $$\text{out}[n, k, y, x] = b_k + \sum_{c} \sum_{i < K_h} \sum_{j < K_w}
#   W[k, c, i, j]\; \text{in}[n, c,\; y s - p + i d,\; x s - p + j d]$$
#
# where reads outside the image count as zero. With `groups` $= g$ the channels split into $g$
# independent convolutions; `groups` equal to the number of channels is a *depthwise* convolution
# (MobileNet's building block). Written as loops, straight from the formula:

# %%
def conv2d_loops(x, w, b, stride=1, padding=0):
    """The definition, one multiply-add at a time (groups=1, dilation=1): clear and very slow."""
    n_batch, channels, height, width = x.shape
    k_out, _, kh, kw = w.shape
    oh, ow = (height + 2 * padding - kh) // stride + 1, (width + 2 * padding - kw) // stride + 1
    out = np.zeros((n_batch, k_out, oh, ow), np.float32)
    for n in range(n_batch):
        for k in range(k_out):
            for y in range(oh):
                for x_ in range(ow):
                    total = b[k]
                    for c in range(channels):
                        for i in range(kh):
                            for j in range(kw):
                                iy, ix = y * stride - padding + i, x_ * stride - padding + j
                                if 0 <= iy < height and 0 <= ix < width:
                                    total += w[k, c, i, j] * x[n, c, iy, ix]
                    out[n, k, y, x_] = total
    return out


x = rng.standard_normal((1, 3, 9, 9), dtype=np.float32)
w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
b = rng.standard_normal(4, dtype=np.float32)
ours = conv2d_loops(x, w, b, stride=2, padding=1)
want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=2, padding=1).numpy()
print("loops vs torch:", agreement(ours, want))

# %% [markdown]
# ## Exercise 4.1 — output size
#
# Convolution and pooling share one size rule. The window's reach is $d(K-1)+1$ pixels; it fits
# $\lfloor (H + 2p - d(K-1) - 1) / s \rfloor + 1$ times. Pooling has a `ceil_mode` that rounds
# up instead, so that a partial window at the end still produces an output — but PyTorch drops
# that last window if it would **start** inside the right padding, i.e. if
# $(\text{out}-1)\,s \ge H + p$.

# %%
#| export
#| exercise: the number of window positions along one axis; round up in ceil_mode (dropping a window that starts in the padding)
def out_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
             ceil_mode: bool = False) -> int:
    """How many outputs a window of `kernel` makes along an axis of `size` (PyTorch's rule)."""
    ### BEGIN SOLUTION
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out
    ### END SOLUTION


# %%
with check("Exercise 4.1"):
    cases = [(224, 7, 2, 3, 1, False), (112, 3, 2, 1, 1, False), (5, 2, 2, 0, 1, True), (6, 3, 2, 1, 1, True),
             (8, 3, 3, 1, 2, True), (7, 3, 1, 0, 1, False), (10, 4, 3, 2, 1, True), (9, 3, 2, 0, 2, False),
             (6, 2, 2, 1, 1, True), (13, 3, 2, 1, 3, True)]
    for size, k, s, p, d, ceil in cases:
        want = F.max_pool2d(torch.zeros(1, 1, size, size), k, s, p, d, ceil_mode=ceil).shape[-1]
        got = out_size(size, k, s, p, d, ceil)
        assert got == want, f"out_size{(size, k, s, p, d, ceil)}: expected {want} (PyTorch), got {got}"

# %% [markdown]
# ## im2col: convolution as one matrix multiply
#
# The loops above do the right arithmetic in the worst order. **im2col** rearranges it: copy each
# receptive field (the $C \cdot K_h \cdot K_w$ inputs one output reads) into a column of a matrix.
# Then every output channel is a dot product of its flattened weights with every column — one
# matrix multiply, $(K) \times (C K_h K_w)$ times $(C K_h K_w) \times (H_{out} W_{out})$, which BLAS
# runs at close to the machine's peak. The price is memory: each input value is copied up to
# $K_h K_w$ times.

# %%
def draw_im2col(ax_in, ax_cols, image, kernel=2):
    """Colour each receptive field of a small 1-channel image and show it as a column."""
    oh, ow = image.shape[0] - kernel + 1, image.shape[1] - kernel + 1
    cols = np.array([image[y:y + kernel, x:x + kernel].ravel() for y in range(oh) for x in range(ow)]).T
    ax_in.imshow(image, cmap="Pastel1", vmin=0, vmax=9)
    for (i, j), v in np.ndenumerate(image):
        ax_in.text(j, i, f"{v:.0f}", ha="center", va="center")
    ax_in.add_patch(plt.Rectangle((-0.5, -0.5), kernel, kernel, fill=False, ec="tab:red", lw=3))
    ax_in.set_title("input 3 × 3, window 2 × 2")
    ax_cols.imshow(cols, cmap="Pastel1", vmin=0, vmax=9)
    for (i, j), v in np.ndenumerate(cols):
        ax_cols.text(j, i, f"{v:.0f}", ha="center", va="center")
    ax_cols.add_patch(plt.Rectangle((-0.5, -0.5), 1, kernel * kernel, fill=False, ec="tab:red", lw=3))
    ax_cols.set_title("im2col: one column per output")
    for ax in (ax_in, ax_cols):
        ax.set_xticks([]), ax.set_yticks([])


fig, axes = plt.subplots(1, 2, figsize=(7, 3))
draw_im2col(*axes, np.arange(1, 10, dtype=float).reshape(3, 3))
plt.show()

# %% [markdown]
# ## Exercise 4.2 — im2col in numba
#
# Numba compiles a Python function with loops into machine code; `prange` splits the outer loop
# across cores. Fill `cols[n, row, y * ow + x]` with the input at the position the formula above
# gives, where `row = (c * kh + i) * kw + j`, and 0 outside the image — checking bounds here is
# cheaper than padding a copy of the input. The row order (channel, then kernel row, then column)
# matches `W.reshape(K, -1)`, so the matrix multiply lines up: `conv2d_im2col` (two cells down) calls your
# kernel and multiplies.

# %%
#| export
import math
import threading

import numpy as np
from numba import njit, prange

from kuiper.errors import LayerError, ShapeError
from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor

# %%
def conv2d_im2col(x, w, b, stride=1, padding=0):
    """Convolution as im2col + one batched matrix multiply (groups=1, dilation=1)."""
    n_batch, channels, height, width = x.shape
    k_out, _, kh, kw = w.shape
    oh, ow = (height + 2 * padding - kh) // stride + 1, (width + 2 * padding - kw) // stride + 1
    cols = np.empty((n_batch, channels * kh * kw, oh * ow), np.float32)
    im2col(x, cols, kh, kw, stride, stride, padding, padding, 1, 1, oh, ow)
    return (w.reshape(k_out, -1) @ cols).reshape(n_batch, k_out, oh, ow) + b[:, None, None]


# %%
#| exercise: fill cols (N, C*kh*kw, oh*ow) from x (N, C, H, W); zero where the window leaves the image
@njit(parallel=True, cache=True)
def im2col(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """Unfold every receptive field of x (N, C, H, W) into a column of cols (N, C*kh*kw, oh*ow)."""
    n_batch, channels, height, width = x.shape
    ### BEGIN SOLUTION
    for nc in prange(n_batch * channels):
        n, c = nc // channels, nc % channels
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for y in range(oh):
                    iy = y * sh - ph + i * dh
                    inside = 0 <= iy < height
                    for x_ in range(ow):
                        ix = x_ * sw - pw + j * dw
                        cols[n, row, y * ow + x_] = x[n, c, iy, ix] if inside and 0 <= ix < width else 0.0
    ### END SOLUTION


# %%
with check("Exercise 4.2"):
    # torch's F.unfold is im2col with the same row order (channel, kernel row, kernel column)
    for shape, (kh, kw), (sh, sw), (ph, pw), (dh, dw) in [
            ((2, 3, 9, 9), (3, 3), (2, 2), (1, 1), (1, 1)), ((1, 4, 6, 7), (1, 1), (1, 1), (0, 0), (1, 1)),
            ((3, 2, 5, 5), (5, 5), (1, 1), (2, 2), (1, 1)), ((1, 2, 9, 11), (2, 3), (1, 2), (1, 2), (2, 1)),
            ((1, 3, 10, 8), (3, 3), (2, 1), (0, 1), (2, 2))]:
        x = rng.standard_normal(shape, dtype=np.float32)
        oh = (shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        got = np.full((shape[0], shape[1] * kh * kw, oh * ow), np.nan, np.float32)
        im2col(x, got, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
        want = F.unfold(torch.from_numpy(x), (kh, kw), (dh, dw), (ph, pw), (sh, sw)).numpy()
        where = f"x {shape}, kernel {(kh, kw)}, stride {(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)}"
        bad = np.argwhere(~(got == want))
        assert not bad.size, (f"{where}: expected cols{tuple(map(int, bad[0]))} = {want[tuple(map(int, bad[0]))]:.4f} (F.unfold), "
                              f"got {got[tuple(map(int, bad[0]))]:.4f}; {len(bad)} of {got.size} differ")
    x, w, b = (rng.standard_normal(s, dtype=np.float32) for s in [(2, 3, 9, 9), (6, 3, 3, 3), (6,)])
    got, want = conv2d_im2col(x, w, b, 2, 1), F.conv2d(*map(torch.from_numpy, (x, w, b)), stride=2, padding=1).numpy()
    assert np.abs(got - want).max() < 1e-4, f"im2col + GEMM: expected F.conv2d's output, {agreement(got, want)}"

# %% [markdown]
# ## Making im2col fast
#
# Your kernel is correct; three changes make it fast enough for the engine, and they are the kind
# of change that matters on every CPU:
#
# 1. **A few images at a time.** The columns of several images side by side,
#    make one matrix multiply for all of them: every kernel and every matrix
#    multiply starts its threads once, and on a busy machine each start waits for a core (on this
#    course's shared two-core machine, tens of milliseconds), so fewer, larger calls win there.
#    On an idle machine the start is cheap and a big column matrix costs cache misses instead:
#    alone on one core, 8 images of 56×56 in one multiply took 1.8× the time of image by image.
#    `images_per_gemm` takes as many images as keep the work memory within `COLUMN_BYTES`: 8 MiB
#    (one core, batch 8: ResNet-18 1.26× PyTorch's time with 32 MiB, 1.08× with 8; the U-Net 1.85×, 1.47×).
# 2. **Reuse one buffer.** A fresh multi-megabyte array costs a page fault per 4 KB the first time
#    it is touched; `scratch` hands out the same memory on every call. One buffer **per thread**
#    and name: the layers of a graph run one after another, but two graphs run in two threads at
#    once would otherwise write their columns into the same memory and get each other's results.
# 3. **No test per element.** For kernel column $j$ the output columns whose input lies inside
#    the image are one contiguous range $[x_{lo}, x_{hi})$, so the row is zeros, a straight copy
#    (a slice when the stride is 1), and zeros again.
# %%
#| export
@njit(parallel=True, cache=True)
def im2col_images(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """Unfold images x (N, C, H, W) into cols (C*kh*kw, N, oh*ow): a row per (c, i, j) tap of the
    window, the images side by side along it."""
    n_batch, channels, height, width = x.shape
    for task in prange(channels * kh * kw * n_batch):
        row, n = task // n_batch, task % n_batch
        c, i, j = row // (kh * kw), row // kw % kh, row % kw
        shift = j * dw - pw  # output column x_ reads input column x_ * sw + shift
        x_lo = min(ow, max(0, -(shift // sw)))
        x_hi = max(x_lo, min(ow, (width - 1 - shift) // sw + 1))
        for y in range(oh):
            iy = y * sh - ph + i * dh
            line = cols[row, n, y * ow:(y + 1) * ow]
            if iy < 0 or iy >= height:
                line[:] = 0.0
                continue
            line[:x_lo] = 0.0
            if sw == 1:
                line[x_lo:x_hi] = x[n, c, iy, x_lo + shift:x_hi + shift]
            else:
                for x_ in range(x_lo, x_hi):
                    line[x_] = x[n, c, iy, x_ * sw + shift]
            line[x_hi:] = 0.0


COLUMN_BYTES = 8 * 2**20  # the most work memory (columns, products) one matrix multiply may use


def images_per_gemm(image_bytes: int) -> int:
    """Images per matrix multiply when each needs `image_bytes`: as many as COLUMN_BYTES holds, >= 1."""
    return max(1, COLUMN_BYTES // image_bytes)


_scratch = threading.local()


def scratch(shape: tuple[int, ...], name: str = "columns") -> np.ndarray:
    """A float32 work array of `shape`: the same memory on every call from one thread with one `name`
    (grown when too small), another per thread and name: parallel graphs never share it."""
    size = math.prod(shape)
    buffers = _scratch.__dict__.setdefault("buffers", {})
    if name not in buffers or buffers[name].size < size:
        buffers[name] = np.empty(size, np.float32)
    return buffers[name][:size].reshape(shape)


# %%
from kuiper.layers.conv import channels_last, im2col_pixels  # the package's (lesson 06)

with check("im2col_images and im2col_pixels agree with your im2col"):
    x = rng.standard_normal((2, 5, 11, 9), dtype=np.float32)
    for k, s, p, d in [(3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 2, 2), (1, 1, 0, 1), (7, 2, 3, 1)]:
        oh, ow = out_size(11, k, s, p, d), out_size(9, k, s, p, d)
        want = np.empty((2, 5 * k * k, oh * ow), np.float32)
        im2col(x, want, k, k, s, s, p, p, d, d, oh, ow)
        got = np.empty((5 * k * k, 2, oh * ow), np.float32)
        im2col_images(x, got, k, k, s, s, p, p, d, d, oh, ow)
        assert np.array_equal(got, want.transpose(1, 0, 2)), f"k={k} s={s} p={p} d={d} differs"
        pixels = np.empty((2, 11, 9, 5), np.float32)  # lesson 06's pixel-major columns hold the same numbers
        channels_last(x, pixels)
        got = np.empty((2, oh * ow, k * k * 5), np.float32)
        im2col_pixels(pixels, got, k, k, s, s, p, p, d, d, oh, ow)
        taps_first = want.reshape(2, 5, k * k, oh * ow).transpose(0, 3, 2, 1).reshape(got.shape)  # (n, L, (i, j, c))
        assert np.array_equal(got, taps_first), f"im2col_pixels, k={k} s={s} p={p} d={d} differs"

# %% [markdown]
# ## Depthwise convolution: a direct kernel
#
# In a depthwise convolution each output channel reads a single input channel: the matrix
# multiply degenerates to a $1 \times 9$ by $9 \times HW$ product per channel, and im2col's copy
# costs more than the arithmetic. A direct numba loop, parallel over (image, channel), is faster;
# it walks each output row once per window tap, using the same $[x_{lo}, x_{hi})$ range as
# `im2col_images` so that the inner loop has no bounds test.
# (A channel multiplier $m$ — output channel $k$ reading input channel $k / m$ — comes free.)
#
# ## Exercise 4.3 — the depthwise kernel
#
# Write it: for each (image, output channel) in parallel and each output row, start the row at 0
# (`out` arrives uninitialised), then for every tap $(i, j)$ of the window whose input row
# $y s_h - p_h + i d_h$ lies inside the image, add `w[k, 0, i, j]` times the input row shifted by
# $j d_w - p_w$, over the outputs $[x_{lo}, x_{hi})$ whose input column lies inside (compute them
# as `im2col_images` does). There is no bias here: the layer adds it.

# %%
#| export
#| exercise: out[n, k] = sum over taps (i, j) of w[k, 0, i, j] times x[n, k // m] shifted; rows start at 0
@njit(parallel=True, cache=True)
def depthwise_conv(x, w, out, sh, sw, ph, pw, dh, dw):
    """out[n, k] = w[k] ⋆ x[n, k // m]: each output channel reads one input channel.

    Row by row: every tap (i, j) of the window adds its weight times a shifted input row to the
    output row, over the range [x_lo, x_hi) of outputs whose input lies inside the image."""
    n_batch, channels, height, width = x.shape
    _, k_out, oh, ow = out.shape
    kh, kw = w.shape[2], w.shape[3]
    ### BEGIN SOLUTION
    multiplier = k_out // channels
    for nk in prange(n_batch * k_out):
        n, k = nk // k_out, nk % k_out
        c = k // multiplier
        for y in range(oh):
            row = out[n, k, y]
            row[:] = 0.0
            for i in range(kh):
                iy = y * sh - ph + i * dh
                if iy < 0 or iy >= height:
                    continue
                source = x[n, c, iy]
                for j in range(kw):
                    shift = j * dw - pw
                    x_lo = min(ow, max(0, -(shift // sw)))
                    x_hi = max(x_lo, min(ow, (width - 1 - shift) // sw + 1))
                    weight = w[k, 0, i, j]
                    for x_ in range(x_lo, x_hi):
                        row[x_] += weight * source[x_ * sw + shift]
    ### END SOLUTION


# %%
with check("Exercise 4.3"):
    for shape, k_out, (kh, kw), (sh, sw), (ph, pw), (dh, dw) in [
            ((2, 4, 9, 9), 4, (3, 3), (1, 1), (1, 1), (1, 1)), ((1, 3, 10, 11), 3, (3, 3), (2, 2), (1, 1), (1, 1)),
            ((1, 2, 8, 9), 4, (3, 5), (1, 2), (2, 1), (2, 1)), ((1, 3, 7, 7), 6, (5, 5), (2, 1), (2, 2), (1, 2))]:
        x = rng.standard_normal(shape, dtype=np.float32)
        w = rng.standard_normal((k_out, 1, kh, kw), dtype=np.float32)
        want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, (sh, sw), (ph, pw), (dh, dw),
                        groups=shape[1]).numpy()
        got = np.full(want.shape, np.nan, np.float32)
        depthwise_conv(x, w, got, sh, sw, ph, pw, dh, dw)
        where = f"x {shape}, {k_out} outputs, kernel {(kh, kw)}, stride {(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)}"
        assert np.allclose(got, want, atol=1e-4), f"{where}: expected F.conv2d's output, {agreement(got, want)}"


# %% [markdown]
# ## Two thread pools on two cores
#
# A forward pass alternates between two kinds of parallel code: numba kernels (im2col, pooling,
# activations), run by numba's OpenMP threads, and matrix multiplies, run by OpenBLAS's own
# threads. By default an OpenMP thread that finishes its share *spins*, busy-waiting up to 300,000
# rounds for the next kernel — on a machine with two cores it then takes a core away from the
# OpenBLAS thread that should be working (it doubled ResNet-18's time here). Sleeping at once is no
# better: waking a sleeping thread costs tens of microseconds, and a language model's decode step
# runs 121 parallel matrix-vector products (lesson 11): SmolLM2 took 33 ms a token with sleeping
# threads and 22 ms with a short spin. So the package asks for a short spin, 10,000 rounds (GCC's
# OpenMP reads `GOMP_SPINCOUNT` when it is loaded, so `import kuiper` sets it unless you chose a
# value yourself); PyTorch imported later in the same process inherits it, so both engines wait
# the same way. OpenBLAS has the same habit, worse: after each
# matrix multiply its threads spin for $2^{28}$ cycles, a tenth of a second. On two busy cores that
# spinning was most of the CPU time of a MobileNetV2 forward pass; `import kuiper` sets
# `OPENBLAS_THREAD_TIMEOUT=4` ($2^4$ cycles) before numpy loads OpenBLAS (in a notebook that
# imported numpy first it is too late: start Jupyter with the variables set to get them there).

# %%
#| export
import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# %% [markdown]
# ## The `nn.Conv2d` layer
#
# The layer reads and checks its parameters once. `forward` picks the fastest path:
#
# * a depthwise convolution runs the direct kernel, `depthwise_kernel` (the one above; lesson 06
#   swaps in a faster one);
# * a $3 \times 3$ convolution with stride 1 (most of ResNet's work) on a big enough batch takes a
#   road with 2.25× fewer multiplies, Winograd's, which you build in lesson 06 (Exercises
#   6.9–6.10); the package's runs until then;
# * everything else runs `images_per_gemm` images at a time: `im2col_images` into the scratch
#   buffer and one matrix multiply per group, pixel-major: $(n L, K) = \text{cols} \cdot W^T$,
#   the columns $(n L, K_h K_w C)$ from `conv_columns` (lesson 06; $W$'s rows reordered to match
#   at load; `im2col_images`, transposed, for groups). A $1 \times 1$ convolution with stride 1 and no
#   padding **is** a matrix multiply on each image as it lies, $(C, L)$ read transposed: no
#   im2col at all. The epilogue reads the product through a transposed view, a tile of pixels at
#   a time, and writes the output $(n, K, L)$, so the reordering costs no extra pass.
#
# Every path ends in an `epilogue` pass that adds the bias and applies the activation the layer
# absorbed, if any: you write it in Exercise 6.6, when lesson 06 makes ResNet fast; the package's runs until then.

# %%
from kuiper.layers.conv import (conv_columns, epilogue, IDENTITY, NO_RESIDUAL, residual_rows,  # the package's
                               winograd_conv, winograd_fits, winograd_pays, winograd_weights)  # (lesson 06)

# %%
#| export
def pair(value: object, name: str, op, minimum: int = 0) -> tuple[int, int]:
    """A PNNX int or (int, int) parameter as a pair of ints >= `minimum`; LayerError otherwise."""
    pair_ = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(pair_, tuple) and len(pair_) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in pair_)):
        raise LayerError(f"{op.where()}: {name} should be an int or a pair of ints, got {value!r}")
    if min(pair_) < minimum:
        raise LayerError(f"{op.where()}: {name} should be at least {minimum}, got {value!r}")
    return pair_


def conv_padding(value: object, kernel: tuple[int, int], dilation: tuple[int, int], op) -> tuple[int, int]:
    """Padding as a pair: PNNX writes a pair, or 'valid' / 'same' (stride 1) as strings."""
    if value == "valid":
        return 0, 0
    if value == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        if any(t % 2 for t in total):
            raise LayerError(f"{op.where()}: padding='same' with an even window is asymmetric, not supported")
        return total[0] // 2, total[1] // 2
    return pair(value, "padding", op)


class ConvLayer(Layer):
    """What Conv2d and ConvTranspose2d share: channels, groups, window, bias, and the input check."""

    def __init__(self, op):
        super().__init__(op)
        self.c_in, self.c_out = self.param("in_channels", int, minimum=1), self.param("out_channels", int, minimum=1)
        self.groups = self.param("groups", int, 1, minimum=1)
        if self.c_in % self.groups or self.c_out % self.groups:
            raise LayerError(f"{op.where()}: groups={self.groups} must divide in_channels={self.c_in} "
                             f"and out_channels={self.c_out}")
        self.kernel = pair(self.param("kernel_size"), "kernel_size", op, minimum=1)
        self.stride = pair(self.param("stride", object, 1), "stride", op, minimum=1)
        self.dilation = pair(self.param("dilation", object, 1), "dilation", op, minimum=1)
        self.bias = self.weight("bias", (self.c_out,)) if self.param("bias", bool, False) else None

    def input(self, x: Tensor) -> np.ndarray:
        """x as contiguous float32 (N, in_channels, H, W); ShapeError naming the layer otherwise."""
        data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        if data.ndim != 4 or data.shape[1] != self.c_in:
            raise ShapeError(f"{self.op.where()}: expected input (N, {self.c_in}, H, W), got {data.shape}")
        return data


@register("nn.Conv2d")
class Conv2d(ConvLayer):
    """2-d convolution: 1×1 as a GEMM, depthwise as a direct kernel, the rest as im2col + GEMM."""

    depthwise_kernel = staticmethod(depthwise_conv)  # lesson 06 swaps in a faster one (same arguments)

    def __init__(self, op):
        super().__init__(op)
        self.padding = conv_padding(self.param("padding", object, 0), self.kernel, self.dilation, op)
        if self.param("padding_mode", str, "zeros") != "zeros":
            raise LayerError(f"{op.where()}: padding_mode {op.params['padding_mode']!r} is not supported, "
                             f"only 'zeros'")
        self.weight_ = self.weight("weight", (self.c_out, self.c_in // self.groups, *self.kernel))
        order = (0, 2, 3, 1) if self.groups == 1 else (0, 1, 2, 3)  # (i, j, c) as im2col_pixels's columns
        self.gemm_weight = np.ascontiguousarray(  # (g, K/g, C/g·kh·kw)
            self.weight_.transpose(order).reshape(self.groups, self.c_out // self.groups, -1))
        self.depthwise = self.groups == self.c_in and self.groups > 1
        self.winograd = winograd_weights(self.weight_) if winograd_fits(self) else None  # lesson 06
        self.shift = np.zeros(self.c_out, np.float32) if self.bias is None else self.bias
        self.activation = IDENTITY  # the activation fused into the epilogue (lesson 06, "Fusing")
        self.residual = NO_RESIDUAL  # where the epilogue adds a fused residual input (lesson 06)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        data = self.input(x)
        n_batch, _, height, width = data.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        oh, ow = out_size(height, kh, sh, ph, dh), out_size(width, kw, sw, pw, dw)
        shortcut = residual_rows(self, residual, (n_batch, self.c_out, oh, ow))  # a fused residual (lesson 06)
        if self.depthwise:
            planes = np.empty((n_batch, self.c_out, oh * ow), np.float32)
            self.depthwise_kernel(data, self.weight_, planes.reshape(n_batch, self.c_out, oh, ow), sh, sw, ph, pw, dh, dw)
        elif self.winograd is not None and winograd_pays(self.winograd, n_batch * oh * ow):
            planes = np.empty((n_batch, self.c_out, oh * ow), np.float32)
            winograd_conv(data, self.winograd, ph, pw, planes.reshape(n_batch, self.c_out, oh, ow))
        else:
            return Tensor(self.gemm(data, oh, ow, shortcut).reshape(n_batch, self.c_out, oh, ow), device=x.device)
        epilogue(planes, self.shift, self.activation, planes, shortcut, self.residual)  # + bias, activation, residual
        return Tensor(planes.reshape(n_batch, self.c_out, oh, ow), device=x.device)

    def gemm(self, data: np.ndarray, oh: int, ow: int, shortcut: np.ndarray) -> np.ndarray:
        """Output (N, K, OH·OW) of data (N, C, H, W): columns, GEMM per group and epilogue per few images,
        which adds `shortcut` (N, K, OH·OW) as `self.residual` says (NO_ROWS when it has none)."""
        n_batch, size, k_group = len(data), oh * ow, self.c_out // self.groups
        out = np.empty((n_batch, self.c_out, size), np.float32)
        step = images_per_gemm(4 * (self.c_out + self.gemm_weight.shape[2] * self.groups) * size)
        weight_t = self.gemm_weight.transpose(0, 2, 1)  # (g, C/g·kh·kw, K/g)
        for start in range(0, n_batch, step):
            images = data[start:start + step]
            product, row = scratch((len(images) * size, self.c_out), "product"), 0  # pixel-major (n·L, K)
            for cols in conv_columns(self, images, oh, ow):  # lesson 06  # (g, m, C/g·kh·kw) @ (g, C/g·kh·kw, K/g) into (m, g, K/g)
                m = cols.shape[1]
                np.matmul(cols, weight_t, out=product[row:row + m].reshape(m, self.groups, k_group).transpose(1, 0, 2))
                row += m
            planes = product.reshape(len(images), size, self.c_out).transpose(0, 2, 1)  # (n, K, L), a view
            epilogue(planes, self.shift, self.activation, out[start:start + step], shortcut[start:start + step],
                     self.residual)
        return out

# %%
def conv_op(c_in, c_out, kernel, stride=1, padding=0, dilation=1, groups=1, bias=True, seed=0):
    """A PNNX nn.Conv2d operator with random weights, as the zoo's files would describe it."""
    g = np.random.default_rng(seed)
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    weight = g.standard_normal((c_out, c_in // groups, *kernel), dtype=np.float32) * 0.1
    attrs = {"weight": Attribute(weight.shape, "float32", weight)}
    if bias:
        attrs["bias"] = Attribute((c_out,), "float32", g.standard_normal(c_out, dtype=np.float32))
    params = dict(in_channels=c_in, out_channels=c_out, kernel_size=kernel, stride=(stride, stride),
                  padding=(padding, padding), dilation=(dilation, dilation), groups=groups, bias=bias,
                  padding_mode="zeros")
    return Operator("nn.Conv2d", "conv", ["0"], ["1"], params=params, attrs=attrs, line=1)


def torch_conv(op, x):
    """PyTorch's answer for the same operator and input."""
    p = op.params
    bias = torch.from_numpy(op.attrs["bias"].data) if "bias" in op.attrs else None
    return F.conv2d(torch.from_numpy(x), torch.from_numpy(op.attrs["weight"].data), bias, p["stride"],
                    p["padding"], p["dilation"], p["groups"]).numpy()


for args in [(16, 32, 3, 1, 1), (16, 32, 1), (32, 32, 3, 2, 1, 1, 32), (8, 16, 3, 1, 2, 2, 2), (3, 8, (3, 5), 2, 0)]:
    op = conv_op(*args)
    x = rng.standard_normal((2, op.params["in_channels"], 15, 17), dtype=np.float32)
    got, want = Conv2d(op)(Tensor(x)).numpy(), torch_conv(op, x)
    print(f"Conv2d{args}: {agreement(got, want)}")

# %% [markdown]
# ## How much faster?
#
# One 3×3 convolution from the middle of ResNet-18 (64 → 64 channels on 56 × 56) at batch 1, each
# way. The loops are so slow that we time them on a 1/64 slice of the work and scale up.

# %%
# NBVAL_IGNORE_OUTPUT
from kuiper.bench import median_ms

op = conv_op(64, 64, 3, 1, 1)
x = rng.standard_normal((1, 64, 56, 56), dtype=np.float32)
layer, weight, bias = Conv2d(op), op.attrs["weight"].data, op.attrs["bias"].data
timings = {  # median milliseconds; the Python loops run 1/64 of the work, once
    "Python loops": median_ms(lambda: conv2d_loops(x[:, :8, :7, :7], weight[:8, :8], bias[:8], 1, 1), 1, 0)
    * 8 * 8 * 64,
    "im2col + GEMM": median_ms(lambda: layer(Tensor(x))),
    "PyTorch": median_ms(lambda: F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias),
                                          padding=1)),
}
for name, ms in timings.items():
    print(f"{name:14} {ms:10.2f} ms")
fig, ax = plt.subplots(figsize=(6, 2.4))
ax.barh(list(timings), list(timings.values()), color=["tab:gray", "tab:blue", "tab:orange"])
ax.set_xscale("log")
ax.set_xlabel("milliseconds, log scale (64→64 channels, 3×3, 56×56)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Transposed convolution
#
# UNet's decoder doubles the resolution with `nn.ConvTranspose2d`: every input pixel *scatters*
# a weighted copy of the kernel into the output. It is the reverse of im2col: one matrix multiply
# makes all the kernel copies, $(C_{out} K_h K_w) \times C_{in}$ times $C_{in} \times (H W)$, and
# **col2im** adds each column back into the output at its window position.
#
# ## Exercise 4.4 — col2im
#
# Write im2col's reverse: column `y * width + x` of row `(k * kh + i) * kw + j` belongs at output
# position $(y s_h - p_h + i d_h,\; x s_w - p_w + j d_w)$ of channel $k$; **add** it there
# (windows overlap when the stride is smaller than the kernel) and skip positions that fall outside
# the output. Parallel over (image, channel), so no two threads add into the same place.

# %%
#| export
#| exercise: add cols[n, (k*kh+i)*kw+j, y*width+x] into out[n, k, y*sh-ph+i*dh, x*sw-pw+j*dw] when inside
@njit(parallel=True, cache=True)
def col2im(cols, out, kh, kw, sh, sw, ph, pw, dh, dw, height, width):
    """Add each column of cols (N, K*kh*kw, H*W) into out (N, K, OH, OW) at its window: im2col's reverse."""
    n_batch, k_out, oh, ow = out.shape
    ### BEGIN SOLUTION
    for nk in prange(n_batch * k_out):
        n, k = nk // k_out, nk % k_out
        for i in range(kh):
            for j in range(kw):
                row = (k * kh + i) * kw + j
                for y in range(height):
                    oy = y * sh - ph + i * dh
                    if 0 <= oy < oh:
                        for x_ in range(width):
                            ox = x_ * sw - pw + j * dw
                            if 0 <= ox < ow:
                                out[n, k, oy, ox] += cols[n, row, y * width + x_]
    ### END SOLUTION


# %%
with check("Exercise 4.4"):
    # torch's F.fold is col2im: it sums each column into its window
    for n_batch, k_out, (height, width), (kh, kw), (sh, sw), (ph, pw), (dh, dw) in [
            (2, 3, (4, 5), (3, 3), (2, 2), (1, 1), (1, 1)), (1, 2, (5, 4), (2, 3), (1, 2), (0, 1), (1, 1)),
            (1, 2, (3, 6), (3, 2), (2, 1), (1, 0), (2, 1)), (1, 1, (4, 4), (4, 4), (2, 2), (1, 1), (1, 1))]:
        oh = (height - 1) * sh - 2 * ph + dh * (kh - 1) + 1
        ow = (width - 1) * sw - 2 * pw + dw * (kw - 1) + 1
        cols = rng.standard_normal((n_batch, k_out * kh * kw, height * width), dtype=np.float32)
        want = F.fold(torch.from_numpy(cols), (oh, ow), (kh, kw), (dh, dw), (ph, pw), (sh, sw)).numpy() + 1
        got = np.ones((n_batch, k_out, oh, ow), np.float32)
        col2im(cols, got, kh, kw, sh, sw, ph, pw, dh, dw, height, width)
        where = f"input {(height, width)}, kernel {(kh, kw)}, stride {(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)}"
        assert np.allclose(got, want, atol=1e-5), f"{where}: expected 1 + F.fold's sums, {agreement(got, want)}"


# %%
#| export
@register("nn.ConvTranspose2d")
class ConvTranspose2d(ConvLayer):
    """Transposed 2-d convolution: a GEMM makes every kernel copy, col2im adds them into place."""

    def __init__(self, op):
        super().__init__(op)
        self.padding = pair(self.param("padding", object, 0), "padding", op)
        self.output_padding = pair(self.param("output_padding", object, 0), "output_padding", op)
        k_group = self.c_out // self.groups
        weight = self.weight("weight", (self.c_in, k_group, *self.kernel))
        per_group = weight.reshape(self.groups, self.c_in // self.groups, k_group * self.kernel[0] * self.kernel[1])
        self.gemm_weight = np.ascontiguousarray(per_group.transpose(0, 2, 1))

    def forward(self, x: Tensor) -> Tensor:
        data = self.input(x)
        n_batch, _, height, width = data.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        oh = (height - 1) * sh - 2 * ph + dh * (kh - 1) + self.output_padding[0] + 1
        ow = (width - 1) * sw - 2 * pw + dw * (kw - 1) + self.output_padding[1] + 1
        groups_in = data.reshape(n_batch, self.groups, self.c_in // self.groups, height * width)
        cols = np.matmul(self.gemm_weight, groups_in).reshape(n_batch, self.c_out * kh * kw, height * width)
        out = np.zeros((n_batch, self.c_out, oh, ow), np.float32)
        col2im(cols, out, kh, kw, sh, sw, ph, pw, dh, dw, height, width)
        if self.bias is not None:
            out += self.bias[:, None, None]
        return Tensor(out, device=x.device)


# %% [markdown]
# ## Inputs without a batch axis
#
# PyTorch's convolutions and pools also take one sample without its batch axis, $(C, H, W)$.
# The pooling layers of this lesson (and lesson 08's convolutions) handle that the same way, by a
# decorator on their `forward`: run the sample as a batch of one, drop the batch axis from every
# output. And a setting that kuiper does not implement (a resize `mode`, in lesson 08 a
# `padding_mode`) gets its own error, which names the operator, the setting and what is supported.

# %%
#| export errors
class UnsupportedError(LayerError):
    """A setting kuiper does not implement (a mode, a padding_mode, antialias): the message names
    the operator, the setting and the supported values."""


# %%
#| export
import functools
from collections.abc import Callable


def unbatched(forward: Callable) -> Callable:
    """Decorator of a forward method of a layer with `self.dims` spatial axes: an input without its
    batch axis, (C, *spatial), runs as a batch of one and every output loses the batch axis again
    (as PyTorch allows)."""
    @functools.wraps(forward)
    def run(self, x: Tensor, *rest: Tensor) -> Tensor | tuple[Tensor, ...]:
        if x.ndim != self.dims + 1:
            return forward(self, x, *rest)
        result = forward(self, Tensor(x.numpy()[None], device=x.device), *rest)  # (C, ...) -> (1, C, ...)
        outputs = tuple(Tensor(r.numpy()[0], device=x.device)
                        for r in (result if isinstance(result, tuple) else (result,)))
        return outputs if isinstance(result, tuple) else outputs[0]
    return run


# %% [markdown]
# ## Exercise 4.5 — max pooling
#
# Max pooling keeps the largest value in each window. Padding counts as $-\infty$ (it never wins),
# and `ceil_mode` may add a last window that hangs over the edge — `out_size` already knows how
# many there are. A window is separable: its maximum is the maximum along the window's columns of
# the maxima down its rows. Write the numba kernel that way: for each (image, channel) in parallel
# and each output row, first the maximum down the window's input rows that fall inside the input,
# for every column at once (`rows`), then for each column tap `j` the maximum along `rows` for every
# output position whose tap lands inside. Both inner loops run over contiguous memory with no branch
# but a compare, so numba vectorises them: a 5 × 5 window costs 10 compares per output, not 25.

# %%
#| export layers.pooling
#| exercise: out[n, c, y, x] = max of x over the window at (y, x), skipping positions outside the input: down the rows, then along them
import numpy as np
from numba import njit, prange

from kuiper.errors import LayerError, ShapeError
from kuiper.layer import Layer
from kuiper.layers.conv import out_size, pair, unbatched
from kuiper.registry import register
from kuiper.tensor import Tensor


@njit(parallel=True, cache=True)
def max_pool(x, out, kh, kw, sh, sw, ph, pw, dh, dw):
    """Max over each kh × kw window (stride, padding, dilation) of x (N, C, H, W) into out: per output
    row, the max down the window's rows (for every column), then the max along that row."""
    n_batch, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    ### BEGIN SOLUTION
    scratch = np.empty((n_batch * channels, width), np.float32)  # one row per plane: no allocation in the loop
    for nc in prange(n_batch * channels):
        n, c, rows = nc // channels, nc % channels, scratch[nc]
        for y in range(oh):
            rows[:] = -np.inf
            for i in range(kh):
                iy = y * sh - ph + i * dh
                if 0 <= iy < height:
                    for ix in range(width):
                        v = x[n, c, iy, ix]
                        rows[ix] = v if v > rows[ix] else rows[ix]
            best = out[n, c, y]
            best[:] = -np.inf
            for j in range(kw):
                offset = j * dw - pw  # output x_ reads rows[x_ * sw + offset]
                first = max(0, -(offset // sw))  # the first x_ with x_ * sw + offset >= 0
                last = min(ow, (width - 1 - offset) // sw + 1)  # one past the last with it < width
                for x_ in range(first, last):
                    v = rows[x_ * sw + offset]
                    best[x_] = v if v > best[x_] else best[x_]
    ### END SOLUTION


# %%
with check("Exercise 4.5"):
    for shape, k, s, p, d, ceil in [((2, 3, 8, 8), 2, 2, 0, 1, False), ((1, 2, 7, 9), 3, 2, 1, 1, True),
                                    ((1, 1, 10, 10), 3, 3, 1, 2, True), ((2, 4, 6, 5), (2, 3), (1, 2), 1, 1, False),
                                    ((1, 2, 9, 7), 3, 2, 1, 2, False)]:
        x = rng.standard_normal(shape, dtype=np.float32) - 2  # mostly negative: a padded 0 must never win
        (kh, kw), (sh, sw) = pair(k, "k", None), pair(s, "s", None)
        out = np.empty((shape[0], shape[1], out_size(shape[2], kh, sh, p, d, ceil),
                        out_size(shape[3], kw, sw, p, d, ceil)), np.float32)
        max_pool(x, out, kh, kw, sh, sw, p, p, d, d)
        want = F.max_pool2d(torch.from_numpy(x), k, s, p, d, ceil_mode=ceil).numpy()
        assert out.shape == want.shape, f"max_pool{(shape, k, s, p, d, ceil)}: expected shape {want.shape}, got {out.shape}"
        bad = np.argwhere(out != want)
        assert not bad.size, (f"max_pool{(shape, k, s, p, d, ceil)}: expected out{tuple(map(int, bad[0]))} = "
                              f"{want[tuple(map(int, bad[0]))]:.4f} (PyTorch), got {out[tuple(map(int, bad[0]))]:.4f}")

# %% [markdown]
# Max pooling halves ResNet's resolution after its first convolution; the picture shows a 2×2,
# stride-2 pool on a small image:

# %%
image = np.add.outer(np.sin(np.arange(12) / 2), np.cos(np.arange(12) / 3)).astype(np.float32)
pooled = np.empty((1, 1, 6, 6), np.float32)
max_pool(image[None, None], pooled, 2, 2, 2, 2, 0, 0, 1, 1)
fig, axes = plt.subplots(1, 2, figsize=(6, 3))
for ax, shown, title in [(axes[0], image, "input 12 × 12"), (axes[1], pooled[0, 0], "max_pool 2×2, stride 2")]:
    ax.imshow(shown, cmap="magma", vmin=image.min(), vmax=image.max())
    ax.set_title(title)
    ax.set_xticks([]), ax.set_yticks([])
plt.show()

# %% [markdown]
# ## The pooling layers
#
# `nn.MaxPool2d` wraps the kernel (with `return_indices=True` it also returns where each maximum
# was, by lesson 08's `max_pool_indices`: SegNet unpools with them). `nn.AvgPool2d` is the same walk with a sum, divided by the
# window size — which, with padding, either counts the padded zeros (`count_include_pad`) or not,
# and with `ceil_mode` never reaches past the padding. `nn.AdaptiveAvgPool2d` picks its windows
# from the output size it is asked for: output $i$ of $O$ averages inputs
# $\lfloor iH/O \rfloor$ to $\lceil (i+1)H/O \rceil$.

# %%
#| export layers.pooling
def pool_params(layer: Layer) -> tuple:
    """kernel, stride (defaults to kernel), padding and dilation pairs of a pooling operator."""
    kernel = pair(layer.param("kernel_size"), "kernel_size", layer.op, minimum=1)
    stride = layer.param("stride", object, None)
    stride = kernel if stride in (None, ()) else pair(stride, "stride", layer.op, minimum=1)
    return (kernel, stride, pair(layer.param("padding", object, 0), "padding", layer.op),
            pair(layer.param("dilation", object, 1), "dilation", layer.op, minimum=1))


def as_nchw(layer: Layer, x: Tensor) -> np.ndarray:
    """x as contiguous float32 (N, C, H, W); ShapeError naming the layer otherwise."""
    data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    if data.ndim != 4:
        raise ShapeError(f"{layer.op.where()}: expected input (N, C, H, W), got {data.shape}")
    return data


@register("nn.MaxPool2d", "F.max_pool2d")
class MaxPool2d(Layer):
    """Largest value in each window; padding never wins."""

    dims = 2

    def __init__(self, op):
        super().__init__(op)
        self.kernel, self.stride, self.padding, self.dilation = pool_params(self)
        self.ceil_mode = self.param("ceil_mode", bool, False)
        self.return_indices = self.param("return_indices", bool, False)

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        data = as_nchw(self, x)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        oh = out_size(data.shape[2], kh, sh, ph, dh, self.ceil_mode)
        ow = out_size(data.shape[3], kw, sw, pw, dw, self.ceil_mode)
        out = np.empty((*data.shape[:2], oh, ow), np.float32)
        if not self.return_indices:
            max_pool(data, out, kh, kw, sh, sw, ph, pw, dh, dw)
            return Tensor(out, device=x.device)
        indices = np.empty(out.shape, np.int64)  # return_indices: lesson 08's max_pool_indices
        max_pool_indices(data, out, indices, *window_table(data.shape[2], oh, kh, sh, ph),
                         *window_table(data.shape[3], ow, kw, sw, pw), dh, dw)
        return Tensor(out, device=x.device), Tensor(indices, device=x.device)


# %% [markdown]
# ## Exercise 4.6 — average pooling
#
# The mean over each window, PyTorch's way. The window at output $(y, x)$ starts at
# $(y s_h - p_h, x s_w - p_w)$ and is cut at the end of the right/bottom **padding** (a `ceil_mode`
# window never reaches past it). Sum the inputs that lie inside the image. Then divide by
# `divisor` when it is positive (`divisor_override`); otherwise by the area of the cut window
# including padding when `count_include_pad`, or by the number of inputs inside when not.

# %%
#| export layers.pooling
#| exercise: mean over each window cut at the padding's end; divide by divisor, the padded area, or the inside count
@njit(parallel=True, cache=True)
def avg_pool(x, out, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
    """Mean over each window, PyTorch's way: the divisor counts padding only if asked, never beyond it."""
    n_batch, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    ### BEGIN SOLUTION
    for nc in prange(n_batch * channels):
        n, c = nc // channels, nc % channels
        for y in range(oh):
            y0 = y * sh - ph
            y1 = min(y0 + kh, height + ph)
            for x_ in range(ow):
                x0 = x_ * sw - pw
                x1 = min(x0 + kw, width + pw)
                padded_area = (y1 - y0) * (x1 - x0)
                total = np.float32(0.0)
                for iy in range(max(y0, 0), min(y1, height)):
                    for ix in range(max(x0, 0), min(x1, width)):
                        total += x[n, c, iy, ix]
                area = padded_area if count_include_pad else (min(y1, height) - max(y0, 0)) * (
                    min(x1, width) - max(x0, 0))
                out[n, c, y, x_] = total / (divisor if divisor > 0 else area)
    ### END SOLUTION


# %%
with check("Exercise 4.6"):
    for shape, k, s, p, ceil, include, divisor in [
            ((2, 3, 8, 8), 2, 2, 0, False, True, None), ((1, 2, 7, 9), 3, 2, 1, True, True, None),
            ((1, 2, 7, 9), 3, 2, 1, True, False, None), ((1, 1, 10, 9), (3, 2), (3, 2), (1, 1), True, False, None),
            ((1, 2, 6, 6), 3, 2, 1, False, True, 4), ((1, 1, 5, 5), 2, 2, 1, True, True, None),
            ((1, 2, 6, 6), 3, 2, 1, True, True, None)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        (kh, kw), (sh, sw), (ph, pw) = (pair(v, "v", None) for v in (k, s, p))
        want = F.avg_pool2d(torch.from_numpy(x), k, s, p, ceil, include, divisor).numpy()
        got = np.full(want.shape, np.nan, np.float32)
        avg_pool(x, got, kh, kw, sh, sw, ph, pw, include, divisor or 0)
        where = f"x {shape}, kernel {k}, stride {s}, padding {p}, ceil_mode={ceil}, count_include_pad={include}, divisor={divisor}"
        bad = np.argwhere(~np.isclose(got, want, atol=1e-5))
        assert not bad.size, f"{where}: expected out{tuple(map(int, bad[0]))} = {want[tuple(map(int, bad[0]))]:.4f} (PyTorch), got {got[tuple(map(int, bad[0]))]:.4f}"


# %%
#| export layers.pooling
@register("nn.AvgPool2d", "F.avg_pool2d")
class AvgPool2d(Layer):
    """Mean of each window."""

    dims = 2

    def __init__(self, op):
        super().__init__(op)
        self.kernel, self.stride, self.padding, _ = pool_params(self)
        self.ceil_mode = self.param("ceil_mode", bool, False)
        self.count_include_pad = self.param("count_include_pad", bool, True)
        self.divisor = self.param("divisor_override", (int, type(None)), None, minimum=1) or 0

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        data = as_nchw(self, x)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        oh = out_size(data.shape[2], kh, sh, ph, 1, self.ceil_mode)
        ow = out_size(data.shape[3], kw, sw, pw, 1, self.ceil_mode)
        out = np.empty((*data.shape[:2], oh, ow), np.float32)
        avg_pool(data, out, kh, kw, sh, sw, ph, pw, self.count_include_pad, self.divisor)
        return Tensor(out, device=x.device)


# %% [markdown]
# ## Exercise 4.7 — adaptive average pooling
#
# `nn.AdaptiveAvgPool2d` is told the output size $O$, not a window: output row $i$ averages the
# input rows $\lfloor iH/O \rfloor$ up to (not including) $\lceil (i+1)H/O \rceil$, and the same for
# columns. The windows overlap when $O$ does not divide $H$, and $O > H$ works too.

# %%
#| export layers.pooling
#| exercise: out[n, c, i, j] = mean of x over rows floor(iH/O)..ceil((i+1)H/O) and the same for columns
@njit(parallel=True, cache=True)
def adaptive_avg_pool(x, out):
    """out[.., i, j] = mean of x over rows floor(iH/O)..ceil((i+1)H/O) and the same for columns."""
    n_batch, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    ### BEGIN SOLUTION
    for nc in prange(n_batch * channels):
        n, c = nc // channels, nc % channels
        for i in range(oh):
            y0, y1 = (i * height) // oh, -(-((i + 1) * height) // oh)
            for j in range(ow):
                x0, x1 = (j * width) // ow, -(-((j + 1) * width) // ow)
                total = np.float32(0.0)
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        total += x[n, c, iy, ix]
                out[n, c, i, j] = total / ((y1 - y0) * (x1 - x0))
    ### END SOLUTION


# %%
with check("Exercise 4.7"):
    for shape, size in [((2, 3, 8, 8), (4, 4)), ((1, 2, 7, 9), (3, 4)), ((1, 2, 5, 6), (7, 4)), ((1, 1, 10, 3), (3, 1))]:
        x = rng.standard_normal(shape, dtype=np.float32)
        want = F.adaptive_avg_pool2d(torch.from_numpy(x), size).numpy()
        got = np.full(want.shape, np.nan, np.float32)
        adaptive_avg_pool(x, got)
        bad = np.argwhere(~np.isclose(got, want, atol=1e-5))
        assert not bad.size, (f"x {shape} to {size}: expected out{tuple(map(int, bad[0]))} = {want[tuple(map(int, bad[0]))]:.4f} (PyTorch), "
                              f"got {got[tuple(map(int, bad[0]))]:.4f}")


# %%
#| export layers.pooling
def adaptive_size(layer: Layer) -> tuple[int | None, int | None]:
    """output_size as a pair; None (PNNX writes 0) keeps that input dimension; LayerError otherwise."""
    size = layer.param("output_size", (int, tuple))
    pair_ = (size, size) if isinstance(size, int) else size
    if len(pair_) != 2 or not all(s is None or (type(s) is int and s >= 0) for s in pair_):
        raise LayerError(f"{layer.op.where()}: output_size should be an int >= 1 or a pair of them, got {size!r}")
    return tuple(s or None for s in pair_)


@register("nn.AdaptiveAvgPool2d", "F.adaptive_avg_pool2d")
class AdaptiveAvgPool2d(Layer):
    """Average pooling to a fixed output size (None keeps that input dimension)."""

    dims = 2

    def __init__(self, op):
        super().__init__(op)
        self.size = adaptive_size(self)

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        data = as_nchw(self, x)
        if self.size == (1, 1):  # global average pooling: one mean, no kernel launch
            return Tensor(data.mean(axis=(2, 3), keepdims=True, dtype=np.float32), device=x.device)
        oh, ow = (s if s is not None else d for s, d in zip(self.size, data.shape[2:]))
        out = np.empty((*data.shape[:2], oh, ow), np.float32)
        adaptive_avg_pool(data, out)
        return Tensor(out, device=x.device)


# %% [markdown]
# ## Activations
#
# Element-wise functions, most of them one line of numpy. The hard variants (MobileNetV3's cheap
# approximations) are clips: $\text{hardswish}(x) = x \cdot \text{clip}(x/6 + 1/2, 0, 1)$.
#
# The two that run after almost every convolution of MobileNet — ReLU6 and Hardswish — get a numba
# loop instead: numpy would make a temporary array for every operation in the formula and walk
# memory once per operation, the loop walks it once. (The sigmoid, YOLO's SiLU and the hard
# sigmoid join them in lesson 05, with an $e^x$ that such a loop can vectorise.)

# %%
#| export layers.activation
from numba import njit, prange


class Elementwise(Layer):
    """A layer that applies `fn` to every element: subclasses set `fn` (a function of a numpy array)."""

    @staticmethod
    def fn(x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(self.fn(x.numpy()), device=x.device)


# %% [markdown]
# ## Exercise 4.8 — activation kernels
#
# Write the two loops. Each walks the flat views of `x` and `out` once, in parallel with `prange`,
# and writes one float32 result per element: ReLU6 is $\min(\max(v, 0), 6)$, Hardswish is
# $v \cdot \text{clip}(v/6 + \tfrac12, 0, 1)$. Keep the constants float32 (`np.float32(6.0)`), so
# numba does not compute in double precision.

# %%
#| export layers.activation
#| exercise: flatten x and out (reshape(-1)), then one prange loop each: ReLU6, Hardswish = v * clip(v/6 + 1/2, 0, 1)
@njit(parallel=True, cache=True)
def relu6_kernel(x, out):
    """out = min(max(x, 0), 6), element by element."""
    ### BEGIN SOLUTION
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for i in prange(flat_in.size):
        flat_out[i] = min(max(flat_in[i], np.float32(0.0)), np.float32(6.0))
    ### END SOLUTION


@njit(parallel=True, cache=True)
def hardswish_kernel(x, out):
    """out = x · clip(x / 6 + 1/2, 0, 1), element by element."""
    ### BEGIN SOLUTION
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for i in prange(flat_in.size):
        v = flat_in[i]
        flat_out[i] = v * min(max(v / np.float32(6.0) + np.float32(0.5), np.float32(0.0)), np.float32(1.0))
    ### END SOLUTION


# %%
with check("Exercise 4.8"):
    x = np.concatenate([np.linspace(-10, 10, 80, dtype=np.float32), rng.standard_normal(1000, dtype=np.float32) * 4])
    x = x.reshape(1, 1, 3, -1)
    for kernel, torch_fn in [(relu6_kernel, F.relu6), (hardswish_kernel, F.hardswish)]:
        want = torch_fn(torch.from_numpy(x)).numpy()
        got = np.full_like(x, np.nan)
        kernel(x, got)
        bad = np.argwhere(~np.isclose(got, want, atol=1e-5, rtol=1e-5))
        assert not bad.size, (f"{kernel.__name__}: at x = {x[tuple(map(int, bad[0]))]:.4f} expected {want[tuple(map(int, bad[0]))]:.5f} "
                              f"(PyTorch), got {got[tuple(map(int, bad[0]))]:.5f}")
    assert got.dtype == np.float32, f"expected float32 out, got {got.dtype}"


# %%
#| export layers.activation
def elementwise(kernel):
    """A layer's `fn` running the numba `kernel(x, out)` into a new float32 array."""

    def fn(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(x)
        kernel(x, out)
        return out

    return staticmethod(fn)


@register("nn.ReLU6", "F.relu6")
class ReLU6(Elementwise):
    """min(max(x, 0), 6)."""

    fn = elementwise(relu6_kernel)


@register("nn.Hardswish", "F.hardswish")
class Hardswish(Elementwise):
    """x · hardsigmoid(x), MobileNetV3's activation."""

    fn = elementwise(hardswish_kernel)


@register("nn.Hardtanh", "F.hardtanh")
class Hardtanh(Layer):
    """clip(x, min_val, max_val)."""

    def __init__(self, op):
        super().__init__(op)
        self.low = self.param("min_val", (int, float), -1.0)
        self.high = self.param("max_val", (int, float), 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(np.clip(x.numpy(), self.low, self.high), device=x.device)


@register("nn.LeakyReLU", "F.leaky_relu")
class LeakyReLU(Layer):
    """x for x ≥ 0, negative_slope · x below."""

    def __init__(self, op):
        super().__init__(op)
        self.slope = self.param("negative_slope", (int, float), 0.01)

    def forward(self, x: Tensor) -> Tensor:
        data = x.numpy()
        return Tensor(np.where(data >= 0, data, data * np.float32(self.slope)), device=x.device)


# %% [markdown]
# ## Batch normalization
#
# At inference a batch norm is a fixed per-channel affine map,
# $y = (x - \mu)/\sqrt{\sigma^2 + \epsilon}\cdot\gamma + \beta = x \cdot a + b$, so the layer folds
# it into a scale $a$ and a shift $b$ once. (PNNX usually goes further and folds it into the
# preceding convolution's weights, so exported CNNs rarely contain one.)

# %%
#| export layers.norm
import numpy as np

from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


@register("nn.BatchNorm2d", "nn.BatchNorm1d")
class BatchNorm(Layer):
    """Inference batch norm over dimension 1, folded into a per-channel scale and shift."""

    def __init__(self, op):
        super().__init__(op)
        n = self.param("num_features", int, minimum=1)
        mean, var = self.weight("running_mean", (n,)), self.weight("running_var", (n,))
        scale = 1 / np.sqrt(var + np.float32(self.param("eps", float, 1e-5, minimum=0)))
        if self.param("affine", bool, True):
            scale = scale * self.weight("weight", (n,))
            shift = self.weight("bias", (n,)) - mean * scale
        else:
            shift = -mean * scale
        self.scale, self.shift = scale.astype(np.float32), shift.astype(np.float32)

    def forward(self, x: Tensor) -> Tensor:
        data = x.numpy()
        view = (-1,) + (1,) * (data.ndim - 2)
        return Tensor(data * self.scale.reshape(view) + self.shift.reshape(view), device=x.device)


# %% [markdown]
# ## Resizing
#
# `nn.Upsample` and `F.interpolate` resize the spatial axes of a feature map (YOLO's neck,
# UNet's variants, super-resolution heads) — one axis at a time: every mode is *separable*. Along
# one axis, output position $o$ reads a few input positions (its **taps**) with weights, so one
# table pair describes the whole resize of that axis: `index` $(O, \text{taps})$ and `weight`
# $(O, \text{taps})$, and one kernel applies any table: $\text{out}[o] = \sum_t
# \text{weight}[o, t]\, \text{in}[\text{index}[o, t]]$.
#
# Where output $o$ lands in the input: with step $s = 1/\text{scale\_factor}$ (or in/out when a
# size was given) and `align_corners=False`, pixels are squares whose centres line up,
# $\text{src} = (o + \tfrac12)s - \tfrac12$ (clamped at 0, except for cubic); with
# `align_corners=True` the corner pixels line up, $\text{src} = o\,(\text{in}-1)/(\text{out}-1)$.
#
# | mode | taps | index | weights |
# |---|---|---|---|
# | `nearest` | 1 | $\lfloor o \cdot s \rfloor$ | 1 |
# | `nearest-exact` | 1 | $\lfloor (o + \tfrac12) s \rfloor$ | 1 |
# | `linear`, `bilinear`, `trilinear` | 2 | $\ell = \lfloor \text{src} \rfloor$, $\ell + 1$ | $1 - f$, $f$ |
# | `bicubic` | 4 | $\ell - 1 \ldots \ell + 2$ | Keys' cubic convolution of $f$ |
#
# with $f = \text{src} - \ell$ and every index clamped into $[0, \text{in} - 1]$. The nearest
# modes compute $o \cdot s$ in float32, as PyTorch does: in float64 a few outputs would round to
# the other neighbour.
#
# ## Exercise 4.9 — the resampling table of one axis
#
# Write `source_coords` by the formulas above (an output of one position reads source 0 when the
# corners line up; `cubic` keeps negative sources), and `resample_table` for the four modes of the
# table (`cubic_weights(f)`, the next exercise, gives the four bicubic weights as an $(O, 4)$ array).

# %%
#| export layers.resize
#| exercise: source coordinate per output (either align_corners, no clamp for cubic); index and weight tables of nearest, nearest-exact, linear and cubic
import math

import numpy as np
from numba import njit, prange

from kuiper.errors import LayerError, ShapeError, UnsupportedError
from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


def source_coords(size_in: int, size_out: int, scale: float | None, align_corners: bool,
                  cubic: bool = False) -> np.ndarray:
    """Source coordinate (float64, (size_out,)) of each output position along one axis
    (PyTorch's area_pixel_compute_source_index); `scale` is the scale_factor or None."""
    ### BEGIN SOLUTION
    out = np.arange(size_out, dtype=np.float64)
    if align_corners:
        return out * ((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0)
    step = 1 / scale if scale else size_in / size_out
    src = (out + 0.5) * step - 0.5
    return src if cubic else np.maximum(src, 0.0)
    ### END SOLUTION


def resample_table(size_in: int, size_out: int, scale: float | None, mode: str,
                   align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
    """index (size_out, taps) int64 and weight (size_out, taps) float32 resampling one axis in
    `mode` ('nearest', 'nearest-exact', 'linear' or 'cubic'), as PyTorch's upsample kernels."""
    ### BEGIN SOLUTION
    if mode in ("nearest", "nearest-exact"):
        step = np.float32(1 / scale) if scale else np.float32(size_in) / np.float32(size_out)
        shift = 0.5 if mode == "nearest-exact" else 0.0
        src = (np.arange(size_out, dtype=np.float32) + np.float32(shift)) * step
        index = np.minimum(np.floor(src).astype(np.int64), size_in - 1)[:, None]
        return index, np.ones(index.shape, np.float32)
    src = source_coords(size_in, size_out, scale, align_corners, cubic=mode == "cubic")
    low = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    frac = np.clip(src - low, 0.0, 1.0)
    if mode == "linear":
        taps, weight = np.arange(2), np.stack([1 - frac, frac], axis=1)
    else:
        taps, weight = np.arange(-1, 3), cubic_weights(frac)
    return np.clip(low[:, None] + taps, 0, size_in - 1), weight.astype(np.float32)
    ### END SOLUTION


# %%
def apply_table(x, axis, index, weight):
    """The table applied along `axis` in numpy: Σ_t weight[:, t] · x[index[:, t]]."""
    shape = [1] * x.ndim
    shape[axis] = len(index)
    return sum(np.take(x, index[:, t], axis=axis) * weight[:, t].reshape(shape) for t in range(index.shape[1]))


with check("Exercise 4.9"):
    x = rng.standard_normal((1, 2, 6, 11), dtype=np.float32)
    for mode, size, scale, corners in [("nearest", None, 2.0, False), ("nearest", (7, 3), None, False),
                                       ("nearest", None, 3.7, False), ("nearest-exact", (7, 3), None, False),
                                       ("nearest-exact", None, 3.7, False), ("bilinear", None, 2.0, False),
                                       ("bilinear", (9, 6), None, False), ("bilinear", (9, 6), None, True),
                                       ("bilinear", (3, 1), None, True), ("bilinear", None, 3.0, False),
                                       ("bilinear", (2, 3), None, False)]:
        options = dict(scale_factor=scale) if scale else dict(size=size)
        if mode == "bilinear":
            options["align_corners"] = corners
        want = F.interpolate(torch.from_numpy(x), mode=mode, **options).numpy()
        got = x
        for axis in (2, 3):
            n_in, n, taps = x.shape[axis], want.shape[axis], 1 if "nearest" in mode else 2
            index, weight = resample_table(n_in, n, scale, "linear" if mode == "bilinear" else mode, corners)
            assert index.shape == weight.shape == (n, taps), (f"{mode} {n_in} -> {n}: expected tables of shape "
                                                              f"{(n, taps)}, got index {index.shape} and weight {weight.shape}")
            got = apply_table(got, axis, index, weight)
        where = f"{mode} {x.shape[2:]} -> {want.shape[2:]}, scale {scale}, align_corners={corners}"
        assert np.allclose(got, want, atol=1e-5), f"{where}: expected F.interpolate's output, {agreement(got, want)}"
    got = source_coords(4, 8, 2.0, False, cubic=True)[:2]
    assert np.array_equal(got, [-0.25, 0.25]), f"cubic sources of 4 -> 8: expected -0.25, 0.25 first, got {got}"


# %% [markdown]
# ## Exercise 4.10 — bicubic weights
#
# Bicubic resampling blends four taps, at distances $1 + f$, $f$, $1 - f$ and $2 - f$ from the
# source, with Keys' cubic convolution kernel ($a = -0.75$ in PyTorch and OpenCV):
#
# $$W(d) = \begin{cases} (a+2)|d|^3 - (a+3)|d|^2 + 1 & |d| \le 1 \\
#   a|d|^3 - 5a|d|^2 + 8a|d| - 4a & 1 < |d| < 2 \end{cases}$$
#
# Write `cubic_weights(f)`: for an array of fractions $f$ (shape $(O,)$) the $(O, 4)$ weights of
# the taps $\ell - 1, \ell, \ell + 1, \ell + 2$. The four weights of every row sum to 1.

# %%
#| export layers.resize
#| exercise: the four Keys cubic-convolution weights (a = -0.75) of the taps at distances 1+f, f, 1-f, 2-f
def cubic_weights(frac: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Weights (O, 4) float64 of the taps floor(src)-1 .. floor(src)+2 for fractions frac (O,)
    (Keys 1981, "Cubic convolution interpolation for digital image processing"; PyTorch's a)."""
    ### BEGIN SOLUTION
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return np.stack([far(frac + 1), near(frac), near(1 - frac), far(2 - frac)], axis=-1)
    ### END SOLUTION


# %%
with check("Exercise 4.10"):
    frac = np.array([0.0, 0.25, 0.5, 0.9])
    got = cubic_weights(frac)
    assert got.shape == (4, 4), f"expected weights of shape (4, 4), got {got.shape}"
    want = np.array([[0, 1, 0, 0], [-0.10546875, 0.87890625, 0.26171875, -0.03515625],
                     [-0.09375, 0.59375, 0.59375, -0.09375], [-0.00675, 0.08875, 0.97875, -0.06075]])
    assert np.allclose(got, want, atol=1e-6), f"f = {frac}: expected\n{want}\ngot\n{np.round(got, 5)}"
    x = rng.standard_normal((1, 2, 5, 4), dtype=np.float32)
    for size, scale, corners in [((9, 7), None, False), ((10, 8), 2.0, False), ((9, 7), None, True), ((3, 2), None, False)]:
        options = dict(scale_factor=scale) if scale else dict(size=size)
        want = F.interpolate(torch.from_numpy(x), mode="bicubic", align_corners=corners, **options).numpy()
        got = x
        for axis, n_in, n in [(2, 5, size[0]), (3, 4, size[1])]:
            got = apply_table(got, axis, *resample_table(n_in, n, scale, "cubic", corners))
        assert np.allclose(got, want, atol=1e-5), (f"bicubic {x.shape[2:]} -> {size}, align_corners={corners}: "
                                                   f"expected F.interpolate's output, {agreement(got, want)}")


# %% [markdown]
# ## Exercise 4.11 — the kernel that applies a table
#
# The kernel that applies a table views the tensor as $(A, \text{in}, B)$ — everything before
# the axis, the axis, everything after — and writes $(A, \text{out}, B)$, one weighted sum of
# `taps` inputs per output element; the same loop resizes any axis in any mode. Write it in
# numba, in parallel over the outer index $a$, summing in float32 (a flat loop over $(a, o)$ pairs
# pays a division per pair to split its index: per *element* when the last axis is resized, $B = 1$,
# which made the pass twice as slow). `resize_axis` puts the
# table and the kernel together under PyTorch's mode names (lesson 08 resizes segmentation masks
# with it).

# %%
#| export layers.resize
#| exercise: out[a, o, b] = sum over taps t of weight[o, t] * x[a, index[o, t], b], in parallel over a, in float32
@njit(parallel=True, cache=True)
def resample(x, index, weight, out):
    """out[a, o, b] = Σ_t weight[o, t] · x[a, index[o, t], b] for x (A, in, B), out (A, out, B) float32."""
    outer, size_out, inner = out.shape
    ### BEGIN SOLUTION
    for a in prange(outer):
        for o in range(size_out):
            for b in range(inner):
                total = np.float32(0.0)
                for t in range(index.shape[1]):
                    total += weight[o, t] * x[a, index[o, t], b]
                out[a, o, b] = total
    ### END SOLUTION


def resample_axis(x: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """x (float32, any shape) with `axis` resampled by the table (index, weight) of resample_table."""
    outer, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
    out = np.empty((*x.shape[:axis], len(index), *x.shape[axis + 1:]), np.float32)
    resample(np.ascontiguousarray(x, dtype=np.float32).reshape(outer, x.shape[axis], inner), index, weight,
             out.reshape(outer, len(index), inner))  # (A, in, B) -> (A, out, B)
    return out


MODES = {"nearest": "nearest", "nearest-exact": "nearest-exact", "linear": "linear", "bilinear": "linear",
         "trilinear": "linear", "bicubic": "cubic"}


def resize_axis(x: np.ndarray, axis: int, size_out: int, scale: float | None, mode: str,
                align_corners: bool) -> np.ndarray:
    """x (float32) with `axis` resized to size_out in `mode`, a key of MODES, as F.interpolate does
    it; `scale` is the scale_factor that made size_out, or None."""
    return resample_axis(x, axis, *resample_table(x.shape[axis], size_out, scale, MODES[mode], align_corners))


@njit(parallel=True, cache=True)
def nearest_2d(x, rows, cols, out):
    """out[a, i, j] = x[a, rows[i], cols[j]] for x (A, H, W), out (A, OH, OW) float32: a nearest resize of
    both axes in one pass, where resize_axis twice would write and read an (A, OH, W) in between."""
    outer, oh, ow = out.shape
    for ai in prange(outer * oh):
        a, i = ai // oh, ai % oh
        for j in range(ow):
            out[a, i, j] = x[a, rows[i], cols[j]]


# %%
with check("Exercise 4.11"):
    x = rng.standard_normal((3, 7, 5), dtype=np.float32)
    index = rng.integers(0, 7, (4, 3)).astype(np.int64)
    weight = rng.standard_normal((4, 3), dtype=np.float32)
    want = apply_table(x, 1, index, weight)
    got = np.full((3, 4, 5), np.nan, np.float32)
    resample(x, index, weight, got)
    assert np.allclose(got, want, atol=1e-5), (f"a table of 3 taps, x {x.shape} along axis 1: expected the "
                                               f"weighted sums, {agreement(got, want)}")
    up = resample_axis(x, 2, *resample_table(5, 9, None, "linear", False))
    want = F.interpolate(torch.from_numpy(x), size=9, mode="linear").numpy()
    assert np.allclose(up, want, atol=1e-5), f"linear 5 -> 9 along the last axis: expected F.interpolate's, {agreement(up, want)}"


# %% [markdown]
# The layer reads what PNNX writes for every spelling of a resize: `nn.Upsample`,
# `F.interpolate` and `F.upsample` (a mode, a size or a scale factor for each of the 1, 2 or 3
# spatial axes), and the fixed-mode `nn.UpsamplingNearest2d` and `nn.UpsamplingBilinear2d`
# (which lines up the corners). With `recompute_scale_factor=True` PyTorch computes the output
# size from the scale factor and then forgets the factor: the step becomes in/out.

# %%
#| export layers.resize
MAX_SCALE = 1024  # a larger factor is a damaged file, not a model
FIXED = {"nn.UpsamplingNearest2d": ("nearest", False), "F.upsample_nearest": ("nearest", False),
         "nn.UpsamplingBilinear2d": ("bilinear", True), "F.upsample_bilinear": ("bilinear", True)}


@register("nn.Upsample", "F.interpolate", "F.upsample", *FIXED)
class Upsample(Layer):
    """Resize the spatial axes (1 to 3) of (N, C, ...): any mode of MODES, by size or scale_factor."""

    def __init__(self, op):
        super().__init__(op)
        mode, corners = FIXED.get(op.type, ("nearest", False))
        self.mode = mode if op.type in FIXED else self.param("mode", str, mode)
        if self.mode not in MODES:
            raise UnsupportedError(f"{op.where()}: mode {self.mode!r} is not supported (supported: {', '.join(MODES)})")
        if self.param("antialias", bool, False):
            raise UnsupportedError(f"{op.where()}: antialias=True is not supported (supported: False)")
        self.align_corners = corners if op.type in FIXED else bool(self.param("align_corners", (bool, type(None)), False))
        self.recompute = bool(self.param("recompute_scale_factor", (bool, type(None)), False))
        size = self.param("size", (int, tuple, type(None)), None)
        scale = self.param("scale_factor", (int, float, tuple, type(None)), None)
        self.size = (size,) if isinstance(size, int) else size
        self.scale = (scale,) if isinstance(scale, (int, float)) else scale
        if self.size is None and self.scale is None:
            raise LayerError(f"{op.where()}: needs size or scale_factor")
        if self.size is not None and not (1 <= len(self.size) <= 3 and all(type(s) is int and s >= 1 for s in self.size)):
            raise LayerError(f"{op.where()}: size should be an int >= 1 or up to 3 of them, got {size!r}")
        if self.size is None and not (1 <= len(self.scale) <= 3 and all(
                type(s) in (int, float) and 0 < s < MAX_SCALE for s in self.scale)):
            raise LayerError(f"{op.where()}: scale_factor should be a number in (0, {MAX_SCALE}) or up to 3, "
                             f"got {scale!r}")

    def targets(self, shape: tuple[int, ...]) -> list[tuple[int, float | None]]:
        """(output size, scale factor or None) of each spatial axis of an input of `shape`."""
        spatial = shape[2:]
        given = self.size if self.size is not None else self.scale
        if len(given) not in (1, len(spatial)):
            raise ShapeError(f"{self.op.where()}: {len(given)} sizes or scales for an input {shape} "
                             f"with {len(spatial)} spatial axes")
        given = given * len(spatial) if len(given) == 1 else given
        if self.size is not None:
            return [(n, None) for n in given]
        sizes = [math.floor(d * float(s)) for d, s in zip(spatial, given)]
        if min(sizes) < 1:
            raise ShapeError(f"{self.op.where()}: scale_factor {self.scale} makes {shape} empty: {sizes}")
        return [(n, None if self.recompute else float(s)) for n, s in zip(sizes, given)]

    def forward(self, x: Tensor) -> Tensor:
        data = np.asarray(x.numpy(), dtype=np.float32)
        if not 3 <= data.ndim <= 5:
            raise ShapeError(f"{self.op.where()}: expected input (N, C, ...) with 1 to 3 spatial axes, got {data.shape}")
        if data.ndim == 4 and MODES[self.mode].startswith("nearest"):  # both axes in one pass
            (rows, _), (cols, _) = (resample_table(d, n, scale, MODES[self.mode], self.align_corners)
                                    for d, (n, scale) in zip(data.shape[2:], self.targets(data.shape)))
            out = np.empty((*data.shape[:2], len(rows), len(cols)), np.float32)
            nearest_2d(np.ascontiguousarray(data).reshape(-1, *data.shape[2:]), rows[:, 0], cols[:, 0],
                       out.reshape(-1, *out.shape[2:]))  # (N, C, H, W) -> (N·C, H, W)
            return Tensor(out, device=x.device)
        for axis, (n, scale) in enumerate(self.targets(data.shape), start=2):
            data = resize_axis(data, axis, n, scale, self.mode, self.align_corners)
        return Tensor(data, device=x.device)


# %% [markdown]
# ## Moving data around
#
# The remaining operators only rearrange elements. Two details: PNNX records shapes with the
# **batch size of the export** (1), so `view`/`reshape` put the real batch size back when the
# first dimension was the batch; and `pnnx.Attribute` is a constant tensor stored in the weights
# file (YOLO's anchor grids), returned as it is.

# %%
#| export layers.shape
def batch_shape(shape: tuple[int, ...], x: Tensor) -> tuple[int, ...]:
    """`shape` from the .param file, its exported batch of 1 replaced by x's batch when that fits."""
    if shape and shape[0] == 1 and x.shape[0] != 1 and int(np.prod(shape)) * x.shape[0] == x.size:
        return (x.shape[0], *shape[1:])
    return shape


@register("Tensor.view", "Tensor.reshape", "torch.reshape")
class Reshape(Layer):
    """The same elements in a new shape (row-major), with the batch dimension kept free."""

    def __init__(self, op):
        super().__init__(op)
        self.shape = self.param("shape", tuple)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(*batch_shape(self.shape, x))


@register("Tensor.permute", "torch.permute")
class Permute(Layer):
    """Reorder the dimensions."""

    def __init__(self, op):
        super().__init__(op)
        self.dims = self.param("dims", tuple)

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(np.transpose(x.numpy(), self.dims), device=x.device)


@register("torch.transpose", "Tensor.transpose")
class Transpose(Layer):
    """Swap two dimensions."""

    def __init__(self, op):
        super().__init__(op)
        self.dims = self.param("dim0", int), self.param("dim1", int)

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(np.swapaxes(x.numpy(), *self.dims), device=x.device)


@register("torch.split", "Tensor.split", "torch.chunk", "Tensor.chunk", "torch.tensor_split")
class Split(Layer):
    """Cut along `dim` into pieces of a size, of given sizes, or into a number of chunks."""

    def __init__(self, op):
        super().__init__(op)
        self.dim = self.param("dim", int, 0)
        if op.type.endswith("chunk"):
            self.chunks, self.sizes = self.param("chunks", int, minimum=1), None
        else:
            key = ("sections" if "sections" in op.params else "indices") if op.type == "torch.tensor_split" else (
                "split_size_or_sections" if "split_size_or_sections" in op.params else "split_size")
            self.chunks, self.sizes = None, self.param(key, (int, tuple), minimum=1)
            if isinstance(self.sizes, tuple) and key != "indices" and not all(type(n) is int and n >= 0 for n in self.sizes):
                raise LayerError(f"{op.where()}: {key} should be ints >= 0, got {self.sizes!r}")
        self.tensor_split = op.type == "torch.tensor_split"

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        data, length = x.numpy(), x.shape[self.dim]
        if self.tensor_split:  # n sections: the first length % n one longer, as np.array_split
            cuts = self.sizes if isinstance(self.sizes, int) else list(self.sizes)
            return tuple(Tensor(part, device=x.device) for part in np.array_split(data, cuts, axis=self.dim))
        elif self.chunks is not None:
            step = -(-length // self.chunks)
            cuts = list(range(step, length, step))
        elif isinstance(self.sizes, int):
            cuts = list(range(self.sizes, length, self.sizes))
        else:
            cuts = list(np.cumsum(self.sizes)[:-1])
        return tuple(Tensor(part, device=x.device) for part in np.split(data, cuts, axis=self.dim))


INT_MAX = 2**31 - 1


@register("Tensor.slice")
class Slice(Layer):
    """x[start:end:step] along one dimension, or several (dims, starts, ends, steps)."""

    def __init__(self, op):
        super().__init__(op)
        if "dims" in op.params:
            self.dims, self.starts = self.param("dims", tuple), self.param("starts", tuple)
            self.ends, self.steps = self.param("ends", tuple), self.param("steps", tuple)
        else:
            self.dims, self.starts = (self.param("dim", int),), (self.param("start", int, 0),)
            self.ends, self.steps = (self.param("end", int),), (self.param("step", int, 1),)
        # x[0] inside a slice: PNNX lists an index per dim in `selects` (one dim: `select`), INT_MAX where it slices
        self.selects = self.param("selects", tuple, (self.param("select", int, INT_MAX),) * len(self.dims))
        if not all(type(step) is int and step >= 1 for step, select in zip(self.steps, self.selects) if select == INT_MAX):
            raise LayerError(f"{op.where()}: every step of a sliced dimension should be an int >= 1, got {self.steps!r}")

    def forward(self, x: Tensor) -> Tensor:
        index = [slice(None)] * x.ndim
        for dim, start, end, step, select in zip(self.dims, self.starts, self.ends, self.steps, self.selects):
            index[dim] = slice(start, end, step) if select == INT_MAX else select
        return Tensor(x.numpy()[tuple(index)], device=x.device)


@register("torch.squeeze", "Tensor.squeeze")
class Squeeze(Layer):
    """Drop size-1 dimensions (all, or `dim`)."""

    def __init__(self, op):
        super().__init__(op)
        self.dim = self.param("dim", (int, tuple, type(None)), None)

    def forward(self, x: Tensor) -> Tensor:
        data = x.numpy()
        dims = (self.dim,) if isinstance(self.dim, int) else self.dim
        if dims is not None:
            dims = tuple(d for d in dims if data.shape[d] == 1)
        return Tensor(np.squeeze(data, axis=dims), device=x.device)


@register("torch.unsqueeze", "Tensor.unsqueeze")
class Unsqueeze(Layer):
    """Insert a size-1 dimension at `dim`."""

    def __init__(self, op):
        super().__init__(op)
        self.dim = self.param("dim", int)

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(np.expand_dims(x.numpy(), self.dim), device=x.device)


@register("torch.stack")
class Stack(Layer):
    """Stack the inputs along a new dimension `dim`."""

    def __init__(self, op):
        super().__init__(op)
        self.dim = self.param("dim", int)

    def forward(self, *xs: Tensor) -> Tensor:
        return Tensor(np.stack([x.numpy() for x in xs], axis=self.dim), device=xs[0].device)


@register("Tensor.contiguous", "nn.Identity", "nn.Dropout", "F.dropout", "Tensor.clone")
class Identity(Layer):
    """Pass the input through: no-ops at inference."""

    def forward(self, x: Tensor) -> Tensor:
        return x


@register("pnnx.Attribute")
class Constant(Layer):
    """A constant tensor stored in the weights file."""

    def __init__(self, op):
        super().__init__(op)
        self.value = Tensor(self.weight("data"))

    def forward(self) -> Tensor:
        return self.value


# %% [markdown]
# ## Every layer against PyTorch
#
# One table, one row per layer: build it from a PNNX-style operator, run it on random input, run
# `torch.nn.functional` on the same, compare. (The test suite does this with many more shapes
# and parameters, chosen at random by hypothesis.)

# %%
from kuiper.registry import create_layer


def make(kind, params=None, attrs=None, n_in=1):
    """Build the registered layer for a PNNX operator of `kind`."""
    attrs = {k: Attribute(v.shape, "float32", v) for k, v in (attrs or {}).items()}
    return create_layer(Operator(kind, "op", [str(i) for i in range(n_in)], ["out"], params or {}, attrs, line=1))


x = rng.standard_normal((2, 8, 13, 11), dtype=np.float32)
tx = torch.from_numpy(x)
mean, var = rng.standard_normal(8, dtype=np.float32), rng.random(8, dtype=np.float32) + 0.5
gamma, beta = rng.standard_normal(8, dtype=np.float32), rng.standard_normal(8, dtype=np.float32)
cases = {
    "nn.MaxPool2d 3/2/1 ceil": (make("nn.MaxPool2d", dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1),
                                                         dilation=(1, 1), ceil_mode=True)),
                                F.max_pool2d(tx, 3, 2, 1, ceil_mode=True)),
    "nn.AvgPool2d 3/2/1 ceil": (make("nn.AvgPool2d", dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1),
                                                         ceil_mode=True, count_include_pad=False)),
                                F.avg_pool2d(tx, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    "nn.AdaptiveAvgPool2d (5,3)": (make("nn.AdaptiveAvgPool2d", dict(output_size=(5, 3))),
                                   F.adaptive_avg_pool2d(tx, (5, 3))),
    "nn.ReLU6": (make("nn.ReLU6"), F.relu6(tx)),
    "nn.Sigmoid": (make("nn.Sigmoid"), torch.sigmoid(tx)),
    "nn.SiLU": (make("nn.SiLU"), F.silu(tx)),
    "nn.Hardsigmoid": (make("nn.Hardsigmoid"), F.hardsigmoid(tx)),
    "nn.Hardswish": (make("nn.Hardswish"), F.hardswish(tx)),
    "nn.Softmax dim=1": (make("nn.Softmax", dict(dim=1)), F.softmax(tx, 1)),
    "nn.BatchNorm2d": (make("nn.BatchNorm2d", dict(num_features=8, eps=1e-5, affine=True),
                            dict(running_mean=mean, running_var=var, weight=gamma, bias=beta)),
                       F.batch_norm(tx, *map(torch.from_numpy, (mean, var, gamma, beta)))),
    "nn.Upsample nearest ×2": (make("nn.Upsample", dict(mode="nearest", scale_factor=(2.0, 2.0))),
                               F.interpolate(tx, scale_factor=2, mode="nearest")),
    "nn.Upsample bilinear (20,17)": (make("nn.Upsample", dict(mode="bilinear", size=(20, 17), align_corners=False)),
                                     F.interpolate(tx, size=(20, 17), mode="bilinear", align_corners=False)),
    "F.interpolate bilinear, corners": (make("F.interpolate", dict(mode="bilinear", scale_factor=(1.5, 2.0),
                                                                   align_corners=True)),
                                        F.interpolate(tx, scale_factor=(1.5, 2.0), mode="bilinear",
                                                      align_corners=True)),
    "nn.Upsample bicubic ×1.5": (make("nn.Upsample", dict(mode="bicubic", scale_factor=(1.5, 1.5))),
                                 F.interpolate(tx, scale_factor=1.5, mode="bicubic")),
    "Tensor.permute": (make("Tensor.permute", dict(dims=(0, 2, 3, 1))), tx.permute(0, 2, 3, 1)),
    "Tensor.view": (make("Tensor.view", dict(shape=(1, 8, 143))), tx.view(2, 8, 143)),
}
for name, (layer, want) in cases.items():
    got = layer(Tensor(x)).numpy()
    print(f"{name:32} {str(got.shape):18} {agreement(got, want.numpy())}")

# %% [markdown]
# ## What you built
#
# `kuiper/layers/` now holds the operator set of the course's CNNs: convolutions and transposed
# convolutions (`conv.py`), max, average and adaptive average pooling (`pooling.py`), with or
# without a batch axis, activations, batch norm, resizing in every mode through one table kernel
# (`resize.py`) and the shape operators, each registered under its PNNX names and each matching
# PyTorch to float32 rounding. Lesson 08 adds the window operators of segmentation networks
# (padding modes, 1-D convolutions, pooling indices, Fold and Unfold). Lesson 05 adds
# the last piece the models need, `pnnx.Expression`; lesson 06 runs ResNet and MobileNet on real
# photos and measures the whole graph against PyTorch.
