"""Typical bugs planted into lesson 06's exercises: each must make its check print FAIL."""

BUGS = {
    "6.1": [
        ("top, left = round((new[1] - size) / 2), round((new[0] - size) / 2)",
         "top, left = (new[1] - size) // 2, (new[0] - size) // 2", "the crop offset truncated instead of rounded"),
        ("    if width <= height:\n", "    if width >= height:\n", "the longer side resized to `resize`"),
        ("((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)", "((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 1, 0)",
         "rows and columns swapped when moving channels first"),
        ("image = image.resize(new, Image.BILINEAR)", "image = image.resize(new, Image.NEAREST)", "nearest instead of bilinear"),
    ],
    "6.2": [
        ("np.exp(logits - logits.max(axis=-1, keepdims=True))", "np.exp(logits)", "no shift by the maximum: overflows"),
        ("shifted / shifted.sum(axis=-1, keepdims=True)", "shifted / shifted.sum()", "normalised over the whole batch"),
        ("logits.max(axis=-1, keepdims=True)", "logits.max()", "shifted by the batch maximum: rows of small logits underflow"),
    ],
    "6.3": [
        ("best = best[np.argsort(values[best])[::-1]]", "best = best[np.argsort(values[best])]", "smallest first"),
        ("    k = min(k, values.size)\n", "", "k larger than the size is not handled"),
        ("best = best[np.argsort(values[best])[::-1]]", "best = np.sort(best)", "the k largest sorted by index, not by value"),
    ],
    "6.4": [
        ("in_batches(paths, batch,", "in_batches(paths[:-1], batch,", "the last image is dropped"),
        ("side = input_size(graph, size, 224)", "side = input_size(graph, None, 224)", "the requested size is ignored"),
        ("    if shape[2] == -1:\n        return requested or default", "    if shape[2] == -1:\n        return default",
         "a free-size model ignores the requested size"),
        ("    return softmax(np.concatenate(logits))", "    return np.concatenate(logits)", "logits returned, not probabilities"),
        ("or shape[1] != 3 or", "or", "a one-channel input is accepted"),
    ],
    "6.5": [
        ("return relu(conv2(relu(conv1(x))) + shortcut)", "return relu(conv2(relu(conv1(x)))) + shortcut",
         "the final ReLU before the addition"),
        ("shortcut = downsample(x) if downsample is not None else x", "shortcut = x", "downsample ignored"),
        ("return relu(conv2(relu(conv1(x))) + shortcut)", "return relu(conv2(conv1(x)) + shortcut)",
         "no ReLU between the convolutions"),
    ],
    "6.6": [
        ("                dst[i] = src[i] + b\n", "                dst[i] = src[i]\n", "identity: the bias is not added"),
        ("dst[i] = min(max(src[i] + b, zero), six)", "dst[i] = max(src[i] + b, zero)", "ReLU6 not clipped at 6"),
        ("dst[i] = v / (one + exp_approx(-v))", "dst[i] = v / (one + exp_approx(v))", "SiLU with e^v instead of e^-v"),
        ("src, dst, b = planes[n, k], out[n, k], bias[k]", "src, dst, b = planes[n, k], out[n, k], bias[n]",
         "the bias indexed by the image, not the channel"),
    ],
    "6.7": [
        ("iy = 2 * ty - ph + i", "iy = 2 * ty + i", "the top padding ignored"),
        ("v0[tx], v1[tx], v2[tx], v3[tx] = a - e, b + e, e - b, b - f",
         "v0[tx], v1[tx], v2[tx], v3[tx] = a - e, b + e, e - b, f - b", "B's last column with the wrong sign"),
        ("a, b, e, f = r[i, 2 * tx], r[i, 2 * tx + 1], r[i, 2 * tx + 2], r[i, 2 * tx + 3]",
         "a, b, e, f = r[i, tx], r[i, tx + 1], r[i, tx + 2], r[i, tx + 3]", "tiles one column apart instead of two"),
        ("t0 = (n * th + ty) * tw", "t0 = ty * tw", "every image's tiles written over the first image's"),
    ],
    "6.8": [
        ("s[1, q, tx] = m1[tx] - m2[tx] - m3[tx]", "s[1, q, tx] = m1[tx] - m2[tx] + m3[tx]",
         "Aᵀ's second row with the wrong sign on M3"),
        ("row[ow - 1] = s[i, 0, tw - 1] + s[i, 1, tw - 1] + s[i, 2, tw - 1]",
         "row[ow - 1] = s[i, 1, tw - 1] - s[i, 2, tw - 1] - s[i, 3, tw - 1]",
         "the last column of an odd width from the tile's second column"),
        ("t0 = (n * th + ty) * tw", "t0 = (ty * n_batch + n) * tw", "tiles read tile row first, image second"),
    ],
}
