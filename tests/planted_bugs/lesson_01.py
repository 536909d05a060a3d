"""Lesson 01's planted bugs: (exact text of the solution cell, buggy replacement, what the bug is)."""

BUGS = {
    '1.1': [
        ('return self.shape[-1] if self.ndim >= 1 else 1', 'return self.shape[0] if self.ndim >= 1 else 1', 'cols reads the first dimension, not the last'),
        ('return self.shape[-2] if self.ndim >= 2 else 1', 'return self.shape[-1] if self.ndim >= 2 else 1', 'rows reads the last dimension'),
        ('return self.shape[-3] if self.ndim >= 3 else 1', 'return self.shape[-3] if self.ndim >= 3 else 0', 'a missing channel dimension counts as 0'),
    ],
    '1.2': [
        ('order="C" if row_major else "F"', 'order="F" if row_major else "C"', 'row- and column-major swapped'),
        ('if flat.size != self.size:', 'if flat.size > self.size:', 'too few values are not a ShapeError'),
        ('else "F")\n    return self', 'else "F")\n    return flat', 'returns the values, not the tensor'),
    ],
    '1.3': [
        ('return Tensor(self.data.T.reshape(shape[::-1]).T, device=self.device)', 'return Tensor(self.data.reshape(shape), device=self.device)', 'column-major reshape reads row by row'),
        ('self.data.T.reshape(shape[::-1]).T', 'self.data.T.reshape(shape).T', 'the target shape is not reversed'),
        ('return Tensor(self.data.reshape(shape), device=self.device)', 'return Tensor(self.data.reshape(shape, order="F"), device=self.device)', 'row-major reshape reads column by column'),
    ],
    '1.4': [
        ('left:left + self.cols', ':self.cols', 'ignores `left`'),
        ('self.rows + top + bottom', 'self.rows + top', 'forgets the bottom rows'),
        ('Tensor.full(shape, value,', 'Tensor.full(shape, 0,', 'pads with zeros whatever `value` is'),
    ],
    '1.5': [
        ('if out.shape != self.data.shape:', 'if out.size != self.data.size:', 'compares sizes, not shapes'),
        ('return Tensor(out, dtype=self.dtype, device=self.device)', 'return Tensor(out, device=self.device)', "loses the input's dtype"),
    ],
    '1.6': [
        ('(1,) * (ndim - len(a)) + tuple(a), (1,) * (ndim - len(b)) + tuple(b)', 'tuple(a) + (1,) * (ndim - len(a)), tuple(b) + (1,) * (ndim - len(b))', 'aligns the shapes on the left, not the right'),
        ('out.append(n if m == 1 else m)', 'out.append(max(m, n))', 'takes the larger size: (1,) with (0,) gives (1,)'),
        ('f"cannot broadcast {tuple(a)} with {tuple(b)}: "', 'f"cannot broadcast: "', 'the error names neither shape'),
    ],
    '1.7': [
        ('Tensor(b, dtype=a.dtype, device=a.device)', 'Tensor(b, device=a.device)', 'a number keeps its own dtype, so a float16 tensor times 3 comes out float32'),
        ('    broadcast_shapes(a.shape, b.shape)\n', '', "shapes are not checked, so a mismatch raises numpy's error instead of ShapeError"),
        ('if a.device != b.device:', 'if False:', 'operands on different devices are not refused'),
        ('op(a.data, b.data)', 'op(b.data, a.data)', 'operands swapped: a - b computes b - a'),
    ],
}
