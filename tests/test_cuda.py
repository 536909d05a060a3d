"""Lesson 13's GPU code, tested without a GPU: every numba.cuda kernel on numba's CUDA simulator
against numpy, and compiled to PTX by NVVM (the simulator runs plain Python, so it cannot see what
numba refuses to compile for a GPU); every CUDA C file through nvcc for sm_80 and sm_90. With a GPU
and cupy, the same cases also run on the GPU, and so do the CUDA C kernels.

Why a child process for the simulator: numba picks the simulator or the real GPU once, when
numba.cuda is first imported, from NUMBA_ENABLE_CUDASIM. Setting the variable inside pytest only
works if nothing in this process (or this xdist worker) imported numba.cuda before — a fragile
condition that depends on test order and on how xdist spreads the files. So the simulated cases
run in one child process started with the variable set: this file, run as a script, prints each
case's error as JSON, and the tests here read that report. One interpreter start for all cases,
the same result with or without xdist, in any order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numba import boolean, float32, int64

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kuiper.cuda import cuda_c, llm_ops  # noqa: E402
from kuiper.cuda import cnn, kernels  # noqa: E402
from kuiper.cuda.cnn import activation, conv2d, pool2d  # noqa: E402
from kuiper.cuda.device import cuda_available, simulating, to_device, use_simulator  # noqa: E402
from kuiper.cuda.kernels import argmax_kernel, matvec_kernel, rmsnorm_kernel, softmax_kernel, vector_add  # noqa: E402
from kuiper.errors import DeviceError, KernelError, LayerError, ShapeError  # noqa: E402

LESSON = 13  # kuiper grade runs this file on the student build of lesson 13

TOLERANCE = 1e-5  # max |got - want| / max |want|


# ---- numpy references: the CPU backend's semantics ------------------------------------------

def ref_rmsnorm(x, weight, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def ref_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ref_rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def ref_attention(q, k_cache, v_cache, pos):
    n_tokens, n_heads, head_dim = q.shape
    group = n_heads // k_cache.shape[0]
    out = np.empty_like(q)
    for t in range(n_tokens):
        for h in range(n_heads):
            k, v = k_cache[h // group, :pos + t + 1], v_cache[h // group, :pos + t + 1]
            out[t, h] = ref_softmax(k @ q[t, h] / np.sqrt(head_dim)) @ v
    return out


def ref_swiglu(gate_up):
    gate, up = np.split(gate_up, 2, axis=-1)
    return gate / (1 + np.exp(-gate)) * up


def windows(x, kernel, stride, padding, dilation, fill):
    """x (N, C, H, W) padded with `fill`, as (N, C, OH, OW, kh, kw) windows."""
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=fill)
    span = (kernel - 1) * dilation + 1
    view = np.lib.stride_tricks.sliding_window_view(padded, (span, span), axis=(2, 3))
    return view[:, :, ::stride, ::stride, ::dilation, ::dilation]


def ref_conv2d(x, weight, bias, stride, padding, dilation, groups):
    k_out, c_group, kernel, _ = weight.shape
    win = windows(x, kernel, stride, padding, dilation, 0.0)
    per_group = k_out // groups
    outs = [np.einsum("ncyxij,kcij->nkyx", win[:, g * c_group:(g + 1) * c_group],
                      weight[g * per_group:(g + 1) * per_group]) for g in range(groups)]
    return np.concatenate(outs, 1) + bias[:, None, None]


def ref_avg_pool(x, kernel, stride, padding, count_include_pad):
    total = windows(x, kernel, stride, padding, 1, 0.0).sum((-2, -1))
    if count_include_pad:
        return total / kernel ** 2
    return total / windows(np.ones_like(x), kernel, stride, padding, 1, 0.0).sum((-2, -1))


# ---- the cases: each makes inputs, runs the GPU code on dev(inputs), returns (got, want) ------

def randn(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def case_vector_add(dev):
    a, b = randn(1, 70), randn(2, 70)
    out = dev(np.zeros(70, np.float32))
    vector_add[3, 32](dev(a), dev(b), out)
    return out, a + b


def case_rmsnorm_kernel_strided(dev):  # 8 threads for rows of 37: each thread takes 4 or 5 elements
    x, w = randn(3, 2, 37), randn(4, 37)
    out = dev(np.zeros_like(x))
    rmsnorm_kernel[2, 8](dev(x), dev(w), np.float32(1e-6), out)
    return out, ref_rmsnorm(x, w, 1e-6)


def case_softmax_kernel_strided(dev):
    x = randn(5, 3, 37, scale=10)
    x[0, 36] = 100  # exp(100) overflows float32 without the max subtraction
    out = dev(np.zeros_like(x))
    softmax_kernel[3, 4](dev(x), out)
    return out, ref_softmax(x)


def case_matvec_kernel_strided(dev):
    x, w = randn(6, 2, 33), randn(7, 5, 33)
    out = dev(np.zeros((2, 5), np.float32))
    matvec_kernel[(5, 2), 4](dev(x), dev(w), out)
    return out, x @ w.T


def case_rmsnorm(dev):
    x, w = randn(8, 3, 20), randn(9, 20)
    return llm_ops.rmsnorm(dev(x), dev(w), 1e-5), ref_rmsnorm(x, w, 1e-5)


def case_softmax(dev):
    x = randn(10, 2, 3, 13, scale=3)
    return llm_ops.softmax(dev(x)), ref_softmax(x)


def rope_inputs(n_tokens: int, head_dim: int, pos: int) -> tuple[np.ndarray, np.ndarray]:
    angles = np.arange(pos, pos + n_tokens)[:, None] * 10000.0 ** (-2 * np.arange(head_dim // 2) / head_dim)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def case_rope(dev):
    x = randn(11, 3, 2, 8)
    cos, sin = rope_inputs(3, 8, pos=4)
    return llm_ops.rope(dev(x), dev(cos), dev(sin)), ref_rope(x, cos, sin)


def attention_case(seed: int, n_tokens: int, n_heads: int, n_kv: int, head_dim: int, pos: int, length: int):
    def case(dev):
        q = randn(seed, n_tokens, n_heads, head_dim)
        k_cache, v_cache = randn(seed + 1, n_kv, length, head_dim), randn(seed + 2, n_kv, length, head_dim)
        got = llm_ops.attention(dev(q), dev(k_cache), dev(v_cache), pos)
        return got, ref_attention(q, k_cache, v_cache, pos)
    return case


def case_swiglu(dev):
    gate_up = randn(15, 2, 10, scale=3)
    return llm_ops.swiglu(dev(gate_up)), ref_swiglu(gate_up)


def case_matmul_matvec(dev):
    x, w = randn(16, 2, 20), randn(17, 5, 20)
    return llm_ops.matmul(dev(x), dev(w), method="matvec"), x @ w.T


def case_matmul_cublas(dev):
    x, w = randn(18, 3, 20), randn(19, 6, 20)
    return llm_ops.matmul(dev(x), dev(w)), x @ w.T


def case_embedding(dev):
    table, ids = randn(20, 9, 6), np.array([0, 8, 3, 3])
    return llm_ops.embedding(dev(table), dev(ids)), table[ids]


def case_argmax_ties(dev):
    logits = randn(21, 100)
    logits[[17, 60]] = 9.0  # two maxima: the first wins, as in np.argmax
    return np.array(llm_ops.argmax(dev(logits))), np.array(17)


def case_argmax_kernel_strided(dev):  # 8 threads: 17 and 25 are both thread 1's, which keeps the first
    logits = randn(23, 40)
    logits[[25, 17]] = 9.0
    out = dev(np.zeros(1, np.int64))
    argmax_kernel[1, 8](dev(logits), out)
    return out, np.array([17])


def case_argmax_negative(dev):
    logits = -np.abs(randn(22, 45)) - 1
    return np.array(llm_ops.argmax(dev(logits))), np.array(np.argmax(logits))


def conv_case(seed: int, channels: int, k_out: int, kernel: int, stride: int, padding: int, dilation: int,
              groups: int):
    def case(dev):
        x = randn(seed, 2, channels, 5, 6)
        weight, bias = randn(seed + 1, k_out, channels // groups, kernel, kernel), randn(seed + 2, k_out)
        got = conv2d(dev(x), dev(weight), dev(bias), stride, padding, dilation, groups)
        return got, ref_conv2d(x, weight, bias, stride, padding, dilation, groups)
    return case


def case_max_pool(dev):
    x = randn(30, 1, 2, 5, 5)
    return pool2d(dev(x), "max", 3, 2, 1), windows(x, 3, 2, 1, 1, -np.inf).max((-2, -1))


def case_max_pool_dilated(dev):
    x = randn(31, 1, 2, 6, 6)
    return pool2d(dev(x), "max", 2, 1, 0, dilation=2), windows(x, 2, 1, 0, 2, -np.inf).max((-2, -1))


def case_avg_pool_with_pad(dev):
    x = randn(32, 1, 2, 5, 5)
    return pool2d(dev(x), "avg", 3, 2, 1), ref_avg_pool(x, 3, 2, 1, count_include_pad=True)


def case_avg_pool_without_pad(dev):
    x = randn(33, 1, 2, 5, 5)
    got = pool2d(dev(x), "avg", 3, 2, 1, count_include_pad=False)
    return got, ref_avg_pool(x, 3, 2, 1, count_include_pad=False)


def activation_case(name: str, fn: Callable[[np.ndarray], np.ndarray]):
    def case(dev):
        x = randn(34, 3, 7, scale=4)
        return activation(dev(x), name), fn(x.astype(np.float64))
    return case


def case_resize_nearest(dev):
    x, rows, cols = randn(57, 2, 3, 4, 5), np.array([0, 0, 1, 3, 3, 2]), np.array([4, 0, 0, 2])
    return cnn.resize_nearest(dev(x), dev(rows), dev(cols)), x[:, :, rows][:, :, :, cols]


CASES: dict[str, Callable] = {
    "vector_add": case_vector_add,
    "rmsnorm_kernel_strided": case_rmsnorm_kernel_strided,
    "softmax_kernel_strided": case_softmax_kernel_strided,
    "matvec_kernel_strided": case_matvec_kernel_strided,
    "rmsnorm": case_rmsnorm,
    "softmax": case_softmax,
    "rope": case_rope,
    "attention_decode_gqa": attention_case(12, n_tokens=1, n_heads=4, n_kv=2, head_dim=8, pos=5, length=8),
    "attention_prefill_mqa": attention_case(40, n_tokens=3, n_heads=3, n_kv=1, head_dim=6, pos=0, length=4),
    "attention_chunk_mha": attention_case(43, n_tokens=2, n_heads=2, n_kv=2, head_dim=5, pos=3, length=5),
    "swiglu": case_swiglu,
    "matmul_matvec": case_matmul_matvec,
    "matmul_cublas": case_matmul_cublas,
    "embedding": case_embedding,
    "argmax_ties": case_argmax_ties,
    "argmax_kernel_strided": case_argmax_kernel_strided,
    "argmax_negative": case_argmax_negative,
    "conv2d_3x3_pad": conv_case(23, channels=2, k_out=3, kernel=3, stride=1, padding=1, dilation=1, groups=1),
    "conv2d_strided_dilated_groups": conv_case(26, channels=4, k_out=4, kernel=2, stride=2, padding=1,
                                               dilation=2, groups=2),
    "max_pool": case_max_pool,
    "max_pool_dilated": case_max_pool_dilated,
    "avg_pool_with_pad": case_avg_pool_with_pad,
    "avg_pool_without_pad": case_avg_pool_without_pad,
    "relu": activation_case("relu", lambda x: np.maximum(x, 0)),
    "sigmoid": activation_case("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    "silu": activation_case("silu", lambda x: x / (1 + np.exp(-x))),
    "hardswish": activation_case("hardswish", lambda x: x * np.clip(x + 3, 0, 6) / 6),
    "relu6": activation_case("relu6", lambda x: np.clip(x, 0, 6)),
    "hardsigmoid": activation_case("hardsigmoid", lambda x: np.clip(x / 6 + 0.5, 0, 1)),
    "conv2d_1x1_groups": conv_case(44, channels=4, k_out=6, kernel=1, stride=1, padding=0, dilation=1, groups=2),
    "conv2d_depthwise": conv_case(47, channels=3, k_out=3, kernel=3, stride=1, padding=1, dilation=1, groups=3),
    "conv2d_depthwise_multiplier_strided": conv_case(50, channels=2, k_out=4, kernel=3, stride=2, padding=2,
                                                     dilation=2, groups=2),
    "resize_nearest": case_resize_nearest,
}


def relative_error(got, want) -> float:
    got, want = np.asarray(to_device(got, "cpu"), np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def run_case(name: str, dev) -> float | str:
    """The case's relative error, or the exception it raised, as text."""
    try:
        return relative_error(*CASES[name](dev))
    except Exception as err:  # reported to the parent, which fails that one test
        return f"{type(err).__name__}: {err}"


