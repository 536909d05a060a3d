"""A synthetic detection and segmentation dataset: coloured shapes on varied backgrounds, with YOLO
labels and per-pixel class masks.

Every sample is a pure function of its seed: `make_sample(seed)` draws a background (flat colour,
gradient or blotchy noise), then 1-6 shapes (circle, square, triangle, ring, cross) of random size,
colour, rotation and position, overlapping a little, and adds light pixel noise. Its labels are YOLO
rows (class, centre x, centre y, width, height), normalised by the image side. `make_mask_sample(seed)`
draws the same picture with its segmentation mask: each pixel's class is 0 for background and
1 + the class index (CLASSES order, as data/shapes/classes.txt) of the shape painted last over it.

    python tools/shapes.py 7 /tmp/shape.jpg    # render the sample of seed 7, print its labels

Training uses seeds 0, 1, ..., validation 1,000,000 on; data/shapes/shapes_N.jpg is 2,000,000 + N.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

CLASSES = ("circle", "square", "triangle", "ring", "cross")
MIN_SIZE, MAX_SIZE = 0.12, 0.40  # object size as a fraction of the image side
MAX_OVERLAP = 0.3  # at most this fraction of the smaller of two boxes may be shared


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float image: a flat colour, a linear gradient or smooth blotchy noise."""
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(rng.uniform(0, 255, 3), (size, size, 3)).astype(np.float32)
    if kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        y, x = np.mgrid[0:size, 0:size] / size
        t = (x * np.cos(angle) + y * np.sin(angle))[..., None]
        t = (t - t.min()) / (t.max() - t.min())
        return ((1 - t) * rng.uniform(0, 255, 3) + t * rng.uniform(0, 255, 3)).astype(np.float32)
    cells = rng.integers(3, 9)
    small = Image.fromarray(rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8))
    return np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.float32)


def polygon(cls: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """The vertices of a square, triangle or cross of 'radius' r centred at (cx, cy), rotated."""
    if cls == "square":
        points = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
        r /= np.sqrt(2)
    elif cls == "triangle":
        points = [(np.cos(a), np.sin(a)) for a in np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
    else:  # a plus sign, arms a third as wide as the whole
        w = 1 / 3
        points = [(w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1), (w, -1),
                  (w, -w), (1, -w), (1, w), (w, w)]
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


def shape_mask(cls: str, cx: float, cy: float, r: float, angle: float, size: int,
               rng: np.random.Generator) -> Image.Image:
    """An 'L' mask, 255 inside the shape."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if cls in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if cls == "ring":
            inner = r * rng.uniform(0.45, 0.7)
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        draw.polygon(polygon(cls, cx, cy, r, angle), fill=255)
    return mask


def overlaps(box: np.ndarray, boxes: list[np.ndarray]) -> bool:
    """Whether `box` (x1, y1, x2, y2) shares more than MAX_OVERLAP of the smaller box with any."""
    for other in boxes:
        w = min(box[2], other[2]) - max(box[0], other[0])
        h = min(box[3], other[3]) - max(box[1], other[1])
        smaller = min(np.prod(box[2:] - box[:2]), np.prod(other[2:] - other[:2]))
        if w > 0 and h > 0 and w * h > MAX_OVERLAP * smaller:
            return True
    return False


def colour_against(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """A random colour at least 120 away (sum of channel differences) from the colour `behind`."""
    for _ in range(50):
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - behind).sum() > 120:
            break
    return colour


def make_sample(seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The image (size, size, 3) uint8 and labels (n, 5) float32 of sample `seed`."""
    image, labels, _ = render(seed, size)
    return image, labels


def make_mask_sample(seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The image (size, size, 3) uint8 of sample `seed` and its class mask (size, size) uint8:
    0 background, 1 + class index where a shape is on top."""
    image, _, mask = render(seed, size)
    return image, mask


def render(seed: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample `seed`: image (size, size, 3) uint8, YOLO labels (n, 5) float32, class mask
    (size, size) uint8."""
    rng = np.random.default_rng(seed)
    image = background(rng, size)
    classes = np.zeros((size, size), np.uint8)
    boxes, labels = [], []
    for _ in range(rng.integers(1, 7)):
        for _ in range(20):  # tries to place the object without covering the others much
            cls = int(rng.integers(len(CLASSES)))
            r = rng.uniform(MIN_SIZE, MAX_SIZE) * size / 2
            cx, cy = rng.uniform(r, size - r, 2)
            mask = shape_mask(CLASSES[cls], cx, cy, r, rng.uniform(0, 2 * np.pi), size, rng)
            x1, y1, x2, y2 = mask.getbbox()
            box = np.array([x1, y1, x2, y2], dtype=np.float32)
            if not overlaps(box, boxes):
                break
        else:
            continue
        alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255
        behind = (image * alpha).sum((0, 1)) / alpha.sum()
        image = image * (1 - alpha) + colour_against(rng, behind) * alpha
        classes[alpha[..., 0] > 0.5] = cls + 1
        boxes.append(box)
        labels.append([cls, (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size,
                       (y2 - y1) / size])
    image += rng.normal(0, rng.uniform(0, 8), image.shape)
    labels = np.array(labels, np.float32).reshape(-1, 5)
    return np.clip(image, 0, 255).astype(np.uint8), labels, classes


class Shapes(Dataset):
    """`n` samples, seeds `first_seed`...; items are a (3, size, size) float image in [0, 1] and its
    labels, mirrored left-right at random when `flip`. The samples are rendered once, up front."""

    def __init__(self, n: int, size: int = 256, first_seed: int = 0, flip: bool = False):
        self.samples = [make_sample(first_seed + i, size) for i in range(n)]
        self.flip = flip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = self.samples[i]
        image = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        labels = torch.from_numpy(labels).clone()
        if self.flip and torch.rand(()) < 0.5:
            image, labels[:, 1] = image.flip(2), 1 - labels[:, 1]
        return image, labels


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the images; join the labels into (n, 6) rows of image index, class, cx, cy, w, h."""
    images, labels = zip(*batch)
    rows = [torch.cat((torch.full((len(t), 1), float(i)), t), 1) for i, t in enumerate(labels)]
    return torch.stack(images), torch.cat(rows)


if __name__ == "__main__":
    pixels, rows = make_sample(int(sys.argv[1]))
    Image.fromarray(pixels).save(sys.argv[2], quality=95)
    for row in rows:
        print(CLASSES[int(row[0])], *(f"{v:.3f}" for v in row[1:]))
