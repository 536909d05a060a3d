"""Typical bugs planted into lesson 04's exercises: each must make its check print FAIL."""

BUGS = {
    "4.1": [
        ("if ceil_mode and (out - 1) * stride >= size + padding:", "if False:",
         "ceil_mode keeps a last window that starts inside the padding"),
        ("dilation * (kernel - 1) - 1", "(kernel - 1) - 1", "dilation ignored"),
        ("-(-span // stride) if ceil_mode else span // stride", "span // stride", "ceil_mode ignored"),
    ],
    "4.2": [
        ("row = (c * kh + i) * kw + j", "row = (c * kw + j) * kh + i", "rows ordered (c, j, i), not as W.reshape(K, -1)"),
        ("iy = y * sh - ph + i * dh", "iy = y * sh - ph + i", "dilation ignored along rows"),
        ("ix = x_ * sw - pw + j * dw", "ix = x_ * sh - pw + j * dw", "the row stride used for columns"),
        ("if inside and 0 <= ix < width else 0.0", "if inside and 0 <= ix else 0.0",
         "no bound check on the right edge: reads the next row"),
    ],
    "4.3": [
        ("            row[:] = 0.0\n", "", "the output row is not zeroed first"),
        ("        c = k // multiplier\n", "        c = k % channels\n", "channel multiplier: the wrong input channel"),
        ("                iy = y * sh - ph + i * dh\n", "                iy = y * sh - ph + i\n", "dilation ignored along rows"),
    ],
    "4.4": [
        ("out[n, k, oy, ox] += cols", "out[n, k, oy, ox] = cols", "overlapping windows overwrite instead of adding"),
        ("oy = y * sh - ph + i * dh", "oy = y * sh + ph + i * dh", "padding added instead of subtracted"),
        ("ox = x_ * sw - pw + j * dw", "ox = x_ * sh - pw + j * dw", "the row stride used for columns"),
    ],
    "4.5": [
        ("rows[:] = -np.inf", "rows[:] = 0.0", "a padded row counts as 0, which beats negative inputs"),
        ("iy = y * sh - ph + i * dh", "iy = y * sh - ph + i", "dilation ignored along rows"),
        ("v = rows[x_ * sw + offset]", "v = rows[x_ + offset]", "the column stride ignored"),
        ("offset = j * dw - pw", "offset = j - pw", "dilation ignored along columns"),
    ],
    "4.6": [
        ("area = padded_area if count_include_pad else", "area = padded_area if True else",
         "count_include_pad=False ignored"),
        ("y1 = min(y0 + kh, height + ph)", "y1 = y0 + kh", "a ceil_mode window reaches past the padding"),
        ("total / (divisor if divisor > 0 else area)", "total / area", "divisor_override ignored"),
    ],
    "4.7": [
        ("y0, y1 = (i * height) // oh, -(-((i + 1) * height) // oh)", "y0, y1 = (i * height) // oh, ((i + 1) * height) // oh",
         "the window end rounded down, not up"),
        ("x0, x1 = (j * width) // ow, -(-((j + 1) * width) // ow)", "x0, x1 = (j * width) // oh, -(-((j + 1) * width) // oh)",
         "columns divided by the output height"),
        ("total / ((y1 - y0) * (x1 - x0))", "total / ((y1 - y0) * (y1 - y0))", "divides by a square window"),
    ],
    "4.8": [
        ("min(max(flat_in[i], np.float32(0.0)), np.float32(6.0))", "max(flat_in[i], np.float32(0.0))",
         "ReLU6 not clipped at 6"),
        ("v / np.float32(6.0) + np.float32(0.5)", "v / np.float32(6.0)", "Hardswish without the + 1/2"),
        ("flat_out[i] = v * min(", "flat_out[i] = min(", "Hardswish returns the hard sigmoid, not x times it"),
    ],
    "4.9": [
        ("return src if cubic else np.maximum(src, 0.0)", "return np.maximum(src, 0.0)",
         "cubic sources clamped at 0 too: bicubic's first outputs shift"),
        ("src = (out + 0.5) * step - 0.5", "src = out * step", "half-pixel centres ignored when align_corners=False"),
        ("np.stack([1 - frac, frac], axis=1)", "np.stack([frac, 1 - frac], axis=1)", "blend weights swapped"),
        ('shift = 0.5 if mode == "nearest-exact" else 0.0', "shift = 0.0", "nearest-exact rounds like nearest"),
        ("src = (np.arange(size_out, dtype=np.float32) + np.float32(shift)) * step",
         "src = (np.arange(size_out) + shift) * (1 / scale if scale else size_in / size_out)",
         "nearest computed in float64: some outputs pick the other neighbour than PyTorch"),
    ],
    "4.10": [
        ("return ((a + 2) * d - (a + 3)) * d * d + 1", "return ((a + 2) * d - (a + 3)) * d + 1",
         "the near branch misses a factor d"),
        ("return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a", "return ((a * d - 5 * a) * d + 8 * a) * d + 4 * a",
         "the far branch's constant has the wrong sign"),
        ("np.stack([far(frac + 1), near(frac), near(1 - frac), far(2 - frac)], axis=-1)",
         "np.stack([far(2 - frac), near(1 - frac), near(frac), far(frac + 1)], axis=-1)", "taps in reverse order"),
    ],
    "4.11": [
        ("total += weight[o, t] * x[a, index[o, t], b]", "total += weight[o, t] * x[a, index[o, t] - 1, b]",
         "reads the tap before the table's index"),
        ("for t in range(index.shape[1]):", "for t in range(index.shape[1] - 1):", "drops the last tap"),
        ("total = np.float32(0.0)", "total = np.float32(1.0)", "starts each sum at 1"),
    ],
}
