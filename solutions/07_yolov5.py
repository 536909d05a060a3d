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
# # Lesson 07 — YOLOv5: object detection
#
# A classifier says *what* is in a picture; a detector says what and **where**, with a box per
# object. YOLOv5 — KuiperInfer's flagship demo — does it in one pass: a CNN backbone, a neck that
# mixes three resolutions, and a *Detect* head that predicts, at every cell of three grids, three
# boxes relative to fixed *anchors*. Around the graph sit two pieces of plain code that this lesson
# writes: **letterboxing** the image in, and **non-maximum suppression** (NMS) of the 25,200 raw
# predictions out.
#
# | exercise | what |
# |---|---|
# | 7.1 | letterbox: resize keeping the aspect ratio, pad to a square |
# | 7.2 | boxes from centre and size to corners |
# | 7.3 | the IoU of every pair of boxes, vectorised |
# | 7.4 | greedy non-maximum suppression |
# | 7.5 | from raw rows to detections: scores, class-aware NMS, boxes mapped back to the photo |
# | 7.6 | YOLOv8's anchor-free head: distances from DFL bins, boxes from cell centres |

# %%
#| default_exp vision.detect

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

import kuiper
from kuiper.course import DATA, agreement, check, raises
from kuiper.vision.classify import load_image

MODELS = DATA / "models"

# %% [markdown]
# ## Exercise 7.1 — letterbox
#
# The network takes a square, say 640 × 640. Stretching a 4:3 photo to a square would squash every
# object, so YOLOv5 *letterboxes*: scale by $r = \min(640/w,\ 640/h)$ so the longer side fits,
# round the new size (but never below 1 pixel: a 1600 × 1 strip would round to 0), and centre it
# on a grey (114) canvas. The left and top padding are `(640 - new_w) // 2` and `(640 - new_h) // 2`. Return the image as float32 `(3, size, size)` in
# 0–1, with `r` and the `(left, top)` padding: they are needed to map boxes back.

# %%
#| export
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kuiper.errors import ImageError, ShapeError
from kuiper.graph import RuntimeGraph
from kuiper.vision.classify import in_batches, input_size, load_image

# %%
#| export
#| exercise: scale by min(size/w, size/h), round (at least 1), paste centred on a (114,114,114) square; return (3,S,S) 0-1, r, (left, top)
def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """The image scaled to fit a size × size grey square, as float32 (3, size, size) in 0–1,
    with the scale and the (left, top) padding used."""
    ### BEGIN SOLUTION
    width, height = image.size
    scale = min(size / width, size / height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    left, top = (size - new[0]) // 2, (size - new[1]) // 2
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(image.resize(new, Image.BILINEAR), (left, top))
    return np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1) / 255, scale, (left, top)
    ### END SOLUTION


# %%
with check("Exercise 7.1"):
    from kuiper.vision.detect import letterbox as reference_letterbox

    x, scale, pad = letterbox(Image.new("RGB", (400, 300), (255, 0, 0)), 640)
    assert x.shape == (3, 640, 640) and x.dtype == np.float32, f"expected (3, 640, 640) float32, got {x.shape} {x.dtype}"
    assert scale == 1.6 and tuple(pad) == (0, 80), f"a 400 × 300 image: expected scale 1.6, padding (0, 80), got {scale}, {pad}"
    assert np.allclose(x[:, 100, 100], [1, 0, 0]), f"inside the photo: expected red [1, 0, 0], got {x[:, 100, 100]}"
    assert np.allclose(x[:, 10, 10], 114 / 255), f"in the bars: expected grey {114 / 255:.3f}, got {x[:, 10, 10]}"
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (117, 203, 3), dtype=np.uint8))
    for image, size in [(noise, 256), (noise.transpose(Image.Transpose.TRANSPOSE), 320), (noise, 100)]:
        got, want = letterbox(image, size), reference_letterbox(image, size)
        where = f"a {image.size[0]} × {image.size[1]} image into {size}"
        assert np.isclose(got[1], want[1]) and tuple(got[2]) == tuple(want[2]), \
            f"{where}: expected scale {want[1]:.4f}, padding {want[2]}, got {got[1]:.4f}, {got[2]}"
        assert got[0].shape == want[0].shape and np.abs(got[0] - want[0]).max() < 1e-6, \
            f"{where}: expected the reference's pixels, {agreement(got[0], want[0])}"
    x, scale, pad = letterbox(Image.new("RGB", (1600, 1), (255, 0, 0)), 640)
    assert tuple(pad) == (0, 319) and np.allclose(x[:, 319, 5], [1, 0, 0]), \
        f"a 1600 × 1 strip: expected padding (0, 319) and one red row kept, got padding {pad}"

