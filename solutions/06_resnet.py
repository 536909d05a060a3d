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
# # Lesson 06 — ResNet and MobileNet, end to end
#
# Everything so far comes together: read a real model, turn a photo into the tensor it expects,
# run the graph, and read the answer. `data/models/mobilenet_v2.pnnx.param` carries torchvision's
# **real ImageNet weights**, so the engine you built will name what is in a photograph. ResNet-18,
# MobileNetV3 and a UNet (random weights) check exactness against PyTorch on whole networks, and
# the benchmark shows where the time goes; then you make the convolutions faster by fusing each
# activation into the convolution's last pass, the depthwise ones by laying their input flat, and
# the 3×3 ones by Winograd's algorithm.
#
# | exercise | what |
# |---|---|
# | 6.1 | preprocessing: resize, centre-crop and normalise like torchvision |
# | 6.2 | softmax that never overflows |
# | 6.3 | top-k: the k most likely classes |
# | 6.4 | `classify`: images in, probabilities out, in batches |
# | 6.5 | a residual block, wired by hand from the graph's own layers |
# | 6.6 | the convolution's epilogue: bias, a fused activation and a residual in one vectorised pass (numba) |
# | 6.7 | `absorb` (`Conv2d.fuse`): which operator after a convolution its epilogue can take in |
# | 6.8 | a depthwise convolution kernel whose every inner loop is long and vectorised (numba) |
# | 6.9 | Winograd's input transform: 4×4 patches to $B^T d B$ (numba) |
# | 6.10 | Winograd's output transform: 16 products back to 2×2 tiles of pixels (numba) |

# %%
#| default_exp vision.classify

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

import kuiper
from kuiper.course import DATA, agreement, check, raises
from kuiper.errors import KuiperError
from kuiper.tensor import Tensor

MODELS = DATA / "models"
IMAGES = sorted((DATA / "images").glob("*.jpg"))

# %% [markdown]
# ## The photos
#
# Three photographs ship in `data/images/`: Grace Hopper (from matplotlib's sample data), a
# cat and a cup of coffee (from scikit-image's sample data, public domain / CC0).

# %%
fig, axes = plt.subplots(1, len(IMAGES), figsize=(10, 3))
for ax, path in zip(axes, IMAGES):
    ax.imshow(Image.open(path))
    ax.set_title(path.name)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Reading images as people have them, with errors that say which file
#
# A missing path or a file that is not an image is the user's most likely mistake; it gets an
# `ImageError` naming the file. The images that do open come in many forms, and a model wants
# one: 8-bit RGB, upright. `load_image` (used by classification and detection alike) therefore
#
# * turns the photo upright as its EXIF orientation tag says (phones store it sideways);
# * scales 16-bit and 32-bit integer images from 0–65535 and float images from 0–1 (clipped) to
#   0–255 — Pillow's own conversion would clip a 16-bit image to white and a float one to black;
# * composites transparent images (RGBA, LA, palette with transparency) on **white**, and converts
#   grayscale, palette, CMYK and the rest to RGB;
# * refuses, before decoding a single pixel, an image of more than `MAX_PIXELS` pixels: a small
#   compressed file can claim a gigapixel size (a *decompression bomb*).

# %%
#| export errors
class ImageError(KuiperError, ValueError):
    """An input image that is missing or cannot be decoded; the message names the file."""


# %%
#| export
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from kuiper.errors import ImageError, KuiperError, ShapeError
from kuiper.graph import RuntimeGraph

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
MAX_PIXELS = 64_000_000  # 8000 × 8000: a larger image is refused before it is decoded
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
# What a broken file makes Pillow's decoders raise: none of it may escape as anything but ImageError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
                 ZeroDivisionError, MemoryError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB: wide modes (WIDE_MODES: 16/32-bit integer from 0-65535, float
    from 0-1) scaled to 0-255 and clipped, transparency composited on white."""
    if image.mode in WIDE_MODES:
        values = np.nan_to_num(np.asarray(image, dtype=np.float64)) * (255 / WIDE_MODES[image.mode])
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """The image at `path` as upright 8-bit RGB (see to_rgb); ImageError naming the file if it is
    missing, not an image, damaged, or larger than MAX_PIXELS (checked before decoding)."""
    if not Path(path).is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on damage it repairs (corrupt EXIF data)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if not 0 < width * height <= MAX_PIXELS:
                    raise ImageError(f"{path}: {width} × {height} pixels, expected 1 to {MAX_PIXELS:,}")
                return to_rgb(ImageOps.exif_transpose(image))
    except DECODE_ERRORS as err:
        raise ImageError(f"{path}: not an image that can be read ({type(err).__name__}: {err})") from None


# %% [markdown]
# ## Exercise 6.1 — preprocessing
#
# An ImageNet model must see its input exactly as it was trained, which for torchvision's models
# means `Resize(256)`, `CenterCrop(224)`, `ToTensor()`, `Normalize(mean, std)`:
#
# 1. resize so the **shorter** side is `resize` pixels (the longer one is `int(resize · long /
#    short)`, truncated, as torchvision does), with PIL's bilinear filter;
# 2. cut the central `size × size` square, its top-left corner at `round((height - size) / 2)`
#    and `round((width - size) / 2)`;
# 3. scale the 0–255 pixel values to 0–1, subtract the per-channel mean and divide by the std;
# 4. move the channels first: `(size, size, 3)` → `(3, size, size)`, float32.

# %%
#| export
#| exercise: shorter side to `resize` (bilinear), centre crop `size`, scale to 0-1, normalise, channels first
def preprocess(image: Image.Image, size: int = 224, resize: int = 256) -> np.ndarray:
    """A PIL image as a normalised float32 (3, size, size) array, exactly as torchvision prepares it."""
    ### BEGIN SOLUTION
    width, height = image.size
    if width <= height:
        new = (resize, int(resize * height / width))
    else:
        new = (int(resize * width / height), resize)
    image = image.resize(new, Image.BILINEAR)
    top, left = round((new[1] - size) / 2), round((new[0] - size) / 2)
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()
    ### END SOLUTION


# %%
with check("Exercise 6.1"):
    from kuiper.vision.classify import preprocess as reference_preprocess

    x = preprocess(load_image(DATA / "images" / "grace_hopper.jpg"))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32, f"expected (3, 224, 224) float32, got {x.shape} {x.dtype}"
    want = np.load(MODELS / "mobilenet_v2.input.npy")[0]  # torchvision's preprocessing, saved by tools/zoo.py
    assert np.abs(x - want).max() < 1e-5, f"expected torchvision's input, differs by {np.abs(x - want).max():.2e}"
    tall = preprocess(Image.new("RGB", (300, 500), (255, 0, 0)), size=100, resize=120)
    red = np.array([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], np.float32)
    assert tall.shape == (3, 100, 100), f"a 300 × 500 image: expected (3, 100, 100), got {tall.shape}"
    assert np.allclose(tall[:, 50, 50], red), f"pure red: expected {red} per channel, got {tall[:, 50, 50]}"
    noise = np.random.default_rng(0).integers(0, 256, (203, 301, 3), dtype=np.uint8)  # odd margins both ways
    for (w, h), size, resize in [((301, 203), 64, 75), ((203, 301), 50, 61), ((90, 90), 32, 37)]:
        image = Image.fromarray(noise[:h, :w])
        got, want = preprocess(image, size, resize), reference_preprocess(image, size, resize)
        assert got.shape == want.shape, f"a {w} × {h} image, size {size}, resize {resize}: expected {want.shape}, got {got.shape}"
        assert np.abs(got - want).max() < 1e-5, (f"a {w} × {h} image, size {size}, resize {resize}: expected the "
                                                 f"reference's pixels, differs by {np.abs(got - want).max():.2f}")

# %% [markdown]
# ## Exercise 6.2 — softmax
#
# The network's 1000 outputs are *logits*; softmax turns them into probabilities,
# $p_i = e^{z_i - m} / \sum_j e^{z_j - m}$ with $m = \max_j z_j$ (subtracting the maximum
# changes nothing mathematically and keeps `exp` from overflowing). Work along the last axis, so
# that a batch of logits `(N, 1000)` gives one distribution per image.

# %%
#| export
#| exercise: a numerically safe softmax over the last axis: exp(z - max) / sum, any number of leading axes
def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits along the last axis; never overflows."""
    ### BEGIN SOLUTION
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
    ### END SOLUTION


# %%
with check("Exercise 6.2"):
    p = softmax(np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]], np.float32))
    assert np.isfinite(p).all(), f"logits of 1000: expected finite probabilities, got {p.tolist()}"
    assert np.allclose(p[0], [0.09003057, 0.24472847, 0.66524096]), f"[1, 2, 3]: expected [0.090, 0.245, 0.665], got {p[0]}"
    assert np.allclose(p[1], [0.5, 0.5, 0.0]), f"[1000, 1000, 0]: expected [0.5, 0.5, 0], got {p[1]}"
    logits = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32) * 10
    want = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum(-1, keepdims=True)
    got = softmax(logits)
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-6), \
        f"(2, 3, 5) logits: expected softmax over the last axis, {agreement(got, want)}"
    one = softmax(np.array([-5.0, 0.0, 5.0], np.float32))
    assert np.allclose(one.sum(), 1) and one.shape == (3,), f"a 1-d vector: expected 3 probabilities summing to 1, got {one}"

# %% [markdown]
# ## Exercise 6.3 — top-k
#
# `top_k` returns the indices of the `k` largest values, largest first, and the values; asking
# for more than there are returns them all. `np.argpartition` finds the `k` largest without
# sorting all 1000 entries; then sort only those.

