"""Typical bugs planted into lesson 12's exercises: each check must FAIL on each and say what it expected.

(exact text in the solution's exercise cell, buggy replacement, what the bug is)"""

BUGS = {
    "12.1": [
        ("        qkv = qkv + block.bqkv", "        qkv = qkv", "the bias is ignored"),
        ("    k = qkv[:, q_size:q_size + kv_size]", "    k = qkv[:, q_size + kv_size:]", "k is taken from v's rows"),
        ("    q = qkv[:, :q_size].reshape(len(h), config.n_heads, config.head_dim)",
         "    q = qkv[:, :q_size].reshape(config.n_heads, len(h), config.head_dim).transpose(1, 0, 2)",
         "q is split into heads in the wrong axis order"),
    ],
    "12.2": [
        ("weight, eps).reshape(x.shape)", "np.ones_like(weight), eps).reshape(x.shape)", "the gain is ignored"),
        ("np.ascontiguousarray(x).reshape(-1, x.shape[-1]), weight, eps)",
         "np.ascontiguousarray(x).reshape(len(x), -1), np.tile(weight, x.shape[1]), eps)",
         "normalises each token's heads together instead of each head"),
    ],
    "12.3": [
        ("            ranks[base64.b64decode(token, validate=True)] = int(rank)",
         "            ranks[base64.b64decode(token, validate=True)] = number",
         "the line number is taken as the rank (off by one)"),
        ("            ranks[base64.b64decode(token, validate=True)]", "            ranks[token.encode()]",
         "the base64 is not decoded"),
        ("f\"{path}:{number}: expected 'base64-token rank'", "f\"{path}: expected 'base64-token rank'",
         "the error does not name the line"),
        ("            ranks[base64.b64decode(token, validate=True)]", "            ranks[base64.b64decode(token)]",
         "invalid base64 characters are silently dropped"),
    ],
    "12.4": [
        ("_, i = min(candidates)", "_, i = max(candidates)", "merges the highest rank first"),
        ("while len(parts) > 1:", "while len(parts) > 2:", "stops one merge early"),
    ],
    "12.5": [
        ("for i in range(1, len(token))", "for i in range(1, len(token) - 1)", "misses the last split (off by one)"),
        ("if token[:i] in ranks and token[i:] in ranks", "if token[:i] in ranks",
         "does not check that the right half is a token"),
        ("    return {(token[:i], token[i:]): rank for", "    return {(token[:i], token[i:]): ranks[token[:i]] for",
         "gives a pair its left half's rank"),
    ],
}