# %%
photo = load_image(DATA / "images" / "coffee.jpg")
boxed, scale, pad = letterbox(photo, 640)
fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
axes[0].imshow(photo)
axes[0].set_title(f"photo {photo.size[0]} × {photo.size[1]}")
axes[1].imshow(boxed.transpose(1, 2, 0))
axes[1].set_title(f"letterboxed 640 × 640: scale {scale:.2f}, pad {pad}")
plt.show()

# %% [markdown]
# ## The Detect head: grids and anchors
#
# The neck hands the head three feature maps, of stride 8, 16 and 32: grids of 80², 40² and 20²
# cells on a 640 image. At each cell a 1×1 convolution predicts, for each of 3 anchors, 85 numbers:
# $t_x, t_y, t_w, t_h$, an objectness score and 80 class scores. After a sigmoid $\sigma$, the box
# is decoded as
#
# $$x = (2\sigma(t_x) - 0.5 + c_x)\,s \qquad w = (2\sigma(t_w))^2\, a_w$$
#
# (and likewise $y$, $h$): the centre may move up to 1.5 cells from cell $(c_x, c_y)$, the size
# ranges from 0 to 4 times the anchor $(a_w, a_h)$. Small anchors sit on the fine grid, large
# ones on the coarse grid:

# %%
ANCHORS = {8: [(10, 13), (16, 30), (33, 23)], 16: [(30, 61), (62, 45), (59, 119)],
           32: [(116, 90), (156, 198), (373, 326)]}
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, (stride, anchors), colour in zip(axes, ANCHORS.items(), ["tab:red", "tab:green", "tab:blue"]):
    ax.imshow(boxed.transpose(1, 2, 0), alpha=0.5)
    for line in range(0, 641, stride):
        ax.axhline(line, color="gray", lw=0.3)
        ax.axvline(line, color="gray", lw=0.3)
    cx = cy = stride * (320 // stride) + stride / 2
    for w, h in anchors:
        ax.add_patch(plt.Rectangle((cx - w / 2, cy - h / 2), w, h, fill=False, ec=colour, lw=2))
    ax.set_title(f"stride {stride}: {640 // stride}² cells\nanchors {anchors}", fontsize=9)
    ax.set_xlim(0, 640)
    ax.set_ylim(640, 0)
    ax.axis("off")
plt.show()

# %% [markdown]
# The zoo's `yolov5n` was exported with this decoding inside the graph: PNNX turned it into
# `pnnx.Attribute` constants (the grids and anchors), `F.sigmoid`, `torch.split` and the
# `pnnx.Expression`s `mul(add(mul(@0,2),@1),8)` and `mul(pow(mul(@0,2),2),@1)` you met in lesson
# 05. One row of the output per anchor per cell: $3 \cdot (80^2 + 40^2 + 20^2) = 25{,}200$ rows of
# 85 numbers, which must match PyTorch (random weights here, so the boxes mean nothing yet):

# %%
yolo = kuiper.load(MODELS / "yolov5n.pnnx.param")
x, want = np.load(MODELS / "yolov5n.input.npy"), np.load(MODELS / "yolov5n.output.npy")
raw = yolo(x)
print(raw.shape, "vs PyTorch:", agreement(raw, want, 1e-4))

# %% [markdown]
# ## Exercise 7.2 — from centre and size to corners
#
# The head predicts a box as its centre and size $(c_x, c_y, w, h)$; IoU and drawing want its
# corners $(x_1, y_1, x_2, y_2) = (c_x - w/2,\ c_y - h/2,\ c_x + w/2,\ c_y + h/2)$. Convert the last
# axis, whatever the leading axes are (one image's `(N, 4)` or a batch's `(B, N, 4)`).

# %%
#| export
#| exercise: (cx, cy, w, h) on the last axis to (cx - w/2, cy - h/2, cx + w/2, cy + h/2), any leading axes
def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Centre-size boxes (cx, cy, w, h) as corners (x1, y1, x2, y2)."""
    ### BEGIN SOLUTION
    centre, half = boxes[..., :2], boxes[..., 2:4] / 2
    return np.concatenate([centre - half, centre + half], axis=-1)
    ### END SOLUTION


# %%
with check("Exercise 7.2"):
    got = xywh_to_xyxy(np.array([[50, 40, 20, 10], [5, 5, 10, 30]], np.float32))
    want = np.array([[40, 35, 60, 45], [0, -10, 10, 20]], np.float32)
    assert got.shape == want.shape and np.allclose(got, want), f"expected\n{want}\ngot\n{got}"
    batch = np.random.default_rng(0).uniform(1, 50, (2, 3, 4)).astype(np.float32)
    got = xywh_to_xyxy(batch)
    want = np.concatenate([batch[..., :2] - batch[..., 2:] / 2, batch[..., :2] + batch[..., 2:] / 2], axis=-1)
    assert got.shape == (2, 3, 4) and np.allclose(got, want), f"a (2, 3, 4) batch: expected\n{want[1]}\ngot\n{got[-1]}"


# %% [markdown]
# ## Exercise 7.3 — intersection over union
#
# Two boxes overlap by their IoU, the area of their intersection over the area of their union. For
# boxes as corners $(x_1, y_1, x_2, y_2)$, the intersection is
# $\max(0, \min(x_2, x_2') - \max(x_1, x_1')) \cdot \max(0, \min(y_2, y_2') - \max(y_1, y_1'))$.
# Compute the IoU of **every** box in `a` (N × 4) with every box in `b` (M × 4) at once: add axes
# so numpy broadcasts `a[:, None]` against `b[None, :]` into an N × M result, with no Python loop.
#
# Degenerate boxes happen (a detector can predict a zero width): give an area of at least 0, and
# an IoU of **0** where the union is empty, rather than numpy's `0 / 0 = nan` — `np.divide` with
# `where=` does it without a warning.

# %%
#| export
#| exercise: IoU of every box of a (N,4) with every box of b (M,4), as an N x M array, by broadcasting; 0 where the union is empty
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union (N, M) of each box in `a` (N, 4) with each box in `b` (M, 4), corner
    format; 0 where the union is empty (two zero-area boxes)."""
    ### BEGIN SOLUTION
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros(union.shape, np.result_type(union, np.float32)), where=union > 0)
    ### END SOLUTION


