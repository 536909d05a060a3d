"""kuiper: a deep-learning inference engine built one lesson at a time (see the course README)."""

from kuiper.errors import DeviceError, DTypeError, KuiperError, ShapeError
from kuiper.tensor import Tensor

__version__ = "0.1.0"
__all__ = ["Tensor", "KuiperError", "ShapeError", "DTypeError", "DeviceError", "__version__"]
