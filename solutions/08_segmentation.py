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
# # Lesson 08 — UNet: semantic segmentation
#
# A classifier names the picture, a detector boxes the objects; a **semantic segmentation** model
# names every *pixel*. KuiperInfer's third demo is a UNet that cuts cars out of Carvana photos. In
# this lesson you run a UNet that was trained here, on the synthetic shapes of lesson 07, and you
# write the code around it: upsampling inside the network, and per-pixel classes, scores and a
# colour overlay outside it.
#
# **What you build:** `kuiper/vision/segment.py` (per-pixel softmax and argmax, the confusion
# matrix, IoU and mIoU, the colour overlay, masks mapped back to the photo) and, on top of it, the
# command `kuiper segment`; then, in lesson 04's `kuiper/layers/`, the window operators of other
# segmentation networks: every convolution padding mode, 1-D and functional convolutions, max
# pooling with indices, adaptive max and power-average pooling, `nn.Fold` and `nn.Unfold`, and the
# spatial transformer's `F.affine_grid` and `F.grid_sample` (`kuiper/layers/grid.py`); and, for the
# transformer blocks of ConvNeXt and ViT, `nn.Linear` by tiles with its epilogue fused
# (`kuiper/layers/transformer.py`).
#
# **Prerequisites:** lesson 04 (convolution, `nn.ConvTranspose2d`, `nn.Upsample`), lesson 06
# (`softmax`, `load_image`) and lesson 07 (`letterbox`). **Time:** about two hours.
#
# | exercise | what |
# |---|---|
# | 8.1 | transposed convolution as a scatter of kernel copies |
# | 8.2 | bilinear resizing as a matrix, both `align_corners` |
# | 8.3 | per-pixel softmax and argmax |
# | 8.4 | the confusion matrix |
# | 8.5 | IoU per class and mIoU |
# | 8.6 | the colour overlay |
# | 8.7 | 1-D windows as 2-D ones, and the padding of each side (`'same'`, `F.pad`'s order) |
# | 8.8 | window tables and max pooling with the indices of the maxima (numba) |
# | 8.9 | `unfold` and `fold`: im2col and col2im as operators |
# | 8.10 | `affine_grid` and the `grid_sample` kernel (numba): sampling at any point |
# | 8.11 | the epilogue of a Linear run by tiles: bias, activation, residual, channels-first |

# %%
#| default_exp vision.segment

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyArrowPatch, Rectangle
from PIL import Image
from torch.nn import functional as F

import kuiper
from kuiper.course import DATA, agreement, check
from kuiper.layers.resize import resize_axis, source_coords

MODELS = DATA / "models"

# %% [markdown]
# ## Encoder, decoder and skip connections
#
# UNet (Ronneberger et al., 2015) is two halves. The **encoder** is a plain CNN: a *double conv*
# block (3×3 conv, BatchNorm, ReLU, twice), then a 2×2 max pool that halves the side, four times,
# doubling the channels each time. Deep in the encoder a pixel *knows what* it belongs to but the
# map is 16 times coarser than the picture. The **decoder** climbs back: a 2×2 transposed
# convolution doubles the side, and the encoder's map of the same size is *concatenated* to it
# (the **skip connection**), so that the fine *where* comes back beside the coarse *what*; another
# double conv mixes them. A last 1×1 convolution gives one score (logit) per class per pixel.
# Our UNet takes 128 × 128 pictures, starts with 16 channels and ends with 6 class maps
# (background and five shapes):

# %%
def draw_unet(ax: plt.Axes, base: int = 16, side: int = 128) -> None:
    """UNet's levels as boxes (channels × side), with its pools, up-convolutions and skips."""
    def box(x: float, y: float, text: str, colour: str) -> None:
        ax.add_patch(Rectangle((x - 0.42, y - 0.28), 0.84, 0.56, fc=colour, ec="black"))
        ax.text(x, y, text, ha="center", va="center", fontsize=8)

    def arrow(a: tuple, b: tuple, colour: str, style: str = "-") -> None:
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color=colour, ls=style))

    for level in range(5):
        channels, size = base * 2**level, side // 2**level
        box(level, -level, f"{channels} × {size}²", "#cde")
        if level < 4:
            box(8 - level, -level, f"{channels} × {size}²", "#dec")
            arrow((level + 0.2, -level - 0.28), (level + 0.8, -level - 0.72), "tab:red")
            arrow((8 - level - 0.8, -level - 0.72), (8 - level - 0.2, -level - 0.28), "tab:green")
            arrow((level + 0.45, -level), (8 - level - 0.45, -level), "gray", "--")
    box(9.2, 0, "6 × 128²", "#fda")
    arrow((8.45, 0), (8.75, 0), "black")
    ax.text(1.5, -3.3, "max pool 2×2\n+ double conv", color="tab:red", fontsize=9)
    ax.text(5.6, -3.3, "transposed conv 2×2\n+ concat + double conv", color="tab:green", fontsize=9)
    ax.text(4, 0.35, "skip connections: concatenate", color="gray", fontsize=9, ha="center")
    ax.text(9.2, 0.45, "1×1 conv: logits", fontsize=9, ha="center")
    ax.set_xlim(-0.7, 9.9)
    ax.set_ylim(-4.6, 0.8)
    ax.axis("off")


fig, ax = plt.subplots(figsize=(11, 4.2))
draw_unet(ax)
ax.set_title("UNet: encoder (blue) down, decoder (green) up, skips across")
plt.show()

# %% [markdown]
# ## Exercise 8.1 — transposed convolution
#
# A 2×2 max pool throws away three pixels out of four; the decoder needs to *add* pixels. A
# transposed convolution does it with learned weights: every input pixel $x[c, y, x]$ **scatters**
# a copy of the kernel, scaled by itself, into the output at $(y \cdot s, x \cdot s)$:
#
# $$\text{out}[k,\ y s + i,\ x s + j] \mathrel{+}= \sum_c x[c, y, x]\, w[c, k, i, j]$$
#
# With kernel 2 and stride 2 (UNet's) the copies tile the output without overlapping; with kernel
# 3 and stride 2 neighbouring copies overlap and add up. The output side is
# $(H - 1)s + k - 2p$: the padding $p$ crops the border. Lesson 04's layer does this with one
# matrix multiply and `col2im`; write it here the direct way, one kernel tap $(i, j)$ at a time:
# each tap is a channel-mixing product added into a strided slice of the output. Note PyTorch
# stores the weight as `(C_in, C_out, kh, kw)`.

# %%
#| exercise: for each tap (i, j): out[:, :, i::s, j::s] (H and W positions) += x mixed by weight[:, :, i, j]; crop the padding; add the bias
def conv_transpose2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int, padding: int = 0) -> np.ndarray:
    """Transposed convolution of x (N, C_in, H, W) with weight (C_in, C_out, kh, kw) and bias
    (C_out,): float32 (N, C_out, (H-1)*stride + kh - 2*padding, (W-1)*stride + kw - 2*padding)."""
    ### BEGIN SOLUTION
    n, _, h, w = x.shape
    _, c_out, kh, kw = weight.shape
    full = np.zeros((n, c_out, (h - 1) * stride + kh, (w - 1) * stride + kw), np.float32)
    for i in range(kh):
        for j in range(kw):
            copy = np.einsum("nchw,ck->nkhw", x, weight[:, :, i, j])  # (N, C_out, H, W)
            full[:, :, i:i + (h - 1) * stride + 1:stride, j:j + (w - 1) * stride + 1:stride] += copy
    out = full[:, :, padding:full.shape[2] - padding, padding:full.shape[3] - padding]
    return out + bias[None, :, None, None].astype(np.float32)
    ### END SOLUTION


# %%
with check("Exercise 8.1"):
    g = np.random.default_rng(0)
    x = g.standard_normal((2, 3, 5, 4), dtype=np.float32)
    for kernel, stride, padding in [(2, 2, 0), (3, 2, 1), (3, 1, 0)]:
        w = g.standard_normal((3, 4, kernel, kernel), dtype=np.float32)
        b = g.standard_normal(4, dtype=np.float32)
        want = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, padding).numpy()
        got = conv_transpose2d(x, w, b, stride, padding)
        assert got.shape == want.shape, f"kernel {kernel} stride {stride} padding {padding}: shape {want.shape} expected, got {got.shape}"
        assert np.abs(got - want).max() < 1e-4, f"kernel {kernel} stride {stride}: expected F.conv_transpose2d's output, largest error {np.abs(got - want).max():.2e}"

# %% [markdown]
# A 3×3 input of ones and kernels of ones show the scatter at stride 2: the 2×2 copies tile the
# 6×6 output exactly (all ones), the 3×3 copies overlap by a row and a column, where they add up
# (the 2s and the 4s).

# %%
grid = np.ones((1, 1, 3, 3), np.float32)
print(conv_transpose2d(grid, np.ones((1, 1, 2, 2), np.float32), np.zeros(1, np.float32), 2)[0, 0])
print(conv_transpose2d(grid, np.ones((1, 1, 3, 3), np.float32), np.zeros(1, np.float32), 2)[0, 0])

# %% [markdown]
# ## Exercise 8.2 — bilinear resizing is a matrix
#
# Many UNets upsample with `nn.Upsample(scale_factor=2, mode="bilinear")` instead, and
# `kuiper segment` needs bilinear resizing too, to take the 128 × 128 class scores back to the
# photo's size. Along one axis every output position $o$ reads the source coordinate
# $\text{src}(o)$ (lesson 04's `source_coords`, with either `align_corners`) and blends the two
# input positions around it: weight $1 - f$ on $\lfloor \text{src} \rfloor$, $f$ on the next
# one (clamped at the last), $f = \text{src} - \lfloor \text{src} \rfloor$. Those weights form an
# `(out, in)` matrix $A$ whose rows sum to 1, and resizing a map $X$ is $A_h\, X\, A_w^\top$: a
# linear map, which is why it can sit inside a network that is trained by gradients. Build $A$
# with `source_coords` and resize with it.

# %%
#| exercise: A[o, floor(src)] += 1 - f and A[o, min(floor(src) + 1, in - 1)] += f, src = source_coords(...); resize = A_h @ x @ A_w.T
def interpolation_matrix(size_in: int, size_out: int, align_corners: bool) -> np.ndarray:
    """The (size_out, size_in) float32 matrix of linear interpolation weights along one axis."""
    ### BEGIN SOLUTION
    src = source_coords(size_in, size_out, None, align_corners)
    low = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = src - low
    matrix = np.zeros((size_out, size_in), np.float64)
    np.add.at(matrix, (np.arange(size_out), low), 1 - frac)
    np.add.at(matrix, (np.arange(size_out), high), frac)
    return matrix.astype(np.float32)
    ### END SOLUTION


def bilinear_resize(x: np.ndarray, size: tuple[int, int], align_corners: bool) -> np.ndarray:
    """x (..., H, W) resized to (..., size[0], size[1]) by bilinear interpolation, float32."""
    rows = interpolation_matrix(x.shape[-2], size[0], align_corners)  # (h, H)
    columns = interpolation_matrix(x.shape[-1], size[1], align_corners)  # (w, W)
    return rows @ x @ columns.T


# %%
with check("Exercise 8.2"):
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 9), dtype=np.float32)
    for size in [(16, 20), (5, 4)]:
        for corners in (False, True):
            want = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=corners).numpy()
            got = bilinear_resize(x, size, corners)
            assert got.shape == want.shape, f"size {size}: shape {want.shape} expected, got {got.shape}"
            error = np.abs(got - want).max()
            assert error < 1e-5, f"size {size}, align_corners={corners}: expected F.interpolate's output, largest error {error:.2e}"

