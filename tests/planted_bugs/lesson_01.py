"""Typical bugs planted into lesson 01's exercises: each must make its check print FAIL."""

BUGS = {
    "1.7": [
        ("Tensor(b, dtype=a.dtype, device=a.device)", "Tensor(b, device=a.device)",
         "a number keeps its own dtype, so a float16 tensor times 3 comes out float32"),
        ("    broadcast_shapes(a.shape, b.shape)\n", "",
         "shapes are not checked, so a mismatch raises numpy's error instead of ShapeError"),
        ("if a.device != b.device:", "if False:",
         "operands on different devices are not refused"),
        ("op(a.data, b.data)", "op(b.data, a.data)", "operands swapped: a - b computes b - a"),
    ],
}
