# Generated from solutions/06_resnet.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

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


def preprocess(image: Image.Image, size: int = 224, resize: int = 256) -> np.ndarray:
    """A PIL image as a normalised float32 (3, size, size) array, exactly as torchvision prepares it."""
    width, height = image.size
    if width <= height:
        new = (resize, int(resize * height / width))
    else:
        new = (int(resize * width / height), resize)
    image = image.resize(new, Image.BILINEAR)
    top, left = round((new[1] - size) / 2), round((new[0] - size) / 2)
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits along the last axis; never overflows."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries of a 1-d array, largest first."""
    k = min(k, values.size)
    best = np.argpartition(values, -k)[-k:]
    best = best[np.argsort(values[best])[::-1]]
    return best, values[best]


def input_size(graph: RuntimeGraph, requested: int | None = None, default: int = 224) -> int:
    """The square image side an image model takes: its (N, 3, S, S) input's S, or for a free size
    (N, 3, ?, ?) `requested` or else `default`. ShapeError for another input, or a fixed S that
    differs from `requested`."""
    shape = graph.model.operands[graph.inputs[0].outputs[0]].shape or ()
    if len(graph.inputs) != 1 or len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise ShapeError(f"{graph.model.path.name} takes input of shape {shape}, not one (N, 3, S, S) image batch")
    if shape[2] == -1:
        return requested or default
    if requested not in (None, shape[2]):
        raise ShapeError(f"{graph.model.path.name} takes {shape[2]} × {shape[2]} images, not {requested}")
    return shape[2]


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
    side = input_size(graph, size, 224)
    logits = [graph(np.stack(images)) for _, images in in_batches(paths, batch, lambda p: prepare(p, side), errors)]
    if not logits:
        return np.zeros((0, 0), np.float32)
    return softmax(np.concatenate(logits))


def read_labels(path: str | Path) -> list[str]:
    """One class name per line; KuiperError naming the file if it is missing or not UTF-8 text."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise KuiperError(f"{path}: cannot read the class names ({err.strerror if isinstance(err, OSError) else err})") from None