# %% [markdown]
# The two conventions differ in where the corners go: with `align_corners=True` the first and
# last rows of $A$ copy the first and last input exactly; with `False` (PyTorch's default) the
# pixels are squares and the output's border rows lean on the input's border:

# %%
np.set_printoptions(precision=3, suppress=True)
print("align_corners=False\n", interpolation_matrix(3, 6, False))
print("align_corners=True\n", interpolation_matrix(3, 6, True))
upsample = resize_axis(resize_axis(x, 2, 16, None, "bilinear", False), 3, 20, None, "bilinear", False)
print("the matrix vs lesson 04's Upsample kernel:", agreement(bilinear_resize(x, (16, 20), False), upsample))

# %% [markdown]
# ## Exercise 8.3 — per-pixel softmax and argmax
#
# The network's output for one picture is `(C, H, W)`: C class scores at every pixel. A pixel's
# class is the argmax over the class axis, and its confidence the softmax probability of that
# class, $p = e^{z_{\max}} / \sum_c e^{z_c}$. Reuse lesson 06's `softmax` (it works on the last
# axis, so move the class axis last).

# %%
#| export
from pathlib import Path

import numpy as np
from PIL import Image

from kuiper.errors import ShapeError
from kuiper.graph import RuntimeGraph
from kuiper.layers.resize import resize_axis
from kuiper.vision.classify import input_size, load_image, softmax
from kuiper.vision.detect import letterbox

# %%
#| export
#| exercise: probabilities = softmax over the class axis (moved last); class = argmax, confidence = its probability
def pixel_classes(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel class (H, W) int64 and its softmax probability (H, W) float32 from class scores
    `logits` (C, H, W)."""
    ### BEGIN SOLUTION
    probabilities = softmax(np.moveaxis(logits, 0, -1))  # (H, W, C)
    classes = probabilities.argmax(-1)
    return classes, np.take_along_axis(probabilities, classes[..., None], -1)[..., 0].astype(np.float32)
    ### END SOLUTION


# %%
with check("Exercise 8.3"):
    z = np.random.default_rng(2).standard_normal((6, 5, 7)).astype(np.float32) * 4
    classes, confidence = pixel_classes(z)
    p = torch.softmax(torch.from_numpy(z), 0)
    want_p, want_c = p.max(0)
    assert classes.shape == (5, 7) and confidence.shape == (5, 7), f"(5, 7) maps expected, got {classes.shape}, {confidence.shape}"
    assert (classes == want_c.numpy()).all(), f"classes {want_c.numpy()[0]} expected in the first row, got {classes[0]}"
    assert np.abs(confidence - want_p.numpy()).max() < 1e-6, f"confidence {want_p.numpy()[0]} expected in the first row, got {confidence[0]}"

# %% [markdown]
# ## Exercise 8.4 — the confusion matrix
#
# How good is a mask? Count, over all pixels, how often true class $t$ was predicted as class $p$:
# the **confusion matrix** $M[t, p]$ (rows true, columns predicted). Its diagonal holds the right
# pixels. Count without a Python loop over the pixels: the pair $(t, p)$ is the single number
# $t K + p$, and `np.bincount` counts them all at once.

# %%
#| export
#| exercise: np.bincount of target * K + predicted (flattened, minlength K*K), reshaped to (K, K)
def confusion_matrix(target: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts of pixels of true class t (row) predicted as class p (column), for
    integer class maps `target` and `predicted` of the same shape with values in [0, K);
    ShapeError if the shapes differ or a class is out of range."""
    ### BEGIN SOLUTION
    if target.shape != predicted.shape:
        raise ShapeError(f"target {target.shape} and prediction {predicted.shape} differ in shape")
    t, p = target.astype(np.int64).ravel(), predicted.astype(np.int64).ravel()
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ShapeError(f"class values must lie in [0, {num_classes}), got {min(t.min(), p.min())}..{max(t.max(), p.max())}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)
    ### END SOLUTION


# %%
with check("Exercise 8.4"):
    truth = np.array([[0, 0, 1], [2, 2, 1]])
    guess = np.array([[0, 1, 1], [2, 0, 1]])
    want = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    got = confusion_matrix(truth, guess, 3)
    assert got.shape == (3, 3), f"(3, 3) expected, got {got.shape}"
    assert (got == want).all(), f"expected\n{want}\ngot\n{got}"
    a, b = np.random.default_rng(3).integers(0, 4, (2, 50, 60))
    want = np.array([[((a == t) & (b == p)).sum() for p in range(4)] for t in range(4)])
    got = confusion_matrix(a, b, 4)
    assert (got == want).all(), f"random 50 × 60 maps of 4 classes: expected\n{want}\ngot\n{got}"

# %% [markdown]
# ## Exercise 8.5 — IoU and mIoU
#
# For class $c$, the true positives are $M[c, c]$, the false positives the rest of column $c$
# (other pixels called $c$), the false negatives the rest of row $c$ ($c$'s pixels called
# something else). The **intersection over union** of the predicted and the true region is
#
# $$\text{IoU}_c = \frac{TP}{TP + FP + FN} = \frac{M_{cc}}{\sum_p M_{cp} + \sum_t M_{tc} - M_{cc}}$$
#
# and the **mean IoU** (mIoU, the standard score of semantic segmentation, as in PASCAL VOC and
# Cityscapes) averages it over the classes. A class that appears nowhere, neither true nor
# predicted, has no IoU: make it NaN and leave it out of the mean.

# %%
#| export
#| exercise: diag / (row sums + column sums - diag), NaN where the denominator is 0; mIoU = nanmean
def iou_per_class(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """IoU (K,) float64 of each class from a (K, K) confusion matrix (rows true, columns
    predicted), NaN for classes absent from both, and their mean over the others (mIoU)."""
    ### BEGIN SOLUTION
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return iou, float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    ### END SOLUTION


# %%
with check("Exercise 8.5"):
    iou, miou = iou_per_class(np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]))
    want = [1 / 3, 2 / 3, 1 / 2]
    assert np.allclose(iou[:3], want) and np.isnan(iou[3]), f"[0.333 0.667 0.5 nan] expected, got {np.round(iou, 3)}"
    assert abs(miou - np.mean(want)) < 1e-12, f"mIoU {np.mean(want):.4f} expected, got {miou:.4f}"

# %% [markdown]
# ## Exercise 8.6 — the colour overlay
#
# To see a mask, paint it over the photo: each pixel of class $c > 0$ becomes
# $(1 - \alpha)\,\text{pixel} + \alpha\,\text{palette}[c]$; background pixels (class 0) stay as
# they are. Work in float, round to the nearest integer, and return a new RGB image.

# %%
#| export
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], np.uint8)


# %%
#| export
#| exercise: where mask > 0: (1 - alpha) * pixel + alpha * palette[mask % len(palette)], rounded; background unchanged
def colour_overlay(image: Image.Image, mask: np.ndarray, alpha: float = 0.5, palette: np.ndarray = PALETTE) -> Image.Image:
    """A new RGB image: `image` with each pixel of class c > 0 in `mask` (H, W) blended with
    palette[c] (cycling through the (P, 3) uint8 palette) by `alpha` in [0, 1]; ShapeError if the
    mask's shape is not the image's (height, width)."""
    ### BEGIN SOLUTION
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    if mask.shape != pixels.shape[:2]:
        raise ShapeError(f"mask {mask.shape} does not match the image's (height, width) {pixels.shape[:2]}")
    colours = palette[mask % len(palette)].astype(np.float32)  # (H, W, 3)
    blended = np.where((mask > 0)[..., None], (1 - alpha) * pixels + alpha * colours, pixels)
    return Image.fromarray(np.rint(blended).astype(np.uint8))
    ### END SOLUTION


# %%
with check("Exercise 8.6"):
    grey = Image.new("RGB", (3, 2), (100, 100, 100))
    out = colour_overlay(grey, np.array([[0, 1, 2], [3, 0, 0]]), 0.25)
    got = np.asarray(out)
    assert out.size == (3, 2) and got.dtype == np.uint8, f"a 3 x 2 RGB image expected, got {out.size} {got.dtype}"
    assert (got[0, 0] == 100).all() and (got[1, 2] == 100).all(), f"background unchanged expected, got {got[0, 0]}"
    want = np.rint(0.75 * 100 + 0.25 * PALETTE[1].astype(float))
    assert (got[0, 1] == want).all(), f"class 1 pixel {want} expected, got {got[0, 1]}"
    assert np.asarray(grey)[0, 1, 0] == 100, "the input image must not change"

# %% [markdown]
# ## From the network's scores back to the photo
#
# `segment` puts it together, like lesson 07's `detect`: letterbox each photo to the model's
# square input, run the batch, then for each picture cut the grey bars off its scores, resize them
# bilinearly (lesson 04's kernel) to the photo's own size, and take the per-pixel class. Resizing
# the *scores* rather than the finished mask gives smooth edges instead of blocks. The resize runs
# in bands of rows, so a large photo never needs all C full-size score maps at once.