# %%
with check("Exercise 7.3"):
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], np.float32)
    b = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [5, 0, 15, 10], [20, 30, 30, 40]], np.float32)
    got = box_iou(a, b)
    want = np.array([[1, 0, 50 / 150, 0], [25 / 175, 25 / 175, 50 / 150, 0]])
    assert got.shape == want.shape and np.allclose(got, want), f"expected\n{want}\ngot\n{got}"
    g = np.random.default_rng(0)
    corners = g.uniform(0, 50, (7, 2))
    boxes = np.concatenate([corners, corners + g.uniform(1, 30, (7, 2))], axis=1)

    def one_iou(p, q):
        w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        return w * h / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h)

    want = np.array([[one_iou(p, q) for q in boxes[4:]] for p in boxes[:4]])
    got = box_iou(boxes[:4], boxes[4:])
    assert got.shape == (4, 3) and np.allclose(got, want), f"4 × 3 random boxes: expected\n{want.round(4)}\ngot\n{np.round(got, 4)}"
    flat = np.array([[5, 5, 5, 5], [5, 5, 5, 9]], np.float32)
    got = box_iou(flat, flat)
    assert got.tolist() == [[0, 0], [0, 0]], f"zero-area boxes: expected IoU 0 everywhere (no 0/0), got {got.tolist()}"