# %%
#| export
#| exercise: the indices and values of the k largest entries (all of them when k > size), largest first
def top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries of a 1-d array, largest first."""
    ### BEGIN SOLUTION
    k = min(k, values.size)
    best = np.argpartition(values, -k)[-k:]
    best = best[np.argsort(values[best])[::-1]]
    return best, values[best]
    ### END SOLUTION


# %%
with check("Exercise 6.3"):
    values = np.array([0.1, 0.5, 0.05, 0.3, 0.05, 0.7, 0.2])
    for k, want in [(3, [5, 1, 3]), (1, [5]), (7, [5, 1, 3, 6, 0]), (10, [5, 1, 3, 6, 0])]:
        index, value = top_k(values, k)
        got = index.tolist()[:len(want)]
        assert got == want and len(index) == min(k, values.size), f"top_k(k={k}): expected indices {want}..., got {index.tolist()}"
        assert np.allclose(value, values[index]), f"top_k(k={k}): expected the values {values[index]}, got {value}"
    probs = np.random.default_rng(1).random(1000)
    index, _ = top_k(probs, 5)
    assert index.tolist() == np.argsort(-probs)[:5].tolist(), \
        f"1000 values: expected {np.argsort(-probs)[:5].tolist()}, got {index.tolist()}"

# %% [markdown]
# ## Exercise 6.4 — classifying a batch
#
# `classify` prepares every image for the graph's input size, runs them through the graph in
# batches and returns the probabilities. The input size comes from the `pnnx.Input` annotation,
# so an image model of another size works too, and a model that does not take images says so.
# A model exported with a free size, `(1,3,?,?)`, runs at the size asked for, or at a default
# (224 for classification, 640 for detection).
#
# One unreadable photo among a hundred should not cost the other 99 their answers: given a dict
# `errors`, `classify` files each bad image's `ImageError` there under its index and goes on.
# And an image so long and thin that resizing its short side to 256 would make it enormous (a
# 20000 × 1 strip would become 5,120,000 × 256) is refused before resizing.

#
# 1. `input_size`: the shape of the operand the single `pnnx.Input` writes must be `(N, 3, S, S)`;
#    return `S` (for a free size, `requested` or else `default`), or raise `ShapeError` naming the
#    model file and the shape, or the two sizes when `requested` differs from a fixed `S`;
# 2. `classify`: prepare each image for side `S` (`prepare` resizes its shorter side to
#    `round(S · 256 / 224)`, the ImageNet ratio), run the graph on `batch` images at a time (the
#    last batch may be smaller; `in_batches` gives them to you, skipping unreadable images into
#    `errors`), and softmax the concatenated logits.

# %%
#| export
#| exercise: input_size: S of an (N, 3, S, S) input (free size: requested or default), else ShapeError; classify: run in batches, softmax
def input_size(graph: RuntimeGraph, requested: int | None = None, default: int = 224) -> int:
    """The square image side an image model takes: its (N, 3, S, S) input's S, or for a free size
    (N, 3, ?, ?) `requested` or else `default`. ShapeError for another input, or a fixed S that
    differs from `requested`."""
    ### BEGIN SOLUTION
    shape = graph.model.operands[graph.inputs[0].outputs[0]].shape or ()
    if len(graph.inputs) != 1 or len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise ShapeError(f"{graph.model.path.name} takes input of shape {shape}, not one (N, 3, S, S) image batch")
    if shape[2] == -1:
        return requested or default
    if requested not in (None, shape[2]):
        raise ShapeError(f"{graph.model.path.name} takes {shape[2]} × {shape[2]} images, not {requested}")
    return shape[2]
    ### END SOLUTION


def prepare(path: str | Path, size: int) -> np.ndarray:
    """The image at `path` as the (3, size, size) input of an ImageNet model; ImageError naming the
    file if it cannot be read or its aspect ratio would resize it past MAX_PIXELS."""
    image, resize = load_image(path), round(size * 256 / 224)
    width, height = image.size
    if resize * resize * max(width, height) > MAX_PIXELS * min(width, height):
        raise ImageError(f"{path}: {width} × {height} is too long and thin to resize to a {resize}-pixel short side")
    return preprocess(image, size, resize)


def in_batches(paths: list[str | Path], batch: int, load: Callable[[str | Path], object],
               errors: dict[int, ImageError] | None):
    """(indices, loaded items) per `batch` paths; a path whose `load` raises ImageError is filed in
    `errors` under its index and skipped (raised when `errors` is None)."""
    for start in range(0, len(paths), batch):
        indices, items = [], []
        for index in range(start, min(start + batch, len(paths))):
            try:
                items.append(load(paths[index]))
                indices.append(index)
            except ImageError as err:
                if errors is None:
                    raise
                errors[index] = err
        if items:
            yield indices, items


def classify(graph: RuntimeGraph, paths: list[str | Path], batch: int = 8, size: int | None = None,
             errors: dict[int, ImageError] | None = None) -> np.ndarray:
    """Class probabilities (images read, classes) for the images at `paths`, `batch` at a time.

    `size` is for models of free input size (default 224). With `errors` a dict, unreadable images
    are filed there by index and left out of the result; otherwise their ImageError is raised."""
    ### BEGIN SOLUTION
    side = input_size(graph, size, 224)
    logits = [graph(np.stack(images)) for _, images in in_batches(paths, batch, lambda p: prepare(p, side), errors)]
    if not logits:
        return np.zeros((0, 0), np.float32)
    return softmax(np.concatenate(logits))
    ### END SOLUTION


def read_labels(path: str | Path) -> list[str]:
    """One class name per line; KuiperError naming the file if it is missing or not UTF-8 text."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise KuiperError(f"{path}: cannot read the class names ({err.strerror if isinstance(err, OSError) else err})") from None


# %%
with check("Exercise 6.4"):
    from types import SimpleNamespace

    from kuiper.vision.classify import preprocess as reference_preprocess

    class FakeGraph:
        """Stands in for a RuntimeGraph with input (1, 3, S, S): logits are each image's channel means."""

        def __init__(self, shape):
            self.inputs = [SimpleNamespace(outputs=["in"])]
            self.model = SimpleNamespace(operands={"in": SimpleNamespace(shape=shape)}, path=Path("fake.pnnx.param"))
            self.batches = []

        def __call__(self, x):
            self.batches.append(x.shape)
            return x.mean(axis=(2, 3)) * 4

    fake = FakeGraph((1, 3, 40, 40))
    got = classify(fake, IMAGES, batch=2)
    shapes = [tuple(s) for s in fake.batches]
    assert shapes == [(2, 3, 40, 40), (1, 3, 40, 40)], f"3 images in batches of 2 at side 40: expected [(2, 3, 40, 40), (1, 3, 40, 40)], got {shapes}"
    logits = np.stack([reference_preprocess(load_image(p), 40, 46).mean(axis=(1, 2)) * 4 for p in IMAGES])
    want = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-5), f"expected probabilities\n{want}\ngot\n{got}"
    free = FakeGraph((1, 3, -1, -1))
    for requested, want in [(None, 224), (40, 40)]:
        got = input_size(free, requested)
        assert got == want, f"a free-size (1, 3, ?, ?) model asked for side {requested}: expected {want}, got {got}"
    classify(free, IMAGES[:1], size=40)
    shapes = [tuple(s) for s in free.batches]
    assert shapes == [(1, 3, 40, 40)], f"classify(size=40) on a free-size model: expected [(1, 3, 40, 40)], got {shapes}"
    for shape in [(1, 1, 40, 40), (1, 3, 40, 48), (1, 3, 40)]:
        err = raises(ShapeError, classify, FakeGraph(shape), IMAGES[:1])
        assert "fake.pnnx.param" in str(err) and str(shape) in str(err), \
            f"input {shape}: expected a message naming fake.pnnx.param and {shape}, got: {err}"

# %%
graph = kuiper.load(MODELS / "mobilenet_v2.pnnx.param")
labels = read_labels(DATA / "imagenet_classes.txt")
probs = classify(graph, IMAGES)
for path, p in zip(IMAGES, probs):
    index, value = top_k(p, 5)
    print(f"{path.name:18}", ", ".join(f"{labels[i]} {v:.3f}" for i, v in zip(index, value)))

# %% [markdown]
# The cat is an Egyptian cat (tabby and tiger cat next: ImageNet's cats are hard to tell apart),
# the cup an espresso, and Admiral Hopper wears a bow tie and a military uniform. As bars:

# %%
fig, axes = plt.subplots(1, len(IMAGES), figsize=(12, 2.6))
for ax, path, p in zip(axes, IMAGES, probs):
    index, value = top_k(p, 5)
    ax.barh([labels[i] for i in index][::-1], value[::-1], color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_title(path.name)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Exact against PyTorch
#
# `tools/zoo.py` saved, beside each model, an input and PyTorch's output for it. The four CNNs
# match to float32 rounding, at batch 1 and at batch 8 (eight copies of the input, which must
# give eight copies of the answer):

# %%
for name in ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "unet"]:
    model = kuiper.load(MODELS / f"{name}.pnnx.param")
    x, want = np.load(MODELS / f"{name}.input.npy"), np.load(MODELS / f"{name}.output.npy")
    one, eight = model(x), model(np.repeat(x, 8, axis=0))
    error = agreement(np.concatenate([one, eight]), np.concatenate([want] * 9))
    same_top1 = (one.reshape(1, -1).argmax(1) == want.reshape(1, -1).argmax(1)).all()
    print(f"{name:20} batch 1 and 8: {error}   top-1 identical: {same_top1}")