# %%
#| export
def mask_from_logits(logits: np.ndarray, scale: float, pad: tuple[int, int], size: tuple[int, int],
                     band: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The class mask (H, W) uint8 and confidence (H, W) float32 of a photo of `size` (W, H) from
    its letterboxed scores `logits` (C, S, S) float32, `scale` and (left, top) `pad` as
    letterbox made them; ShapeError for more than 256 classes."""
    if logits.shape[0] > 256:
        raise ShapeError(f"{logits.shape[0]} classes do not fit a uint8 mask (at most 256)")
    (width, height), (left, top) = size, pad
    inside = logits[:, top:top + round(height * scale), left:left + round(width * scale)]  # (C, h, w)
    rows = resize_axis(inside, 1, height, None, "bilinear", False)  # (C, H, w)
    mask, confidence = np.empty((height, width), np.uint8), np.empty((height, width), np.float32)
    for start in range(0, height, band):
        part = resize_axis(rows[:, start:start + band], 2, width, None, "bilinear", False)  # (C, band, W)
        mask[start:start + band], confidence[start:start + band] = pixel_classes(part)
    return mask, confidence


def segment(graph: RuntimeGraph, paths: list[str | Path], batch: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each image file, its class mask (H, W) uint8 and confidence (H, W) float32 at the
    image's own size, from a segmentation model with one (N, 3, S, S) input in 0-1 and
    (N, C, S, S) scores out; ImageError for an unreadable file, ShapeError for another model."""
    size, results = input_size(graph), []
    for start in range(0, len(paths), batch):
        images = [load_image(p) for p in paths[start:start + batch]]
        boxed = [letterbox(image, size) for image in images]
        scores = graph(np.stack([b[0] for b in boxed]))
        if scores.ndim != 4 or scores.shape[0] != len(images) or scores.shape[2:] != (size, size):
            raise ShapeError(f"{graph.model.path.name} outputs {scores.shape}, not per-pixel scores "
                             f"({len(images)}, classes, {size}, {size})")
        for image, (_, scale, pad), s in zip(images, boxed, scores):
            results.append(mask_from_logits(s, scale, pad, image.size))
    return results


def score_classes(graph: RuntimeGraph) -> int:
    """The number of classes C of a segmentation model whose one output is (N, C, S, S) scores;
    ShapeError otherwise."""
    shape = graph.model.operands[graph.outputs[0].inputs[0]].shape
    if len(graph.outputs) != 1 or len(shape) != 4 or tuple(shape[2:]) != (input_size(graph),) * 2:
        raise ShapeError(f"{graph.model.path.name} outputs {shape}, not per-pixel scores (N, C, S, S)")
    return shape[1]


def class_fractions(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """The fraction (num_classes,) float64 of the mask's pixels in each class; they sum to 1."""
    return np.bincount(mask.ravel(), minlength=num_classes)[:num_classes] / mask.size

# %% [markdown]
# ## A UNet trained here
#
# No segmentation weights can be downloaded here, so, as for the detector, `tools/train_unet.py`
# trains the UNet drawn above from scratch on the CPU, in about half an hour on two cores (1,870
# steps of 8 pictures; `python tools/eval_unet.py` scores it on 200 held-out pictures): `tools/shapes.py` knows every shape's
# pixels, so each synthetic picture comes with its true mask (0 background, then circle, square,
# triangle, ring, cross). `tools/zoo.py` exported it to PNNX as `unet_shapes`, with PyTorch's
# output on one picture. First, exactness: kuiper against PyTorch on that picture, and on a batch
# of 8 random ones against the traced PyTorch model.

# %%
unet = kuiper.load(MODELS / "unet_shapes.pnnx.param")
x, want = np.load(MODELS / "unet_shapes.input.npy"), np.load(MODELS / "unet_shapes.output.npy")
print("batch 1:", unet(x).shape, "vs PyTorch:", agreement(unet(x), want, 1e-4))
batch = np.random.default_rng(4).random((8, 3, 128, 128), dtype=np.float32)
with torch.no_grad():
    want8 = torch.jit.load(str(MODELS / "unet_shapes.torchscript.pt"))(torch.from_numpy(batch)).numpy()
print("batch 8:", want8.shape, "vs PyTorch:", agreement(unet(batch), want8, 1e-4))

# %% [markdown]
# Now three held-out pictures it never saw in training (the same ones lesson 07's detector
# found), with their true masks, committed beside them:

# %%
names = ["background", *(DATA / "shapes" / "classes.txt").read_text().split()]
samples = sorted((DATA / "shapes").glob("*.jpg"))
truths = [np.asarray(Image.open(p.with_name(p.stem + "_mask.png"))) for p in samples]
found = segment(unet, samples)
total = sum(confusion_matrix(t, m, len(names)) for t, (m, _) in zip(truths, found))
iou, miou = iou_per_class(total)
print("  ".join(f"{n} {v:.3f}" for n, v in zip(names, iou) if not np.isnan(v)), f"  mIoU {miou:.3f}")

# %%
fig, axes = plt.subplots(2, len(samples), figsize=(11, 7.4))
for column, path, truth, (mask, _) in zip(axes.T, samples, truths, found):
    column[0].imshow(colour_overlay(load_image(path), mask, 0.6))
    column[0].set_title(f"{path.name}: kuiper's mask")
    column[1].imshow(PALETTE[truth])
    column[1].set_title("the true mask")
    for ax in column:
        ax.axis("off")
handles = [plt.Rectangle((0, 0), 1, 1, color=PALETTE[i] / 255) for i in range(1, len(names))]
fig.legend(handles, names[1:], loc="lower center", ncol=len(names) - 1)
plt.show()

# %% [markdown]
# On 200 held-out pictures `python tools/eval_unet.py` measures the same numbers with kuiper (see
# its docstring for the result). The same model from the command line, writing the overlays (and,
# with `--mask`, the raw class masks) and the class fractions:
#
# ```
# kuiper segment data/models/unet_shapes.pnnx.param data/shapes/*.jpg --labels data/shapes/classes.txt --out runs/ --json
# ```
#
# ## Speed
#
# The UNet at 128 × 128 against PyTorch (same process, same threads):

# %%
# NBVAL_IGNORE_OUTPUT
from kuiper.bench import bench_models, format_model_rows

print(format_model_rows(bench_models([MODELS / "unet_shapes.pnnx.param"], batches=[1, 8], repeat=3)))

# %% [markdown]
# ## Beyond UNet: the window operators of other segmentation networks
#
# Our UNet needs only lesson 04's layers, but other segmentation networks use more of PyTorch's
# window operators. **SegNet** (Badrinarayanan et al., 2017) remembers *where* each maximum of its
# encoder's max pools was (`return_indices=True`) and its decoder unpools to exactly those places;
# **PSPNet** (Zhao et al., 2017) pools its feature map adaptively to 1, 2, 3 and 6 bins to see the
# whole scene; image-to-image networks (pix2pix, CycleGAN's generators) pad by **reflection** so
# that the border of the output does not darken; and `nn.Unfold` / `nn.Fold` are lesson 04's
# im2col and col2im as operators — Fold is what a transposed convolution does after its matrix
# multiply. They all export into lesson 04's modules, `kuiper/layers/conv.py` and `pooling.py`,
# and reuse its kernels:

# %%
from numba import njit, prange

from kuiper.course import raises
from kuiper.errors import LayerError, ShapeError
from kuiper.layer import Layer
from kuiper.layers.conv import Conv2d, ConvTranspose2d, col2im, im2col_images, out_size, pair, unbatched
from kuiper.layers.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d, adaptive_size, as_nchw, avg_pool
from kuiper.registry import create_layer, register
from kuiper.tensor import Tensor

rng = np.random.default_rng(8)

# %% [markdown]
# ## Every padding mode, 1-D convolutions, and weights that arrive as inputs
#
# The zoo's models use a small part of what `nn.Conv2d` can do. Three more ways PyTorch users
# write a convolution, all run by lesson 04's `Conv2d` and `ConvTranspose2d`:
#
# * `padding_mode` `'reflect'`, `'replicate'` or `'circular'`: pad the input first — with
#   `np.pad`'s `reflect`, `edge` or `wrap` — then convolve without padding. `padding='same'`
#   pads $d(k-1)$ in all, half before; when that is odd PyTorch puts the extra row after (bottom,
#   right), and PNNX then writes the padding in `F.pad`'s order, last axis first:
#   `(left, right, top, bottom)`.
# * `nn.Conv1d` is a 2-d convolution over a $(1, L)$ image: every window parameter gets a leading
#   1 (0 for padding), the weight $(K, C, k)$ becomes $(K, C, 1, k)$.
# * `F.conv2d(x, w, b)` with `w` a graph input or a `pnnx.Attribute` constant: the layer builds
#   its `Conv2d` from the tensors it is given (once per weight tensor it sees).
#
# ## Exercise 8.7 — 1-D windows and the padding of each side
#
# Write `lift_1d`: a copy of the operator (`dataclasses.replace`) whose window parameters
# (`LEADING`'s keys; PNNX writes `3` or `(3,)`) become pairs with the leading value of `LEADING`,
# and whose 3-d `weight` gains an axis 2. And `conv_sides`: the `(before, after)` padding of both
# axes of the lifted window, for `'valid'`, `'same'`, an int or one int per axis (both sides
# alike), or `F.pad`'s order (two per axis, last axis first); a 1-D convolution's first axis is
# never padded.

# %%
#| export layers.conv
#| exercise: lift a 1-D window operator to 2-D (leading 1, or 0 for paddings; weight (K, C, 1, k)); (before, after) padding of each axis
from dataclasses import replace

from kuiper.errors import UnsupportedError
from kuiper.pnnx import Attribute, Operator

PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
LEADING = {"kernel_size": 1, "stride": 1, "dilation": 1, "padding": 0, "output_padding": 0, "output_size": 1}


def lift_1d(op: Operator) -> Operator:
    """A 1-D window operator as its 2-D form over a (1, L) image: each window parameter (3, or
    (3,)) gets a leading 1 (0 for paddings), a weight (K, C, k) becomes (K, C, 1, k)."""
    ### BEGIN SOLUTION
    params = dict(op.params)
    for key, lead in LEADING.items():
        value = params.get(key)
        if type(value) is int or (isinstance(value, tuple) and len(value) == 1):
            params[key] = (lead, value if type(value) is int else value[0])
    attrs = dict(op.attrs)
    if "weight" in attrs and attrs["weight"].data is not None and attrs["weight"].data.ndim == 3:
        data = attrs["weight"].data[:, :, None]  # (K, C, k) -> (K, C, 1, k)
        attrs["weight"] = replace(attrs["weight"], shape=data.shape, data=data)
    return replace(op, params=params, attrs=attrs)
    ### END SOLUTION


def conv_sides(padding: object, dims: int, kernel: tuple[int, int], dilation: tuple[int, int],
               op: Operator) -> list[tuple[int, int]]:
    """(before, after) padding of both axes of the lifted 2-D window of a `dims`-D convolution:
    'valid', 'same' (d(k-1) in all, the odd one after, as PyTorch's _convolution_same), one int
    per axis, or F.pad's (left, right[, top, bottom]). LayerError otherwise."""
    ### BEGIN SOLUTION
    if padding == "valid":
        return [(0, 0), (0, 0)]
    if padding == "same":
        return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]
    values = (padding,) * dims if type(padding) is int else padding
    if not (isinstance(values, tuple) and len(values) in (dims, 2 * dims)
            and all(type(v) is int and v >= 0 for v in values)):
        raise LayerError(f"{op.where()}: padding should be 'same', 'valid' or {dims} ints (or {2 * dims} in F.pad's "
                         f"order), each at least 0, got {padding!r}")
    if len(values) == dims:
        return [(0, 0)] * (2 - dims) + [(p, p) for p in values]
    return [(0, 0)] * (2 - dims) + [values[i:i + 2] for i in range(0, len(values), 2)][::-1]  # last axis first
    ### END SOLUTION


# %%
with check("Exercise 8.7"):
    op = Operator("nn.Conv1d", "c", ["x"], ["y"], dict(kernel_size=(3,), stride=2, padding=(1,), dilation=(2,),
                                                      groups=1), {"weight": Attribute((4, 2, 3), "float32",
                                                                                      np.ones((4, 2, 3), np.float32))})
    lifted = lift_1d(op)
    want = dict(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1), dilation=(1, 2), groups=1)
    assert lifted.params == want, f"lift_1d of {op.params}: expected {want}, got {lifted.params}"
    got = lifted.attrs["weight"].data.shape
    assert got == (4, 2, 1, 3), f"lift_1d of a weight (4, 2, 3): expected (4, 2, 1, 3), got {got}"
    assert op.params["stride"] == 2, f"lift_1d must not change its input: expected stride 2, got {op.params['stride']}"
    for padding, dims, kernel, dilation, want in [
            ("valid", 2, (3, 3), (1, 1), [(0, 0), (0, 0)]), ("same", 2, (2, 4), (2, 1), [(1, 1), (1, 2)]),
            ("same", 1, (1, 4), (1, 3), [(0, 0), (4, 5)]), (2, 2, (3, 3), (1, 1), [(2, 2), (2, 2)]),
            ((1, 3), 2, (3, 3), (1, 1), [(1, 1), (3, 3)]), ((1, 2, 3, 4), 2, (3, 3), (1, 1), [(3, 4), (1, 2)]),
            ((2,), 1, (1, 3), (1, 1), [(0, 0), (2, 2)]), ((1, 2), 1, (1, 4), (1, 1), [(0, 0), (1, 2)])]:
        got = conv_sides(padding, dims, kernel, dilation, op)
        assert [tuple(side) for side in got] == want, (f"conv_sides({padding!r}, dims={dims}, kernel={kernel}, "
                                                       f"dilation={dilation}): expected {want}, got {got}")
    err = raises(LayerError, conv_sides, (1, 2, 3), 2, (3, 3), (1, 1), op)
    assert "(1, 2, 3)" in str(err), f"expected the message to name the padding (1, 2, 3), got: {err}"


# %% [markdown]
# The layers: `Convolution` pads (when the padding is not plain zeros on both sides alike) and
# runs `Conv2d`, and hands the activation after it to that `Conv2d`'s epilogue (lesson 06); the 1-D forms lift their operator and add the height axis of one row;
# `FunctionalConv` builds its layer from the weight tensors it is given.

# %%
#| export layers.conv
import copy


