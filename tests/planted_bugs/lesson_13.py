"""Typical bugs planted into lesson 13's exercises: each check must FAIL on each and say what it expected.

(exact text in the solution's exercise cell, buggy replacement, what the bug is)"""

BUGS = {
    "13.1": [
        ("    if i < out.size:", "    if i <= out.size:", "one thread past the end writes (off by one)"),
        ("        out[i] = a[i] + b[i]", "        out[i] = a[i] + a[i]", "b is ignored"),
        ("    i = cuda.grid(1)", "    i = cuda.threadIdx.x", "the block offset is forgotten: every block writes block 0's elements"),
    ],
    "13.2": [
        ("    stride = cuda.blockDim.x // 2", "    stride = cuda.blockDim.x // 4", "the tree starts at a quarter: half the partial sums are lost"),
        ("/ float32(x.shape[1])", "/ float32(cuda.blockDim.x)", "the mean divides by the threads, not by D"),
        ("out[row, i] = x[row, i] * scale * weight[i]", "out[row, i] = x[row, i] * scale", "the gain is ignored"),
    ],
    "13.3": [
        ("e = math.exp(x[row, i] - top)", "e = math.exp(x[row, i])", "no max subtraction: exp overflows"),
        ("scale = float32(1.0) / block_sum(shared, total)", "scale = float32(1.0) / total",
         "each thread divides by its own partial sum, not the block's"),
        ("    top = block_max(shared, top)\n", "", "each thread shifts by its own maximum, not the row's"),
    ],
    "13.4": [
        ("n, t, tid = cuda.blockIdx.x, cuda.blockIdx.y,", "t, n, tid = cuda.blockIdx.x, cuda.blockIdx.y,",
         "output and token axes of the grid swapped"),
        ("for k in range(tid, x.shape[1], cuda.blockDim.x):", "for k in range(tid, x.shape[1] - 1, cuda.blockDim.x):",
         "misses the last column (off by one)"),
        ("total = block_sum(shared, partial)", "total = partial", "thread 0's partial sum, not the block's"),
    ],
    "13.5": [
        ("if idx < n_tokens * n_heads * half:", "if idx <= n_tokens * n_heads * half:", "one thread past the end (off by one)"),
        ("out[t, h, i] = x1 * c - x2 * s", "out[t, h, i] = x1 * c + x2 * s", "the rotation's sign"),
        ("idx // half % n_heads", "idx % n_heads", "the head index is wrong"),
    ],
    "13.6": [
        ("(other == best[tid] and at < where[tid])", "(other == best[tid] and at > where[tid])",
         "the last maximum wins a tie in the tree"),
        ("if x[i] > value:", "if x[i] >= value:", "a thread keeps the last of its tied maxima"),
        ("stride = step // 2", "stride = step // 4", "the tree starts at a quarter: half the threads are never compared"),
    ],
    "13.7": [
        ("n_keys = pos + t + 1", "n_keys = pos + t", "the token does not attend to itself (off by one)"),
        ("kv = h // (q.shape[1] // k_cache.shape[0])", "kv = h % k_cache.shape[0]", "query heads mapped to the wrong KV heads"),
        ("score = dot * scale", "score = dot", "no 1 / sqrt(head_dim) scaling"),
        ("out[t, h, d] = acc / total", "out[t, h, d] = acc", "the weights are not normalised"),
    ],
    "13.8": [
        ("iy = col // ow * sh - ph + i * dh", "iy = col // ow * sh + ph + i * dh", "padding added instead of subtracted"),
        ("ix = col % ow * sw - pw + j * dw", "ix = col % ow * sw - pw + j", "the column dilation is ignored"),
        ("inside = 0 <= iy < x.shape[1] and 0 <= ix < x.shape[2]", "inside = iy < x.shape[1] and ix < x.shape[2]",
         "negative indices (the top and left padding) wrap around instead of reading 0"),
        ("row // kw % kh", "row % kh", "the kernel row is decoded wrongly"),
    ],
    "13.9": [
        ("c = k // (k_out // x.shape[1])", "c = k % x.shape[1]", "output channels mapped to the wrong input channel"),
        ("if 0 <= iy < x.shape[2] and 0 <= ix < x.shape[3]:", "if iy < x.shape[2] and ix < x.shape[3]:",
         "negative indices (the top and left padding) wrap around instead of adding 0"),
        ("                ix = x_ * sw - pw + j * dw\n                if 0", "                ix = x_ * sw - pw + j\n                if 0",
         "the column dilation is ignored"),
    ],
}
