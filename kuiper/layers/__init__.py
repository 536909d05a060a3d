"""The built-in layers, one module per family; importing this package registers them all."""

from kuiper.layers import activation, conv, expression, linear, norm, pooling, resize, shape  # noqa: F401
from kuiper.layers import creation, elementwise, indexing, linalg, normalization, padding, reduction  # noqa: F401
from kuiper.layers import attention, grid, transformer  # noqa: F401
