"""YOLOv5 and YOLOv8 in kuiper: raw head outputs against PyTorch at batch 1 and 8, YOLOv8's anchor-free
decoding, and the detection pipeline (letterbox, IoU, class-aware NMS against a reference, boxes mapped
back to the photo)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kuiper
from kuiper.errors import ShapeError
from kuiper.vision.detect import (STRIDES, box_iou, letterbox, nms, postprocess, unletterbox, xywh_to_xyxy,
                                  yolo_rows)

LESSON = 7  # kuiper grade runs this file on the student build of lesson 07

MODELS = Path(__file__).resolve().parents[1] / "data" / "models"


SHAPES = {"yolov5n": (25200, 85), "yolov5s": (25200, 85), "yolov8n": (64 + 80, 8400)}


@pytest.mark.parametrize("name, batch", [("yolov5n", 1), ("yolov5n", 8), ("yolov5s", 1),
                                         pytest.param("yolov5s", 8, marks=pytest.mark.slow), ("yolov8n", 1),
                                         pytest.param("yolov8n", 8, marks=pytest.mark.slow)])
def test_raw_outputs_match_pytorch(name, batch):
    x = np.random.default_rng(batch).random((batch, 3, 640, 640), dtype=np.float32)
    with torch.no_grad():
        want = torch.jit.load(str(MODELS / f"{name}.torchscript.pt"))(torch.from_numpy(x)).numpy()
    got = kuiper.load(MODELS / f"{name}.pnnx.param")(x)
    assert got.shape == want.shape == (batch, *SHAPES[name])
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_yolov8_decoding_matches_ultralytics_formulation():
    """decode_dfl against DetectV8.decode (ultralytics' make_anchors, DFL conv, dist2bbox) on the
    zoo's yolov8n head output."""
    from tools.architectures import DetectV8

    raw = np.load(MODELS / "yolov8n.output.npy")
    raw = np.concatenate([raw, raw[:, :, ::-1] * 1.5])  # a second image of other values
    with torch.no_grad():
        want = DetectV8(80, (64, 128, 256)).decode(torch.from_numpy(raw.copy()), 640).numpy().transpose(0, 2, 1)
    got = yolo_rows(raw, 640)
    assert got.shape == (2, 8400, 85) and got.dtype == np.float32
    assert np.abs(got[..., :4] - want[..., :4]).max() <= 1e-4 * np.abs(want[..., :4]).max()
    assert np.abs(got[..., 5:] - want[..., 4:]).max() <= 1e-6
    assert (got[..., 4] == 1).all()
    assert np.ptp(want[..., 2]) > 10, "the boxes must not all be the same size"


def yolov8_head(cells: dict[int, tuple[tuple[int, int, int, int], int]], nc: int = 3, size: int = 64) -> np.ndarray:
    """A raw YOLOv8 output (1, 64 + nc, A) whose cell i predicts distances (l, t, r, b) in whole cells
    and class c with logit 6 (probability 0.9975); every other logit -9 (classes) or 0 (bins)."""
    raw = np.zeros((1, 64 + nc, sum((size // s) ** 2 for s in STRIDES)), np.float32)
    raw[0, 64:] = -9
    for cell, (distances, cls) in cells.items():
        for side, d in enumerate(distances):
            raw[0, 16 * side + d, cell] = 40
        raw[0, 64 + cls, cell] = 6
    return raw


def test_yolov8_rows_are_anchor_free_boxes_through_the_shared_nms():
    # a 64 image: 8 x 8 cells of stride 8 (0-63), 4 x 4 of 16 (64-79), 2 x 2 of 32 (80-83)
    raw = yolov8_head({9: ((1, 1, 1, 1), 0),     # cell (1, 1) of stride 8: centre (12, 12), 16 x 16
                       10: ((1, 1, 1, 1), 0),    # its neighbour (20, 12): IoU 1/3, kept at 0.45
                       18: ((1, 2, 1, 2), 0),    # (20, 20), 16 x 32: overlaps cell 10's box by 0.5, dropped
                       83: ((0, 1, 1, 0), 2)})   # stride 32, cell (1, 1): centre (48, 48) -> x 48-80, y 16-48
    raw[0, 64 + 0, 18] = 5                       # a lower score than cell 10's
    found = postprocess(yolo_rows(raw, 64)[0], conf=0.25, iou=0.45)
    assert found[:, 5].tolist() == [0, 0, 2]
    boxes = {tuple(b) for b in found[:, :4].round(3).tolist()}
    assert boxes == {(4, 4, 20, 20), (12, 4, 28, 20), (48, 16, 80, 48)}
    assert np.allclose(np.sort(found[:, 4]), np.sort(1 / (1 + np.exp([-6, -6, -6]))))


def test_yolo_rows_tells_the_layouts_apart():
    v5 = np.zeros((2, 3 * 84, 8), np.float32)
    assert yolo_rows(v5, 64) is v5
    assert yolo_rows(np.zeros((2, 64 + 3, 84), np.float32), 64).shape == (2, 84, 8)
    with pytest.raises(ShapeError) as err:
        yolo_rows(np.zeros((2, 10), np.float32), 64, "m.pnnx.param")
    assert "m.pnnx.param" in str(err.value) and "(2, 10)" in str(err.value) and "84" in str(err.value)


def reference_nms(boxes, scores, iou):
    """Greedy NMS one box at a time, in torch."""
    boxes, scores = torch.from_numpy(boxes), torch.from_numpy(scores)
    order, keep = scores.argsort(descending=True).tolist(), []
    while order:
        best, order = order[0], order[1:]
        keep.append(best)
        lt = torch.maximum(boxes[best, :2], boxes[order, :2])
        rb = torch.minimum(boxes[best, 2:], boxes[order, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        union = (boxes[best, 2:] - boxes[best, :2]).prod() + (boxes[order, 2:] - boxes[order, :2]).prod(1) - inter
        order = [i for i, o in zip(order, (inter / union).tolist()) if not o > iou]  # torchvision: NaN survives
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_a_reference(seed):
    g = np.random.default_rng(seed)
    corner = g.uniform(0, 500, (200, 2))
    boxes = np.concatenate([corner, corner + g.uniform(5, 120, (200, 2))], axis=1).astype(np.float32)
    scores = g.random(200).astype(np.float32)
    assert nms(boxes, scores, 0.45).tolist() == reference_nms(boxes, scores, 0.45)


def test_nms_keeps_zero_area_boxes_like_torchvision():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 5, 5], [5, 5, 5, 5], [3, 3, 3, 8], [1, 1, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    with np.errstate(invalid="ignore"):
        want = reference_nms(boxes, scores, 0.45)
    assert want == [0, 1, 2, 3]
    assert nms(boxes, scores, 0.45).tolist() == want
    assert box_iou(boxes[1:3], boxes[1:3]).tolist() == [[0, 0], [0, 0]]


def test_nms_suppresses_only_above_the_threshold():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)  # IoU exactly 0.5
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1] == reference_nms(boxes, scores, 0.5)
    assert nms(boxes, scores, 0.49).tolist() == [0] == reference_nms(boxes, scores, 0.49)


def test_box_iou_matches_the_definition():
    a = np.array([[0, 0, 4, 4], [2, 2, 6, 6]], np.float32)
    assert np.allclose(box_iou(a, a), [[1, 4 / 28], [4 / 28, 1]])
    assert np.allclose(xywh_to_xyxy(np.array([[5, 5, 4, 2]], np.float32)), [[3, 4, 7, 6]])


def test_postprocess_is_class_aware_and_maps_back():
    rows = np.zeros((4, 7), np.float32)
    rows[:, :4] = [[100, 100, 40, 40], [102, 101, 40, 40], [101, 100, 40, 40], [300, 300, 20, 20]]
    rows[:, 4] = [0.9, 0.8, 0.95, 0.1]        # objectness; the last row is below the threshold
    rows[:, 5:] = [[1, 0], [1, 0], [0, 1], [1, 0]]  # row 2 is another class: NMS must not drop it
    found = postprocess(rows, conf=0.25, iou=0.45)
    assert found[:, 5].tolist() == [1, 0] and np.allclose(found[:, 4], [0.95, 0.9])
    back = unletterbox(found, scale=0.5, pad=(10, 20), size=(400, 300))
    assert np.allclose(back[1, :4], [(80 - 10) / 0.5, (80 - 20) / 0.5, (120 - 10) / 0.5, (120 - 20) / 0.5])
    assert back[:, [0, 2]].max() <= 400 and back[:, [1, 3]].max() <= 300


def test_letterbox_never_rounds_a_side_to_zero():
    x, scale, pad = letterbox(Image.new("RGB", (1600, 1), (255, 0, 0)), 640)
    assert scale == pytest.approx(0.4) and pad == (0, 319)
    assert np.allclose(x[:, 319, ::100], [[1], [0], [0]]) and np.allclose(x[:, 318, 0], 114 / 255)


def test_letterbox_keeps_aspect_and_centres():
    x, scale, pad = letterbox(Image.new("RGB", (300, 600), (0, 255, 0)), 320)
    assert x.shape == (3, 320, 320) and scale == pytest.approx(320 / 600) and pad == (80, 0)
    assert np.allclose(x[:, 160, 160], [0, 1, 0]) and np.allclose(x[:, 160, 10], 114 / 255)