# %% [markdown]
# ## Exercise 7.4 — non-maximum suppression
#
# A real object lights up several neighbouring cells and anchors, so the raw output holds many
# boxes per object. **Greedy NMS** keeps the best one and drops its near-duplicates: sort by score;
# take the best remaining box; drop every remaining box whose IoU with it **exceeds** the threshold
# (torchvision's rule: IoU equal to the threshold survives); repeat until none remain. Each step is one vectorised `box_iou` of the kept box against the rest.
# Return the indices of the kept boxes, best first.

# %%
#| export
#| exercise: greedy NMS: best-first, drop the rest with IoU > iou_threshold against each kept box; kept indices
def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes greedy non-maximum suppression keeps, highest score first."""
    ### BEGIN SOLUTION
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, order = order[0], order[1:]
        keep.append(best)
        order = order[~(box_iou(boxes[best][None], boxes[order])[0] > iou_threshold)]
    return np.array(keep, dtype=np.int64)
    ### END SOLUTION


# %%
with check("Exercise 7.4"):
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 9, 10], [21, 19, 30, 31]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.6], np.float32)
    got = nms(boxes, scores, 0.5)
    assert got.tolist() == [3, 2], f"expected [3, 2] (box 3 beats 0 and 1; box 2 beats 4), got {got.tolist()}"
    got = nms(boxes, scores, 0.95)
    assert got.tolist() == [3, 0, 1, 2, 4], f"threshold 0.95: expected all five, best first [3, 0, 1, 2, 4], got {got.tolist()}"
    got = nms(boxes[:0], scores[:0], 0.5)
    assert got.tolist() == [], f"no boxes: expected [], got {got.tolist()}"
    halves = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [40, 0, 50, 10]], np.float32)  # IoU(0, 1) is exactly 0.5
    got = nms(halves, np.array([0.5, 0.5, 0.5], np.float32), 0.5)
    assert got.tolist() == [0, 1, 2], f"IoU equal to the threshold and tied scores: expected [0, 1, 2] (keep, file order), got {got.tolist()}"
    got = nms(halves, np.array([0.5, 0.5, 0.5], np.float32), 0.4)
    assert got.tolist() == [0, 2], f"IoU 0.5 above threshold 0.4, tied scores: expected [0, 2], got {got.tolist()}"
    flat = np.array([[0, 0, 10, 10], [5, 5, 5, 5], [5, 5, 5, 5]], np.float32)
    got = nms(flat, np.array([0.9, 0.8, 0.7], np.float32), 0.5)
    assert got.tolist() == [0, 1, 2], f"zero-area boxes overlap nothing (IoU 0): expected [0, 1, 2], got {got.tolist()}"

# %% [markdown]
# ## From raw rows to detections
#
# `postprocess` does what YOLOv5's own code does after the network:
#
# 1. drop rows whose objectness is below the confidence threshold (most of the 25,200);
# 2. score each remaining row as objectness × best class probability, and drop those below it too;
# 3. run NMS **per class** — a cat box must not suppress an overlapping dog box. The trick: shift
#    each class's boxes by a large offset proportional to the class number, so boxes of different
#    classes never overlap, and run one NMS over all of them;
# 4. map the boxes back through the letterbox to the original photo and clip them to it.
#
# ## Exercise 7.5 — from rows to detections
#
# Write steps 1–3 in `postprocess` (keep at most `max_det` detections, best first) and step 4 in
# `unletterbox`: undo the padding, then the scale, and clip x to `[0, width]`, y to `[0, height]`.

# %%
#| export
#| exercise: postprocess: objectness and score filters, class-offset NMS, max_det; unletterbox: subtract pad, divide by scale, clip
def postprocess(rows: np.ndarray, conf: float = 0.25, iou: float = 0.45, max_det: int = 300) -> np.ndarray:
    """Detections (K, 6) = x1, y1, x2, y2, score, class from one image's raw rows (N, 5 + classes)."""
    ### BEGIN SOLUTION
    rows = rows[rows[:, 4] > conf]
    classes = rows[:, 5:].argmax(axis=1)
    scores = rows[:, 4] * rows[np.arange(len(rows)), 5 + classes]
    boxes, keep = xywh_to_xyxy(rows[:, :4]), scores > conf
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    offset = classes[:, None] * (boxes.max(initial=0) + 1)
    kept = nms(boxes + offset, scores, iou)[:max_det]
    return np.concatenate([boxes[kept], scores[kept, None], classes[kept, None]], axis=1).astype(np.float32)
    ### END SOLUTION


