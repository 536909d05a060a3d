"""kuiper: a deep-learning inference engine built one lesson at a time (see the course README).

KUIPER_BUILD=student makes `import kuiper` give the student's own build instead (kuiper/workspace.py).
"""

import os as _os

# numpy's OpenBLAS keeps its idle threads spinning for 2**28 cycles (a tenth of a second) after each
# matrix multiply; on a machine with few cores they take the cores that numba's threads and the
# next multiply need (measured: 2-10 x the CPU time of a CNN forward on two busy cores). 2**4
# cycles makes them sleep almost at once. OpenBLAS reads this when numpy loads it: set before numpy.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

if _os.environ.get("KUIPER_BUILD") == "student":
    from kuiper import workspace as _workspace

    if not _workspace.is_student_build():
        _workspace.use_student_build()  # sys.modules["kuiper"] is now the student build


from kuiper.errors import DeviceError, DTypeError, GraphError, KuiperError, LayerError, PnnxError, ShapeError
from kuiper.graph import RuntimeGraph
from kuiper.registry import load, register
from kuiper.tensor import Tensor

__version__ = "0.1.0"
__all__ = ["Tensor", "RuntimeGraph", "load", "register", "KuiperError", "ShapeError", "DTypeError",
           "DeviceError", "PnnxError", "GraphError", "LayerError", "__version__"]

import kuiper.layers  # noqa: E402,F401  (registers the built-in layers; they import the registry above)