def conv_operator(op: Operator, kind: str, params: dict, weight: np.ndarray, bias: np.ndarray | None) -> Operator:
    """An operator of type `kind` named after `op` that holds `weight` and `bias` as its weights."""
    attrs = {"weight": Attribute(weight.shape, "float32", weight)}
    if bias is not None:
        attrs["bias"] = Attribute(bias.shape, "float32", bias)
    return replace(op, type=kind, params=params | {"bias": bias is not None}, attrs=attrs)


def spatial_input(op: Operator, x: Tensor, dims: int) -> np.ndarray:
    """x as float32 (N, C, H, W): a 1-D input (N, C, L) gains H = 1; ShapeError otherwise."""
    data = np.asarray(x.numpy(), dtype=np.float32)
    if data.ndim != dims + 2:
        raise ShapeError(f"{op.where()}: expected input (N, C, {'L' if dims == 1 else 'H, W'}), got {data.shape}")
    return data[:, :, None] if dims == 1 else data  # (N, C, L) -> (N, C, 1, L)


@register("nn.Conv1d", "nn.Conv2d")
class Convolution(Layer):
    """nn.Conv1d / nn.Conv2d with every padding_mode and 'same' padding: pad, then Conv2d."""

    def __init__(self, op):
        super().__init__(op)
        self.dims = 1 if op.type.endswith("1d") else 2
        lifted = lift_1d(op) if self.dims == 1 else op
        mode = self.param("padding_mode", str, "zeros")
        if mode not in PADDING_MODES:
            raise UnsupportedError(f"{op.where()}: padding_mode {mode!r} is not supported "
                                   f"(supported: {', '.join(PADDING_MODES)})")
        kernel = pair(lifted.params.get("kernel_size"), "kernel_size", op, minimum=1)
        dilation = pair(lifted.params.get("dilation", 1), "dilation", op, minimum=1)
        self.sides = conv_sides(op.params.get("padding", 0), self.dims, kernel, dilation, op)
        self.np_mode = PADDING_MODES[mode]
        symmetric = mode == "zeros" and all(lo == hi for lo, hi in self.sides)
        padding = tuple(lo for lo, _ in self.sides) if symmetric else (0, 0)
        self.pad_first = not symmetric
        self.conv = Conv2d(replace(lifted, type="nn.Conv2d", params=lifted.params | {
            "padding": padding, "padding_mode": "zeros"}))

    def fuse(self, after: Layer) -> "Convolution | None":
        """A copy whose convolution has `after` (an activation, a residual sum) in its epilogue (lesson 06),
        if it takes it."""
        conv = self.conv.fuse(after)
        if conv is None:
            return None
        fused = copy.copy(self)
        fused.conv = conv
        return fused

    @unbatched
    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        data = spatial_input(self.op, x, self.dims)
        if self.pad_first:
            data = np.pad(data, [(0, 0), (0, 0), *self.sides], mode=self.np_mode)
        if residual is not None and self.dims == 1:
            residual = Tensor(residual.numpy()[..., None, :], device=x.device)  # (N, K, L) -> (N, K, 1, L)
        out = self.conv(Tensor(data, device=x.device), residual).numpy()
        return Tensor(out[:, :, 0] if self.dims == 1 else out, device=x.device)


@register("nn.ConvTranspose1d")
class ConvTranspose(Layer):
    """nn.ConvTranspose1d as ConvTranspose2d over a (1, L) image."""

    def __init__(self, op):
        super().__init__(op)
        self.conv = ConvTranspose2d(replace(lift_1d(op), type="nn.ConvTranspose2d"))

    dims = 1

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(Tensor(spatial_input(self.op, x, 1), device=x.device)).numpy()
        return Tensor(out[:, :, 0], device=x.device)


@register("F.conv1d", "F.conv2d", "F.conv_transpose1d", "F.conv_transpose2d")
class FunctionalConv(Layer):
    """F.conv1d/2d and F.conv_transpose1d/2d: the weight (and bias) are inputs, a Convolution or
    ConvTranspose is built from them, and kept while the same weight tensor comes back."""

    def __init__(self, op):
        super().__init__(op)
        self.transposed = "transpose" in op.type
        self.dims = 1 if op.type.endswith("1d") else 2
        self.built: tuple[object, object, Layer] | None = None

    def layer(self, weight: np.ndarray, bias: np.ndarray | None) -> Layer:
        """The layer for this weight (K, C/g, *window) or, transposed, (C, K/g, *window)."""
        if self.built is not None and self.built[0] is weight and self.built[1] is bias:
            return self.built[2]
        if weight.ndim != self.dims + 2:
            raise ShapeError(f"{self.op.where()}: expected a weight of {self.dims + 2} dimensions, got {weight.shape}")
        groups = self.param("groups", int, 1, minimum=1)
        channels = (weight.shape[0], weight.shape[1] * groups)
        c_in, c_out = channels if self.transposed else channels[::-1]
        params = self.op.params | {"in_channels": c_in, "out_channels": c_out, "kernel_size": weight.shape[2:]}
        kind = f"nn.Conv{'Transpose' if self.transposed else ''}{self.dims}d"
        op = conv_operator(self.op, kind, params, np.asarray(weight, np.float32),
                           None if bias is None else np.asarray(bias, np.float32))
        built = ConvTranspose(op) if self.transposed and self.dims == 1 else (
            ConvTranspose2d(op) if self.transposed else Convolution(op))
        self.built = (weight, bias, built)
        return built

    @unbatched
    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return self.layer(weight.numpy(), None if bias is None else bias.numpy())(x)


# %% [markdown]
# ## Indices, adaptive max, power averages and 1-D pooling
#
# One more kernel covers the rest of max pooling. Describe the windows along each axis by a
# table — where each window starts and how many taps it has — and the same loop serves a fixed
# window (start $o s - p$, $k$ taps $d$ apart) and an adaptive one (start $\lfloor oH/O \rfloor$,
# up to $\lceil (o+1)H/O \rceil$). It also returns `return_indices=True`'s second output: the
# flat index $i_y W + i_x$ of each maximum, the first one found (NaN wins, as in PyTorch), which
# SegNet's `nn.MaxUnpool2d` uses to put the values back (lesson 04's `MaxPool2d` calls this
# kernel when `return_indices=True`).
#
# ## Exercise 8.8 — window tables and max pooling with indices
#
# Write `window_table` (both kinds of window) and the numba kernel `max_pool_indices`: for each
# (image, channel) in parallel and each output position, the maximum over the taps of its row
# and column windows that fall inside the input, and the flat index of the first maximum. A NaN
# wins over everything that comes before it, as in PyTorch.
#
# `nn.LPPool2d` is the $p$-norm of each window; PyTorch computes it as an average pool of
# $x^p$ times the window's area, to the power $1/p$, and so do we, reusing lesson 04's `avg_pool`. The 1-D
# forms run the 2-D layers on a $(1, L)$ image, their operators lifted by `lift_1d`.

