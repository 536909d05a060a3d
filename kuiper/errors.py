# Generated from solutions/01_tensor.py, solutions/02_graph.py, solutions/03_registry.py, solutions/04_conv_pooling.py, solutions/05_expression.py, solutions/06_resnet.py, solutions/09_weights.py, solutions/10_tokenizers.py, solutions/13_cuda.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations


class KuiperError(Exception):
    """Base of every error kuiper raises on bad input: catch this to catch them all."""


class ShapeError(KuiperError, ValueError):
    """A shape, size or padding that does not fit; the message gives expected and actual."""


class DTypeError(KuiperError, TypeError):
    """An element type kuiper does not support."""


class DeviceError(KuiperError, RuntimeError):
    """A device that is unknown or not available on this machine."""


class PnnxError(KuiperError, ValueError):
    """A malformed .pnnx.param or .pnnx.bin; the message starts with file:line."""


class GraphError(KuiperError):
    """A graph that cannot run: a cycle, a missing producer, a layer with the wrong outputs."""


class LayerError(KuiperError, ValueError):
    """An operator that cannot become a layer: unknown type, or a missing or wrong parameter or weight."""


class UnsupportedError(LayerError):
    """A setting kuiper does not implement (a mode, a padding_mode, antialias): the message names
    the operator, the setting and the supported values."""


class ExpressionError(KuiperError, ValueError):
    """A pnnx.Expression string that does not lex or parse; the message gives the column."""


class ImageError(KuiperError, ValueError):
    """An input image that is missing or cannot be decoded; the message names the file."""


class GGUFError(KuiperError, ValueError):
    """A malformed or unsupported .gguf file; the message starts with the file's path."""


class SafetensorsError(KuiperError, ValueError):
    """A malformed .safetensors file or config.json; the message starts with the file's path."""


class TokenizerError(KuiperError, ValueError):
    """A tokenizer file or metadata field kuiper cannot read, or a token the vocabulary lacks."""


class KernelError(KuiperError, RuntimeError):
    """A CUDA C source that is missing or does not compile; the message names the .cu file."""