# ---- the simulator, in a child process --------------------------------------------------------

@pytest.fixture(scope="module")
def simulated() -> dict[str, float | str]:
    """Every case run on numba's CUDA simulator by a child process: {name: error or exception}."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"the simulator child failed:\n{run.stderr[-4000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", CASES)
def test_kernel_matches_numpy_on_the_simulator(simulated, name):
    error = simulated[name]
    assert not isinstance(error, str), error
    assert error < TOLERANCE, f"{name}: relative error {error:.2e}"


# ---- without a GPU: imports, devices, errors, nvcc --------------------------------------------

def test_importing_kuiper_cuda_needs_neither_cupy_nor_a_gpu():
    script = (
        "import sys\n"
        "import kuiper, kuiper.cuda, kuiper.cuda.device, kuiper.cuda.kernels, kuiper.cuda.cnn, "
        "kuiper.cuda.llm_ops, kuiper.cuda.cuda_c\n"
        "assert 'cupy' not in sys.modules, 'importing kuiper.cuda imported cupy'\n"
        "sys.modules['cupy'] = None  # as if cupy were not installed\n"
        "from kuiper.cuda.device import cuda_available, cuda_problem, simulating\n"
        "print(cuda_available(), simulating(), cuda_problem())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("False False cupy is not installed"), run.stdout


def test_cuda_available_answers_without_raising():
    assert isinstance(cuda_available(), bool)


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_to_cuda_without_a_gpu_says_why():
    with pytest.raises(DeviceError, match="device 'cuda' is not available"):
        to_device(np.zeros(3, np.float32), "cuda")


def test_to_device_cpu_and_unknown_devices():
    x = np.arange(4, dtype=np.float32)
    assert to_device(x, "cpu") is x
    assert to_device([1.0, 2.0], "cpu").tolist() == [1.0, 2.0]
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        to_device(x, "tpu")


def test_use_simulator_refuses_once_numba_cuda_is_imported_for_the_gpu():
    if simulating():
        pytest.skip("this pytest process runs on the simulator")
    with pytest.raises(DeviceError, match="numba.cuda is already imported"):
        use_simulator()
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") in (None, "0")


def test_launchers_check_shapes_before_launching():
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(ShapeError, match=r"rmsnorm: weight \(7,\) for x \(2, 8\), expected \(8,\)"):
        llm_ops.rmsnorm(x, np.zeros(7, np.float32), 1e-5)
    q, cache = np.zeros((2, 4, 8), np.float32), np.zeros((2, 6, 8), np.float32)
    with pytest.raises(ShapeError, match=r"positions 5..6 outside a cache of 6"):
        llm_ops.attention(q, cache, cache, 5)
    with pytest.raises(ShapeError, match="3 query heads for 2 KV heads"):
        llm_ops.attention(np.zeros((1, 3, 8), np.float32), cache, cache, 0)
    with pytest.raises(ShapeError, match=r"rope: cos \(2, 3\), sin \(2, 3\), expected \(2, 4\)"):
        llm_ops.rope(q, np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ShapeError, match="token id 12 is outside the table of 10 rows"):
        llm_ops.embedding(np.zeros((10, 4), np.float32), np.array([1, 12]))
    with pytest.raises(ShapeError, match="token id -1 is outside"):
        llm_ops.embedding(np.zeros((10, 4), np.float32), np.array([-1, 2]))
    with pytest.raises(ShapeError, match=r"matmul: x \(2, 8\) and weight \(3, 7\)"):
        llm_ops.matmul(x, np.zeros((3, 7), np.float32))
    with pytest.raises(LayerError, match="unknown method 'magic'"):
        llm_ops.matmul(x, np.zeros((3, 8), np.float32), method="magic")
    with pytest.raises(ShapeError, match="conv2d: input"):
        conv2d(np.zeros((1, 3, 5, 5), np.float32), np.zeros((4, 2, 3, 3), np.float32))
    with pytest.raises(LayerError, match="unknown 'gelu'"):
        activation(x, "gelu")


def test_cuda_sources_ship_with_the_package():
    assert cuda_c.sources() == ["norm", "sgemv"]
    assert 'extern "C" __global__ void sgemv_f32x4' in cuda_c.source("sgemv")
    with pytest.raises(KernelError, match=r"kuiper/cuda/nope.cu: no such CUDA source, expected one of norm, sgemv"):
        cuda_c.source("nope")


F1, F2, F3, F4 = float32[::1], float32[:, ::1], float32[:, :, ::1], float32[:, :, :, ::1]
SIGNATURES = {  # the argument types of each kernel as the launchers call it (cupy arrays are C-contiguous)
    "vector_add": (F1, F1, F1),
    "rmsnorm_kernel": (F2, F1, float32, F2),
    "softmax_kernel": (F2, F2),
    "matvec_kernel": (F2, F2, F2),
    "rope_kernel": (F3, F2, F2, F3),
    "swiglu_kernel": (F2, F2),
    "embedding_kernel": (F2, int64[::1], F2),
    "argmax_kernel": (F1, int64[::1]),
    "attention_kernel": (F3, F3, F3, int64, F3, F3),
    "im2col_kernel": (F3, F2) + (int64,) * 9,
    "max_pool2d_kernel": (F4, F4) + (int64,) * 8,
    "avg_pool2d_kernel": (F4, F4) + (int64,) * 6 + (boolean, int64),
    "depthwise_conv_kernel": (F4, F4, F4) + (int64,) * 6,
    "gather2d_kernel": (F4, int64[::1], int64[::1], F4),
    "relu_kernel": (F1, F1),
    "relu6_kernel": (F1, F1),
    "hardsigmoid_kernel": (F1, F1),
    "sigmoid_kernel": (F1, F1),
    "silu_kernel": (F1, F1),
    "hardswish_kernel": (F1, F1),
}


@pytest.fixture
def nvvm(monkeypatch):
    """numba's compile_ptx, usable without a GPU; skip where NVVM (CUDA toolkit) is missing."""
    if simulating():
        pytest.skip("this pytest process runs on the simulator, which cannot compile")
    from numba import cuda
    from numba.cuda import dispatcher
    if not cuda_available():
        # A kernel's device functions are compiled for the current GPU's compute capability;
        # without a GPU, say an A100 (8.0), the same capability compile_ptx is given below.
        class A100:
            compute_capability = (8, 0)
        monkeypatch.setattr(dispatcher, "get_current_device", A100, raising=False)
    try:
        cuda.compile_ptx(vector_add.py_func, SIGNATURES["vector_add"], cc=(8, 0))
    except Exception as err:  # NvvmSupportError and kin: no libnvvm on this machine
        pytest.skip(f"numba cannot compile PTX here: {type(err).__name__}: {err}")
    return cuda.compile_ptx