# %% [markdown]
# ## Looking inside: feature maps
#
# `forward(x, keep=...)` saves named operands on the way. The first convolution of MobileNetV2
# turns the photo into 32 feature maps at half resolution; some respond to edges of one
# orientation, some to colours:

# %%
first = graph.order[1]
graph(preprocess(load_image(IMAGES[0]))[None], keep={first.outputs[0]})
maps = graph.kept[first.outputs[0]].numpy()[0]
fig, axes = plt.subplots(2, 8, figsize=(12, 3.2))
for channel, ax in enumerate(axes.flat):
    ax.imshow(maps[channel], cmap="gray")
    ax.set_title(f"{channel}", fontsize=8)
    ax.axis("off")
fig.suptitle(f"{first.name} ({first.type}) on {IMAGES[0].name}: 16 of {maps.shape[0]} channels")
plt.show()

# %% [markdown]
# ## Exercise 6.5 — a residual block
#
# ResNet is built from *basic blocks*: two 3×3 convolutions with a ReLU between, whose output is
# **added** to the block's input (the *shortcut*) before a final ReLU. When the block halves the
# resolution, the shortcut is a strided 1×1 convolution (`downsample`) so that the shapes agree:
#
# $$y = \text{relu}\big(\text{conv}_2(\text{relu}(\text{conv}_1(x))) + \text{shortcut}(x)\big)$$
#
# PNNX flattened this into separate operators — the addition is a `pnnx.Expression`. Wire the
# block back together from the graph's own layers: each is a callable on tensors. Here is
# `layer2.0`, the first block that downsamples, as PNNX wrote it:

# %%
resnet = kuiper.load(MODELS / "resnet18.pnnx.param")
for op in resnet.order[14:20]:
    print(f"{op.type:16} {op.name:14} reads {op.inputs} writes {op.outputs}")

# %%
#| exercise: relu(conv2(relu(conv1(x))) + shortcut), the shortcut being downsample(x) or x itself
def basic_block(x: Tensor, conv1, conv2, relu, downsample=None) -> Tensor:
    """ResNet's basic block, from layers that are callables on tensors."""
    ### BEGIN SOLUTION
    shortcut = downsample(x) if downsample is not None else x
    return relu(conv2(relu(conv1(x))) + shortcut)
    ### END SOLUTION


# %%
with check("Exercise 6.5"):
    x = np.load(MODELS / "resnet18.input.npy")
    resnet(x, keep={"13", "19"})  # the input and the output of layer2.0, the first block that downsamples
    block_in, block_out = resnet.kept["13"], resnet.kept["19"]
    layers = resnet.layers
    got = basic_block(block_in, layers["convbn2d_5"], layers["convbn2d_6"], layers["layer2.0.relu"],
                      downsample=layers["convbn2d_7"])
    assert got.shape == block_out.shape, f"layer2.0: expected shape {block_out.shape}, got {got.shape}"
    error = np.abs(got.numpy() - block_out.numpy()).max()
    assert error < 1e-5, f"layer2.0: expected the graph's output, differs by {error:.2e}"
    t = Tensor(np.linspace(-3, 3, 8, dtype=np.float32).reshape(1, 2, 2, 2))
    half, relu = (lambda v: v * 0.5), (lambda v: Tensor(np.maximum(v.numpy(), 0)))
    got = basic_block(t, half, lambda v: v * -2.0, relu).numpy()
    want = np.maximum(-2.0 * np.maximum(0.5 * t.numpy(), 0) + t.numpy(), 0)
    assert np.allclose(got, want), f"no downsample, conv1 = x/2, conv2 = -2x: expected {want.ravel()}, got {got.ravel()}"

# %% [markdown]
# ## Where the time goes
#
# The graph timed every operator of the last run. At batch 8, convolutions dominate; everything
# else together is a few percent:

# %%
# NBVAL_IGNORE_OUTPUT
resnet(np.repeat(np.load(MODELS / "resnet18.input.npy"), 8, axis=0))
by_type = resnet.time_by_type()
fig, ax = plt.subplots(figsize=(6, 2.6))
ax.barh(list(by_type)[::-1], [s * 1e3 for s in by_type.values()][::-1], color="tab:blue")
ax.set_xlabel("ms per batch of 8 (ResNet-18)")
plt.tight_layout()
plt.show()
print(f"peak activation memory: {resnet.peak_bytes / 2**20:.1f} MiB")

# %% [markdown]
# ## Fusing the activation into the convolution
#
# In MobileNet and YOLO every convolution is followed by an activation. Run as two layers, the
# activation reads the whole feature map back from memory, writes it again, and starts the threads
# once more, for a few operations per element. The convolution already makes one pass over its
# output to add the bias: the activation can ride along in that *epilogue*. The graph asks each
# layer whether it can absorb the one operator that reads its output (`Layer.fuse`, lesson 03;
# `RuntimeGraph` builds its plan from the answers, lesson 02), and `Conv2d` says yes to the
# activations its epilogue knows.
#
# SiLU and sigmoid need $e^x$: the epilogue calls lesson 05's `exp_approx`, made only of multiplies,
# adds and integer operations, so that the loop vectorises; `np.exp` in a numba loop is one call of
# the C library's scalar `expf` per element.

# %%
import itertools
import timeit

import torch
import torch.nn.functional as F
from numba import njit, prange

from kuiper.course import patch_to
from kuiper.layer import Layer
from kuiper.layers.activation import exp_approx
from kuiper.layers.conv import Conv2d, im2col_images, images_per_gemm, scratch
from kuiper.layers.expression import Expression
from kuiper.pnnx import Operator

rng = np.random.default_rng(0)

# %% [markdown]
# Both loops below run over the same 4 million values; only the one calling `exp_approx`
# vectorises:

# %%
# NBVAL_IGNORE_OUTPUT
@njit(parallel=True)
def exp_scalar(x, out):
    for i in prange(x.size):
        out[i] = np.exp(x[i])


@njit(parallel=True)
def exp_all(x, out):
    for i in prange(x.size):
        out[i] = exp_approx(x[i])


values, out = rng.standard_normal(4_000_000, dtype=np.float32), np.empty(4_000_000, np.float32)
for kernel in (exp_scalar, exp_all):
    kernel(values, out)
    seconds = min(timeit.repeat(lambda: kernel(values, out), number=1, repeat=5))
    print(f"{kernel.__name__:10} {seconds * 1e3:6.2f} ms")

# %% [markdown]
# ## Exercise 6.6 — the convolution's epilogue
#
# Write `epilogue`: one pass over the output planes `(N, K, OH·OW)` that adds each channel's bias,
# then applies the activation picked by a small integer code (the table below). Put the `if` on the
# code *outside* the inner loop, so that each inner loop is straight arithmetic that vectorises,
# and use `exp_approx` for SiLU and sigmoid. It reads `planes` and writes `out`, which may be the
# same array (in place), or a contiguous array beside a strided view (`Conv2d.gemm` makes its
# product pixel-major, `(n·L, K)`, and passes it transposed). Give each task a tile of
# `EPILOGUE_TILE` places of one row, with `k` the fastest index of the tasks, so that neighbouring
# tasks read the same few cache lines of such a view. Put the tile's sums `planes + bias` in a
# buffer of their own first: a loop that reads a strided view, or writes the array it reads, does
# not vectorise (SiLU over a 32 × 25600 product: 5.9 ms from the transposed view, 0.8 from a
# buffer, on one core). Keep the constants float32.
#
# A residual network then *adds* a second tensor to the convolution's output (the shortcut of
# Exercise 6.5): one more pass over the whole map, writing a new one, that the epilogue can do too.
# `residual` holds that tensor as rows `(N, K, OH·OW)` like `out`, and `mode` says where it goes:
# `RESIDUAL_BEFORE` adds it before the activation, `relu(conv(x) + bias + shortcut)` as in ResNet;
# `RESIDUAL_AFTER` adds it after, `silu(conv(x) + bias) + shortcut` as in YOLO's bottlenecks;
# `NO_RESIDUAL` ignores `residual` (then an empty array). Add in PyTorch's order,
# `(planes + bias) + residual`, so that the fused result is the unfused one to the last bit.

# %%
#| export layers.conv
import copy
import math

from kuiper.errors import ShapeError
from kuiper.layers.activation import exp_approx, Hardsigmoid, Hardswish, ReLU, ReLU6, Sigmoid, SiLU

IDENTITY, RELU, RELU6, SILU, HARDSWISH, SIGMOID, HARDSIGMOID = range(7)
NO_RESIDUAL, RESIDUAL_BEFORE, RESIDUAL_AFTER = range(3)  # where the epilogue adds a residual input
NO_ROWS = np.zeros((0, 0, 0), np.float32)  # the residual rows of a convolution that has none
EPILOGUE_TILE = 512  # places of an output row per task: a pixel-major product's tile stays in the cache

