"""Typical bugs planted into lesson 14's exercises: each check must FAIL on each and say what it expected.

(exact text in the solution's exercise cell, buggy replacement, what the bug is)"""

BUGS = {
    "14.1": [
        ("qw.scales[:, :, None]", "qw.scales[:, None, :]", "the scales broadcast along the wrong axis"),
        (" * qw.scales[:, :, None]).reshape", ").reshape", "the scales are ignored"),
    ],
    "14.2": [
        ("np.abs(blocks).max(axis=-1) / np.float32(127)", "blocks.max(axis=-1) / np.float32(127)",
         "the scale ignores negative weights (no abs)"),
        ("/ np.float32(127)", "/ np.float32(128)", "maps the largest weight to 128, off by one"),
        ("round_half_away(blocks * inverse[:, :, None])", "np.round(blocks * inverse[:, :, None])",
         "halves rounded to even (np.round), not away from zero like llama.cpp"),
        ("if w.ndim != 2 or group <= 0 or w.shape[1] % group:", "if w.ndim != 2 or group <= 0:",
         "K not a multiple of the group is not refused"),
    ],
    "14.3": [
        ("np.concatenate([scales, qw.q.view(np.uint8).reshape(n, -1, Q8_0_BLOCK)], axis=2)",
         "np.concatenate([qw.q.view(np.uint8).reshape(n, -1, Q8_0_BLOCK), scales], axis=2)",
         "to_q8_0 puts the scale after the values"),
        ("scales = blocks[:, :, :2]", "scales = blocks[:, :, 32:]", "from_q8_0 reads the scale from the last bytes"),
        ("if k % Q8_0_BLOCK or blocks.size != n * k // Q8_0_BLOCK * 34:", "if k % Q8_0_BLOCK:",
         "from_q8_0 does not check the size"),
    ],
    "14.4": [
        ("for j in range(q.size):", "for j in range(q.size - 1):", "misses the last weight (off by one)"),
        ("    return acc * scale", "    return acc", "the scale is ignored"),
    ],
    "14.5": [
        ("q_groups[n, g], scales[n, g])", "q_groups[n, g], scales[n, 0])", "uses the row's first scale for every group"),
        ("for n in prange(n_rows):", "for n in prange(n_rows - 1):", "misses the last row (off by one)"),
    ],
    "14.6": [
        ("np.float32(q[start + j]) * scales[g]", "np.float32(q[start + j]) * scales[0]", "widen_row uses the first scale for every group"),
        ("        start = g * group", "        start = g", "widen_row writes group g at g instead of g * group"),
        ("prange((n_rows + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK)", "prange(n_rows // ROWS_PER_BLOCK)",
         "the last, partial block of rows is skipped"),
    ],
    "14.7": [
        ("ids[1:]].mean()", "ids[:-1]].mean()", "each position scores its own token, not the next one"),
        ("top = logits.max(axis=1, keepdims=True)", "top = 0", "no max subtraction: exp overflows"),
        ("np.exp(-log_probs", "np.exp(log_probs", "the sign of the mean is lost"),
    ],
    "14.8": [
        ("acc0 += low * np.float32(byte0 & 0x0F) + high * np.float32(byte0 >> 4)",
         "acc0 += low * np.float32(byte0 >> 4) + high * np.float32(byte0 & 0x0F)", "the low and high nibbles swapped"),
        ("half(halves, row0, at + uint64(2)) * sums[b]", "half(halves, row0, at + uint64(2))",
         "the minimum m is not multiplied by the block's sum of x"),
        ("total1 += half(halves, row1, at) * acc1", "total1 += half(halves, row0, at) * acc1",
         "the second row uses the first row's scale d"),
        ("for j in range(uint64(32)):\n            sums[b]", "for j in range(uint64(16)):\n            sums[b]",
         "each block's sum of x covers only its first 16 values"),
        ("for pair in prange((n_rows + 1) // 2):", "for pair in prange(n_rows // 2):",
         "an odd last row is never computed"),
    ],
}
