"""Typical bugs planted into lesson 10's exercises: each must make its check print FAIL with expected vs got.

{exercise: [(exact text in the solution cell, buggy replacement, what the bug is), ...]}
"""

BUGS = {
    "10.1": [
        ("*range(33, 127)", "*range(33, 126)", "off by one: '~' (126) is not kept as itself"),
        ("*range(174, 256)", "*range(173, 256)", "the soft hyphen (173) kept as itself"),
        ("others = iter(range(256, 512))", "others = iter(range(257, 513))", "the other bytes start at chr(257)"),
    ],
    "10.2": [
        ("        if match.start() > start:\n            yield text[start:match.start()]\n", "",
         "the stretches between matches are dropped"),
        ("    if start < len(text):\n        yield text[start:]\n", "", "the stretch after the last match is dropped"),
        ("pieces = [part for piece in pieces for part in _isolate(piece, compiled)]",
         "pieces = [part for part in _isolate(text, compiled)]", "each regex splits the whole text, not the pieces"),
    ],
    "10.3": [
        ("best = min(range(len(ranks)), key=ranks.__getitem__)",
         "best = next((i for i, r in enumerate(ranks) if r < len(self.merges)), 0)",
         "joins the leftmost mergeable pair, not the one of lowest rank"),
        ("best = min(range(len(ranks)), key=ranks.__getitem__)",
         "best = max(range(len(ranks)), key=lambda i: (ranks[i] < len(self.merges), ranks[i]))",
         "joins the mergeable pair of highest rank"),
        ("while len(parts) > 1:", "while len(parts) > 2:", "off by one: stops with two parts left"),
    ],
    "10.4": [
        ("pos, shift = pos + 1, shift + 7", "pos, shift = pos + 1, shift + 8", "8 bits per varint byte, not 7"),
        ("number, wire = key >> 3, key & 7", "number, wire = key >> 2, key & 3", "the key split at 2 bits, not 3"),
        ("size = 8 if wire == 1 else 4", "size = 4 if wire == 1 else 8", "fixed64 and fixed32 sizes swapped"),
        ("value, pos = data[pos:pos + size], pos + size\n        elif wire == 2:",
         "value, pos = int.from_bytes(data[pos:pos + size], \"little\"), pos + size\n        elif wire == 2:",
         "fixed32 and fixed64 values decoded as integers, not kept as bytes"),
    ],
    "10.5": [
        ("score > best_score", "score >= best_score", "on a tie the rightmost pair wins"),
        ("score > best_score", "score < best_score", "the lowest score wins"),
        ("for i in range(len(symbols) - 1):", "for i in range(len(symbols) - 2):", "off by one: the last pair is never merged"),
    ],
    "10.6": [
        ("ids += [self.byte_ids[byte] for byte in part.encode()]",
         "ids += [self.byte_ids[byte] for byte in part.encode()[:1]]", "only the first byte of a character is kept"),
        ("            elif self.byte_ids:\n", "            elif False:\n", "no byte fallback: <unk> instead"),
        ("            elif self.unk_id is not None:\n                ids.append(self.unk_id)\n", "",
         "no <unk>: an unknown part raises even when <unk> exists"),
    ],
    "10.7": [
        ('return turns + ("<|im_start|>assistant\\n" if add_generation_prompt else "")', "return turns",
         "add_generation_prompt is ignored"),
        ('if default and messages and messages[0]["role"] != "system":', "if False:",
         "the template's default system message is left out"),
        ("<|im_end|>\\n\" for m in messages)", "<|im_end|>\" for m in messages)", "no newline after <|im_end|>"),
    ],
}
