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
# command `kuiper segment`.
#
# **Prerequisites:** lesson 04 (convolution, `nn.ConvTranspose2d`, `nn.Upsample`), lesson 06
# (`softmax`, `load_image`) and lesson 07 (`letterbox`). **Time:** about 90 minutes.
#
# | exercise | what |
# |---|---|
# | 8.1 | transposed convolution as a scatter of kernel copies |
# | 8.2 | bilinear resizing as a matrix, both `align_corners` |
# | 8.3 | per-pixel softmax and argmax |
# | 8.4 | the confusion matrix |
# | 8.5 | IoU per class and mIoU |
# | 8.6 | the colour overlay |

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
        assert np.abs(got - want).max() < 1e-4, f"kernel {kernel} stride {stride}: largest error {np.abs(got - want).max():.2e}"

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
            assert error < 1e-5, f"size {size}, align_corners={corners}: largest error {error:.2e}"

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
    assert (confusion_matrix(a, b, 4) == [[((a == t) & (b == p)).sum() for p in range(4)] for t in range(4)]).all(), "random maps: counts differ"

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
# ## What you built
#
# `kuiper/vision/segment.py`: per-pixel softmax and argmax, the confusion matrix and mIoU, the
# colour overlay, and a pipeline that letterboxes photos in and maps the scores back to each
# photo's size, behind `kuiper segment`. Lesson 09 leaves images for text: the weights of language
# models, in GGUF and safetensors files.