@pytest.mark.parametrize("name", SIGNATURES)
def test_numba_kernel_compiles_to_float32_ptx(nvvm, name):
    kernel = getattr(kernels, name, None) or getattr(cnn, name)
    ptx, _ = nvvm(kernel.py_func, SIGNATURES[name], cc=(8, 0))
    assert ".visible .entry" in ptx
    doubles = sorted({line.split()[0] for line in ptx.splitlines() if ".f64" in line and not line.lstrip().startswith("//")})
    assert not doubles, f"{name} computes in float64 somewhere (a bare 0.0, or an int in a division?): {doubles}"


KERNELS = {"sgemv": ["sgemv_f32", "sgemv_f32x4"], "norm": ["rmsnorm_f32", "softmax_f32"]}


@pytest.mark.skipif(not shutil.which("nvcc"), reason="nvcc (CUDA toolkit) is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", cuda_c.sources())
def test_cuda_c_compiles_with_nvcc(name, arch):
    cubin = cuda_c.compile_cubin(name, arch)
    assert cubin[:4] == b"\x7fELF", "nvcc --cubin should write an ELF file"
    for kernel in KERNELS[name]:
        assert kernel.encode() in cubin, f"{name}.cu for {arch}: no kernel {kernel} (extern \"C\" lost?)"


