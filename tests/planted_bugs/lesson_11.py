"""Typical bugs planted into lesson 11's exercises: each must make its check print FAIL with expected vs got.

{exercise: [(exact text in the solution cell, buggy replacement, what the bug is), ...]}
"""

BUGS = {
    "11.1": [
        ("np.sqrt(total / x.shape[1] + np.float32(eps))", "np.sqrt(total / x.shape[1])", "eps is ignored"),
        ("np.sqrt(total / x.shape[1] + np.float32(eps))", "np.sqrt(total / (x.shape[1] - 1) + np.float32(eps))",
         "off by one: the mean of squares divides by D - 1"),
        ("            out[t, i] = x[t, i] * scale * weight[i]", "            out[t, i] = x[t, i] * scale", "the gain is ignored"),
    ],
    "11.2": [
        ("* gate_up[t, half + i]", "* gate_up[t, i]", "the gate is multiplied by itself, not by up"),
        ("out[t, i] = gate / (np.float32(1.0) + np.exp(-gate))", "out[t, i] = np.float32(1.0) / (np.float32(1.0) + np.exp(-gate))",
         "sigmoid instead of SiLU"),
        ("            gate = gate_up[t, i]", "            gate = gate_up[t, half + i]", "gate and up swapped"),
    ],
    "11.3": [
        ("x1 * c - x2 * s, x2 * c + x1 * s", "x1 * c + x2 * s, x2 * c - x1 * s", "rotates the wrong way"),
        ("x1, x2 = x[..., :half], x[..., half:]", "x1, x2 = x[..., 0::2], x[..., 1::2]",
         "pairs neighbours (Meta's layout), not i with i + d/2"),
        ("c, s = cos[:, None, :], sin[:, None, :]", "c, s = sin[:, None, :], cos[:, None, :]", "cos and sin swapped"),
        ("if factors is not None:\n        inv = inv / factors", "if factors is not None:\n        inv = inv * factors",
         "GGUF's rope factors multiply θ_i instead of dividing it"),
        ("    scale = rope_attention_factor(scaling)\n", "    scale = 1.0\n", "the tables miss YaRN's attention factor"),
        ('if scaling.get("attention_factor") is not None:', 'if False:', "an explicit attention_factor is ignored"),
        ("return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0", "return 0.1 * m * math.log(scale) + 1.0",
         "a factor <= 1 is not 1"),
    ],
    "11.4": [
        ("np.arange(length)[None, :] > pos + np.arange(tokens)[:, None]",
         "np.arange(length)[None, :] >= pos + np.arange(tokens)[:, None]", "off by one: a token cannot see itself"),
        ("scores *= np.float32(1 / math.sqrt(dim))", "scores *= np.float32(1 / dim)", "scaled by 1/d, not 1/sqrt(d)"),
        ("queries = q.reshape(tokens, kv_heads, group, dim).transpose(1, 2, 0, 3)",
         "queries = q.reshape(tokens, group, kv_heads, dim).transpose(2, 1, 0, 3)",
         "query heads grouped round-robin: head h reads KV head h % KV"),
        ("    if tokens > 1:\n        scores[", "    if tokens > 5:\n        scores[", "no causal mask for a short prompt"),
    ],
    "11.5": [
        ("keys, values = k_cache[h // group], v_cache[h // group]",
         "keys, values = k_cache[h % k_cache.shape[0]], v_cache[h % k_cache.shape[0]]",
         "head h reads KV head h % KV, not h // group"),
        ("scores[j] = total * scale", "scores[j] = total", "scores not scaled by 1/sqrt(d)"),
        ("    for h in range(heads):\n        keys, values = k_cache[h // group], v_cache[h // group]\n        for j in range(pos + 1):",
         "    for h in range(heads):\n        keys, values = k_cache[h // group], v_cache[h // group]\n        for j in range(pos):",
         "off by one: the token's own key is left out"),
        ("        out[h] = 0.0\n", "", "the output is not cleared before the sum"),
    ],
    "11.6": [
        ("before = np.cumsum(probs[order]) - probs[order]", "before = np.cumsum(probs[order])",
         "the mass including the token: the token that crosses p is dropped"),
        ("return kept / kept.sum()", "return kept", "not renormalised"),
        ("order = np.argsort(probs)[::-1]", "order = np.argsort(probs)", "sorted from least likely"),
    ],
    "11.7": [
        ("logits /= self.temperature", "logits *= self.temperature", "multiplies by the temperature"),
        ("np.partition(logits, -self.top_k)[-self.top_k]", "np.partition(logits, -self.top_k - 1)[-self.top_k - 1]",
         "off by one: top-k keeps k + 1 tokens"),
        ("logits[seen] / self.repetition_penalty,\n                                    logits[seen] * self.repetition_penalty",
         "logits[seen] * self.repetition_penalty,\n                                    logits[seen] / self.repetition_penalty",
         "the penalty makes seen tokens more likely"),
        ("if self.repetition_penalty != 1.0 and len(history):", "if False:", "the repetition penalty is ignored"),
    ],
    "11.8": [
        ("if token in stop or count == max_tokens - 1 or", "if token in stop or",
         "runs the model once too often after the last token"),
        ("logits = model.forward(np.array([token]), stats.position)", "logits = model.forward(np.array([token]), stats.position + 1)",
         "off by one: each new token goes one position too far"),
        ("logits = model.forward(np.asarray(prompt), pos)", "logits = model.forward(np.asarray(prompt), 0)",
         "the prompt ignores pos"),
        ("        if token in stop or count", "        if False or count", "stop tokens are ignored"),
    ],
    "11.9": [
        ("        size = -(-size // ALIGN) * ALIGN\n", "", "offsets not rounded up: an array starts mid cache line"),
        ("        size += a.nbytes", "        size += a.size", "advances by elements, not bytes: float32 arrays overlap"),
        ("        view[...] = a\n", "", "the values are never copied in"),
    ],
    "11.10": [
        ("for i in prange(n_rows):", "for i in prange(n_rows - 1):", "off by one: the last row is never summed"),
        ("for j in range(k):", "for j in range(k - 1):", "off by one: each sum leaves out the last column"),
        ("        total = np.float32(0.0)\n", "        total = w[i, 0] * x[0]\n", "the sum starts from the first product, counting it twice"),
    ],
}