def unletterbox(detections: np.ndarray, scale: float, pad: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Boxes from the letterboxed square back to the original image of `size` (width, height)."""
    ### BEGIN SOLUTION
    out = detections.copy()
    out[:, [0, 2]] = np.clip((out[:, [0, 2]] - pad[0]) / scale, 0, size[0])
    out[:, [1, 3]] = np.clip((out[:, [1, 3]] - pad[1]) / scale, 0, size[1])
    return out
    ### END SOLUTION


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


# %%
with check("Exercise 7.5"):
    #            cx  cy   w   h  obj  class 0, 1, 2
    rows = np.array([[50, 50, 20, 20, 0.9, 0.9, 0.1, 0.0],   # class 0, score 0.81
                     [52, 50, 20, 20, 0.9, 0.1, 0.8, 0.1],   # class 1 over box 0: a different class, kept
                     [51, 51, 20, 20, 0.8, 0.7, 0.2, 0.1],   # class 0 over box 0: suppressed
                     [150, 80, 30, 10, 0.2, 1.0, 0.0, 0.0],  # objectness below conf
                     [100, 100, 10, 10, 0.5, 0.3, 0.3, 0.4],  # score 0.5 * 0.4 = 0.2, below conf
                     [200, 30, 40, 20, 0.6, 0.0, 0.1, 0.9]], np.float32)  # class 2, score 0.54
    got = postprocess(rows, conf=0.25, iou=0.45)
    want = np.array([[40, 40, 60, 60, 0.81, 0], [42, 40, 62, 60, 0.72, 1], [180, 20, 220, 40, 0.54, 2]], np.float32)
    assert got.shape == want.shape and np.allclose(got, want), f"expected\n{want}\ngot\n{got}"
    got = postprocess(rows, conf=0.25, iou=0.45, max_det=2)
    assert got.shape == (2, 6) and np.allclose(got, want[:2]), f"max_det=2: expected the two best\n{want[:2]}\ngot\n{got}"
    boxes = np.array([[0, 80, 640, 560, 0.9, 1], [-10, 60, 100, 600, 0.5, 0]], np.float32)
    got = unletterbox(boxes, 1.6, (0, 80), (400, 300))
    want = np.array([[0, 0, 400, 300, 0.9, 1], [0, 0, 62.5, 300, 0.5, 0]], np.float32)
    assert np.allclose(got, want), f"scale 1.6, pad (0, 80), photo 400 × 300: expected\n{want}\ngot\n{got}"
    got = unletterbox(np.array([[20, 10, 60, 50, 0.7, 3]], np.float32), 0.5, (10, 0), (200, 100))
    assert np.allclose(got, [[20, 20, 100, 100, 0.7, 3]]), f"scale 0.5, pad (10, 0): expected [[20, 20, 100, 100, 0.7, 3]], got {got}"


# %% [markdown]
# Class-aware NMS against a plain reference written with torch (one class at a time, a Python loop
# over boxes): the same boxes survive.

# %%
def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou: float) -> list[int]:
    """Per-class greedy NMS, the slow obvious way, with torchvision's rule: suppress where IoU > iou."""
    keep = []
    for c in classes.unique():
        idx = torch.nonzero(classes == c).flatten()
        idx = idx[scores[idx].argsort(descending=True)]
        while len(idx):
            keep.append(int(idx[0]))
            rest = idx[1:]
            lt = torch.maximum(boxes[idx[0], :2], boxes[rest, :2])
            rb = torch.minimum(boxes[idx[0], 2:], boxes[rest, 2:])
            inter = (rb - lt).clamp(min=0).prod(1)
            area = lambda b: (b[..., 2:] - b[..., :2]).prod(-1)  # noqa: E731
            idx = rest[~(inter / (area(boxes[idx[0]]) + area(boxes[rest]) - inter) > iou)]
    return sorted(keep, key=lambda i: -float(scores[i]))


g = np.random.default_rng(0)
centres = g.uniform(50, 590, (300, 2))
boxes = np.concatenate([centres - 30, centres + 30 + g.uniform(0, 40, (300, 2))], axis=1).astype(np.float32)
scores, classes = g.random(300).astype(np.float32), g.integers(0, 3, 300)
offset = classes[:, None] * (boxes.max() + 1)
ours = nms(boxes + offset, scores, 0.45).tolist()
theirs = reference_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), 0.45)
print(f"kept {len(ours)} of 300 boxes; same as the reference: {ours == theirs}")