# ---- with a GPU -------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not cuda_available(), reason="needs an NVIDIA GPU and cupy")


@gpu
@pytest.mark.parametrize("name", CASES)
def test_kernel_matches_numpy_on_the_gpu(name):
    error = run_case(name, lambda a: to_device(a, "cuda"))
    assert not isinstance(error, str), error
    assert error < TOLERANCE, f"{name}: relative error {error:.2e}"


@gpu
@pytest.mark.parametrize("vectorised", [False, True])
def test_cuda_c_sgemv_matches_numpy(vectorised):
    x, w = randn(50, 3, 4096), randn(51, 257, 4096)
    got = cuda_c.sgemv(to_device(x, "cuda"), to_device(w, "cuda"), vectorised=vectorised)
    assert relative_error(got, x.astype(np.float64) @ w.T.astype(np.float64)) < 1e-5


@gpu
def test_cuda_c_sgemv_f32x4_needs_k_a_multiple_of_4():
    with pytest.raises(ShapeError, match="K = 6 must be a multiple of 4"):
        cuda_c.sgemv(to_device(randn(0, 1, 6), "cuda"), to_device(randn(1, 2, 6), "cuda"))


@gpu
def test_backend_matmul_methods_agree_on_the_gpu():
    x, w = to_device(randn(52, 1, 1024), "cuda"), to_device(randn(53, 300, 1024), "cuda")
    want = to_device(llm_ops.matmul(x, w), "cpu")
    for method in ("matvec", "sgemv_f32x4"):
        assert relative_error(llm_ops.matmul(x, w, method=method), want) < 1e-5, method


