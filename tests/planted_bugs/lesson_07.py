"""Typical bugs planted into lesson 07's exercises: each must make its check print FAIL."""

BUGS = {
    "7.1": [
        ("scale = min(size / width, size / height)", "scale = max(size / width, size / height)",
         "scaled so the shorter side fits: the photo is cut off"),
        ("left, top = (size - new[0]) // 2, (size - new[1]) // 2", "left, top = (size - new[1]) // 2, (size - new[0]) // 2",
         "left and top padding swapped"),
        ("new = (max(1, round(width * scale)), max(1, round(height * scale)))",
         "new = (max(1, int(width * scale)), max(1, int(height * scale)))", "the new size truncated instead of rounded"),
        ("new = (max(1, round(width * scale)), max(1, round(height * scale)))",
         "new = (round(width * scale), round(height * scale))", "a thin strip rounds a side to 0 pixels"),
        (".transpose(2, 0, 1) / 255", ".transpose(2, 0, 1)", "pixels left in 0-255"),
    ],
    "7.2": [
        ("boxes[..., 2:4] / 2", "boxes[..., 2:4]", "the full size subtracted, not half of it"),
        ("np.concatenate([centre - half, centre + half], axis=-1)", "np.concatenate([centre - half, centre + half], axis=0)",
         "concatenated along the wrong axis"),
        ("centre, half = boxes[..., :2]", "centre, half = boxes[:, :2]", "assumes a 2-d array: wrong for a batch"),
    ],
    "7.3": [
        ("np.clip(bottom_right - top_left, 0, None).prod(axis=2)", "(bottom_right - top_left).prod(axis=2)",
         "no clip at 0: disjoint boxes get a positive intersection"),
        ("area_a[:, None] + area_b[None, :] - inter", "area_a[:, None] + area_b[None, :]", "the union counts the overlap twice"),
        ("bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])", "bottom_right = np.maximum(a[:, None, 2:], b[None, :, 2:])",
         "max instead of min for the intersection's far corner"),
    ],
    "7.4": [
        ('order = np.argsort(-scores, kind="stable")', 'order = np.argsort(scores, kind="stable")', "worst first"),
        ("[0] > iou_threshold)]", "[0] >= iou_threshold)]", "a box whose IoU equals the threshold is dropped"),
        ('order = np.argsort(-scores, kind="stable")', 'order = np.argsort(scores, kind="stable")[::-1]',
         "ascending order reversed: tied scores come in reverse file order"),
        ("order = order[~(box_iou(boxes[best][None], boxes[order])[0] > iou_threshold)]",
         "order = order[~(box_iou(boxes[keep[0]][None], boxes[order])[0] > iou_threshold)]",
         "suppresses only against the first kept box"),
    ],
    "7.5": [
        ("offset = classes[:, None] * (boxes.max(initial=0) + 1)", "offset = 0",
         "class-agnostic NMS: a box suppresses another class's box"),
        ("scores = rows[:, 4] * rows[np.arange(len(rows)), 5 + classes]", "scores = rows[:, 4]",
         "the score ignores the class probability"),
        ("kept = nms(boxes + offset, scores, iou)[:max_det]", "kept = nms(boxes + offset, scores, iou)", "max_det ignored"),
        ("np.clip((out[:, [0, 2]] - pad[0]) / scale, 0, size[0])", "np.clip((out[:, [0, 2]] - pad[1]) / scale, 0, size[0])",
         "x shifted by the top padding"),
        ("np.clip((out[:, [1, 3]] - pad[1]) / scale, 0, size[1])", "(out[:, [1, 3]] - pad[1]) / scale",
         "y not clipped to the photo"),
    ],
}
