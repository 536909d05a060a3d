# Generated from solutions/13_cuda.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import cache
from importlib.resources import files
from pathlib import Path

import numpy as np

from kuiper.cuda.device import cupy_module
from kuiper.errors import KernelError, ShapeError


WARPS_PER_BLOCK = 4  # sgemv: a block of 32 × 4 threads computes 4 outputs


def sources() -> list[str]:
    """The names of the CUDA C files in kuiper/cuda, without '.cu'."""
    return sorted(p.name[:-3] for p in files("kuiper.cuda").iterdir() if p.name.endswith(".cu"))


def source(name: str) -> str:
    """The text of kuiper/cuda/{name}.cu."""
    path = files("kuiper.cuda") / f"{name}.cu"
    if not path.is_file():
        raise KernelError(f"kuiper/cuda/{name}.cu: no such CUDA source, expected one of {', '.join(sources())}")
    return path.read_text()


def compile_cubin(name: str, arch: str = "sm_80") -> bytes:
    """kuiper/cuda/{name}.cu compiled by nvcc for `arch` (sm_80: A100, sm_90: H100); needs no GPU."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise KernelError(f"kuiper/cuda/{name}.cu: nvcc is not on PATH (it comes with the CUDA toolkit)")
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = Path(tmp) / f"{name}.cu", Path(tmp) / f"{name}.cubin"
        src.write_text(source(name))
        run = subprocess.run([nvcc, f"-arch={arch}", "--cubin", "-o", str(cubin), str(src)],
                             capture_output=True, text=True)
        if run.returncode:
            raise KernelError(f"kuiper/cuda/{name}.cu: nvcc -arch={arch} failed:\n{run.stderr}")
        return cubin.read_bytes()


@cache
def module(name: str):
    """kuiper/cuda/{name}.cu compiled by cupy for this process's GPU (once): a cupy.RawModule."""
    return cupy_module().RawModule(code=source(name))


def sgemv(x, w, vectorised: bool = True):
    """x (T, K) @ w.T for w (N, K), cupy arrays: one warp per output; float4 loads when vectorised."""
    cp = cupy_module()
    (n_tokens, k), n = x.shape, w.shape[0]
    if vectorised and (k % 4 or x.data.ptr % 16 or w.data.ptr % 16):
        raise ShapeError(f"sgemv_f32x4: K = {k} must be a multiple of 4 and x, w 16-byte aligned")
    x, w = cp.ascontiguousarray(x, cp.float32), cp.ascontiguousarray(w, cp.float32)
    out = cp.empty((n_tokens, n), cp.float32)
    kernel = module("sgemv").get_function("sgemv_f32x4" if vectorised else "sgemv_f32")
    kernel((-(-n // WARPS_PER_BLOCK), n_tokens), (32, WARPS_PER_BLOCK), (w, x, out, np.int32(n), np.int32(k)))
    return out


def rmsnorm(x, weight, eps: float, threads: int = 256):
    """RMSNorm of each row of the cupy array x (rows, D) with warp-shuffle reductions."""
    cp = cupy_module()
    out = cp.empty_like(x)
    module("norm").get_function("rmsnorm_f32")((x.shape[0],), (threads,),
                                                (x, weight, out, np.int32(x.shape[1]), np.float32(eps)))
    return out


def softmax(x, threads: int = 256):
    """Softmax of each row of the cupy array x (rows, n) with warp-shuffle reductions."""
    cp = cupy_module()
    out = cp.empty_like(x)
    module("norm").get_function("softmax_f32")((x.shape[0],), (threads,), (x, out, np.int32(x.shape[1])))
    return out