@gpu
@pytest.mark.parametrize("threads", [32, 256, 1024])
def test_cuda_c_rmsnorm_and_softmax_match_numpy(threads):
    x, w = randn(54, 5, 3000, scale=4), randn(55, 3000)
    x_dev = to_device(x, "cuda")
    assert relative_error(cuda_c.rmsnorm(x_dev, to_device(w, "cuda"), 1e-5, threads), ref_rmsnorm(x, w, 1e-5)) < 1e-5
    assert relative_error(cuda_c.softmax(x_dev, threads), ref_softmax(x)) < 1e-5


@gpu
def test_to_device_round_trip():
    x = randn(56, 3, 4)
    on_gpu = to_device(x, "cuda")
    assert type(on_gpu).__module__.startswith("cupy")
    assert np.array_equal(to_device(on_gpu, "cpu"), x)


if __name__ == "__main__":  # the simulator child: started by `simulated` with NUMBA_ENABLE_CUDASIM=1
    assert simulating(), "run with NUMBA_ENABLE_CUDASIM=1"
    print(json.dumps({name: run_case(name, lambda a: a) for name in CASES}))


SEAM_SCRIPT = """
import numpy as np
import kuiper.llm.model as m
from kuiper.cuda.device import simulating
assert simulating()
config = m.Config(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, hidden_dim=48, vocab_size=50,
                  norm_eps=1e-5, rope_theta=1e4, context_length=16, qkv_bias=True)
def tiny():
    rng = np.random.default_rng(0)
    w = lambda *shape: (rng.standard_normal(shape) * 0.3).astype(np.float32)
    blocks = [m.Block(attn_norm=1 + w(32), wqkv=w(64, 32), wo=w(32, 32), ffn_norm=1 + w(32), w_gate_up=w(96, 32),
                      w_down=w(32, 48), bqkv=w(64)) for _ in range(2)]
    return m.Llama(config, w(50, 32), blocks, 1 + w(32), w(50, 32), max_seq_len=16)
cpu, gpu = tiny(), tiny().to("cuda")
assert gpu.ops.__name__ == "kuiper.cuda.llm_ops"
prompt = np.array([3, 14, 15, 9])
for got, want in [(gpu.forward(prompt, 0, all_logits=True), cpu.forward(prompt, 0, all_logits=True)),
                  (gpu.forward(np.array([26]), 4), cpu.forward(np.array([26]), 4))]:
    print(float(np.abs(got - want).max() / np.abs(want).max()))
"""