# %% [markdown]
# ## YOLOv8: no anchors, no objectness
#
# YOLOv8 keeps the grids of stride 8, 16 and 32 but drops the anchors and the objectness score. Its
# *decoupled* head has two branches per level: one predicts the box, the other the class logits.
# Each cell predicts one box as its four **distances** from the cell's centre
# $(c_x + 0.5,\ c_y + 0.5)$ to the box's left, top, right and bottom sides, in units of the stride.
# Each distance is not one number but a distribution over `reg_max = 16` bins $0, 1, \dots, 15$
# (*distribution focal loss*, DFL): the distance is its expected value
#
# $$d = \sum_{i=0}^{15} i \cdot \operatorname{softmax}(z)_i ,$$
#
# so the box is $x_1 = (c_x + 0.5 - d_l)\,s$, $y_1 = (c_y + 0.5 - d_t)\,s$,
# $x_2 = (c_x + 0.5 + d_r)\,s$, $y_2 = (c_y + 0.5 + d_b)\,s$, and a class's score is the sigmoid of
# its logit. The zoo's `yolov8n` graph stops before this decoding: it outputs the raw
# $(B,\ 4 \cdot 16 + 80,\ 80^2 + 40^2 + 20^2 = 8400)$ logits, P3's cells first, row by row. Decoded
# into YOLOv5's row layout with an objectness of 1, they go through the same `postprocess` and NMS.
# The cell centres of every level, in grid units, with each cell's stride:

# %%
#| export
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


# %%
points, steps = anchor_points(640)
for i in (0, 1, 80, 6400, 8399):  # first cells of P3, its second row, P4's first cell, P5's last
    print(f"cell {i:4d}: centre {points[i].tolist()} cells of stride {steps[i]:.0f} = pixel {(points[i] * steps[i]).tolist()}")

# %% [markdown]
# ## Exercise 7.6 — decoding YOLOv8's head
#
# Turn the raw output `(B, 4·reg_max + nc, A)` into rows `(B, A, 5 + nc)` = $c_x, c_y, w, h$ in
# pixels, an objectness of 1, and the class probabilities. Split the channels into the box logits
# and the class logits; view the box logits as `(B, 4, reg_max, A)` (sides l, t, r, b; bins); take
# the softmax over the **bins** (subtract the maximum first, so that `exp` cannot overflow) and the
# expected bin; subtract the left/top distances from the cell centre and add the right/bottom ones;
# turn the corners into centre and size and multiply by the stride. For the sigmoid,
# `np.exp(-np.logaddexp(0, -z))` equals $1/(1+e^{-z})$ without overflow warnings.

