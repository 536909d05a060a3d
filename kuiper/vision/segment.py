# Generated from solutions/08_segmentation.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from kuiper.errors import ShapeError
from kuiper.graph import RuntimeGraph
from kuiper.layers.resize import resize_axis
from kuiper.vision.classify import input_size, load_image, softmax
from kuiper.vision.detect import letterbox


def pixel_classes(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel class (H, W) int64 and its softmax probability (H, W) float32 from class scores
    `logits` (C, H, W)."""
    probabilities = softmax(np.moveaxis(logits, 0, -1))  # (H, W, C)
    classes = probabilities.argmax(-1)
    return classes, np.take_along_axis(probabilities, classes[..., None], -1)[..., 0].astype(np.float32)


def confusion_matrix(target: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts of pixels of true class t (row) predicted as class p (column), for
    integer class maps `target` and `predicted` of the same shape with values in [0, K);
    ShapeError if the shapes differ or a class is out of range."""
    if target.shape != predicted.shape:
        raise ShapeError(f"target {target.shape} and prediction {predicted.shape} differ in shape")
    t, p = target.astype(np.int64).ravel(), predicted.astype(np.int64).ravel()
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ShapeError(f"class values must lie in [0, {num_classes}), got {min(t.min(), p.min())}..{max(t.max(), p.max())}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """IoU (K,) float64 of each class from a (K, K) confusion matrix (rows true, columns
    predicted), NaN for classes absent from both, and their mean over the others (mIoU)."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return iou, float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], np.uint8)


def colour_overlay(image: Image.Image, mask: np.ndarray, alpha: float = 0.5, palette: np.ndarray = PALETTE) -> Image.Image:
    """A new RGB image: `image` with each pixel of class c > 0 in `mask` (H, W) blended with
    palette[c] (cycling through the (P, 3) uint8 palette) by `alpha` in [0, 1]; ShapeError if the
    mask's shape is not the image's (height, width)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    if mask.shape != pixels.shape[:2]:
        raise ShapeError(f"mask {mask.shape} does not match the image's (height, width) {pixels.shape[:2]}")
    colours = palette[mask % len(palette)].astype(np.float32)  # (H, W, 3)
    blended = np.where((mask > 0)[..., None], (1 - alpha) * pixels + alpha * colours, pixels)
    return Image.fromarray(np.rint(blended).astype(np.uint8))


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