def test_the_llm_runs_through_the_gpu_backend_on_the_simulator():
    """Lesson 11's model with `.to('cuda')`: the same forward code, every op a numba.cuda kernel."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    done = subprocess.run([sys.executable, "-c", SEAM_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = [float(line) for line in done.stdout.split()]
    assert len(errors) == 2 and max(errors) < 1e-5, errors


def test_moving_to_cuda_without_a_gpu_says_why():
    from kuiper.cuda.device import cuda_available
    from kuiper.errors import DeviceError
    from kuiper.tensor import Tensor

    if cuda_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError, match="device 'cuda' is not available: "):
        Tensor.ones(2).to("cuda")


GRAPH_SCRIPT = """
import logging, sys
import numpy as np
import torch
from kuiper.cuda.device import simulating
from kuiper.cuda.layers import DeviceLayer, HostFallback, place
from kuiper.tensor import Tensor
from tools.gpu_check import cnn_error, tiny_cnn
assert simulating()
logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
graph, module = tiny_cnn(torch)
x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
on_cpu = graph(x)
graph.to("cuda")
print("kinds", sorted({type(layer).__name__ for layer in graph.layers.values()}))
outs = graph(Tensor(x))  # two outputs, as Tensors on the graph's device
print("device", outs[1].device, graph.device)
print("error", cnn_error([o.numpy() for o in outs], module(torch.from_numpy(x))), cnn_error(graph(x), on_cpu))
up = graph.layers["up"].layer
up.mode = "bilinear"  # no GPU kernel for it: placed again, it falls back to the host, with a warning
print("fallback", type(place(up, "cuda")).__name__)
print("back", type(place(graph.layers["conv"], "cpu")).__name__)
from kuiper.pnnx import Operator
from kuiper.registry import create_layer
chunk = place(create_layer(Operator("torch.chunk", "chunk", ["x"], ["a", "b", "c"], {"chunks": 3, "dim": -2})), "cuda")
parts = chunk(Tensor(np.arange(42, dtype=np.float32).reshape(2, 7, 3)))
want = torch.chunk(torch.arange(42, dtype=torch.float32).reshape(2, 7, 3), 3, dim=-2)
print("chunks", all(np.array_equal(p.numpy(), w.numpy()) for p, w in zip(parts, want)) and len(parts) == len(want))
"""


def run_simulated(script: str) -> list[str]:
    """The lines a script prints when run by a child process on numba's simulator."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


