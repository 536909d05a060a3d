# Generated from solutions/06_resnet.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from kuiper.errors import ImageError, ShapeError
from kuiper.graph import RuntimeGraph


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_image(path: str | Path) -> Image.Image:
    """The image at `path` as RGB; ImageError if it is missing or not an image."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ImageError(f"{path}: not an image that can be read ({err})") from None


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


def input_size(graph: RuntimeGraph) -> int:
    """The square image side an image model expects; ShapeError if its input is not (N, 3, S, S)."""
    shape = graph.model.operands[graph.inputs[0].outputs[0]].shape
    if len(graph.inputs) != 1 or len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise ShapeError(f"{graph.model.path.name} takes input of shape {shape}, not one (N, 3, S, S) image batch")
    return shape[2]


def classify(graph: RuntimeGraph, paths: list[str | Path], batch: int = 8) -> np.ndarray:
    """Class probabilities (len(paths), classes) for the images at `paths`, `batch` at a time."""
    size = input_size(graph)
    images = np.stack([preprocess(load_image(p), size, round(size * 256 / 224)) for p in paths])
    logits = [graph(images[i:i + batch]) for i in range(0, len(images), batch)]
    return softmax(np.concatenate(logits))


def read_labels(path: str | Path) -> list[str]:
    """One class name per line."""
    return Path(path).read_text().splitlines()
