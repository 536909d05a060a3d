"""GPU kernels (lesson 10): numba.cuda kernels, CUDA C sources (*.cu) and the LLM backend for 'cuda'.

Importing this package needs neither cupy nor a GPU: cupy is imported when an array goes to the GPU,
and numba.cuda when kuiper.cuda.kernels is imported (set NUMBA_ENABLE_CUDASIM=1, or call
kuiper.cuda.device.use_simulator(), before that to run the kernels on numba's CPU simulator).
"""

from kuiper.cuda.device import cuda_available, to_device

__all__ = ["cuda_available", "to_device"]