@pytest.mark.slow
def test_a_cnn_graph_runs_on_cuda_through_the_device_seam_on_the_simulator():
    """RuntimeGraph.to('cuda'): every layer kind of the zoo's CNNs on its GPU kernel, the same answer as torch;
    a layer without a kernel runs on the host and says so; to('cpu') gives the host layers back."""
    lines = run_simulated(GRAPH_SCRIPT)
    found = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines if line.split()[0] in
             ("kinds", "device", "error", "fallback", "back", "chunks")}
    assert found["kinds"] == "['DeviceLayer']", found["kinds"]
    assert found["device"] == "cuda cuda"
    assert max(float(e) for e in found["error"].split()) < 1e-5, found["error"]
    assert found["fallback"] == "HostFallback" and found["back"] == "Convolution" and found["chunks"] == "True"
    assert any("nn.Upsample 'up' (line 11) has no GPU kernel: it runs on the CPU" in line for line in lines), lines


def test_place_refuses_an_unknown_device():
    from kuiper.cuda.layers import place
    from kuiper.layers.activation import ReLU
    from kuiper.pnnx import Operator

    with pytest.raises(DeviceError, match="unknown device 'tpu': expected 'cpu' or 'cuda'"):
        place(ReLU(Operator("nn.ReLU", "act", ["x"], ["y"])), "tpu")


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("verb", ["run", "detect", "segment"])
def test_device_cuda_without_a_gpu_is_one_line_and_exit_1(verb, capsys, monkeypatch):
    from kuiper.cli import main

    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    if simulating():
        pytest.skip("this pytest process runs on the simulator")
    image = ROOT / "data" / "images" / sorted(p.name for p in (ROOT / "data" / "images").iterdir())[0]
    assert main([verb, str(ROOT / "data" / "tiny.pnnx.param"), str(image), "--device", "cuda"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kuiper: error: device 'cuda' is not available: "), err


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_step_on_the_simulator():
    """tools/gpu_check.py --tiny: the GPU session's command, on tiny models, passes on the simulator."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--tiny"], capture_output=True,
                          text=True, env=env, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    for line in ["ok   conv2d_depthwise", "ok   resize_nearest", "ok   tiny_llama prefill logits",
                 "ok   tiny_llama decode logits", "ok   tiny_cnn vs torch", "ok   tiny vs kuiper cpu",
                 "ok   tiny vs torch (export)", "tiny_cnn batch 2", "tiny_llama decode", "gpu_check PASS"]:
        assert line in done.stdout, f"expected {line!r} in:\n{done.stdout[-3000:]}"


def test_gpu_check_writes_random_weights_for_a_model_that_cannot_travel(tmp_path):
    """A GPU machine gets the zoo's .param files only: gpu_check gives each a .pnnx.bin of random weights."""
    import kuiper
    from tools.gpu_check import model_input, with_random_weights

    param = ROOT / "data" / "tiny.pnnx.param"
    graph = kuiper.load(with_random_weights(param, tmp_path))
    weight = graph.model.operators[2].attrs["weight"].data
    assert weight.shape == (16, 48) and 0.1 < float(weight.std()) < 0.3  # He: sqrt(2 / 48) = 0.20
    assert not graph.model.operators[2].attrs["bias"].data.any()
    x = model_input(param)
    assert x.shape == (1, 3, 4, 4) and np.isfinite(graph(x)).all()


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_gpu_check_without_a_gpu_says_why_in_one_line():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 1
    assert done.stdout.startswith("gpu_check: no GPU here: cupy is not installed"), done.stdout
    assert len(done.stdout.strip().splitlines()) == 1 and not done.stderr
