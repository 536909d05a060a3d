"""The built-in layers, one module per family; importing this package registers them all."""

from kuiper.layers import activation, linear, shape  # noqa: F401
