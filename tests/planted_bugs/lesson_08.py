"""Typical bugs planted into lesson 08's exercises: each must make its check print FAIL."""

BUGS = {
    "8.1": [
        ("full[:, :, i:i + (h - 1) * stride + 1:stride, j:j + (w - 1) * stride + 1:stride] += copy",
         "full[:, :, i:i + (h - 1) * stride + 1:stride, i:i + (w - 1) * stride + 1:stride] += copy",
         "the column offset uses the row tap"),
        ('copy = np.einsum("nchw,ck->nkhw", x, weight[:, :, i, j])', 'copy = np.einsum("nchw,ck->nkhw", x, weight[:, :, j, i])',
         "the kernel taps transposed"),
        ("out = full[:, :, padding:full.shape[2] - padding, padding:full.shape[3] - padding]",
         "out = full[:, :, :full.shape[2] - 2 * padding, :full.shape[3] - 2 * padding]", "crops the padding from one side only"),
    ],
    "8.2": [
        ("high = np.minimum(low + 1, size_in - 1)", "high = low", "no second neighbour"),
        ("np.add.at(matrix, (np.arange(size_out), low), 1 - frac)", "np.add.at(matrix, (np.arange(size_out), low), frac)",
         "weights of the two neighbours swapped"),
    ],
    "8.3": [
        ("probabilities = softmax(np.moveaxis(logits, 0, -1))", "probabilities = softmax(logits)",
         "softmax over the width, not the classes"),
        ("classes = probabilities.argmax(-1)", "classes = probabilities.argmin(-1)", "argmin instead of argmax"),
    ],
    "8.4": [
        ("np.bincount(t * num_classes + p, minlength=num_classes**2)", "np.bincount(p * num_classes + t, minlength=num_classes**2)",
         "rows predicted, columns true"),
        ("t, p = target.astype(np.int64).ravel(), predicted.astype(np.int64).ravel()",
         "t, p = target.astype(np.int64).ravel(), target.astype(np.int64).ravel()", "compares the target with itself"),
    ],
    "8.5": [
        ("union = matrix.sum(0) + matrix.sum(1) - tp", "union = matrix.sum(0) + matrix.sum(1)",
         "the intersection counted twice in the union"),
        ("iou = np.where(union > 0, tp / union, np.nan)", "iou = np.where(union > 0, tp / union, 0.0)",
         "absent classes count as 0 in the mean"),
    ],
    "8.6": [
        ("blended = np.where((mask > 0)[..., None], (1 - alpha) * pixels + alpha * colours, pixels)",
         "blended = (1 - alpha) * pixels + alpha * colours", "the background is painted too"),
        ("(1 - alpha) * pixels + alpha * colours, pixels)", "alpha * pixels + (1 - alpha) * colours, pixels)",
         "alpha applied to the photo, not the colour"),
    ],
    "8.7": [
        ("params[key] = (lead, value if type(value) is int else value[0])",
         "params[key] = (1, value if type(value) is int else value[0])", "padding lifted with a leading 1, not 0"),
        ('data = attrs["weight"].data[:, :, None]', 'data = attrs["weight"].data[:, None]',
         "the weight's new axis in the wrong place: (K, 1, C, k)"),
        ("return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]",
         "return [(d * (k - 1) - d * (k - 1) // 2, d * (k - 1) // 2) for k, d in zip(kernel, dilation)]",
         "'same': the odd extra row before, not after"),
        ("for i in range(0, len(values), 2)][::-1]", "for i in range(0, len(values), 2)]",
         "F.pad's order read first axis first"),
    ],
    "8.8": [
        ("return start, -(-(o + 1) * size // out) - start", "return start, (o + 1) * size // out - start",
         "adaptive window ends rounded down"),
        ("return o * stride - padding, np.full(out, kernel, np.int64)", "return o * stride, np.full(out, kernel, np.int64)",
         "padding ignored"),
        ("if where < 0 or value > best or np.isnan(value):", "if where < 0 or value >= best or np.isnan(value):",
         "ties: the last maximum wins, not the first"),
        ("best, where = value, iy * width + ix", "best, where = value, iy * height + ix", "the flat index uses the height"),
    ],
    "8.9": [
        ("oh, ow = out_size(x.shape[2], kh, sh, ph, dh), out_size(x.shape[3], kw, sw, pw, dw)",
         "oh, ow = out_size(x.shape[2], kh, sh, ph), out_size(x.shape[3], kw, sw, pw)", "unfold ignores dilation"),
        ("bh, bw = out_size(size[0], kh, sh, ph, dh), out_size(size[1], kw, sw, pw, dw)",
         "bh, bw = out_size(size[0], kh, sh, ph), out_size(size[1], kw, sw, pw)",
         "fold counts windows without dilation"),
        ("if min(oh, ow) < 1:", "if False:", "unfold does not reject a window larger than the image"),
    ],
}