# %%
#| export layers.conv
#| exercise: one prange over (n, tile of EPILOGUE_TILE places, k), k fastest; the tile's sums v = planes[n, k, i] + bias[k] in a buffer of their own, then per code an inner loop: identity, relu, relu6, silu, hardswish, sigmoid or hardsigmoid; the residual added before or after as `mode` says
@njit(parallel=True, cache=True)
def epilogue(planes, bias, activation, out, residual, mode):
    """out[n, k] = activation(planes[n, k] + bias[k]) for planes and out (N, K, L), float32; with
    `mode` RESIDUAL_BEFORE activation(planes + bias + residual), with RESIDUAL_AFTER
    activation(planes + bias) + residual, for residual (N, K, L) float32 (NO_RESIDUAL: not read)."""
    ### BEGIN SOLUTION
    n_batch, k_out, length = planes.shape
    tiles = -(-length // EPILOGUE_TILE)
    one, zero, six = np.float32(1.0), np.float32(0.0), np.float32(6.0)
    for task in prange(n_batch * tiles * k_out):
        n, k, lo = task // (tiles * k_out), task % k_out, task // k_out % tiles * EPILOGUE_TILE
        src, dst, b = planes[n, k, lo:lo + EPILOGUE_TILE], out[n, k, lo:lo + EPILOGUE_TILE], bias[k]
        size = len(src)
        v = np.empty(size, np.float32)  # the sums, contiguous and apart from out: the loops below vectorise
        if mode == RESIDUAL_BEFORE:
            rows = residual[n, k, lo:lo + EPILOGUE_TILE]
            for i in range(size):
                v[i] = src[i] + b + rows[i]
        else:
            for i in range(size):
                v[i] = src[i] + b
        if activation == IDENTITY:
            dst[:] = v
        elif activation == RELU:
            for i in range(size):
                dst[i] = max(v[i], zero)
        elif activation == RELU6:
            for i in range(size):
                dst[i] = min(max(v[i], zero), six)
        elif activation == SILU:
            for i in range(size):
                dst[i] = v[i] / (one + exp_approx(-v[i]))
        elif activation == HARDSWISH:
            for i in range(size):
                dst[i] = v[i] * min(max(v[i] / six + np.float32(0.5), zero), one)
        elif activation == SIGMOID:
            for i in range(size):
                dst[i] = one / (one + exp_approx(-v[i]))
        else:
            for i in range(size):
                dst[i] = min(max(v[i] / six + np.float32(0.5), zero), one)
        if mode == RESIDUAL_AFTER:
            rows = residual[n, k, lo:lo + EPILOGUE_TILE]
            for i in range(size):
                dst[i] += rows[i]
    ### END SOLUTION


# %%
with check("Exercise 6.6"):
    planes = rng.standard_normal((2, 3, 2 * EPILOGUE_TILE + 50), dtype=np.float32) * 4  # three tiles a row
    bias = np.float32([0.5, -1.0, 2.0])
    v = torch.from_numpy(planes + bias[:, None])
    want = {IDENTITY: v, RELU: F.relu(v), RELU6: F.relu6(v), SILU: F.silu(v), HARDSWISH: F.hardswish(v),
            SIGMOID: torch.sigmoid(v), HARDSIGMOID: F.hardsigmoid(v)}
    names = dict(enumerate(["identity", "relu", "relu6", "silu", "hardswish", "sigmoid", "hardsigmoid"]))
    for code, expected in want.items():
        strided = np.ascontiguousarray(planes.transpose(1, 0, 2)).transpose(1, 0, 2)  # same values
        for where, source, out in [("into a new array", planes, np.full_like(planes, np.nan)),
                                   ("from a strided view", strided, np.full_like(planes, np.nan))]:
            epilogue(source, bias, code, out, NO_ROWS, NO_RESIDUAL)
            error = np.abs(out - expected.numpy()).max()
            assert error < 1e-5, f"{names[code]}, {where}: expected PyTorch's values, differs by {error:.1e}"
    shortcut = rng.standard_normal(planes.shape, dtype=np.float32) * 4
    r = torch.from_numpy(shortcut)
    for mode, code, expected in [(RESIDUAL_BEFORE, RELU, F.relu(v + r)), (RESIDUAL_AFTER, RELU, F.relu(v) + r),
                                 (RESIDUAL_BEFORE, SILU, F.silu(v + r)), (RESIDUAL_AFTER, SILU, F.silu(v) + r),
                                 (RESIDUAL_BEFORE, IDENTITY, v + r)]:
        out = np.full_like(planes, np.nan)
        epilogue(planes, bias, code, out, shortcut, mode)
        error = np.abs(out - expected.numpy()).max()
        where = "before" if mode == RESIDUAL_BEFORE else "after"
        assert error < 1e-5, (f"{names[code]} with the residual added {where} it: expected PyTorch's values, "
                              f"differs by {error:.1e}")


# %%
#| export layers.conv
EPILOGUES = {ReLU: RELU, ReLU6: RELU6, SiLU: SILU, Hardswish: HARDSWISH, Sigmoid: SIGMOID, Hardsigmoid: HARDSIGMOID}
SUMS = ("add(@0,@1)", "add(@1,@0)")  # the pnnx.Expression of a residual addition


def residual_rows(layer: Layer, residual: Tensor | None, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The residual input of `layer`, a convolution whose output has `shape` (N, K, OH, OW), as the
    epilogue's rows: float32 (N, K, OH·OW), or NO_ROWS when it has none. ShapeError naming the layer
    when the layer's residual mode and the input disagree, or the input does not match the output
    (an unbatched (K, OH, OW) matches N = 1)."""
    if (residual is None) != (layer.residual == NO_RESIDUAL):
        raise ShapeError(f"{layer.op.where()}: expected {'a' if residual is None else 'no'} residual input, "
                         f"got {'none' if residual is None else residual.shape}")
    if residual is None:
        return NO_ROWS
    data = np.ascontiguousarray(residual.numpy(), dtype=np.float32)
    if data.shape[-3:] != shape[1:] or data.size != math.prod(shape):
        raise ShapeError(f"{layer.op.where()}: expected a residual input of the output's shape {shape}, "
                         f"got {data.shape}")
    return data.reshape(shape[0], shape[1], -1)  # (N, K, OH, OW) -> (N, K, OH·OW)

# %% [markdown]
# ## Exercise 6.7 — what a convolution absorbs
#
# `RuntimeGraph` (lesson 02) asks the layer of each operator whose output only one operator reads
# whether it can absorb that reader: `fuse(after)` returns a merged layer, or `None`. The graph
# then asks the merged layer about *its* reader, so a chain conv → add → ReLU becomes one step,
# and the addition's other operand (the shortcut) becomes the merged step's second input,
# `forward(x, residual)`. Write `absorb(conv, after)`, which `Conv2d.fuse` calls: it returns a
# copy of `conv` (`copy.copy`; the unfused layer must stay as it was) with one more thing in its
# epilogue:
#
# * an activation of `EPILOGUES`, while the epilogue has none (`activation == IDENTITY`);
# * a residual sum (a `pnnx.Expression` whose `expr` is one of `SUMS`), while it has none
#   (`residual == NO_RESIDUAL`): added after the activation if one is fused already, before it
#   otherwise;
# * anything else: `None`.
#
# The graph checks the rest: that the intermediate result has no other reader (a tensor also read
# elsewhere must still be made) and that the shortcut has the shape of the convolution's output.

# %%
#| export layers.conv
#| exercise: a copy of conv with an EPILOGUES activation (none fused yet) or a residual sum (none yet: after a fused activation, else before) in its epilogue; None for anything else
def absorb(conv: Conv2d, after: Layer) -> Conv2d | None:
    """`conv` with `after` in its epilogue, if the epilogue can do it (a copy: the unfused layer stays
    as it was), else None."""
    ### BEGIN SOLUTION
    fused = copy.copy(conv)
    if type(after) in EPILOGUES and conv.activation == IDENTITY:
        fused.activation = EPILOGUES[type(after)]
    elif after.op.type == "pnnx.Expression" and after.op.params.get("expr") in SUMS and conv.residual == NO_RESIDUAL:
        fused.residual = RESIDUAL_BEFORE if conv.activation == IDENTITY else RESIDUAL_AFTER
    else:
        return None
    return fused
    ### END SOLUTION


@patch_to(Conv2d)
def fuse(self, after: Layer) -> Conv2d | None:
    """This convolution with `after` in its epilogue (`absorb`), or None."""
    return absorb(self, after)


# %%
with check("Exercise 6.7"):
    conv = Conv2d(next(op for op in graph.model.operators if op.type == "nn.Conv2d"))  # MobileNetV2's first
    relu, silu = (kind(Operator(kind.__name__, "act", ["1"], ["2"], {}, {}, line=1)) for kind in (ReLU, SiLU))
    add, add_reversed, mul = (Expression(Operator("pnnx.Expression", "sum", ["1", "9"], ["2"], {"expr": text}, {},
                                                  line=1)) for text in ("add(@0,@1)", "add(@1,@0)", "mul(@0,@1)"))
    state = lambda layer: None if layer is None else (layer.activation, layer.residual)
    cases = {"conv.fuse(SiLU)": (conv.fuse(silu), (SILU, NO_RESIDUAL)),
             "conv.fuse(add)": (conv.fuse(add), (IDENTITY, RESIDUAL_BEFORE)),
             "conv.fuse(add(@1,@0))": (conv.fuse(add_reversed), (IDENTITY, RESIDUAL_BEFORE)),
             "conv.fuse(add).fuse(ReLU)": (conv.fuse(add).fuse(relu), (RELU, RESIDUAL_BEFORE)),
             "conv.fuse(SiLU).fuse(add)": (conv.fuse(silu).fuse(add), (SILU, RESIDUAL_AFTER)),
             "conv.fuse(mul)": (conv.fuse(mul), None),
             "conv.fuse(SiLU).fuse(ReLU)": (conv.fuse(silu).fuse(relu), None),
             "conv.fuse(add).fuse(add)": (conv.fuse(add).fuse(add), None),
             "conv.fuse(SiLU).fuse(add).fuse(add)": (conv.fuse(silu).fuse(add).fuse(add), None)}
    for what, (got, want) in cases.items():
        assert state(got) == want, f"{what}: expected (activation, residual) {want}, got {state(got)}"
    assert state(conv) == (IDENTITY, NO_RESIDUAL), f"the unfused convolution: expected it unchanged, got {state(conv)}"

# %% [markdown]
# A fused convolution must give what the convolution and then the activation give, for every
# activation the epilogue knows and on every path of `forward` (here: 3×3, 1×1, depthwise, and a
# small map):

# %%
convs = [op for op in graph.model.operators if op.type == "nn.Conv2d"]  # MobileNetV2's, loaded above
picked = {"3×3 stride 2": convs[0], "1×1": next(op for op in convs if tuple(op.params["kernel_size"]) == (1, 1)),
          "depthwise": next(op for op in convs if op.params["groups"] > 1)}
for (what, op), size in itertools.product(picked.items(), (12, 5)):  # 5: the small-map path
    conv = Conv2d(op)
    x = Tensor(rng.standard_normal((2, op.params["in_channels"], size, size), dtype=np.float32) * 3)
    for kind in EPILOGUES:
        activation = kind(Operator(kind.__name__, "act", ["1"], ["2"], {}, {}, line=1))
        want = activation(conv(x)).numpy()
        error = np.abs(conv.fuse(activation)(x).numpy() - want).max()
        assert error < 1e-5, f"{kind.__name__} fused into the {what} convolution on {size}×{size}: differs by {error:.1e}"
print("fused == convolution then activation, for", ", ".join(kind.__name__ for kind in EPILOGUES))

# %% [markdown]
# And with the shortcut: the merged layer takes it as its second input, and gives the unfused
# result, the residual before the activation (ResNet) or after it (YOLO). With ReLU the sums are the
# same float32 operations in the same order, so the results are identical to the last bit:

# %%
add = Expression(Operator("pnnx.Expression", "expr", ["1", "9"], ["2"], {"expr": "add(@0,@1)"}, {}, line=1))
for (what, op), size in itertools.product(picked.items(), (12, 5)):
    conv = Conv2d(op)
    x = Tensor(rng.standard_normal((2, op.params["in_channels"], size, size), dtype=np.float32) * 3)
    shortcut = Tensor(rng.standard_normal(conv(x).shape, dtype=np.float32))
    for kind in (ReLU, SiLU):
        activation = kind(Operator(kind.__name__, "act", ["1"], ["2"], {}, {}, line=1))
        for fused, want in [(conv.fuse(add).fuse(activation), activation(add(conv(x), shortcut))),
                            (conv.fuse(activation).fuse(add), add(activation(conv(x)), shortcut))]:
            error = np.abs(fused(x, shortcut).numpy() - want.numpy()).max()
            assert error <= (0 if kind is ReLU else 1e-5), f"{kind.__name__}, {what}: differs by {error:.1e}"
print("fused == convolution, addition and activation (ReLU: bit for bit)")

# %% [markdown]
# ## A faster depthwise kernel
#
# MobileNet, ShuffleNet and ConvNeXt spend much of their time in depthwise convolutions, and
# lesson 04's kernel is slow on them: 5 to 30 × PyTorch's time at batch 8. Its innermost loop runs
# along one output row, once per tap. On the 7 × 7 and 14 × 14 maps of a network's last stages that
# loop has 3 to 14 iterations: too short for 8-wide vector instructions, each with its own bounds
# computation, and every tap reads and writes the whole row again. The cure is to make every inner
# loop long and straight:
#
# 1. **Padding as real zeros.** Copy the input into a zeroed buffer, rows one after another with
#    zero columns between them, images one after another with zero rows between them. Then tap
#    $(i, j)$ of *every* output reads the buffer at the output's own flat position plus one fixed
#    offset, and one tap is one loop over all the outputs of a group of images:
#    `acc[f] += w[i, j] * phases[f + offset[i, j]]`, thousands of iterations, no bounds test. The gaps
#    are shared (the zeros right of a row are the zeros left of the next) and only as wide as the
#    window reaches; the outputs that fall in a gap are computed and thrown away.
# 2. **Strides as phase planes.** With stride $s$, split the padded input into $s_h \times s_w$
#    *phase planes*, plane $(a, b)$ holding the pixels whose row is $a$ and column $b$ modulo the stride
#    (space-to-depth). Output $(y, x)$'s tap $(i, j)$ reads padded pixel $(s_h y + i d_h, s_w x + j d_w)$:
#    it lies in plane $(i d_h \bmod s_h, j d_w \bmod s_w)$ at $(y + \lfloor i d_h / s_h \rfloor,
#    x + \lfloor j d_w / s_w \rfloor)$, again a fixed offset. A strided convolution becomes $s_h s_w$
#    unstrided ones on smaller planes.
# 3. **Four taps per pass**, over a block of the accumulator small enough to stay in the L1 cache:
#    `acc[f] += w0 * s0[f] + w1 * s1[f] + w2 * s2[f] + w3 * s3[f]` reads and writes `acc` once for
#    four multiply-adds.
#
# `phase_span` sizes a plane: along each axis an image needs room for every phase's share of the
# input, and for the reads of its last output to end in zeros before the next row's (or image's)
# first input. `fill_phases` copies one channel of a group of images into zeroed planes (only the
# input's places: the gaps stay zero), `add_taps` is the hot loop. The same method in
# C++ engines is hand-vectorised per kernel size (ncnn's `convdw3x3s1`, `convdw3x3s2`, ...); here
# one loop serves every kernel size, stride and dilation, and LLVM vectorises it. What it costs: on
# a 7 × 7 map with a 7 × 7 window the planes are 10 × 10, so half the multiply-adds land in gaps;
# PyTorch's oneDNN instead vectorises across 16 channels at a time and wastes none, and stays ahead there.

# %%
#| export layers.conv
VECTOR = 32           # the flat loops run in whole blocks of this many floats
TASK_FLOATS = 16384   # about what one task's images may fill of a phase plane (64 KiB)
BLOCK = 2048          # floats of the accumulator that stay in the L1 cache while every tap adds to them


@njit(cache=True)
def phase_span(size: int, pad: int, stride: int, out: int, reach: int) -> int:
    """Rows (or columns) of one image in a phase plane: room for every phase's share of the padded
    input, and for the reads of the last of `out` outputs, which go `reach` places further, to end in
    zeros before the next row's (or image's) first input."""
    span = 0
    for phase in range(stride):
        first = max(0, -((phase - pad) // stride))         # the first place that holds an input
        end = (size + pad - phase + stride - 1) // stride  # one past the last
        span = max(span, end, out + reach - first)
    return span


@njit(cache=True)
def fill_phases(x, first, count, c, phases, plane, image, cols, sh, sw, ph, pw):
    """Copy channel c of the images first .. first+count-1 of x (N, C, H, W) into the phase planes:
    padded pixel (py, px) of image n goes to plane (py % sh, px % sw), flat place
    n·image + (py // sh)·cols + px // sw. The other places are left as they are (zeros)."""
    height, width = x.shape[2], x.shape[3]
    for n in range(count):
        for iy in range(height):
            a, r = (iy + ph) % sh, (iy + ph) // sh
            src, base = x[first + n, c, iy], a * sw * plane + n * image + r * cols
            if sw == 2:  # even and odd columns apart in one loop, which LLVM vectorises
                even = phases[base + pw % 2 * plane + pw // 2:]  # input column 0 is in phase pw % 2
                odd = phases[base + (1 - pw % 2) * plane + (pw + 1) // 2:]
                for q in range(width // 2):
                    even[q], odd[q] = src[2 * q], src[2 * q + 1]
                if width % 2:
                    even[width // 2] = src[width - 1]
                continue
            for b in range(sw):
                ix0 = (b - pw) % sw  # the first input column in phase b
                dst = phases[base + b * plane + (ix0 + pw) // sw:]
                if sw == 1:  # a contiguous copy, vectorised
                    for q in range(width - ix0):
                        dst[q] = src[ix0 + q]
                else:
                    for q in range((width - ix0 + sw - 1) // sw):
                        dst[q] = src[ix0 + q * sw]


@njit(cache=True, fastmath=True)
def add_taps(acc, phases, weights, offsets):
    """acc[f] = Σ_t weights[t] · phases[offsets[t] + f] for every f of acc (float32, 1-D): a block of
    acc at a time, four taps per pass over it, then the last taps one by one."""
    taps = weights.size
    for f0 in range(0, acc.size, BLOCK):
        block = acc[f0:f0 + BLOCK]
        block[:] = 0.0
        for t in range(0, taps - 3, 4):
            w0, w1, w2, w3 = weights[t], weights[t + 1], weights[t + 2], weights[t + 3]
            s0, s1 = phases[offsets[t] + f0:], phases[offsets[t + 1] + f0:]
            s2, s3 = phases[offsets[t + 2] + f0:], phases[offsets[t + 3] + f0:]
            for f in range(block.size):
                block[f] += w0 * s0[f] + w1 * s1[f] + w2 * s2[f] + w3 * s3[f]
        for t in range(taps - taps % 4, taps):
            w0, s0 = weights[t], phases[offsets[t] + f0:]
            for f in range(block.size):
                block[f] += w0 * s0[f]

# %% [markdown]
# ## Exercise 6.8 — the flat depthwise kernel
#
# Write `depthwise_conv_flat`, with the arguments and result of lesson 04's `depthwise_conv`.
# Given above: the plane sizes `rows`, `cols` (from `phase_span`), `image = rows · cols`, the
# `group` of images one task takes (as many as fit in `TASK_FLOATS`), the plane length `plane`
# (the group, room for the reads past its last image, and a vector block), and `weights`, one row of
# $k_h k_w$ taps per output channel. You write:
#
# * `offsets[i·kw + j]`: where tap $(i, j)$ reads, relative to the output it adds to: its plane
#   ($(i d_h \bmod s_h) \cdot s_w + j d_w \bmod s_w$) times `plane`, plus $\lfloor i d_h / s_h \rfloor$ rows
#   of `cols`, plus $\lfloor j d_w / s_w \rfloor$;
# * a `prange` over the tasks (output channel $k$, group of images); each task zeroes its own
#   `phases` ($s_h s_w$ planes of `plane` floats), fills them from input channel $k \cdot C / K$
#   (`fill_phases`), makes an `acc` of `size` floats = (images in this group − 1) · `image` +
#   (OH − 1) · `cols` + OW, rounded up to a multiple of `VECTOR`, adds the taps into it
#   (`add_taps`), and copies row $y$ of image $n$ out of `acc` from place $n \cdot$ `image` + $y \cdot$ `cols`.

# %%
#| export layers.conv
#| exercise: tap offsets; prange over (channel, image group) tasks: zeroed phases, fill_phases, acc of `size` floats, add_taps, copy the rows out
@njit(parallel=True, cache=True)
def depthwise_conv_flat(x, w, out, sh, sw, ph, pw, dh, dw):
    """out[n, k] = w[k] ⋆ x[n, k // m], as `depthwise_conv` (lesson 04) computes it, for x (N, C, H, W),
    w (K, 1, kh, kw), out (N, K, OH, OW), all float32 and C-contiguous: every image of a group laid
    flat in zero-padded phase planes, so that each tap is one long vectorised loop (see above)."""
    n_batch, channels, height, width = x.shape
    _, k_out, oh, ow = out.shape
    kh, kw = w.shape[2], w.shape[3]
    if n_batch == 0 or oh <= 0 or ow <= 0:
        return
    reach_r, reach_c = (kh - 1) * dh // sh, (kw - 1) * dw // sw  # the window's reach in a phase plane
    rows, cols = phase_span(height, ph, sh, oh, reach_r), phase_span(width, pw, sw, ow, reach_c)
    image = rows * cols
    group = max(1, min(n_batch, TASK_FLOATS // image))
    groups = -(-n_batch // group)
    plane = (group - 1) * image + max(image, (oh - 1 + reach_r) * cols + ow + reach_c) + VECTOR
    weights = w.reshape(k_out, kh * kw)
    ### BEGIN SOLUTION
    offsets = np.empty(kh * kw, np.int64)
    for i in range(kh):
        for j in range(kw):
            offsets[i * kw + j] = ((i * dh % sh) * sw + j * dw % sw) * plane + (i * dh // sh) * cols + j * dw // sw
    for task in prange(k_out * groups):
        k, first = task // groups, task % groups * group
        count = min(group, n_batch - first)
        phases = np.zeros(sh * sw * plane, np.float32)
        fill_phases(x, first, count, k * channels // k_out, phases, plane, image, cols, sh, sw, ph, pw)
        acc = np.empty(-(-((count - 1) * image + (oh - 1) * cols + ow) // VECTOR) * VECTOR, np.float32)
        add_taps(acc, phases, weights[k], offsets)
        for n in range(count):
            for y in range(oh):
                row, f = out[first + n, k, y], n * image + y * cols
                for x_ in range(ow):
                    row[x_] = acc[f + x_]
    ### END SOLUTION


# %%
with check("Exercise 6.8"):
    for shape, k_out, (kh, kw), (sh, sw), (ph, pw), (dh, dw) in [
            ((2, 4, 7, 7), 4, (7, 7), (1, 1), (3, 3), (1, 1)), ((1, 6, 14, 14), 6, (5, 5), (2, 2), (2, 2), (1, 1)),
            ((3, 3, 10, 11), 3, (3, 3), (2, 2), (1, 1), (1, 1)), ((1, 2, 9, 8), 4, (3, 5), (1, 2), (2, 1), (2, 1)),
            ((2, 3, 12, 13), 3, (3, 3), (3, 2), (0, 3), (2, 2)), ((3, 2, 80, 80), 2, (3, 3), (1, 1), (1, 1), (1, 1))]:
        x = rng.standard_normal(shape, dtype=np.float32)
        w = rng.standard_normal((k_out, 1, kh, kw), dtype=np.float32)
        want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, (sh, sw), (ph, pw), (dh, dw),
                        groups=shape[1]).numpy()
        got = np.full(want.shape, np.nan, np.float32)
        depthwise_conv_flat(x, w, got, sh, sw, ph, pw, dh, dw)
        where = f"x {shape}, {k_out} outputs, kernel {(kh, kw)}, stride {(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)}"
        error = np.abs(got - want).max() / np.abs(want).max()
        assert error <= 1e-5, f"{where}: expected F.conv2d's output, differs by {error:.1e} of its scale"

# %% [markdown]
# The layer runs whatever kernel `Conv2d.depthwise_kernel` holds: from here on, the flat one
# (`kuiper/layers/conv.py` keeps lesson 04's as the plain statement of the same sum), and your
# epilogue still adds the bias and the fused activation after it. Both kernels against
# PyTorch on ConvNeXt-Tiny's and MobileNetV2's shapes at batch 8, each pair timed alternately in one
# process (`same_run_ratio`: the machine's load hits both alike):

# %%
#| export layers.conv
Conv2d.depthwise_kernel = staticmethod(depthwise_conv_flat)

# %%
# NBVAL_IGNORE_OUTPUT
from kuiper.bench import same_run_ratio
from kuiper.layers.conv import depthwise_conv

for c, size, k, s in [(96, 56, 7, 1), (768, 7, 7, 1), (144, 56, 3, 2), (960, 7, 3, 1)]:
    x = rng.standard_normal((8, c, size, size), dtype=np.float32)
    w = rng.standard_normal((c, 1, k, k), dtype=np.float32)
    out = np.empty((8, c, (size - 1) // s + 1, (size - 1) // s + 1), np.float32)
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    ratios = [same_run_ratio(lambda: kernel(x, w, out, s, s, k // 2, k // 2, 1, 1),
                             lambda: F.conv2d(tx, tw, None, s, k // 2, 1, c)) for kernel in (depthwise_conv, depthwise_conv_flat)]
    print(f"{c:4} × {size:3}², {k}×{k} stride {s}: lesson 04's {ratios[0]:5.1f} × torch, flat {ratios[1]:4.1f} × torch")

# %% [markdown]
# ## Pixel-major columns
#
# Lesson 04's `Conv2d.gemm` multiplies $W \cdot \text{cols}$ in the layout that is easiest to
# fill. The same numbers laid out as $(n L, K_h K_w C)$, a row per output pixel, make the product
# $(n L, K) = \text{cols} \cdot W^T$ that OpenBLAS runs fastest: alone on one core, 46 GFLOP/s
# against 20 for $W \cdot \text{cols}$ with K = 16 outputs (YOLO's and the U-Net's first layers),
# about 105 against 55 for a 64-channel 3×3. `im2col_pixels` builds them from channels-last images
# (`channels_last`, one cheap transposition): a window row inside the image is then one run of
# $K_w C$ floats, copied as a slice. `conv_columns` picks the columns for a layer: none for a
# 1×1 convolution (each image, read transposed, is its own), `im2col_images` for groups, and
# `Conv2d.gemm` multiplies by $W$'s rows reordered to match at load.

# %%
#| export layers.conv
@njit(parallel=True, cache=True)
def channels_last(x, out):
    """out (N, H, W, C) = x (N, C, H, W) transposed, float32: a task per image row, written in order."""
    n_batch, channels, height, width = x.shape
    for task in prange(n_batch * height):
        n, h = task // height, task % height
        src, dst = x[n, :, h], out[n, h]
        for w in range(width):
            for c in range(channels):
                dst[w, c] = src[c, w]


@njit(parallel=True, cache=True)
def im2col_pixels(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """Unfold channels-last images x (N, H, W, C) into cols (N, oh*ow, kh*kw*C): a row per output
    pixel, its window tap by tap (i, j), the C channels of a tap side by side; zeros outside the
    image. A window row inside the image (dilation 1) is one run of kw*C floats of x."""
    n_batch, height, width, channels = x.shape
    flat = x.reshape(n_batch, height, width * channels)
    run = kw * channels
    for task in prange(n_batch * oh):
        n, y = task // oh, task % oh
        for x_ in range(ow):
            row, ix0 = cols[n, y * ow + x_], x_ * sw - pw
            inside = dw == 1 and ix0 >= 0 and ix0 + kw <= width
            for i in range(kh):
                iy, f = y * sh - ph + i * dh, i * run
                if iy < 0 or iy >= height:
                    row[f:f + run] = 0.0
                elif inside:
                    row[f:f + run] = flat[n, iy, ix0 * channels:ix0 * channels + run]
                else:
                    for j in range(kw):
                        ix, t = ix0 + j * dw, f + j * channels
                        if 0 <= ix < width:
                            row[t:t + channels] = flat[n, iy, ix * channels:(ix + 1) * channels]
                        else:
                            row[t:t + channels] = 0.0



def conv_columns(conv, images: np.ndarray, oh: int, ow: int) -> list[np.ndarray]:
    """Pixel-major columns of images (n, C, H, W) for the Conv2d `conv`: float32 arrays (g, m, C/g·kh·kw) whose m rows
    are the next m output pixels, in the order of `conv.gemm_weight`'s columns."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel, conv.stride, conv.padding, conv.dilation
    n, size, rows = len(images), oh * ow, conv.c_in * kh * kw
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):  # 1×1: each image (C, L) is its own columns
        return [image.reshape(conv.groups, -1, size).transpose(0, 2, 1) for image in images]
    if conv.groups == 1:
        pixels = scratch((n, *images.shape[2:], conv.c_in), "channels last")
        channels_last(images, pixels)
        cols = scratch((n, size, rows))
        im2col_pixels(pixels, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
        return [cols.reshape(1, n * size, rows)]
    cols = scratch((rows, n, size))
    im2col_images(images, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    return [cols.reshape(conv.groups, -1, n * size).transpose(0, 2, 1)]  # (g, n·L, C/g·kh·kw)


# %% [markdown]
# ## Winograd: the same convolution with fewer multiplies
#
# Fusing saved passes over memory; most of ResNet's time is still the multiplies of its 3×3,
# stride-1 convolutions. Winograd's *minimal filtering* algorithm does them with fewer (A. Lavin
# and S. Gray, *Fast Algorithms for Convolutional Neural Networks*, CVPR 2016). In one dimension,
# two outputs of a 3-tap filter $g$ over four inputs $d$, $y_0 = d_0 g_0 + d_1 g_1 + d_2 g_2$ and
# $y_1 = d_1 g_0 + d_2 g_1 + d_3 g_2$, take 6 multiplies; these take 4:
#
# $$m_1 = (d_0 - d_2)\,g_0,\quad m_2 = (d_1 + d_2)\tfrac{g_0 + g_1 + g_2}{2},\quad
#   m_3 = (d_2 - d_1)\tfrac{g_0 - g_1 + g_2}{2},\quad m_4 = (d_1 - d_3)\,g_2$$
# $$y_0 = m_1 + m_2 + m_3,\qquad y_1 = m_2 - m_3 - m_4.$$
#
# The sums of $g$ are the weights' business: made once at load. As matrices,
# $y = A^T[(G g) \odot (B^T d)]$, and nested for a 2×2 tile of outputs from a 4×4 patch of input,
# **F(2×2, 3×3)**: $Y = A^T[(G g G^T) \odot (B^T d B)]A$, 16 multiplies instead of 36, 2.25× fewer:
#
# $$B^T = \begin{pmatrix}1&0&-1&0\\0&1&1&0\\0&-1&1&0\\0&1&0&-1\end{pmatrix},\quad
#   G = \begin{pmatrix}1&0&0\\ \frac12&\frac12&\frac12\\ \frac12&-\frac12&\frac12\\0&0&1\end{pmatrix},\quad
#   A^T = \begin{pmatrix}1&1&1&0\\0&1&-1&-1\end{pmatrix}.$$
#
# A convolution sums over input channels, and the sum passes through $A^T \cdot A$: for each of
# the 16 positions $\xi$ of the 4×4 product, $M_\xi = U_\xi V_\xi$ is a matrix multiply,
# $U_\xi$ = the weights' transforms $(K, C)$, $V_\xi$ = the input's $(C, \text{tiles})$. So a
# layer is: the input transform (Exercise 6.9), 16 matrix multiplies (BLAS), the output transform
# (Exercise 6.10), then the epilogue. $B^T$ and $A^T$ hold only ±1, and $G$ halves: F(2×2, 3×3) is
# as exact in float32 as im2col. (Larger tiles save more, F(4×4, 3×3) 4×, but their fractions
# like 1/6 cost digits.) The price is 16 matrix multiplies where im2col makes one, and each wakes
# the BLAS threads, so `winograd_pays` keeps tiny products on the im2col road. Measured on one
# core, Winograd already wins from about $2^{20}$ multiply-adds per product: ResNet-18's and the
# U-Net's batch-1 3×3 convolutions took 0.77× and 0.60× of their im2col time (on a busy machine a
# wake-up can wait milliseconds for a core, which favours fewer, larger calls).

# %%
d, g = rng.standard_normal(4), rng.standard_normal(3)
m = [(d[0] - d[2]) * g[0], (d[1] + d[2]) * (g[0] + g[1] + g[2]) / 2, (d[2] - d[1]) * (g[0] - g[1] + g[2]) / 2,
     (d[1] - d[3]) * g[2]]
print("4 multiplies:", np.round([m[0] + m[1] + m[2], m[1] - m[2] - m[3]], 6),
      " 6 multiplies:", np.round(np.correlate(d, g, "valid"), 6))
WINOGRAD_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])  # for the checks below
WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])

# %%
#| export layers.conv
WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])  # F(2×2, 3×3), Lavin & Gray
WINOGRAD_MIN_CHANNELS = 8  # below it, one im2col matrix multiply beats 16 thin ones (measured: a 3-channel stem)
WINOGRAD_MIN_WORK = 2**20  # multiply-adds per product below which 16 BLAS calls cost more than they save


def winograd_fits(conv) -> bool:
    """Whether the Conv2d `conv` takes the Winograd road: 3×3, stride 1, dilation 1, one group and at
    least WINOGRAD_MIN_CHANNELS input channels (any zero padding)."""
    return ((conv.kernel, conv.stride, conv.dilation, conv.groups) == ((3, 3), (1, 1), (1, 1), 1)
            and conv.c_in >= WINOGRAD_MIN_CHANNELS)


def winograd_pays(u: np.ndarray, outputs: int) -> bool:
    """Whether Winograd beats im2col for weights u (16, K, C) and `outputs` output pixels (N·OH·OW):
    each of its 16 matrix multiplies, about K·C·outputs/4 multiply-adds, must reach WINOGRAD_MIN_WORK."""
    return u.shape[1] * u.shape[2] * outputs // 4 >= WINOGRAD_MIN_WORK


def winograd_weights(weight: np.ndarray) -> np.ndarray:
    """U (16, K, C) float32, U[4i + j, k, c] = (G w[k, c] Gᵀ)[i, j], of 3×3 weights (K, C, 3, 3);
    computed in float64, once at load."""
    u = np.einsum("ai,kcij,bj->abkc", WINOGRAD_G, weight.astype(np.float64), WINOGRAD_G)  # (4, 4, K, C)
    return np.ascontiguousarray(u.reshape(16, *weight.shape[:2]), dtype=np.float32)

# %% [markdown]
# ## Exercise 6.9 — the input transform
#
# Cut the input into 4×4 patches, one per 2×2 output tile: tile $(t_y, t_x)$ of image $n$ reads
# the patch whose top-left corner is $(2t_y - p_h,\; 2t_x - p_w)$ (zeros outside the image; the
# patches of neighbours overlap by two). Write $B^T d B$ of each patch into `v[4i + j, c, t]`,
# tile $t = (n \cdot t_h + t_y) \cdot t_w + t_x$: row $\xi$ of `v` is then the matrix $V_\xi$, $C$ rows of
# tiles. $B^T d$ combines the patch's rows, $r_0 = d_0 - d_2$, $r_1 = d_1 + d_2$, $r_2 = d_2 - d_1$,
# $r_3 = d_1 - d_3$, and $\cdot B$ combines columns the same way. Work a row of tiles at a time,
# in parallel over (image, channel, tile row): copy its four input rows, zero-padded, into a small
# array `d` of width $2 t_w + 2$, combine them into $r = B^T d$ once for the whole row, then read
# each tile's four columns from `r`.

# %%
#| export layers.conv
#| exercise: per (n, c, ty) in parallel: the 4 zero-padded input rows from 2ty - ph, r = Bᵀd, then per tile the columns 2tx..2tx+3 of r times B into v[4i + j, c, t]
@njit(parallel=True, cache=True)
def winograd_input(x, v, ph, pw, th, tw):
    """v[4i + j, c, t] = (Bᵀ d B)[i, j] for the 4×4 patch d of x[n, c] at (2ty - ph, 2tx - pw), zero
    outside the image, tile t = (n·th + ty)·tw + tx: x (N, C, H, W) and v (16, C, N·th·tw) float32."""
    n_batch, channels, height, width = x.shape
    ### BEGIN SOLUTION
    span = 2 * tw + 2  # the input columns a row of tiles reads, from -pw on
    lo, hi = min(span, pw), min(span, width + pw)  # those inside the image
    for task in prange(n_batch * channels * th):
        n, c, ty = task // (channels * th), task // th % channels, task % th
        d = np.zeros((4, span), np.float32)
        for i in range(4):
            iy = 2 * ty - ph + i
            if 0 <= iy < height and lo < hi:
                d[i, lo:hi] = x[n, c, iy, lo - pw:hi - pw]
        r = np.empty((4, span), np.float32)  # Bᵀ d
        for j in range(span):
            r[0, j], r[1, j], r[2, j], r[3, j] = d[0, j] - d[2, j], d[1, j] + d[2, j], d[2, j] - d[1, j], d[1, j] - d[3, j]
        t0 = (n * th + ty) * tw
        for i in range(4):  # (Bᵀ d) B, tile by tile
            v0, v1, v2, v3 = v[4 * i, c, t0:], v[4 * i + 1, c, t0:], v[4 * i + 2, c, t0:], v[4 * i + 3, c, t0:]
            for tx in range(tw):
                a, b, e, f = r[i, 2 * tx], r[i, 2 * tx + 1], r[i, 2 * tx + 2], r[i, 2 * tx + 3]
                v0[tx], v1[tx], v2[tx], v3[tx] = a - e, b + e, e - b, b - f
    ### END SOLUTION


# %%
def input_patches(x, ph, pw, th, tw):
    """The 4×4 patch of every tile, (N, C, th, tw, 4, 4), from a zero-padded copy of x."""
    n, c, h, w = x.shape
    padded = np.zeros((n, c, max(h + ph, 2 * th + 2), max(w + pw, 2 * tw + 2)), np.float64)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    return np.lib.stride_tricks.sliding_window_view(padded, (4, 4), axis=(2, 3))[:, :, :2 * th:2, :2 * tw:2]


with check("Exercise 6.9"):
    for shape, (ph, pw) in [((2, 3, 7, 9), (1, 1)), ((1, 2, 6, 5), (0, 2)), ((2, 1, 4, 4), (2, 0)), ((1, 2, 1, 1), (1, 1))]:
        x = rng.standard_normal(shape, dtype=np.float32)
        th, tw = -(-(shape[2] + 2 * ph - 2) // 2), -(-(shape[3] + 2 * pw - 2) // 2)
        want = np.einsum("ip,nctspq,jq->ijcnts", WINOGRAD_BT, input_patches(x, ph, pw, th, tw), WINOGRAD_BT)
        want = want.reshape(16, shape[1], -1)  # (16, C, N·th·tw)
        got = np.full(want.shape, np.nan, np.float32)
        winograd_input(x, got, ph, pw, th, tw)
        bad = np.argwhere(~np.isclose(got, want, atol=1e-5))
        assert not bad.size, (f"x {shape}, padding {(ph, pw)}: expected v{tuple(map(int, bad[0]))} = "
                              f"{want[tuple(bad[0])]:.4f}, got {got[tuple(bad[0])]:.4f}; {len(bad)} of {got.size} differ")

# %% [markdown]
# ## Exercise 6.10 — the output transform
#
# Back from the 16 products to pixels: for tile $t$ and output channel $k$, with
# $M_{pq}$ = `m[4p + q, k, t]`, the tile's 2×2 outputs are $A^T M A$: first the rows,
# $s_0 = M_0 + M_1 + M_2$ and $s_1 = M_1 - M_2 - M_3$ (each a row of four), then the same on
# the columns of $s$. Write them to `out[n, k, 2t_y + i, 2t_x + j]`, in parallel over (image,
# channel, tile row). An odd output height or width has half tiles at its end: write only the
# outputs that exist (numba does not check bounds: a write past the end corrupts memory).

# %%
#| export layers.conv
#| exercise: per (n, k, ty) in parallel: s = Aᵀ M for the row's tiles (M[p, q] = m[4p + q, k, t]), then out[n, k, 2ty + i, 2tx + j] = (s A)[i, j], only inside an odd output
@njit(parallel=True, cache=True)
def winograd_output(m, out, th, tw):
    """out[n, k, 2ty + i, 2tx + j] = (Aᵀ M A)[i, j], M[p, q] = m[4p + q, k, t], tile t = (n·th + ty)·tw + tx:
    m (16, K, N·th·tw) and out (N, K, OH, OW) float32, OH <= 2·th and OW <= 2·tw."""
    n_batch, k_out, oh, ow = out.shape
    ### BEGIN SOLUTION
    for task in prange(n_batch * k_out * th):
        n, k, ty = task // (k_out * th), task // th % k_out, task % th
        t0 = (n * th + ty) * tw
        s = np.empty((2, 4, tw), np.float32)  # Aᵀ M of each tile of the row: s[i, q, tx]
        for q in range(4):
            m0, m1, m2, m3 = m[q, k, t0:], m[4 + q, k, t0:], m[8 + q, k, t0:], m[12 + q, k, t0:]
            for tx in range(tw):
                s[0, q, tx] = m0[tx] + m1[tx] + m2[tx]
                s[1, q, tx] = m1[tx] - m2[tx] - m3[tx]
        for i in range(min(2, oh - 2 * ty)):
            row = out[n, k, 2 * ty + i]
            for tx in range(ow // 2):
                row[2 * tx] = s[i, 0, tx] + s[i, 1, tx] + s[i, 2, tx]
                row[2 * tx + 1] = s[i, 1, tx] - s[i, 2, tx] - s[i, 3, tx]
            if ow % 2:
                row[ow - 1] = s[i, 0, tw - 1] + s[i, 1, tw - 1] + s[i, 2, tw - 1]
    ### END SOLUTION


# %%
with check("Exercise 6.10"):
    for n, k_out, oh, ow in [(2, 3, 6, 4), (1, 2, 5, 7), (2, 1, 3, 3), (1, 1, 1, 1)]:
        th, tw = -(-oh // 2), -(-ow // 2)
        products = rng.standard_normal((16, k_out, n * th * tw), dtype=np.float32)
        tiles = products.reshape(4, 4, k_out, n, th, tw).astype(np.float64)
        want = np.einsum("ip,pqknts,jq->nktisj", WINOGRAD_AT, tiles, WINOGRAD_AT).reshape(n, k_out, 2 * th, 2 * tw)
        want = want[:, :, :oh, :ow]
        got = np.full(want.shape, np.nan, np.float32)
        winograd_output(products, got, th, tw)
        bad = np.argwhere(~np.isclose(got, want, atol=1e-5))
        assert not bad.size, (f"{n} images, {k_out} channels, output {oh}×{ow}: expected out{tuple(map(int, bad[0]))} = "
                              f"{want[tuple(bad[0])]:.4f}, got {got[tuple(bad[0])]:.4f}; {len(bad)} of {got.size} differ")

# %%
#| export layers.conv
def winograd_conv(x: np.ndarray, u: np.ndarray, ph: int, pw: int, out: np.ndarray) -> None:
    """out (N, K, OH, OW) float32 = the 3×3, stride-1 convolution, without bias, of x (N, C, H, W)
    float32 zero-padded by (ph, pw), whose Winograd weights are u (16, K, C) (`winograd_weights`):
    for each `images_per_gemm` images, the input transform, 16 matrix multiplies, the output transform."""
    n_batch, channels = x.shape[:2]
    k_out, oh, ow = out.shape[1:]
    th, tw = -(-oh // 2), -(-ow // 2)  # 2×2 output tiles down and across
    step = images_per_gemm(4 * 16 * (channels + k_out) * th * tw)
    for start in range(0, n_batch, step):
        images = x[start:start + step]
        tiles = len(images) * th * tw
        v = scratch((16, channels, tiles), "winograd input")
        winograd_input(images, v, ph, pw, th, tw)
        m = np.matmul(u, v, out=scratch((16, k_out, tiles), "winograd product"))  # 16 × (K, C) @ (C, tiles)
        winograd_output(m, out[start:start + step], th, tw)

# %%
# against PyTorch: random weights, odd sizes, paddings; every 3×3 stride-1 layer of ResNet-18, batch 1 and 8
cases = [(rng.standard_normal((8, 5, 3, 3), dtype=np.float32), (2, 5, 9, 7), p) for p in [(0, 0), (1, 1), (2, 1)]]
cases += [(op.attrs["weight"].data, (batch, op.params["in_channels"], 14, 14), tuple(op.params["padding"]))
          for op in resnet.model.operators if op.type == "nn.Conv2d" and winograd_fits(Conv2d(op)) for batch in (1, 8)]
worst = 0.0
for weight, shape, (ph, pw) in cases:
    x = rng.standard_normal(shape, dtype=np.float32)
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), padding=(ph, pw)).numpy()
    got = np.full(want.shape, np.nan, np.float32)
    winograd_conv(x, winograd_weights(weight), ph, pw, got)
    worst = max(worst, np.abs(got - want).max() / np.abs(want).max())
    assert worst < 1e-5, f"x {shape}, padding {(ph, pw)}: expected F.conv2d's output, {agreement(got, want)}"
print(f"{len(cases)} convolutions: error / scale < 1e-5")

# %%
# NBVAL_IGNORE_OUTPUT
# two layers of ResNet-18 at batch 8 both ways (a copy without Winograd weights takes the im2col road), timed
# against PyTorch in the same run (a ratio, not a time: it survives a busy machine)
from kuiper.bench import same_run_ratio

convs = [op for op in resnet.model.operators if op.type == "nn.Conv2d" and winograd_fits(Conv2d(op))]
for op in [convs[0], next(op for op in convs if op.params["in_channels"] == 256)]:
    winograd, im2col_road = Conv2d(op), copy.copy(Conv2d(op))
    im2col_road.winograd = None
    x = Tensor(rng.standard_normal((8, op.params["in_channels"], *resnet.model.operands[op.inputs[0]].shape[2:]),
                                   dtype=np.float32))
    tx, w, b = x.numpy(), torch.from_numpy(op.attrs["weight"].data), torch.from_numpy(op.attrs["bias"].data)
    with torch.no_grad():
        ratios = [same_run_ratio(lambda: road(x), lambda: F.conv2d(torch.from_numpy(tx), w, b, padding=1), repeat=5)
                  for road in (im2col_road, winograd)]
    print(f"{op.name} {tuple(x.shape)}: kuiper / PyTorch, im2col {ratios[0]:.2f}, Winograd {ratios[1]:.2f}")

# %% [markdown]
# ## Against PyTorch
#
# `kuiper bench` times kuiper and PyTorch (the traced model `tools/zoo.py` saved) in the same
# process, with the same number of threads: warm-up, then the median of five runs.

# %%
# NBVAL_IGNORE_OUTPUT
from kuiper.bench import bench_models, format_model_rows

print(format_model_rows(bench_models([MODELS / "resnet18.pnnx.param", MODELS / "mobilenet_v3_small.pnnx.param"],
                                     batches=[8])))

# %% [markdown]
# ## What you built
#
# `kuiper/vision/classify.py` prepares images and reads the answers, and every convolution now ends
# in your epilogue, with its activation fused and a vectorised $e^x$; every depthwise one runs your
# flat kernel, and every 3×3 stride-1 one on a big enough batch your Winograd transforms; the
# command line runs it:
#
# ```
# kuiper run data/models/mobilenet_v2.pnnx.param data/images/*.jpg --top 5
# ```
