# Generated from solutions/07_yolov5.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kuiper.errors import ImageError, ShapeError
from kuiper.graph import RuntimeGraph
from kuiper.vision.classify import in_batches, input_size, load_image


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """The image scaled to fit a size × size grey square, as float32 (3, size, size) in 0–1,
    with the scale and the (left, top) padding used."""
    width, height = image.size
    scale = min(size / width, size / height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    left, top = (size - new[0]) // 2, (size - new[1]) // 2
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(image.resize(new, Image.BILINEAR), (left, top))
    return np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1) / 255, scale, (left, top)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Centre-size boxes (cx, cy, w, h) as corners (x1, y1, x2, y2)."""
    centre, half = boxes[..., :2], boxes[..., 2:4] / 2
    return np.concatenate([centre - half, centre + half], axis=-1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union (N, M) of each box in `a` (N, 4) with each box in `b` (M, 4), corner
    format; 0 where the union is empty (two zero-area boxes)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros(union.shape, np.result_type(union, np.float32)), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes greedy non-maximum suppression keeps, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, order = order[0], order[1:]
        keep.append(best)
        order = order[~(box_iou(boxes[best][None], boxes[order])[0] > iou_threshold)]
    return np.array(keep, dtype=np.int64)


def postprocess(rows: np.ndarray, conf: float = 0.25, iou: float = 0.45, max_det: int = 300) -> np.ndarray:
    """Detections (K, 6) = x1, y1, x2, y2, score, class from one image's raw rows (N, 5 + classes)."""
    rows = rows[rows[:, 4] > conf]
    classes = rows[:, 5:].argmax(axis=1)
    scores = rows[:, 4] * rows[np.arange(len(rows)), 5 + classes]
    boxes, keep = xywh_to_xyxy(rows[:, :4]), scores > conf
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    offset = classes[:, None] * (boxes.max(initial=0) + 1)
    kept = nms(boxes + offset, scores, iou)[:max_det]
    return np.concatenate([boxes[kept], scores[kept, None], classes[kept, None]], axis=1).astype(np.float32)


def unletterbox(detections: np.ndarray, scale: float, pad: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Boxes from the letterboxed square back to the original image of `size` (width, height)."""
    out = detections.copy()
    out[:, [0, 2]] = np.clip((out[:, [0, 2]] - pad[0]) / scale, 0, size[0])
    out[:, [1, 3]] = np.clip((out[:, [1, 3]] - pad[1]) / scale, 0, size[1])
    return out


def detect(graph: RuntimeGraph, paths: list[str | Path], conf: float = 0.25, iou: float = 0.45,
           batch: int = 8, size: int | None = None, errors: dict[int, ImageError] | None = None) -> list[np.ndarray]:
    """Detections (K, 6) = x1, y1, x2, y2, score, class in original-image pixels, one array per image read.

    `size` is for models of free input size (default 640). With `errors` a dict, unreadable images
    are filed there by index and left out of the result; otherwise their ImageError is raised."""
    side, results = input_size(graph, size, 640), []
    for _, images in in_batches(paths, batch, load_image, errors):
        boxed = [letterbox(image, side) for image in images]
        rows = yolo_rows(graph(np.stack([b[0] for b in boxed])), side, graph.model.path.name)
        for image, (_, scale, pad), r in zip(images, boxed, rows):
            results.append(unletterbox(postprocess(r, conf, iou), scale, pad, image.size))
    return results


def class_name(labels: list[str], index: int) -> str:
    """The name of class `index`, or the number itself when `labels` has no name for it."""
    return labels[index] if index < len(labels) else str(index)


def draw_detections(image: Image.Image, detections: np.ndarray, labels: list[str]) -> Image.Image:
    """A copy of the image with each detection's box, label and score drawn on it."""
    out = image.copy()
    pen = ImageDraw.Draw(out)
    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    for x1, y1, x2, y2, score, cls in detections:
        colour = palette[int(cls) % len(palette)]
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=3)
        text = f"{class_name(labels, int(cls))} {score:.2f}"
        pen.rectangle(pen.textbbox((x1, y1), text), fill=colour)
        pen.text((x1, y1), text, fill=(255, 255, 255))
    return out


STRIDES = (8, 16, 32)
REG_MAX = 16


def anchor_points(size: int, strides: tuple[int, ...] = STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """The centres (A, 2) = (x + 0.5, y + 0.5) of every cell of every level of a size × size input,
    in grid units, the first level first and each row by row, and each cell's stride (A,), float32."""
    points, steps = [], []
    for stride in strides:
        n = size // stride
        y, x = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")
        points.append(np.stack([x.ravel(), y.ravel()], axis=1))  # (n * n, 2)
        steps.append(np.full(n * n, stride))
    return np.concatenate(points).astype(np.float32), np.concatenate(steps).astype(np.float32)


def decode_dfl(raw: np.ndarray, size: int, strides: tuple[int, ...] = STRIDES, reg_max: int = REG_MAX) -> np.ndarray:
    """YOLOv8's raw head output (B, 4 * reg_max + nc, A) of a size × size input as rows (B, A, 5 + nc)
    in YOLOv5's layout: centre x, centre y, width, height (pixels), objectness 1, class probabilities.
    Formula: ultralytics' DFL and dist2bbox (ultralytics/utils/tal.py)."""
    points, stride = anchor_points(size, strides)
    bins = raw[:, :4 * reg_max].reshape(len(raw), 4, reg_max, -1)  # (B, sides l t r b, bins, A)
    weights = np.exp(bins - bins.max(axis=2, keepdims=True))
    distance = (weights * np.arange(reg_max)[:, None]).sum(axis=2) / weights.sum(axis=2)  # (B, 4, A)
    top_left, bottom_right = points.T - distance[:, :2], points.T + distance[:, 2:]  # (B, 2, A)
    xywh = np.concatenate([(top_left + bottom_right) / 2, bottom_right - top_left], axis=1) * stride
    scores = np.exp(-np.logaddexp(0, -raw[:, 4 * reg_max:]))
    rows = np.concatenate([xywh, np.ones_like(xywh[:, :1]), scores], axis=1)  # (B, 5 + nc, A)
    return rows.transpose(0, 2, 1).astype(np.float32)


def yolo_rows(output: np.ndarray, size: int, name: str = "the model") -> np.ndarray:
    """Rows (B, N, 5 + nc) of YOLOv5's layout from a YOLO graph's output for size × size inputs:
    YOLOv5's rows as they are, YOLOv8's raw head (B, 4 * REG_MAX + nc, A) decoded by `decode_dfl`.
    ShapeError naming `name` for any other output."""
    cells = sum((size // stride) ** 2 for stride in STRIDES)
    if output.ndim == 3 and output.shape[2] == cells and output.shape[1] > 4 * REG_MAX:
        return decode_dfl(output, size)
    if output.ndim == 3 and output.shape[2] >= 6:
        return output
    raise ShapeError(f"{name} outputs {output.shape}, not YOLOv5 rows (B, boxes, 5 + classes) nor a YOLOv8 head "
                     f"(B, {4 * REG_MAX} + classes, {cells}) for {size} × {size} inputs")