# %%
#| export
#| exercise: softmax over the bins, expected distance, centre -/+ distances, times the stride; rows (B, A, 5+nc): cx, cy, w, h, 1, sigmoid(class logits)
def decode_dfl(raw: np.ndarray, size: int, strides: tuple[int, ...] = STRIDES, reg_max: int = REG_MAX) -> np.ndarray:
    """YOLOv8's raw head output (B, 4 * reg_max + nc, A) of a size × size input as rows (B, A, 5 + nc)
    in YOLOv5's layout: centre x, centre y, width, height (pixels), objectness 1, class probabilities.
    Formula: ultralytics' DFL and dist2bbox (ultralytics/utils/tal.py)."""
    ### BEGIN SOLUTION
    points, stride = anchor_points(size, strides)
    bins = raw[:, :4 * reg_max].reshape(len(raw), 4, reg_max, -1)  # (B, sides l t r b, bins, A)
    weights = np.exp(bins - bins.max(axis=2, keepdims=True))
    distance = (weights * np.arange(reg_max)[:, None]).sum(axis=2) / weights.sum(axis=2)  # (B, 4, A)
    top_left, bottom_right = points.T - distance[:, :2], points.T + distance[:, 2:]  # (B, 2, A)
    xywh = np.concatenate([(top_left + bottom_right) / 2, bottom_right - top_left], axis=1) * stride
    scores = np.exp(-np.logaddexp(0, -raw[:, 4 * reg_max:]))
    rows = np.concatenate([xywh, np.ones_like(xywh[:, :1]), scores], axis=1)  # (B, 5 + nc, A)
    return rows.transpose(0, 2, 1).astype(np.float32)
    ### END SOLUTION


# %%
with check("Exercise 7.6"):
    raw = np.zeros((1, 4 * 4 + 2, 4), np.float32)  # reg_max 4, two classes, a 32 image on one stride-16 grid
    for side, distance in enumerate([1, 2, 0, 3]):  # left 1, top 2, right 0, bottom 3 cells
        raw[0, 4 * side + distance] = 30
    raw[0, 16:] = [[0, 2, -2, 0], [1, 0, 0, 0]]
    got = decode_dfl(raw, 32, strides=(16,), reg_max=4)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    want = np.array([[0, 16, 16, 80, 1, 0.5, sig(1)], [16, 16, 16, 80, 1, sig(2), 0.5],
                     [0, 32, 16, 80, 1, sig(-2), 0.5], [16, 32, 16, 80, 1, 0.5, 0.5]], np.float32)
    assert got.shape == (1, 4, 7), f"expected rows of shape (1, 4, 7), got {got.shape}"
    assert np.allclose(got[0], want, atol=1e-4), f"distances l 1, t 2, r 0, b 3 on a 2 × 2 grid of stride 16: expected\n{want}\ngot\n{got[0].round(3)}"
    g = np.random.default_rng(0)
    raw = g.normal(0, 3, (2, 64 + 3, 84)).astype(np.float32)  # a 64 × 64 input: 64 + 16 + 4 cells
    t = torch.from_numpy(raw)
    dist = (t[:, :64].view(2, 4, 16, 84).softmax(2) * torch.arange(16.0)[:, None]).sum(2)
    centres, strides = (torch.from_numpy(a) for a in anchor_points(64))
    lt, rb = centres.T - dist[:, :2], centres.T + dist[:, 2:]
    want = torch.cat([(lt + rb) / 2 * strides, (rb - lt) * strides, torch.ones(2, 1, 84), t[:, 64:].sigmoid()], 1)
    got = decode_dfl(raw, 64)
    assert got.shape == (2, 84, 8), f"expected rows of shape (2, 84, 8), got {got.shape}"
    assert np.allclose(got, want.permute(0, 2, 1).numpy(), atol=1e-4), \
        f"random logits against a torch decoder: expected agreement within 1e-4, got {agreement(got, want.permute(0, 2, 1).numpy(), 1e-4)}"
    big = decode_dfl(np.full((1, 64 + 1, 84), 1000, np.float32), 64)
    assert np.isfinite(big).all(), f"logits of 1000: expected finite rows (softmax without overflow), got {big[0, 0]}"

