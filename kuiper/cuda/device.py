# Generated from solutions/13_cuda.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import os
import sys
from functools import cache
from types import ModuleType

import numpy as np
from numba.core import config

from kuiper.errors import DeviceError


@cache
def cuda_problem() -> str | None:
    """Why device 'cuda' cannot be used here (no cupy, no driver, no GPU), or None when it can."""
    try:
        import cupy
    except ImportError:
        return "cupy is not installed (pip install cupy-cuda12x, or cupy-cuda11x for CUDA 11)"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError when there is no driver
        return f"cupy finds no usable CUDA driver ({type(err).__name__}: {err})"
    return None if count > 0 else "cupy finds no CUDA GPU"


def cuda_available() -> bool:
    """True when cupy is installed and sees a GPU, so device 'cuda' works; never raises."""
    return cuda_problem() is None


def cupy_module() -> ModuleType:
    """The cupy module; DeviceError saying why when device 'cuda' is not available."""
    problem = cuda_problem()
    if problem:
        raise DeviceError(f"device 'cuda' is not available: {problem}")
    import cupy
    return cupy


def array_module(array: object) -> ModuleType:
    """cupy for an array in GPU memory, numpy otherwise: launchers allocate outputs beside inputs."""
    return cupy_module() if hasattr(array, "__cuda_array_interface__") else np


def device_module() -> ModuleType:
    """The array module of device 'cuda': cupy on a GPU, numpy under numba's simulator (whose kernels
    read host memory); DeviceError saying why when there is neither."""
    if simulating():
        return np
    cupy = cupy_module()
    config.CUDA_ARRAY_INTERFACE_SYNC = False  # cupy and numba launch on the same default stream: no wait between
    return cupy


def to_device(array: object, device: str) -> object:
    """`array` as a numpy array ('cpu') or an array of device 'cuda'; copied only when it moves."""
    if device == "cpu":
        return cupy_module().asnumpy(array) if hasattr(array, "__cuda_array_interface__") else np.asarray(array)
    if device == "cuda" and simulating():  # the simulator copies every kernel argument back: keep it writable
        return np.require(array, requirements="W")
    if device == "cuda":
        return device_module().asarray(array)
    raise DeviceError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def use_simulator() -> None:
    """Run numba.cuda kernels on numba's CPU simulator; call it before numba.cuda is first imported."""
    if "numba.cuda" in sys.modules and not config.ENABLE_CUDASIM:
        raise DeviceError("numba.cuda is already imported for the GPU: call use_simulator() before "
                          "importing kuiper.cuda.kernels, or start Python with NUMBA_ENABLE_CUDASIM=1")
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    config.reload_config()


def simulating() -> bool:
    """True when numba.cuda kernels run on the CPU simulator."""
    return bool(config.ENABLE_CUDASIM)
