"""Typical bugs planted into lesson 09's exercises: each must make its check print FAIL with expected vs got.

{exercise: [(exact text in the solution cell, buggy replacement, what the bug is), ...]}
"""

BUGS = {
    "9.1": [
        ('item_type, n = self.scalar("<I", what), self.scalar("<Q", what)',
         'item_type, n = self.scalar("<I", what), self.scalar("<I", what)',
         "reads the array length as u32, not u64"),
        ("return [self.value(item_type, what) for _ in range(n)]",
         "return [self.value(item_type, what) for _ in range(n - 1)]",
         "off by one: an array of strings loses its last element"),
        ("if type_id != ARRAY:", "if False:", "an unknown type id is read as an array"),
    ],
    "9.2": [
        ("data_start = -(-cursor.at // alignment) * alignment", "data_start = cursor.at",
         "the data section is not rounded up to the alignment"),
        ('alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)', "alignment = DEFAULT_ALIGNMENT",
         "general.alignment is ignored"),
        ('found.append((name, ne, cursor.scalar("<I", what), cursor.scalar("<Q", what)))',
         'found.append((name, ne[::-1], cursor.scalar("<I", what), cursor.scalar("<Q", what)))',
         "ne taken outermost first: the shape comes out reversed"),
    ],
    "9.3": [
        ("out[i, j] = d * np.float32(q - 256 if q >= 128 else q)", "out[i, j] = d * np.float32(q)",
         "codes read as unsigned bytes"),
        ("q = int(blocks[i, 2 + j])", "q = int(blocks[i, 1 + j])", "off by one: the codes start at byte 1"),
        ("d = half_to_float(blocks[i, 0], blocks[i, 1])", "d = half_to_float(blocks[i, 1], blocks[i, 0])",
         "the scale's bytes swapped (big-endian)"),
    ],
    "9.4": [
        ("out[i, j + 16] = d * np.float32(byte >> 4) + m", "out[i, j + 16] = d * np.float32(byte >> 4)",
         "the minimum m is left out of the high half"),
        ("out[i, j] = d * np.float32(byte & 0x0F) + m\n            out[i, j + 16] = d * np.float32(byte >> 4) + m",
         "out[i, j] = d * np.float32(byte >> 4) + m\n            out[i, j + 16] = d * np.float32(byte & 0x0F) + m",
         "nibbles swapped: the high nibble taken as the first half"),
        ("byte = blocks[i, 4 + j]", "byte = blocks[i, 2 + j]", "codes read from byte 2, over the minimum"),
    ],
    "9.5": [
        ("out[i, j] = d * np.float32((byte & 0x0F) - 8)", "out[i, j] = d * np.float32(byte & 0x0F)",
         "codes not centred on 8"),
        ("out[i, j + 16] = d * np.float32((byte >> 4) - 8)", "out[i, 2 * j + 1] = d * np.float32((byte >> 4) - 8)",
         "neighbours paired: element j's high nibble stored at 2j + 1"),
        ("byte = int(blocks[i, 2 + j])", "byte = int(blocks[i, 4 + j])", "codes read from byte 4, as in Q4_1"),
    ],
    "9.6": [
        ('return raw.view("<f4").reshape(shape)', 'return raw.view("<f4").copy().reshape(shape)',
         "F32 is copied instead of viewed"),
        ("reshape(shape), 16, out=out.view(np.uint32)", "reshape(shape), 8, out=out.view(np.uint32)",
         "BF16 shifted by 8 bits, not 16"),
        ('return raw.view("<f4").reshape(shape)', 'return raw.view(">f4").reshape(shape)', "F32 read big-endian"),
        ('"<f4" if ggml_type == "F32" else "<f2"', '"<f4" if ggml_type == "F32" else "<u2"', "F16 bits read as integers"),
        ("out = np.empty(shape, np.float32) if out is None else out", "out = np.empty(shape, np.float32)",
         "ignores the caller's out"),
    ],
    "9.7": [
        ("self._starts[name] = self._data_start + begin", "self._starts[name] = begin",
         "the start is relative to the data section, not the file"),
        ("if not 0 <= begin <= end <= available:", "if not 0 <= begin <= end < available:",
         "off by one: a tensor that ends the file is refused"),
        ("if end - begin != size:", "if end - begin < size:", "a range longer than the tensor is accepted"),
        ("if not 0 <= begin <= end <= available:", "if not 0 <= begin <= end:", "a range past the end of the file is accepted"),
    ],
}