# %%
#| export layers.pooling
#| exercise: per-axis window tables (fixed or adaptive); max over the windows with the flat index iy*W+ix of the first maximum
def window_table(size: int, out: int, kernel: int = 0, stride: int = 1,
                 padding: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per output position along one axis: the input index its window starts at (negative in the
    padding) and its number of taps, both int64 (out,). kernel 0 means adaptive windows, rows
    floor(o·size/out) up to ceil((o+1)·size/out) (PyTorch's adaptive pooling)."""
    ### BEGIN SOLUTION
    o = np.arange(out, dtype=np.int64)
    if kernel == 0:
        start = o * size // out
        return start, -(-(o + 1) * size // out) - start
    return o * stride - padding, np.full(out, kernel, np.int64)
    ### END SOLUTION


@njit(parallel=True, cache=True)
def max_pool_indices(x, out, indices, y_start, y_taps, x_start, x_taps, dh, dw):
    """out = max of x (N, C, H, W) over the windows of the row and column tables (window_table,
    taps dh and dw apart, outside positions skipped); indices = flat iy·W + ix of the first maximum."""
    n_batch, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    ### BEGIN SOLUTION
    for nc in prange(n_batch * channels):
        n, c = nc // channels, nc % channels
        for y in range(oh):
            for x_ in range(ow):
                best, where = -np.inf, -1
                for i in range(y_taps[y]):
                    iy = y_start[y] + i * dh
                    if 0 <= iy < height:
                        for j in range(x_taps[x_]):
                            ix = x_start[x_] + j * dw
                            if 0 <= ix < width:
                                value = x[n, c, iy, ix]
                                if where < 0 or value > best or np.isnan(value):
                                    best, where = value, iy * width + ix
                out[n, c, y, x_], indices[n, c, y, x_] = best, where
    ### END SOLUTION


# %%
with check("Exercise 8.8"):
    got = window_table(7, 3)
    assert [list(got[0]), list(got[1])] == [[0, 2, 4], [3, 3, 3]], (
        f"adaptive windows of 7 into 3: expected starts [0, 2, 4] and taps [3, 3, 3], got {got}")
    for shape, kernel, stride, padding, dilation, ceil in [((2, 3, 9, 11), 3, 2, 1, 1, True),
                                                             ((1, 2, 8, 7), (2, 3), (1, 2), (1, 0), (2, 1), False),
                                                             ((1, 2, 6, 9), (3, 2), 2, 1, (1, 3), True)]:
        x = rng.integers(-3, 3, shape).astype(np.float32)  # small integers: ties, where the first maximum wins
        x[0, 0, 1, 1] = np.nan
        want, want_index = F.max_pool2d(torch.from_numpy(x), kernel, stride, padding, dilation, ceil, return_indices=True)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (k if isinstance(k, tuple) else (k, k)
                                                  for k in (kernel, stride, padding, dilation))
        got, index = np.full(want.shape, np.inf, np.float32), np.full(want.shape, -7, np.int64)
        max_pool_indices(x, got, index, *window_table(shape[2], want.shape[2], kh, sh, ph),
                         *window_table(shape[3], want.shape[3], kw, sw, pw), dh, dw)
        where = f"max_pool2d of {shape}, kernel {kernel}, stride {stride}, padding {padding}, dilation {dilation}"
        assert np.array_equal(got, want.numpy(), equal_nan=True), f"{where}: expected the maxima, {agreement(got, want.numpy())}"
        bad = np.argwhere(index != want_index.numpy())
        assert not bad.size, (f"{where}: expected index {int(want_index.numpy()[tuple(bad[0])])} at {tuple(map(int, bad[0]))} "
                              f"(PyTorch), got {index[tuple(bad[0])]}")
    x = rng.standard_normal((1, 2, 7, 10), dtype=np.float32)
    want, want_index = F.adaptive_max_pool2d(torch.from_numpy(x), (3, 4), return_indices=True)
    got, index = np.empty(want.shape, np.float32), np.empty(want.shape, np.int64)
    max_pool_indices(x, got, index, *window_table(7, 3), *window_table(10, 4), 1, 1)
    assert np.array_equal(got, want.numpy()) and np.array_equal(index, want_index.numpy()), (
        f"adaptive max pooling of (7, 10) to (3, 4): expected\n{want_index.numpy()[0, 0]}\ngot\n{index[0, 0]}")


# %%
#| export layers.pooling
from kuiper.layers.conv import lift_1d, spatial_input


@register("nn.AdaptiveMaxPool2d", "F.adaptive_max_pool2d")
class AdaptiveMaxPool2d(Layer):
    """Max pooling to a fixed output size, with the indices of the maxima if asked."""

    dims = 2

    def __init__(self, op):
        super().__init__(op)
        self.size = adaptive_size(self)
        self.return_indices = self.param("return_indices", bool, False)

    @unbatched
    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        data = as_nchw(self, x)
        (height, width), (oh, ow) = data.shape[2:], self.output_shape(data)
        out, indices = np.empty((*data.shape[:2], oh, ow), np.float32), np.empty((*data.shape[:2], oh, ow), np.int64)
        max_pool_indices(data, out, indices, *window_table(height, oh), *window_table(width, ow), 1, 1)
        return (Tensor(out, device=x.device), Tensor(indices, device=x.device)) if self.return_indices else Tensor(
            out, device=x.device)

    def output_shape(self, data: np.ndarray) -> tuple[int, int]:
        return tuple(s if s is not None else d for s, d in zip(self.size, data.shape[2:]))


@register("nn.LPPool2d", "F.lp_pool2d")
class LPPool2d(Layer):
    """The p-norm of each window, as PyTorch: (avg_pool(x^p) · kh·kw)^(1/p), no padding."""

    dims = 2

    def __init__(self, op):
        super().__init__(op)
        self.p = float(self.param("norm_type", (int, float), minimum=1e-6))
        self.kernel = pair(self.param("kernel_size"), "kernel_size", op, minimum=1)
        stride = self.param("stride", object, None)
        self.stride = self.kernel if stride in (None, ()) else pair(stride, "stride", op, minimum=1)
        self.ceil_mode = self.param("ceil_mode", bool, False)

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        data = np.power(as_nchw(self, x), np.float32(self.p))
        (kh, kw), (sh, sw) = self.kernel, self.stride
        oh = out_size(data.shape[2], kh, sh, 0, 1, self.ceil_mode)
        ow = out_size(data.shape[3], kw, sw, 0, 1, self.ceil_mode)
        out = np.empty((*data.shape[:2], oh, ow), np.float32)
        avg_pool(data, out, kh, kw, sh, sw, 0, 0, True, 0)
        with np.errstate(invalid="ignore"):  # a negative sum to a fractional power is NaN, as in PyTorch
            return Tensor(np.power(out * np.float32(kh * kw), np.float32(1 / self.p)), device=x.device)


def one_d(layer_2d: type[Layer]) -> type[Layer]:
    """The 1-D form of a 2-D pooling layer: its operator lifted by lift_1d, (N, C, L) run as
    (N, C, 1, L) and every output squeezed back to (N, C, L')."""
    class Pool1d(layer_2d):
        dims = 1

        def __init__(self, op):
            super().__init__(lift_1d(op))

        @unbatched
        def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
            result = super().forward(Tensor(spatial_input(self.op, x, 1), device=x.device))
            outputs = tuple(Tensor(r.numpy()[:, :, 0], device=x.device)
                            for r in (result if isinstance(result, tuple) else (result,)))
            return outputs if isinstance(result, tuple) else outputs[0]

    Pool1d.__name__ = Pool1d.__qualname__ = layer_2d.__name__.replace("2d", "1d")
    return Pool1d


MaxPool1d = register("nn.MaxPool1d", "F.max_pool1d")(one_d(MaxPool2d))
AvgPool1d = register("nn.AvgPool1d", "F.avg_pool1d")(one_d(AvgPool2d))
AdaptiveAvgPool1d = register("nn.AdaptiveAvgPool1d", "F.adaptive_avg_pool1d")(one_d(AdaptiveAvgPool2d))
AdaptiveMaxPool1d = register("nn.AdaptiveMaxPool1d", "F.adaptive_max_pool1d")(one_d(AdaptiveMaxPool2d))
LPPool1d = register("nn.LPPool1d", "F.lp_pool1d")(one_d(LPPool2d))


# %% [markdown]
# ## Unfold and Fold: im2col and col2im as operators
#
# `nn.Unfold` *is* im2col: every sliding block of the image as a column, $(N, C k_h k_w, L)$,
# rows ordered $(c, i, j)$ as lesson 04's `im2col_images` writes them. `nn.Fold` is col2im, adding the
# (overlapping) blocks back into an image of `output_size` — what the transposed convolution
# does after its matrix multiply. Folding an unfolded image does not give the image back: each
# pixel comes back once per window that covers it.
#
# ## Exercise 8.9 — unfold and fold
#
# Write `unfold` with `im2col_images` (which puts the batch second) and `fold` with `col2im`: for both,
# the number of windows along each axis is `out_size` of the *image* size (for `fold`, the
# `output_size`), and a window that does not fit, or columns that do not match the windows,
# are a `ShapeError` naming the shapes.

# %%
#| export layers.conv
#| exercise: unfold every window into a column with im2col_images; fold adds the columns back with col2im; ShapeError when they do not fit
def unfold(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int]) -> np.ndarray:
    """F.unfold: x (N, C, H, W) float32 -> columns (N, C·kh·kw, L), L windows in row-major order."""
    ### BEGIN SOLUTION
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = out_size(x.shape[2], kh, sh, ph, dh), out_size(x.shape[3], kw, sw, pw, dw)
    if min(oh, ow) < 1:
        raise ShapeError(f"a {kh}×{kw} window (dilation {dilation}) does not fit in {x.shape} padded by {padding}")
    cols = np.empty((x.shape[1] * kh * kw, x.shape[0], oh * ow), np.float32)  # (C·kh·kw, N, L)
    im2col_images(np.ascontiguousarray(x), cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    return np.ascontiguousarray(cols.transpose(1, 0, 2))  # (N, C·kh·kw, L)
    ### END SOLUTION


def fold(cols: np.ndarray, size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
         padding: tuple[int, int], dilation: tuple[int, int]) -> np.ndarray:
    """F.fold: columns (N, C·kh·kw, L) float32 -> (N, C, *size), overlapping windows added."""
    ### BEGIN SOLUTION
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    bh, bw = out_size(size[0], kh, sh, ph, dh), out_size(size[1], kw, sw, pw, dw)
    if cols.ndim != 3 or cols.shape[1] % (kh * kw) or cols.shape[2] != bh * bw:
        raise ShapeError(f"expected columns (N, C·{kh * kw}, {bh * bw}) for an output {size}, got {cols.shape}")
    out = np.zeros((cols.shape[0], cols.shape[1] // (kh * kw), *size), np.float32)
    col2im(cols, out, kh, kw, sh, sw, ph, pw, dh, dw, bh, bw)
    return out
    ### END SOLUTION


# %%
with check("Exercise 8.9"):
    x = rng.standard_normal((2, 3, 9, 8), dtype=np.float32)
    for kernel, stride, padding, dilation in [((3, 3), (1, 1), (1, 1), (1, 1)), ((2, 3), (2, 1), (1, 0), (1, 2)),
                                              ((3, 2), (1, 3), (0, 2), (2, 1))]:
        where = f"kernel {kernel}, stride {stride}, padding {padding}, dilation {dilation}"
        want = F.unfold(torch.from_numpy(x), kernel, dilation, padding, stride).numpy()
        got = unfold(x, kernel, stride, padding, dilation)
        assert got.shape == want.shape, f"unfold of {x.shape}, {where}: expected shape {want.shape}, got {got.shape}"
        assert np.allclose(got, want), f"unfold of {x.shape}, {where}: expected F.unfold's columns, {agreement(got, want)}"
        want = F.fold(torch.from_numpy(got), (9, 8), kernel, dilation, padding, stride).numpy()
        back = fold(got, (9, 8), kernel, stride, padding, dilation)
        assert back.shape == want.shape, f"fold to (9, 8), {where}: expected shape {want.shape}, got {back.shape}"
        assert np.allclose(back, want, atol=1e-5), f"fold to (9, 8), {where}: expected F.fold's image, {agreement(back, want)}"
    err = raises(ShapeError, fold, got[:, :, :-1], (9, 8), kernel, stride, padding, dilation)
    assert str(got.shape[2]) in str(err), f"expected the message to name the {got.shape[2]} windows, got: {err}"
    err = raises(ShapeError, unfold, x, (11, 3), (1, 1), (0, 0), (1, 1))
    assert "11" in str(err), f"expected the message to name the 11×3 window, got: {err}"


# %%
#| export layers.conv
@register("nn.Unfold", "F.unfold")
class Unfold(Layer):
    """(N, C, H, W) -> (N, C·kh·kw, L): every sliding block as a column (im2col)."""

    dims = 2

    def __init__(self, op):
        super().__init__(op)
        self.window = window_params(self)

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        if data.ndim != 4:
            raise ShapeError(f"{self.op.where()}: expected input (N, C, H, W), got {data.shape}")
        try:
            return Tensor(unfold(data, *self.window), device=x.device)
        except ShapeError as err:
            raise ShapeError(f"{self.op.where()}: {err}") from None


@register("nn.Fold", "F.fold")
class Fold(Layer):
    """(N, C·kh·kw, L) -> (N, C, H, W): blocks added back into an image of output_size (col2im)."""

    dims = 1  # an unbatched input is (C·kh·kw, L)

    def __init__(self, op):
        super().__init__(op)
        self.window = window_params(self)
        self.size = pair(self.param("output_size"), "output_size", op, minimum=1)

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        try:
            return Tensor(fold(np.ascontiguousarray(x.numpy(), dtype=np.float32), self.size, *self.window),
                          device=x.device)
        except ShapeError as err:
            raise ShapeError(f"{self.op.where()}: {err}") from None


def window_params(layer: Layer) -> tuple[tuple[int, int], ...]:
    """kernel_size, stride, padding and dilation of Fold / Unfold as pairs."""
    return (pair(layer.param("kernel_size"), "kernel_size", layer.op, minimum=1),
            pair(layer.param("stride", object, 1), "stride", layer.op, minimum=1),
            pair(layer.param("padding", object, 0), "padding", layer.op),
            pair(layer.param("dilation", object, 1), "dilation", layer.op, minimum=1))


# %% [markdown]
# Each new layer against PyTorch, built from a PNNX-style operator as the loader would build it:

# %%
def make(kind, params, attrs=None):
    """The registered layer for a PNNX operator of `kind`."""
    attrs = {k: Attribute(v.shape, "float32", v) for k, v in (attrs or {}).items()}
    return create_layer(Operator(kind, "op", ["0"], ["out"], params, attrs, line=1))


x = rng.standard_normal((2, 8, 13, 11), dtype=np.float32)
tx = torch.from_numpy(x)
weight, weight_1d = rng.standard_normal((4, 8, 3, 3), dtype=np.float32), rng.standard_normal((4, 8, 3), dtype=np.float32)
conv = dict(in_channels=8, out_channels=4, bias=False)
cases = {
    "nn.Conv2d reflect": (make("nn.Conv2d", conv | dict(kernel_size=(3, 3), padding=(2, 2), padding_mode="reflect"),
                               dict(weight=weight)), F.conv2d(F.pad(tx, (2, 2, 2, 2), mode="reflect"), torch.from_numpy(weight))),
    "nn.Conv1d same": (make("nn.Conv1d", conv | dict(kernel_size=(3,), padding="same"), dict(weight=weight_1d)),
                       F.conv1d(tx[:, :, 0], torch.from_numpy(weight_1d), padding="same")),
    "nn.MaxPool2d indices": (make("nn.MaxPool2d", dict(kernel_size=(2, 2), stride=(2, 2), return_indices=True)),
                             F.max_pool2d(tx, 2, 2, return_indices=True)[1]),
    "nn.AdaptiveMaxPool2d (6,6)": (make("nn.AdaptiveMaxPool2d", dict(output_size=(6, 6))),
                                   F.adaptive_max_pool2d(tx, (6, 6))),
    "nn.LPPool2d p=2 3/2": (make("nn.LPPool2d", dict(norm_type=2.0, kernel_size=(3, 3), stride=(2, 2))),
                            F.lp_pool2d(tx, 2.0, 3, 2)),
    "nn.Unfold 3×3": (make("nn.Unfold", dict(kernel_size=(3, 3), padding=(1, 1))), F.unfold(tx, 3, padding=1)),
}
for name, (layer, want) in cases.items():
    got = layer(Tensor(x[:, :, 0] if "1d" in name else x))
    got = (got[1] if isinstance(got, tuple) else got).numpy()
    print(f"{name:28} {str(got.shape):18} {agreement(got.astype(np.float32), want.numpy().astype(np.float32))}")

# %% [markdown]
# ## Sampling anywhere: `affine_grid` and `grid_sample`
#
# Resizing samples the input on a regular lattice; a *spatial transformer* (Jaderberg et al. 2015,
# "Spatial Transformer Networks") samples it wherever a **grid** says. `F.grid_sample(x, grid)`
# takes x $(N, C, H, W)$ and a grid $(N, H_o, W_o, 2)$ of $(x, y)$ positions in $[-1, 1]$ —
# $-1$ the left (top) of the image, $1$ the right (bottom) — and returns $(N, C, H_o, W_o)$, each
# output pixel read from its position; 5-D inputs take $(x, y, z)$ grids. Reading a position takes
# the three steps of lesson 04's resampling, per point instead of per axis:
#
# 1. **unnormalize**: $[-1, 1]$ to pixels. With `align_corners=True` $\pm 1$ are the *centres* of the
#    end pixels, $u = \frac{g + 1}{2}(S - 1)$; otherwise their outer *edges*, $u = \frac{(g + 1) S - 1}{2}$.
# 2. **padding_mode**: `zeros` reads 0 outside the image; `border` clips $u$ into $[0, S - 1]$;
#    `reflection` mirrors $u$ at the image's edges (the end centres, or the end edges) until it
#    lies inside, then clips.
# 3. **mode**: `nearest` rounds (half to even), `bilinear` mixes the 2 neighbours of each axis
#    by $1 - t$ and $t$, `bicubic` the 4 neighbours by Keys' cubic weights (lesson 04), with the
#    padding applied to each neighbour rather than to $u$.
#
# Each axis gives a short list of source pixels and weights (`axis_taps`, -1 for a pixel outside the
# image); an output is the sum of the products over the axes' lists. `F.affine_grid` makes the
# grid of an affine map $\theta$ $(N, 2, 3)$: the output pixel centres in $[-1, 1]$, as
# $(x, y, 1)$, times $\theta^\top$. Together they rotate, scale, shear or crop an image inside a
# network.

# %%
#| export layers.grid
import math
from typing import Literal

import numpy as np
from numba import njit, prange

from kuiper.errors import ShapeError
from kuiper.layers.elementwise import function

BILINEAR, NEAREST, BICUBIC = 0, 1, 2  # F.grid_sample's settings as the kernel's codes
ZEROS, BORDER, REFLECTION = 0, 1, 2
MODES = {"bilinear": BILINEAR, "nearest": NEAREST, "bicubic": BICUBIC}
PADDINGS = {"zeros": ZEROS, "border": BORDER, "reflection": REFLECTION}


@njit(cache=True)
def unnormalize(coord: np.float32, size: int, align_corners: bool) -> np.float32:
    """A grid value in [-1, 1] as a pixel coordinate along an axis of `size` pixels: ±1 the end pixels'
    centres (align_corners) or outer edges. In float32 as PyTorch's CPU kernel computes it: where
    `nearest` meets a tie (a 2× downsampling), the last bit decides the pixel."""
    if align_corners:
        return (coord + np.float32(1)) * np.float32((size - 1) / 2)
    return (coord + np.float32(1)) * np.float32(size / 2) - np.float32(0.5)


@njit(cache=True)
def reflect(coord: np.float32, low: np.float32, twice_span: np.float32) -> np.float32:
    """coord mirrored at low and at low + twice_span / 2 until it lies between them: its distance
    from low, modulo twice the span, folded back at the span."""
    if twice_span <= 0:
        return np.float32(0)
    distance = abs(coord - low)
    extra = distance - np.trunc(distance / twice_span) * twice_span
    return min(extra, twice_span - extra) + low


@njit(cache=True)
def pad_coordinate(coord: np.float32, size: int, padding: int, align_corners: bool) -> np.float32:
    """A pixel coordinate after padding mode `padding` (PADDINGS): zeros leaves it, border clips it into
    [0, size - 1] (NaN to 0, as PyTorch), reflection mirrors it at the end centres (align_corners) or
    edges, then clips."""
    if padding == REFLECTION:
        low = np.float32(0 if align_corners else -0.5)
        coord = reflect(coord, low, np.float32(2 * (size - 1) if align_corners else 2 * size))
    if padding != ZEROS:
        coord = min(max(np.float32(0), coord), np.float32(size - 1))
    return coord


@njit(cache=True)
def cubic(d: float, a: float = -0.75) -> float:
    """Keys' cubic convolution weight of a tap at distance d, |d| < 2 (Keys 1981; lesson 04's
    cubic_weights one tap at a time, for nopython code; PyTorch's a = -0.75)."""
    d = abs(d)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a


@njit(cache=True)
def tap(coord: float, size: int) -> int:
    """The pixel at integer-valued coord, or -1 outside [0, size - 1] (NaN too)."""
    return int(coord) if 0 <= coord <= size - 1 else -1


@njit(cache=True)
def axis_taps(coord: float, size: int, mode: int, padding: int, align_corners: bool, index: np.ndarray,
              weight: np.ndarray) -> int:
    """Fill index (int64) and weight (float64), 4 each, with the source pixels of grid value coord
    along one axis in `mode` (MODES; -1 for a pixel outside); return how many (1, 2 or 4)."""
    src = unnormalize(coord, size, align_corners)
    if mode == BICUBIC:  # the padding applies to each tap, not to the coordinate
        low = np.floor(src)
        for k in range(4):
            index[k] = tap(pad_coordinate(low - 1 + k, size, padding, align_corners), size)
            weight[k] = cubic(src - low + 1 - k)
        return 4
    src = pad_coordinate(src, size, padding, align_corners)
    if mode == NEAREST:
        index[0], weight[0] = tap(round(src), size), 1.0  # round half to even, as std::nearbyint
        return 1
    low = np.floor(src)
    index[0], weight[0] = tap(low, size), 1 - (src - low)
    index[1], weight[1] = tap(low + 1, size), src - low
    return 2


# %% [markdown]
# ## Exercise 8.10 — the affine grid and the sampling kernel
#
# Write `affine_grid`: the centres of the output's pixels along each axis of `size[2:]` in $[-1, 1]$
# (`np.linspace(-1, 1, n)` with `align_corners`, 0 for a single pixel; otherwise $(2i + 1)/n - 1$),
# as points $(x, y[, z], 1)$ — $x$ runs along the *last* axis — times $\theta^\top$. Then the numba
# kernel `grid_sample_kernel`: for each row of output points in parallel, the taps of each axis
# from `axis_taps` (a 2-value grid has one depth, no $z$); their products, the point's taps inside the
# image as (flat pixel, weight) pairs; and for each channel the weighted sum of those pixels. A tap
# outside reads 0 and can be left out — unless its weight is NaN (a NaN in the grid), which PyTorch
# lets through.

# %%
#| export layers.grid
#| exercise: affine_grid: pixel centres in [-1, 1] as (x, y[, z], 1) times θᵀ; grid_sample_kernel: per output point the axes' taps, per channel the weighted sum over the taps inside
def affine_grid(theta: np.ndarray, size: tuple[int, ...], align_corners: bool) -> np.ndarray:
    """F.affine_grid: theta (N, 2, 3) or (N, 3, 4) float32 and size (N, C, H, W) or (N, C, D, H, W) ->
    grid (N, H, W, 2) or (N, D, H, W, 3) float32, theta @ (x, y[, z], 1) at each output pixel centre."""
    ### BEGIN SOLUTION
    axes = [(np.linspace(-1, 1, n) if n > 1 else np.zeros(1)) if align_corners else (np.arange(n) * 2 + 1) / n - 1
            for n in size[2:]]
    coords = np.meshgrid(*axes, indexing="ij")  # each (H, W) or (D, H, W)
    base = np.stack([*coords[::-1], np.ones_like(coords[0])], axis=-1).astype(np.float32)  # (..., x y [z] 1)
    grid = base.reshape(1, -1, base.shape[-1]) @ theta.transpose(0, 2, 1)  # (N, points, 2 or 3)
    return grid.reshape(len(theta), *size[2:], theta.shape[1])
    ### END SOLUTION


@njit(parallel=True, cache=True)
def grid_sample_kernel(x, grid, out, mode, padding, align_corners):
    """out[n, c, d, h, w] = x (N, C, D, H, W) float32 read at grid[n, d, h, w] ((x, y, z), or (x, y) with
    D = 1) by axis_taps in `mode` and `padding` (MODES, PADDINGS); out (N, C, Do, Ho, Wo) float32."""
    batch, channels, depth, height, width = x.shape
    _, out_d, out_h, out_w, k = grid.shape
    pixels = x.reshape(batch, channels, depth * height * width)  # (N, C, D·H·W)
    ### BEGIN SOLUTION
    for p in prange(batch * out_d * out_h):
        n, od, oh = p // (out_d * out_h), p // out_h % out_d, p % out_h
        ix, iy, iz = np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64)
        wx, wy, wz = np.ones(4), np.ones(4), np.ones(4)
        offset, weight = np.empty(64, np.int64), np.empty(64)  # the point's taps: flat pixel, weight
        for ow in range(out_w):
            g = grid[n, od, oh, ow]
            nx = axis_taps(g[0], width, mode, padding, align_corners, ix, wx)
            ny = axis_taps(g[1], height, mode, padding, align_corners, iy, wy)
            nz = axis_taps(g[2], depth, mode, padding, align_corners, iz, wz) if k == 3 else 1
            count = 0
            for a in range(nz):
                for b in range(ny):
                    for e in range(nx):
                        w = wz[a] * wy[b] * wx[e]
                        if iz[a] >= 0 and iy[b] >= 0 and ix[e] >= 0:
                            offset[count], weight[count] = (iz[a] * height + iy[b]) * width + ix[e], w
                            count += 1
                        elif np.isnan(w):  # outside: 0, but NaN · 0 is NaN, as in PyTorch
                            offset[count], weight[count] = 0, w
                            count += 1
            for c in range(channels):
                total = 0.0
                for t in range(count):
                    total += weight[t] * pixels[n, c, offset[t]]
                out[n, c, od, oh, ow] = total
    ### END SOLUTION


# %%
with check("Exercise 8.10"):
    for size in [(2, 1, 4, 5), (2, 1, 1, 3), (2, 3, 3, 4, 2)]:
        theta = rng.standard_normal((2, len(size) - 2, len(size) - 1), dtype=np.float32)
        for align in (False, True):
            want = F.affine_grid(torch.from_numpy(theta), size, align).numpy()
            got = affine_grid(theta, size, align)
            assert got.shape == want.shape, f"affine_grid to {size}: expected shape {want.shape}, got {got.shape}"
            assert np.allclose(got, want, atol=1e-5), (
                f"affine_grid to {size}, align_corners={align}: expected F.affine_grid's grid, {agreement(got, want)}")
    x = rng.standard_normal((2, 3, 5, 7), dtype=np.float32)
    grid = rng.uniform(-2.5, 2.5, (2, 4, 6, 2)).astype(np.float32)  # far outside the image too
    x3 = rng.standard_normal((1, 2, 3, 4, 5), dtype=np.float32)
    grid3 = rng.uniform(-1.5, 1.5, (1, 2, 3, 4, 3)).astype(np.float32)
    for mode, padding, align in [("bilinear", "zeros", False), ("nearest", "border", True),
                                 ("bicubic", "reflection", False), ("bilinear", "reflection", True)]:
        want = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode, padding, align).numpy()
        got = np.full((2, 3, 1, 4, 6), np.nan, np.float32)
        grid_sample_kernel(x[:, :, None], grid[:, None], got, MODES[mode], PADDINGS[padding], align)
        assert np.allclose(got[:, :, 0], want, atol=1e-5), (
            f"grid_sample {mode}, {padding}, align_corners={align} of {x.shape}: expected F.grid_sample's, "
            f"{agreement(got[:, :, 0], want)}")
        if mode != "bicubic":
            want = F.grid_sample(torch.from_numpy(x3), torch.from_numpy(grid3), mode, padding, align).numpy()
            got = np.full(want.shape, np.nan, np.float32)
            grid_sample_kernel(x3, grid3, got, MODES[mode], PADDINGS[padding], align)
            assert np.allclose(got, want, atol=1e-5), (
                f"grid_sample {mode}, {padding}, align_corners={align} of 5-D {x3.shape}: expected F.grid_sample's, "
                f"{agreement(got, want)}")


# %% [markdown]
# The layers check what they are given: a grid of the wrong rank or width, or a batch that
# differs from the input's, is a `ShapeError` naming both shapes; an unknown `mode` or `padding_mode`
# is refused when the model loads (the `Literal` annotations); PyTorch has no bicubic 3-D sampling,
# and neither have we.

# %%
#| export layers.grid
MAX_POINTS = 1 << 28  # an affine grid of more points than this is a damaged file, not a model


@function("F.grid_sample")
def grid_sample(input: np.ndarray, grid: np.ndarray, mode: Literal["bilinear", "nearest", "bicubic"] = "bilinear",
                padding_mode: Literal["zeros", "border", "reflection"] = "zeros",
                align_corners: bool = False) -> np.ndarray:
    """F.grid_sample: input (N, C, H, W) with grid (N, Ho, Wo, 2) -> (N, C, Ho, Wo), or (N, C, D, H, W)
    with (N, Do, Ho, Wo, 3) -> (N, C, Do, Ho, Wo), float32. ShapeError if they do not fit."""
    dims = input.ndim - 2
    if dims not in (2, 3) or grid.shape != (input.shape[0], *grid.shape[1:-1], dims) or grid.ndim != input.ndim:
        raise ShapeError(f"expected an input (N, C, H, W) with a grid (N, Ho, Wo, 2), or (N, C, D, H, W) with "
                         f"(N, Do, Ho, Wo, 3); got input {input.shape} and grid {grid.shape}")
    if dims == 3 and mode == "bicubic":
        raise ShapeError(f"mode='bicubic' samples 4-D inputs only, got {input.shape}")
    x5, grid5 = (input, grid) if dims == 3 else (input[:, :, None], grid[:, None])  # (N, C, D, H, W), (N, Do, Ho, Wo, k)
    out = np.empty((*x5.shape[:2], *grid5.shape[1:4]), np.float32)
    grid_sample_kernel(np.ascontiguousarray(x5, np.float32), np.ascontiguousarray(grid5, np.float32), out,
                       MODES[mode], PADDINGS[padding_mode], align_corners)
    return out if dims == 3 else out[:, :, 0]


@function("F.affine_grid", name="affine_grid")
def affine_grid_layer(theta: np.ndarray, size: tuple, align_corners: bool = False) -> np.ndarray:
    """F.affine_grid of theta (N, 2, 3) for size (N, C, H, W), or (N, 3, 4) for (N, C, D, H, W); the batch
    comes from theta. ShapeError if they do not fit or the grid would exceed MAX_POINTS."""
    dims = len(size) - 2
    if dims not in (2, 3) or theta.shape[1:] != (dims, dims + 1) or min(size[2:]) < 1:
        raise ShapeError(f"expected theta (N, 2, 3) with size (N, C, H, W), or (N, 3, 4) with (N, C, D, H, W); "
                         f"got theta {theta.shape} and size {tuple(size)}")
    if len(theta) * math.prod(size[2:]) > MAX_POINTS:
        raise ShapeError(f"an affine grid of {len(theta)}×{tuple(size[2:])} points exceeds {MAX_POINTS}")
    return affine_grid(np.asarray(theta, np.float32), tuple(size), align_corners)


# %% [markdown]
# Every setting against PyTorch, through the registered layers as a loaded model runs them: a
# rotation by 30° with a zoom, applied to a random image, then each mode and padding.

# %%
angle = math.radians(30)
theta = np.array([[[math.cos(angle), -math.sin(angle), 0.2], [math.sin(angle), math.cos(angle), 0]]], np.float32) * 1.3
x = rng.standard_normal((1, 3, 12, 16), dtype=np.float32)
for align in (False, True):
    make_grid = create_layer(Operator("F.affine_grid", "grid", ["0"], ["1"], {"size": (1, 3, 9, 11),
                                                                            "align_corners": align}, line=1))
    grid = make_grid(Tensor(theta)).numpy()
    for mode in MODES:
        for padding in PADDINGS:
            layer = create_layer(Operator("F.grid_sample", "sample", ["0", "1"], ["2"], {
                "mode": mode, "padding_mode": padding, "align_corners": align}, line=2))
            got = layer(Tensor(x), Tensor(grid)).numpy()
            want = F.grid_sample(torch.from_numpy(x), F.affine_grid(torch.from_numpy(theta), (1, 3, 9, 11), align),
                                 mode, padding, align)
            print(f"align_corners={align!s:5} {mode:8} {padding:10} {str(got.shape):14} {agreement(got, want.numpy())}")


# %% [markdown]
# ## Transformer blocks: a Linear by tiles, with its epilogue
#
# Segmentation networks built on transformers (SETR, SegFormer) and ConvNeXt backbones spend most
# of their time elsewhere: in `nn.Linear`. Timed per operator type, ConvNeXt-Tiny and ViT-Tiny
# give 55–77 % of a forward pass to Linear, then GELU, LayerNorm and the residual sums, each one more
# pass over a large tensor. Three things make lesson 03's `x @ Wᵀ + b` slow:
#
# * the bias, the GELU after it and the residual sum each read and write the whole output again:
#   three extra passes over up to 38 MB at batch 8;
# * the BLAS library cuts each product over its own threads, which wait for each other at a barrier
#   inside it: on a busy machine one of them is often not running, and a product of 197 rows took
#   20–50 × PyTorch's time there;
# * ConvNeXt's block ends in `Linear → permute(0, 3, 1, 2) → add`: a transpose, then a sum.
#
# So the Linear runs by **tiles**: at most `ROWS` rows of the output (and, when that makes fewer
# tiles than threads, a strip of its columns), each product on one BLAS thread into a small scratch
# array that stays in the cache, and right after it the tile's **epilogue** (as a convolution's,
# Exercise 6.6): bias, activation, residual, written where the output lives. Our own threads take
# the tiles, so no barrier waits inside the library. And the Linear absorbs (`Layer.fuse`) an
# activation, the permute back to channels-first (the epilogue then writes each tile transposed)
# and a residual sum: ConvNeXt's `Linear → GELU` and `Linear → permute → add` become one step each.

# %%
#| export layers.transformer
import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit
from threadpoolctl import ThreadpoolController

from kuiper.errors import ShapeError
from kuiper.layer import Layer
from kuiper.layers.activation import activate_range, GELU, GELU_TANH, SIGMOID, SILU, TANH
from kuiper.layers.conv import scratch, SUMS
from kuiper.layers.linear import Linear
from kuiper.layers.shape import Permute
from kuiper.tensor import Tensor

BLAS = ThreadpoolController()  # numpy's BLAS library: one thread per product while tiles run
THREADS = numba.get_num_threads()
POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="kuiper-tiles")
ROWS = 512  # rows per product at most: with far fewer, the library spends its time packing the weight
COLUMNS = 64  # the narrowest strip of columns a tile is cut to
NO_ACTIVATION = -1  # an epilogue without activation; the others are lesson 05's codes (GELU, ...)
NO_RESIDUAL = np.zeros((0, 0), np.float32)  # the residual rows of an epilogue that adds none


def tiles(images: int, length: int, width: int, threads: int) -> list[tuple[int, int, int, int]]:
    """(first row, end row, first column, end column) of the tiles of an output of `images`·`length`
    rows and `width` columns: ROWS rows at most, never across two images; when that gives fewer
    tiles than `threads`, each row span is cut into strips of COLUMNS columns or more."""
    step = max(1, min(length, ROWS))
    spans = [(n * length + s, n * length + min(s + step, length)) for n in range(images)
             for s in range(0, length, step)]
    parts = max(1, min(threads // max(1, len(spans)), width // COLUMNS))
    cuts = [width * i // parts for i in range(parts + 1)]
    return [(start, stop, cuts[i], cuts[i + 1]) for start, stop in spans for i in range(parts)]


def run_tiles(work: Callable[[tuple[int, int, int, int]], None], found: list[tuple[int, int, int, int]]) -> None:
    """work(tile) for every tile, the tiles dealt round the pool's threads, each product on one BLAS
    thread (two products side by side share no barrier)."""
    with BLAS.limit(limits=1, user_api="blas"):
        if len(found) <= 1 or THREADS == 1:
            for tile in found:
                work(tile)
            return
        shares = [found[t::THREADS] for t in range(THREADS)]
        for _ in POOL.map(lambda share: [work(tile) for tile in share], shares):
            pass


# %% [markdown]
# ## Exercise 8.11 — the Linear's epilogue
#
# Write `linear_epilogue`: for a tile `y` `(R, C)` of $xW^\top$, just made in a scratch array (you
# may overwrite it), write `activation(y + bias) + residual` to `out`. `code` is one of lesson 05's
# activation codes, which `activate_range(x, out, start, stop, code)` computes; `NO_ACTIVATION`
# means none. `activate_range` vectorises only between two different arrays: run it from a row of
# `y` into a spare row, and copy back. `residual` is `(R, C)` like `out`, or `NO_RESIDUAL` (empty):
# add nothing. `out` may be a strided view: with `channels_first` it is the transpose of a `(C, R)`
# block of a channels-first output, so loop over the columns outside and the rows inside (each inner
# loop then writes along memory). Add in PyTorch's order, `(y + bias)`, then the activation, then
# `+ residual`, so that the fused steps give the unfused ones to the last bit.

# %%
#| export layers.transformer
#| exercise: out = activation(y + bias) + residual for a tile y (R, C): bias per column, activate_range into a spare row (NO_ACTIVATION: none), residual (R, C) or empty; with channels_first loop columns outside, rows inside
@njit(nogil=True, cache=True, error_model="numpy")
def linear_epilogue(y, bias, code, residual, out, channels_first):
    """out = activation(y + bias) + residual for y (R, C) float32 (overwritten), bias (C,), `code` an
    activation of lesson 05's `activate_range` or NO_ACTIVATION, residual (R, C) or NO_RESIDUAL, out
    (R, C) any strides; with `channels_first` out is the transpose of a (C, R) block."""
    ### BEGIN SOLUTION
    rows, size = y.shape
    spare = np.empty(size, np.float32)
    for r in range(rows):
        row = y[r]
        for j in range(size):
            row[j] += bias[j]
        if code != NO_ACTIVATION:
            activate_range(row, spare, 0, size, code)
            row[:] = spare
    added = residual.size > 0
    if channels_first:
        for j in range(size):
            if added:
                for r in range(rows):
                    out[r, j] = y[r, j] + residual[r, j]
            else:
                for r in range(rows):
                    out[r, j] = y[r, j]
    else:
        for r in range(rows):
            if added:
                for j in range(size):
                    out[r, j] = y[r, j] + residual[r, j]
            else:
                for j in range(size):
                    out[r, j] = y[r, j]
    ### END SOLUTION


# %%
with check("Exercise 8.11"):
    y = rng.standard_normal((6, 5), dtype=np.float32) * 2
    bias, shortcut = np.float32([0.5, -1, 2, 0, 1]), rng.standard_normal((6, 5), dtype=np.float32)
    v = torch.from_numpy(y + bias)
    for code, name, want in [(NO_ACTIVATION, "none", v), (GELU, "GELU", F.gelu(v)), (SILU, "SiLU", F.silu(v))]:
        for extra, added in [(NO_RESIDUAL, 0), (shortcut, torch.from_numpy(shortcut))]:
            expected = (want + added).numpy()
            out = np.full((6, 5), np.nan, np.float32)
            linear_epilogue(y.copy(), bias, code, extra, out, False)
            error = np.abs(out - expected).max()
            assert error < 1e-5, f"{name}, residual {extra.size > 0}: expected PyTorch's values, differs by {error:.1e}"
            block = np.full((5, 6), np.nan, np.float32)  # a channels-first (C, R) block
            linear_epilogue(y.copy(), bias, code, extra.T.copy().T if extra.size else extra, block.T, True)
            error = np.abs(block.T - expected).max()
            assert error < 1e-5, (f"{name}, residual {extra.size > 0}, channels-first: expected PyTorch's "
                                  f"values in the transposed block, differs by {error:.1e}")

# %% [markdown]
# The layer: the input as `(images, rows, in_features)` rows, each tile's product into a scratch
# array (one per thread, lesson 04's `scratch`) and its epilogue into the output. `Linear.fuse`
# says what the epilogue absorbs: an activation, the permute `(0, 3, 1, 2)` that turns a
# channels-last `(N, H, W, C)` output back to channels-first (then each tile is one image's rows,
# written transposed), and a residual sum. Both replace lesson 03's `forward` for every Linear (as
# lesson 06 swapped the depthwise kernel).

# %%
#| export layers.transformer
ACTIVATIONS = {"nn.GELU": GELU, "F.gelu": GELU, "nn.SiLU": SILU, "F.silu": SILU, "nn.Sigmoid": SIGMOID,
               "F.sigmoid": SIGMOID, "torch.sigmoid": SIGMOID, "nn.Tanh": TANH, "F.tanh": TANH}
CHANNELS_FIRST = (0, 3, 1, 2)  # the permute from (N, H, W, C) back to (N, C, H, W)


def linear_tiles(x: np.ndarray, weight_t: np.ndarray, bias: np.ndarray, code: int, residual: np.ndarray | None,
                 channels_first: bool) -> np.ndarray:
    """x (N, L, K) float32 contiguous times weight_t (K, C), plus bias (C,), activation `code`, residual
    (the output's shape, or None): (N·L, C), or with `channels_first` (N, C, L). Tile by tile."""
    n, length, k = x.shape
    width = weight_t.shape[1]
    rows = x.reshape(n * length, k)  # (N, L, K) -> (N·L, K)
    out = np.empty((n, width, length) if channels_first else (n * length, width), np.float32)

    def work(tile: tuple[int, int, int, int]) -> None:
        start, stop, left, right = tile
        y = np.matmul(rows[start:stop], weight_t[:, left:right], out=scratch((stop - start, right - left), "linear"))
        image, first = divmod(start, length)
        if channels_first:  # the (C', R) block of image `image`, seen as (R, C')
            target = out[image, left:right, first:first + stop - start].T
            extra = NO_RESIDUAL if residual is None else residual[image, left:right, first:first + stop - start].T
        else:
            target = out[start:stop, left:right]
            extra = NO_RESIDUAL if residual is None else residual[start:stop, left:right]
        linear_epilogue(y, bias[left:right], code, extra, target, channels_first)

    run_tiles(work, tiles(n, length, width, THREADS))
    return out


def tiled_forward(self: Linear, x: Tensor, residual: Tensor | None = None) -> Tensor:
    """activation(x Wᵀ + b) (+ residual) over x's last dimension by `linear_tiles`; channels-first
    (N, C, H, W) from x (N, H, W, in) when the permute back is fused. ShapeError naming the layer when
    x's last dimension is not in_features or the residual is missing, extra or of another shape."""
    data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    k, width = self.weight_t.shape
    if data.ndim == 0 or data.shape[-1] != k or (self.channels_first and data.ndim != 4):
        raise ShapeError(f"{self.op.where()}: expected input (..., {k})"
                         f"{' of 4 dimensions' if self.channels_first else ''}, got {data.shape}")
    n, *middle, _ = data.shape if self.channels_first else (1, *data.shape)
    shape = (n, width, *middle) if self.channels_first else (*data.shape[:-1], width)
    extra = None if residual is None else np.ascontiguousarray(residual.numpy(), dtype=np.float32)
    if (extra is None) == self.residual or (extra is not None and extra.shape != shape):
        expected = f"a residual of shape {shape}" if self.residual else "no residual"
        raise ShapeError(f"{self.op.where()}: expected {expected}, got {None if extra is None else extra.shape}")
    bias = np.zeros(width, np.float32) if self.bias is None else self.bias
    images = data.reshape(n, -1, k)  # (N, H·W, in) channels-first, else (1, rows, in)
    extra = None if extra is None else extra.reshape(n, width, -1) if self.channels_first else extra.reshape(-1, width)
    out = linear_tiles(images, self.weight_t, bias, self.activation, extra, self.channels_first)
    return Tensor(out.reshape(shape), device=x.device)


def fuse_linear(self: Linear, after: Layer) -> Linear | None:
    """This Linear with `after` in its epilogue: an ACTIVATIONS activation (before the rest), the
    permute CHANNELS_FIRST (before a residual), a residual sum (SUMS, last); else None. A copy."""
    fused, kind, plain = copy.copy(self), after.op.type, not (self.channels_first or self.residual)
    if kind in ACTIVATIONS and self.activation == NO_ACTIVATION and plain:
        fused.activation = GELU_TANH if after.op.params.get("approximate") == "tanh" else ACTIVATIONS[kind]
    elif isinstance(after, Permute) and tuple(after.dims) == CHANNELS_FIRST and plain:
        fused.channels_first = True
    elif kind == "pnnx.Expression" and after.op.params.get("expr") in SUMS and not self.residual:
        fused.residual = True
    else:
        return None
    return fused


Linear.activation, Linear.channels_first, Linear.residual = NO_ACTIVATION, False, False
Linear.forward, Linear.fuse = tiled_forward, fuse_linear


# %%
#| export layers.transformer
import re

from kuiper.layers.elementwise import softmax
from kuiper.layers.shape import Transpose
from kuiper.registry import LAYERS

SOFTMAXES = ("F.softmax", "nn.Softmax", "torch.softmax")


def factor(layer: Layer) -> float | None:
    """c of a pnnx.Expression mul(@0,c) or mul(c,@0) with c a number (attention's 1/√d), else None."""
    found = re.fullmatch(r"mul\(@0,([-+.\deE]+)\)|mul\(([-+.\deE]+),@0\)", str(layer.op.params.get("expr")))
    return None if layer.op.type != "pnnx.Expression" or found is None else float(found.group(1) or found.group(2))


class StackedProducts(Layer):
    """torch.matmul of two stacks of matrices with the same batch dimensions, the products dealt round
    the pool (one BLAS thread each), each times `scale` while in the cache; then softmax over the last
    dimension and the swap of two dimensions when fused (attention: q·kᵀ·scale → softmax, p·v → transpose)."""

    def __init__(self, op, scale: float = 1.0, softmax_last: bool = False, swap: tuple[int, int] | None = None):
        super().__init__(op)
        self.scale, self.softmax_last, self.swap = scale, softmax_last, swap

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        x, y = a.numpy(), b.numpy()
        if x.ndim < 3 or x.shape[:-2] != y.shape[:-2] or x.shape[-1] != y.shape[-2]:
            out = np.matmul(x, y) * np.float32(self.scale)  # a vector or broadcast batch: numpy's product
        else:
            stack, rows, columns = x.shape[:-2], x.shape[-2], y.shape[-1]
            left, right = x.reshape(-1, rows, x.shape[-1]), y.reshape(-1, *y.shape[-2:])  # views where strides allow
            out = np.empty((*stack, rows, columns), np.result_type(x, y))
            flat = out.reshape(-1, rows, columns)

            def work(tile: tuple[int, int, int, int]) -> None:
                np.matmul(left[tile[0]], right[tile[0]], out=flat[tile[0]])
                if self.scale != 1.0:
                    flat[tile[0]] *= np.float32(self.scale)

            run_tiles(work, [(i, i + 1, 0, columns) for i in range(len(flat))])
        out = softmax(out, -1) if self.softmax_last else out
        return Tensor(out if self.swap is None else np.swapaxes(out, *self.swap), device=a.device)

    def fuse(self, after: Layer) -> "StackedProducts | None":
        """This product then `after`, in this order only: × a constant, softmax over the last dimension,
        a transpose."""
        found, done = factor(after), self.softmax_last or self.swap is not None
        if found is not None and self.scale == 1.0 and not done:
            return StackedProducts(self.op, found)
        if after.op.type in SOFTMAXES and after.settings.get("dim") == -1 and not done:
            return StackedProducts(self.op, self.scale, True)
        if isinstance(after, Transpose) and self.swap is None:
            return StackedProducts(self.op, self.scale, self.softmax_last, after.dims)
        return None


LAYERS["torch.matmul"].fuse = lambda self, after: StackedProducts(self.op).fuse(after)

# %% [markdown]
# In ViT's attention, `torch.matmul` absorbs the same way: the scores $qk^\top$ are a stack of
# (batch, head) products, which lesson 05 runs one after the other on one BLAS thread; here they are
# dealt round the pool like the Linear's tiles, each scaled by $1/\sqrt{d}$ while still in the cache,
# then lesson 05's softmax runs over all rows at once (the cell above).
#
# ConvNeXt-Tiny and ViT-Tiny through the fused plan give PyTorch's output, in fewer steps. The
# ratio is kuiper's time over PyTorch's, the two timed alternately in one process (on a busy
# machine only such ratios mean something):

# %%
# NBVAL_IGNORE_OUTPUT
from kuiper.bench import same_run_ratio

for name in ("convnext_tiny", "vit_tiny"):
    model = kuiper.load(MODELS / f"{name}.pnnx.param")
    x, want = (np.load(MODELS / f"{name}.{part}.npy") for part in ("input", "output"))
    error = np.abs(model(x) - want).max() / np.abs(want).max()
    assert error < 1e-4, f"{name}: expected PyTorch's output, differs by {error:.1e} of its scale"
    traced = torch.jit.load(str(MODELS / f"{name}.torchscript.pt")).eval()
    with torch.no_grad():
        ratio = same_run_ratio(lambda: model(x), lambda: traced(torch.from_numpy(x)), repeat=3)
    fused = sum(isinstance(layer, Linear) for _, layer in model.plan)  # merged steps that start with a Linear
    print(f"{name}: {len(model.order) - 2} operators in {len(model.plan)} steps, {fused} Linears fused, "
          f"error / scale {error:.0e}, {ratio:.2f} × PyTorch's time")


# %% [markdown]
# ## What you built
#
# `kuiper/vision/segment.py`: per-pixel softmax and argmax, the confusion matrix and mIoU, the
# colour overlay, and a pipeline that letterboxes photos in and maps the scores back to each
# photo's size, behind `kuiper segment`. And in `kuiper/layers/`: convolutions with every padding
# mode, in 1-D and with weights that arrive as inputs (`conv.py`), max pooling with indices,
# adaptive max and power-average pooling in 1-D and 2-D (`pooling.py`), Fold and Unfold, and
# sampling at any point, `affine_grid` and `grid_sample` in every mode and padding (`grid.py`), each
# matching PyTorch. And `kuiper/layers/transformer.py`: every `nn.Linear` by tiles on our own
# threads, with bias, activation, residual sum and the permute back to channels-first in its
# epilogue. Lesson 09 leaves images for text: the weights of language
# models, in GGUF and safetensors files.