# %% [markdown]
# Which decoding a model needs follows from its output's shape: YOLOv8's raw head has one column per
# cell, $(B,\ 64 + n_c,\ A)$; YOLOv5's decoded rows are $(B,\ 3A,\ 5 + n_c)$. `detect` calls
# `yolo_rows` on every batch, so `kuiper detect` runs either model.

# %%
#| export
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


# %%
yolo8 = kuiper.load(MODELS / "yolov8n.pnnx.param")
x8, want8 = np.load(MODELS / "yolov8n.input.npy"), np.load(MODELS / "yolov8n.output.npy")
raw8 = yolo8(x8)
print("raw head", raw8.shape, "vs PyTorch:", agreement(raw8, want8, 1e-4))
rows8 = yolo_rows(raw8, 640)
print("rows", rows8.shape, "widths from", rows8[0, :, 2].min().round(1), "to", rows8[0, :, 2].max().round(1), "pixels")

# %% [markdown]
# ## A detector that really detects
#
# Random weights find nothing. No pretrained YOLOv5 can be downloaded here, so `tools/train_yolo.py`
# trained YOLOv5n from scratch, on the CPU, on synthetic pictures of five kinds of shape drawn by
# `tools/shapes.py` (circles, squares, triangles, rings and crosses of random size, colour,
# rotation and position on varied backgrounds): nine epochs of 2,000 pictures, about half an hour
# on two cores, reach mAP@0.5 = 1.00 on 200 held-out pictures. `tools/zoo.py` exported it to PNNX
# like the other models, for 256 × 256 inputs. Three held-out pictures it never saw in training:

# %%
detector = kuiper.load(MODELS / "yolov5n_shapes.pnnx.param")
shape_names = (DATA / "shapes" / "classes.txt").read_text().split()
samples = sorted((DATA / "shapes").glob("*.jpg"))
found = detect(detector, samples, conf=0.25, iou=0.45)
for path, boxes in zip(samples, found):
    counts = {name: int((boxes[:, 5] == i).sum()) for i, name in enumerate(shape_names)}
    print(f"{path.name}: {len(boxes)} objects", {name: n for name, n in counts.items() if n})

# %%
fig, axes = plt.subplots(1, len(samples), figsize=(12, 4.2))
for ax, path, boxes in zip(axes, samples, found):
    ax.imshow(draw_detections(load_image(path), boxes, shape_names))
    ax.set_title(path.name)
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# The same detector from the command line, which also writes the annotated images:
#
# ```
# kuiper detect data/models/yolov5n_shapes.pnnx.param data/shapes/*.jpg --labels data/shapes/classes.txt --out runs/
# ```
#
# ## Speed
#
# YOLOv5n and YOLOv5s at 640 × 640 against PyTorch (same process, same threads):

# %%
# NBVAL_IGNORE_OUTPUT
from kuiper.bench import bench_models, format_model_rows

print(format_model_rows(bench_models([MODELS / "yolov5n.pnnx.param"], batches=[1])))

# %% [markdown]
# ## What you built
#
# `kuiper/vision/detect.py`: letterbox in, YOLOv5's decoded rows or YOLOv8's anchor-free head
# decoded, through class-aware NMS out, boxes mapped back to the photo and drawn. Lesson 08 labels every pixel (segmentation); lessons 09–11 then leave images for text: a Llama language model.
