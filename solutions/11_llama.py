# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---


# %% [markdown]
# # Lesson 11 — Llama: the model, sampling and chat
#
# **What you will build.** With the weights (lesson 09) and the tokenizer (lesson 10) in hand, this
# lesson writes the model itself and runs SmolLM2-135M-Instruct end to end: the configuration,
# RMSNorm, rotary position embedding, grouped-query attention over a preallocated KV cache, the
# SwiGLU feed-forward, the sampler, the generation loop and a chat. Every number is checked
# against transformers running the same weights.
#
# **Prerequisites.** Lessons 09 and 10; matrix products and softmax. **Time:** about 90 minutes.
#
# | exercise | what |
# |---|---|
# | 11.1 | RMSNorm, a numba kernel |
# | 11.2 | the SwiGLU activation |
# | 11.3 | rotary position embedding (RoPE) |
# | 11.4 | causal grouped-query attention over the KV cache |
# | 11.5 | attention for one new token: the decode kernel |
# | 11.6 | top-p (nucleus) filtering |
# | 11.7 | the sampler: repetition penalty, temperature, top-k |
# | 11.8 | the generation loop |
# | 11.9 | one buffer for the weights, so decoding streams memory |

# %%
#| default_exp llm.model

# %%
import contextlib
import io
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import TqdmWarning

import kuiper.llm.generate
import kuiper.llm.model
import kuiper.llm.ops
import kuiper.llm.sample
from kuiper.course import DATA, LONG, agreement, check
from kuiper.llm.gguf import GGUFFile

warnings.filterwarnings("ignore", category=TqdmWarning)  # transformers' progress bars ask for ipywidgets
SMOLLM2 = DATA / "models" / "smollm2-135m-instruct-q4_1.gguf"

# %% [markdown]
# ## The model, one block at a time
#
# Every Llama-family model is the same loop, 30 times for SmolLM2:
#
# $$h = x + \mathrm{Attention}(\mathrm{RMSNorm}(x)), \qquad x' = h + \mathrm{SwiGLU}(\mathrm{RMSNorm}(h))$$
#
# with an embedding table in front and a final RMSNorm plus the output head (here *tied*: the
# embedding table again) behind. The picture shows one block; the numbers are SmolLM2's.

# %%
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

boxes = [("token ids", 0, "#ddd"), ("embedding  49152 × 576", 1, "#cde"), ("RMSNorm", 2, "#eed"),
         ("Q K V projections  576 → 576 + 192 + 192", 3, "#dec"), ("RoPE on Q and K", 4, "#edc"),
         ("attention over the KV cache  9 query heads, 3 KV heads", 5, "#fdd"), ("output projection  576 → 576", 6, "#dec"),
         ("RMSNorm", 7, "#eed"), ("gate, up  576 → 2 × 1536;  SiLU(gate) · up", 8, "#dec"), ("down  1536 → 576", 9, "#dec"),
         ("final RMSNorm, output head  576 → 49152", 10, "#cde"), ("logits → sampler → next token", 11, "#ddd")]
fig, ax = plt.subplots(figsize=(7, 7.2))
for text, row, colour in boxes:
    ax.add_patch(FancyBboxPatch((0.1, 11.2 - row), 0.8, 0.6, boxstyle="round,pad=0.02", fc=colour, ec="#555"))
    ax.text(0.5, 11.5 - row, text, ha="center", va="center", fontsize=9)
    if row:
        ax.add_patch(FancyArrowPatch((0.5, 12.2 - row), (0.5, 11.82 - row), arrowstyle="-|>", mutation_scale=10))
for top, bottom, label in [(2, 6, "+ residual"), (7, 9, "+ residual")]:
    ax.add_patch(FancyArrowPatch((0.92, 11.9 - top), (0.92, 11.3 - bottom), connectionstyle="arc3,rad=-0.4",
                                 arrowstyle="-|>", mutation_scale=10, color="tab:red"))
    ax.text(1.0, 11.5 - (top + bottom) / 2, label, color="tab:red", fontsize=9)
ax.text(-0.02, 11.5 - 5.5, "× 30 blocks", rotation=90, va="center", ha="right", fontsize=10, color="tab:blue")
ax.plot([0.03, 0.03], [11.8 - 2, 11.2 - 9], color="tab:blue")
ax.set_xlim(-0.1, 1.3), ax.set_ylim(0, 12), ax.axis("off")
plt.show()

# %% [markdown]
# ### The configuration
#
# Everything that varies between Llama-family models fits in one small record. A GGUF file keeps
# it under `<architecture>.*` keys; a Hugging Face checkpoint keeps it in `config.json`. Both
# become the same `Config`. Two fields are off for Llama and on for Qwen (lesson 12): a bias
# on the q, k, v projections and an RMSNorm on every query and key head.

# %%
#| export llm.model
import json
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kuiper.errors import GGUFError, KuiperError, SafetensorsError, ShapeError


@dataclass(frozen=True)
class Config:
    """The shape of a Llama-family decoder: everything the forward pass needs besides weights."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    vocab_size: int
    norm_eps: float
    rope_theta: float
    context_length: int
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    tied_embeddings: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False
    arch: str = "llama"


#: The architectures this decoder runs: GGUF's general.architecture and config.json's model_type.
ARCHITECTURES = ("llama", "qwen2", "qwen3")
#: RoPE scalings rope_frequencies computes exactly as transformers does (within the model's context).
ROPE_SCALINGS = ("default", "linear", "dynamic", "llama3", "yarn")
MISSING = object()


def setting(values: dict[str, Any], key: str, where: str, error: type[KuiperError], default: Any = MISSING,
            kind: type = int, positive: bool = True) -> Any:
    """values[key] checked to be a `kind` (int: not a bool; float: any finite number) and > 0 when
    `positive`; `default` when absent (None counts as absent). `error` names `where` and the key."""
    value = values.get(key)
    if value is None:
        if default is MISSING:
            raise error(f"{where}: {key} is missing")
        return default
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        numeric = numeric and float(value).is_integer()
    ok = numeric and math.isfinite(value) and (value > 0 or not positive) if kind in (int, float) else isinstance(value, kind)
    if not ok:
        wanted = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "an object"}[kind]
        raise error(f"{where}: {key} must be {wanted}{' > 0' if positive and kind in (int, float) else ''}, "
                    f"got {value!r}")
    return kind(value)


def check_config(config: Config, where: str, error: type[KuiperError]) -> Config:
    """`config` after the checks that relate its sizes to each other; `error` names `where`."""
    if config.n_heads % config.n_kv_heads:
        raise error(f"{where}: {config.n_heads} attention heads cannot share {config.n_kv_heads} key/value heads")
    if config.head_dim % 2:
        raise error(f"{where}: head dimension {config.head_dim} is odd; RoPE turns pairs of values")
    check_rope_scaling(config.rope_scaling, where, error)
    if config.rope_scaling.get("rope_type") == "yarn" and config.rope_theta <= 1:
        raise error(f"{where}: YaRN needs a rope_theta > 1, got {config.rope_theta}")
    return config


def with_original_context(scaling: dict[str, Any], context_length: int) -> dict[str, Any]:
    """`scaling` with original_max_position_embeddings, which transformers defaults to the context
    length for yarn, llama3 and longrope."""
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ("yarn", "llama3", "longrope") or scaling.get("original_max_position_embeddings") is not None:
        return scaling
    return {**scaling, "original_max_position_embeddings": context_length}


def check_rope_scaling(scaling: dict[str, Any], where: str, error: type[KuiperError]) -> None:
    """Refuse by name a RoPE scaling kuiper does not compute, or one whose parameters are missing."""
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_SCALINGS:
        raise error(f"{where}: rope_scaling type {kind!r} is not implemented; kuiper computes "
                    f"{', '.join(ROPE_SCALINGS)}")
    needed = {"linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor", "original_max_position_embeddings"),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
    for key in needed.get(kind, ()):
        setting(scaling, key, f"{where}: rope_scaling", error, kind=float)
    for key in ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"):
        setting(scaling, key, f"{where}: rope_scaling", error, None, float)
    if setting(scaling, "partial_rotary_factor", f"{where}: rope_scaling", error, 1.0, float) != 1.0:
        raise error(f"{where}: rope_scaling partial_rotary_factor {scaling['partial_rotary_factor']} is not "
                    "implemented; kuiper rotates the whole head")
    if kind == "llama3" and scaling["low_freq_factor"] == scaling["high_freq_factor"]:
        raise error(f"{where}: rope_scaling low_freq_factor and high_freq_factor are equal ({scaling['low_freq_factor']})")


def config_from_gguf(meta: dict[str, Any], where: str = "GGUF metadata") -> Config:
    """The Config stored in a GGUF file's metadata under `<architecture>.*` keys; GGUFError naming
    `where` (the file) and the key for a missing, mistyped, zero or unsupported value."""
    arch = setting(meta, "general.architecture", where, GGUFError, kind=str)
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{where}: general.architecture {arch!r} is not one kuiper runs ({', '.join(ARCHITECTURES)})")

    def key(name: str, default: Any = MISSING, kind: type = int) -> Any:
        return setting(meta, f"{arch}.{name}", where, GGUFError, default, kind)

    key.where = f"{where}: {arch}"

    dim, n_heads = key("embedding_length"), key("attention.head_count")
    vocab = key("vocab_size", len(meta.get("tokenizer.ggml.tokens", ())) or MISSING)
    return check_config(Config(
        dim=dim, n_layers=key("block_count"), n_heads=n_heads,
        n_kv_heads=key("attention.head_count_kv", n_heads), head_dim=key("attention.key_length", dim // n_heads or MISSING),
        hidden_dim=key("feed_forward_length"), vocab_size=vocab,
        norm_eps=key("attention.layer_norm_rms_epsilon", kind=float), rope_theta=key("rope.freq_base", 10000.0, float),
        context_length=key("context_length"),
        rope_scaling=with_original_context(gguf_rope_scaling(key), key("context_length")), arch=arch,
        qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3"), where, GGUFError)


def gguf_rope_scaling(key: Any) -> dict[str, Any]:
    """GGUF's <arch>.rope.scaling.* keys, read by `key(name, default, kind)`, as a config.json
    rope_scaling dict (Llama 3's scaling comes as the rope_freqs tensor instead)."""
    kind = key("rope.scaling.type", "none", str)
    if kind == "none":
        return {}
    for name in ("rope.scaling.attn_factor", "rope.scaling.yarn_log_multiplier", "rope.scaling.yarn_ext_factor"):
        if key(name, None, float) is not None:
            raise GGUFError(f"{key.where}.{name} is not implemented; kuiper reads rope.scaling.type, factor "
                            "and original_context_length")
    found = {"rope_type": kind, "factor": key("rope.scaling.factor", None, float),
             "original_max_position_embeddings": key("rope.scaling.original_context_length", None)}
    return {name: value for name, value in found.items() if value is not None}


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> Config:
    """The Config of a Hugging Face `config.json` (Llama, Qwen2, Qwen3); SafetensorsError naming
    `where` (the file) and the key for a missing, mistyped, zero or unsupported value."""
    def key(name: str, default: Any = MISSING, kind: type = int, values: dict = hf) -> Any:
        return setting(values, name, where, SafetensorsError, default, kind)

    arch = key("model_type", "llama", str)
    if arch not in ARCHITECTURES:
        raise SafetensorsError(f"{where}: model_type {arch!r} is not one kuiper runs ({', '.join(ARCHITECTURES)})")
    if key("hidden_act", "silu", str) != "silu":
        raise SafetensorsError(f"{where}: hidden_act {hf['hidden_act']!r} is not implemented; kuiper's MLP is SwiGLU (silu)")
    rope = key("rope_parameters", None, dict) or key("rope_scaling", None, dict) or {}
    scaling = rope if rope.get("rope_type", rope.get("type", "default")) != "default" else {}
    dim, n_heads = key("hidden_size"), key("num_attention_heads")
    return check_config(Config(
        dim=dim, n_layers=key("num_hidden_layers"), n_heads=n_heads,
        n_kv_heads=key("num_key_value_heads", n_heads), head_dim=key("head_dim", dim // n_heads or MISSING),
        hidden_dim=key("intermediate_size"), vocab_size=key("vocab_size"), norm_eps=key("rms_norm_eps", kind=float),
        rope_theta=key("rope_theta", key("rope_theta", 10000.0, float), float, values=rope),
        context_length=key("max_position_embeddings", 2048),
        rope_scaling=with_original_context(scaling, key("original_max_position_embeddings", None)
                                           or key("max_position_embeddings", 2048)),
        tied_embeddings=key("tie_word_embeddings", False, bool), arch=arch,
        qkv_bias=key("attention_bias", arch == "qwen2", bool), qk_norm=arch == "qwen3"), where, SafetensorsError)


# %%
config = config_from_gguf(GGUFFile(SMOLLM2).metadata)
print(config)

# %% [markdown]
# ### RMSNorm
#
# Llama normalises by the root mean square only — no mean subtraction, no bias:
# $\mathrm{RMSNorm}(x) = \dfrac{x}{\sqrt{\frac1D\sum_i x_i^2 + \epsilon}} \odot g$. It runs twice
# per block on every token, so it is a numba loop: one pass for the sum of squares, one to scale.
# This module, `kuiper.llm.ops`, collects every array operation the model uses. It is the seam
# lesson 13 swaps for GPU kernels; the model code above it never changes.
#
# ## Exercise 11.1 — RMSNorm
#
# Write `rmsnorm` for x `(T, D)`: for each row, the sum of squares in float32, the scale
# $1 / \sqrt{\text{sum}/D + \epsilon}$, then `out[t, i] = x[t, i] * scale * weight[i]`.

# %%
#| export llm.ops
#| exercise: per row t: total = sum of x[t, i]^2 (float32); scale = 1 / sqrt(total / D + eps); out[t, i] = x[t, i] * scale * weight[i]
import math
from typing import Any

import numpy as np
from numba import njit, prange


@njit(fastmath=True, error_model="numpy", cache=True)  # numpy: x / 0 is inf, never an exception
def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Each row of x (T, D) divided by its root mean square, times the gain `weight` (D,)."""
    ### BEGIN SOLUTION
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        total = np.float32(0.0)
        for i in range(x.shape[1]):
            total += x[t, i] * x[t, i]
        scale = np.float32(1.0) / np.sqrt(total / x.shape[1] + np.float32(eps))
        for i in range(x.shape[1]):
            out[t, i] = x[t, i] * scale * weight[i]
    return out
    ### END SOLUTION


def embedding(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The rows of `table` for token ids (T,): (T, D)."""
    return table[ids]


# %%
with check("Exercise 11.1"):
    x = np.random.default_rng(0).standard_normal((3, 576), dtype=np.float32) * np.float32([[1], [10], [0.01]])
    g = GGUFFile(SMOLLM2).tensor("blk.0.attn_norm.weight")
    got = rmsnorm(x, g, config.norm_eps)
    want = torch.nn.functional.rms_norm(torch.from_numpy(x), (576,), torch.from_numpy(g.copy()), eps=config.norm_eps).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5 * np.abs(want).max(), \
        f"expected torch's rms_norm {want[:, :3]}, got {got[:, :3]}"
    tiny = rmsnorm(np.zeros((1, 4), np.float32) + 1e-4, np.ones(4, np.float32), 1e-2)
    assert np.allclose(tiny, 1e-4 / np.sqrt(1e-8 + 1e-2)), f"eps 1e-2 inside the root: expected {1e-4 / np.sqrt(1e-8 + 1e-2):.3g}, got {tiny[0, 0]:.3g}"

# %% [markdown]
# ## Exercise 11.2 — SwiGLU
#
# The feed-forward network computes a *gate* and an *up* projection of the same input, fused
# into one `(T, 2F)` matrix product `[gate | up]`, then $\mathrm{SiLU}(\text{gate}) \cdot
# \text{up}$ with $\mathrm{SiLU}(g) = g / (1 + e^{-g})$, a `(T, F)` result that the down
# projection brings back to `D`. Write it as a numba loop.

# %%
#| export llm.ops
#| exercise: half = F; out[t, i] = gate / (1 + exp(-gate)) * up, gate = gate_up[t, i], up = gate_up[t, half + i]
@njit(fastmath=True, error_model="numpy", cache=True)
def swiglu(gate_up: np.ndarray) -> np.ndarray:
    """SiLU(gate) · up for the fused projection [gate | up] (T, 2F): (T, F)."""
    ### BEGIN SOLUTION
    half = gate_up.shape[1] // 2
    out = np.empty((gate_up.shape[0], half), np.float32)
    for t in range(gate_up.shape[0]):
        for i in range(half):
            gate = gate_up[t, i]
            out[t, i] = gate / (np.float32(1.0) + np.exp(-gate)) * gate_up[t, half + i]
    return out
    ### END SOLUTION


# %%
with check("Exercise 11.2"):
    gate_up = np.random.default_rng(1).standard_normal((4, 2 * 1536), dtype=np.float32) * 3
    got = swiglu(gate_up)
    gate, up = torch.from_numpy(gate_up).chunk(2, dim=-1)
    want = (torch.nn.functional.silu(gate) * up).numpy()
    assert got.shape == want.shape, f"expected shape {want.shape}, got {got.shape}"
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max(), f"expected silu(gate) * up {want[0, :3]}, got {got[0, :3]}"

# %% [markdown]
# ### The matrix-vector product is the whole cost
#
# When the model writes one token at a time, every weight matrix is read once per token and used
# for a single multiply-add per element: decoding is bound by **memory bandwidth**, not
# arithmetic. For T = 1 a numba loop over the rows (one thread per chunk of rows, contiguous
# reads, `fastmath` so the inner sum vectorises) keeps both cores streaming weights; for a whole
# prompt, T > 1, BLAS's matrix-matrix product reuses each weight T times and wins. A weight that
# is not a float32 array — lesson 14's int8 weights — brings its own product. This first `_matvec`
# is the plain loop; Exercise 11.10 makes it ask for its rows before it needs them.

# %%
@njit(parallel=True, fastmath=True)
def _matvec(w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    for i in prange(w.shape[0]):
        total = np.float32(0.0)
        for j in range(w.shape[1]):
            total += w[i, j] * x[j]
        out[i] = total

# %%
#| export llm.ops
def matmul(x: np.ndarray, w: Any) -> np.ndarray:
    """x (T, K) times a weight w (N, K) stored as PyTorch stores it: x @ w.T, (T, N)."""
    if not isinstance(w, np.ndarray):
        return w.matmul(x)
    if x.shape[0] != 1:
        return x @ w.T
    out = np.empty((1, w.shape[0]), np.float32)
    _matvec(w, np.ascontiguousarray(x[0]), out[0])
    return out

# %% [markdown]
# ## Exercise 11.3 — rotary position embedding (RoPE)
#
# Attention by itself does not know where a token is. RoPE tells it by **rotating** each query
# and key: split a head's 64 numbers into 32 pairs, and turn pair $i$ of the token at position
# $m$ by the angle $m\,\theta_i$, with $\theta_i = \text{base}^{-2i/d}$ (base = 100,000 for
# SmolLM2). A rotation keeps lengths, and the dot product of a query rotated by $m\theta$ and a
# key rotated by $n\theta$ depends only on $m - n$: attention sees *relative* positions for free.
#
# Hugging Face's layout pairs element $i$ with element $i + d/2$ ("rotate half"):
#
# $$\begin{pmatrix} x'_i \\ x'_{i+d/2} \end{pmatrix} =
#   \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i \end{pmatrix}
#   \begin{pmatrix} x_i \\ x_{i+d/2} \end{pmatrix}$$
#
# (Meta's original code and GGUF's `llama` tensors pair neighbours $2i, 2i+1$ instead; the GGUF
# loader below permutes the rows of the q and k weights back, so one `rope` serves every file.)
# `rope_tables` precomputes $\cos m\theta_i$ and $\sin m\theta_i$ for every position once.

# %%
#| export llm.ops
def rope_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> np.ndarray:
    """θ_i = theta^(-2i/d) for each of the head_dim/2 pairs, scaled as transformers' rope_type says:
    linear divides every θ_i by `factor`; dynamic (NTK) changes nothing up to the model's context,
    which bounds our cache; llama3 divides only the long wavelengths (Meta's Llama 3.1 formula)."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = scaling.get("rope_type", scaling.get("type")) if scaling else None
    if kind == "linear":
        inv = inv / scaling["factor"]
    if kind == "yarn":
        inv = yarn_frequencies(inv, head_dim, theta, scaling)
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelength = 2 * math.pi / inv
        smooth = np.clip((old / wavelength - low) / (high - low), 0.0, 1.0)
        inv = (1 - smooth) * inv / factor + smooth * inv
    return inv


def yarn_frequencies(inv: np.ndarray, head_dim: int, theta: float, scaling: dict[str, Any]) -> np.ndarray:
    """YaRN's θ_i (Peng et al. 2023, as transformers' _compute_yarn_parameters): θ_i / factor for the
    pairs that turn fewer than beta_slow times in the original context, θ_i for those that turn more
    than beta_fast times, a linear ramp over the pair index between."""
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]

    def pair_turning(rotations: float) -> float:  # the pair index that turns `rotations` times in `original`
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_turning(scaling.get("beta_fast") or 32), pair_turning(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    ramp = np.clip((np.arange(head_dim // 2) - low) / ((high + 0.001 if low == high else high) - low), 0.0, 1.0)
    return inv / factor * ramp + inv * (1 - ramp)


# %% [markdown]
# Exercise 11.3 asks for the last three pieces. `rope_attention_factor` is 1 except for YaRN,
# whose factor is its `attention_factor` when given, else mscale(factor) = 0.1·ln(factor) + 1
# (1 for factor <= 1), or mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both are
# set, with mscale(s, m) = 0.1·m·ln(s) + 1. `rope_tables` turns `rope_frequencies` (divided by
# GGUF's `factors` when given) into the float32 tables cos(mθ_i) and sin(mθ_i) for m = 0 …
# positions − 1, computed in float64 and times that factor. `rope` rotates the pairs.

# %%
#| export llm.ops
#| exercise: YaRN's attention factor; cos/sin tables of m·θ_i (θ_i / factors) times it; rotate-half RoPE: pair x[..., i] with x[..., i + d/2] and turn each pair by the angle whose cos/sin are given per token
def rope_attention_factor(scaling: dict[str, Any] | None) -> float:
    """The factor YaRN multiplies cos and sin by (its attention_factor, else 0.1·ln(factor) + 1, or
    the ratio of two such with mscale and mscale_all_dim); 1 for every other scaling."""
    ### BEGIN SOLUTION
    if not scaling or scaling.get("rope_type", scaling.get("type")) != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return scaling["attention_factor"]

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    factor, m, m_all = scaling["factor"], scaling.get("mscale"), scaling.get("mscale_all_dim")
    return mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    ### END SOLUTION


def rope_tables(head_dim: int, theta: float, positions: int, scaling: dict[str, Any] | None = None,
                factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos(mθ_i) and sin(mθ_i), float32 (positions, head_dim/2), times YaRN's attention factor;
    `factors` divide θ_i (GGUF's rope_freqs)."""
    ### BEGIN SOLUTION
    inv = rope_frequencies(head_dim, theta, scaling)
    if factors is not None:
        inv = inv / factors
    angles = np.outer(np.arange(positions, dtype=np.float64), inv)
    scale = rope_attention_factor(scaling)
    return (scale * np.cos(angles)).astype(np.float32), (scale * np.sin(angles)).astype(np.float32)
    ### END SOLUTION


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Queries or keys x (T, H, d) rotated by RoPE; cos and sin (T, d/2) are those of the T positions."""
    ### BEGIN SOLUTION
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    ### END SOLUTION


# %%
with check("Exercise 11.3"):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = rope_tables(64, 1e5, 16)
    q = np.random.default_rng(1).standard_normal((16, 9, 64), dtype=np.float32)
    got = rope(q, cos, sin)
    c2, s2 = (torch.from_numpy(np.concatenate([t, t], -1))[None] for t in (cos, sin))  # (1, T, d) as HF stores them
    want, _ = apply_rotary_pos_emb(torch.from_numpy(q).transpose(0, 1)[None], torch.zeros(1, 9, 16, 64), c2, s2)
    assert got.shape == q.shape, f"expected shape {q.shape}, got {got.shape}"
    want = want[0].transpose(0, 1).numpy()
    assert np.abs(got - want).max() < 1e-5, f"expected transformers' apply_rotary_pos_emb {want[3, 0, :3]}, got {got[3, 0, :3]}"
    for scaling, want in [(None, 1.0), ({"rope_type": "linear", "factor": 4.0}, 1.0),
                          ({"rope_type": "yarn", "factor": 4.0}, 0.1 * math.log(4) + 1),
                          ({"rope_type": "yarn", "factor": 0.5}, 1.0),
                          ({"rope_type": "yarn", "factor": 4.0, "attention_factor": 0.7}, 0.7),
                          ({"type": "yarn", "factor": 8.0, "mscale": 1.0, "mscale_all_dim": 0.5},
                           (0.1 * math.log(8) + 1) / (0.05 * math.log(8) + 1))]:
        got = rope_attention_factor(scaling)
        assert abs(got - want) < 1e-9, f"rope_attention_factor({scaling}): expected {want:.6f}, got {got}"
    factors = np.linspace(1.0, 4.0, 4)
    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    cos, sin = rope_tables(8, 1e4, 70, scaling, factors)
    assert cos.shape == sin.shape == (70, 4) and cos.dtype == np.float32, \
        f"expected float32 tables of shape (70, 4), got {cos.shape} {cos.dtype} and {sin.shape}"
    inv = rope_frequencies(8, 1e4, scaling) / factors
    for m, i in [(0, 0), (1, 0), (5, 3), (69, 1), (33, 2)]:
        want_cos, want_sin = (0.1 * math.log(4) + 1) * math.cos(m * inv[i]), (0.1 * math.log(4) + 1) * math.sin(m * inv[i])
        assert abs(cos[m, i] - want_cos) < 1e-6 and abs(sin[m, i] - want_sin) < 1e-6, \
            f"position {m}, pair {i}: expected cos, sin = {want_cos:.6f}, {want_sin:.6f}, got {cos[m, i]:.6f}, {sin[m, i]:.6f}"

# %% [markdown]
# The left picture is the table: each column a pair, each row a position. Fast pairs (left)
# spin every few tokens and tell neighbours apart; slow pairs (right) barely turn in 8192 tokens
# and carry long-range position. The right picture checks the promise: the score between a
# rotated query and key depends only on their distance.

# %%
cos, sin = rope_tables(64, config.rope_theta, 256)
rng = np.random.default_rng(2)
q1, k1 = rng.standard_normal((2, 1, 1, 64), dtype=np.float32)
score = lambda m, n: float((rope(q1, cos[m:m + 1], sin[m:m + 1]) * rope(k1, cos[n:n + 1], sin[n:n + 1])).sum())  # noqa: E731
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
left.imshow(cos, aspect="auto", cmap="RdBu", interpolation="nearest")
left.set(xlabel="pair i (fast → slow)", ylabel="position m", title="cos(m θ_i), SmolLM2")
for start in (0, 40, 120):
    right.plot(range(100), [score(start + d, start) for d in range(100)], label=f"query at {start} + distance")
right.set(xlabel="distance m − n", ylabel="q·k after RoPE", title="the score depends on distance only")
right.legend(fontsize=8)
plt.tight_layout()
plt.show()
print("same score at every start:", np.allclose([score(d, 0) for d in range(50)], [score(100 + d, 100) for d in range(50)], atol=1e-3))

# %% [markdown]
# ## Exercise 11.4 — attention over the KV cache
#
# Generating token $t$ needs the keys and values of tokens $0 … t$. Recomputing them for every
# new token would cost the whole prompt again each step, so they are kept in a **KV cache**:
# `k_cache[kv_head, position, :]`, preallocated for the longest sequence, filled as tokens arrive.
# `attention` gets the queries of the T newest tokens, which sit at positions `pos … pos+T-1`, and
# the caches already holding their keys and values. For each query head:
#
# 1. scores $s = q K^\top / \sqrt{d}$ against keys $0 … \text{pos}+T-1$;
# 2. **causal mask**: query at position $p$ may not see keys after $p$ (set those scores to $-\infty$);
# 3. softmax over the keys (subtract the maximum first), then the weighted sum of the values.
#
# SmolLM2 has 9 query heads but only 3 key/value heads (**grouped-query attention**): query head
# $h$ reads KV head $h \,/\!/\, 3$. That shrinks the cache three-fold. Group the query heads by KV
# head so one batched matrix product does a whole group: `(KV, G·T, d) @ (KV, d, L)`.

# %%
#| export llm.ops
#| exercise: causal grouped-query attention of q (T, H, d) at positions pos..pos+T-1 over caches (KV, S, d); returns (T, H, d)
def causal_attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int) -> np.ndarray:
    """Causal attention of T new queries (T, H, d) at positions pos… over the first pos+T cached keys and values."""
    ### BEGIN SOLUTION
    tokens, heads, dim = q.shape
    kv_heads, length = k_cache.shape[0], pos + tokens
    group = heads // kv_heads
    queries = q.reshape(tokens, kv_heads, group, dim).transpose(1, 2, 0, 3).reshape(kv_heads, group * tokens, dim)
    scores = (queries @ k_cache[:, :length].transpose(0, 2, 1)).reshape(kv_heads, group, tokens, length)
    scores *= np.float32(1 / math.sqrt(dim))
    if tokens > 1:
        scores[:, :, np.arange(length)[None, :] > pos + np.arange(tokens)[:, None]] = -np.inf
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    out = weights.reshape(kv_heads, group * tokens, length) @ v_cache[:, :length]
    return out.reshape(kv_heads, group, tokens, dim).transpose(2, 0, 1, 3).reshape(tokens, heads, dim)
    ### END SOLUTION


# %%
with check("Exercise 11.4"):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((5, 8, 64), dtype=np.float32)  # 8 query heads share 2 KV heads, 4 each
    k_cache, v_cache = rng.standard_normal((2, 2, 32, 64), dtype=np.float32)
    got = causal_attention(q, k_cache, v_cache, pos=7)  # 5 new tokens at positions 7..11 see keys 0..11
    tq, tk, tv = torch.from_numpy(q).transpose(0, 1), torch.from_numpy(k_cache[:, :12]), torch.from_numpy(v_cache[:, :12])
    mask = torch.arange(12)[None, :] <= 7 + torch.arange(5)[:, None]
    want = torch.nn.functional.scaled_dot_product_attention(tq[None], tk[None], tv[None], attn_mask=mask, enable_gqa=True)
    assert got.shape == (5, 8, 64), f"expected (5, 8, 64), got {got.shape}"
    want = want[0].transpose(0, 1).numpy()
    assert np.abs(got - want).max() < 1e-5, f"expected torch's scaled_dot_product_attention {want[4, 0, :3]}, got {got[4, 0, :3]}"
    one = causal_attention(q[:1], k_cache, v_cache, pos=20)  # decoding: one query sees keys 0..20
    want1 = torch.nn.functional.scaled_dot_product_attention(tq[None, :, :1], torch.from_numpy(k_cache[None, :, :21]),
                                                             torch.from_numpy(v_cache[None, :, :21]), enable_gqa=True)
    want1 = want1[0].transpose(0, 1).numpy()
    assert np.abs(one - want1).max() < 1e-5, f"one token at position 20: expected {want1[0, 0, :3]}, got {one[0, 0, :3]}"

# %% [markdown]
# ### Decoding: one query, a numba kernel
#
# A prompt's attention is a few large matrix products, which BLAS does well. Decoding has one
# query per head and a dozen small numpy calls would cost more than the arithmetic, so the
# one-token case is a single numba loop: for each head, scores against the cached keys, a softmax,
# the weighted sum of values. `attention` picks the path by the number of new tokens.
#
# ## Exercise 11.5 — attention for one new token
#
# Write the kernel: the query `q (H, d)` of the token at position `pos` attends to the cached
# keys and values `0 … pos` of its KV head `h // group`: scores $q \cdot k_j / \sqrt{d}$, softmax
# (minus the maximum), then `out[h] = Σ_j weight_j · v_j`, added up one cached row $v_j$ at a time so
# the cache is read in the order it lies in memory. No mask is needed: every cached position is at or
# before `pos`.

# %%
#| export llm.ops
#| exercise: for each head h with KV head h // group: scores[j] = q[h]·k[j] / sqrt(d) for j <= pos; softmax; out[h, i] = sum_j scores[j] * v[j, i]
@njit(fastmath=True, error_model="numpy", cache=True)
def _attention_one(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int, out: np.ndarray) -> None:
    """Attention of one token's queries q (H, d) at position `pos` over the caches (KV, S, d), into out (H, d)."""
    ### BEGIN SOLUTION
    heads, dim = q.shape
    group, scale = heads // k_cache.shape[0], np.float32(1.0 / math.sqrt(dim))
    scores = np.empty(pos + 1, np.float32)
    for h in range(heads):
        keys, values = k_cache[h // group], v_cache[h // group]
        for j in range(pos + 1):
            total = np.float32(0.0)
            for i in range(dim):
                total += q[h, i] * keys[j, i]
            scores[j] = total * scale
        scores = np.exp(scores - scores.max())
        scores /= scores.sum()
        out[h] = 0.0
        for j in range(pos + 1):  # row by row: each cached value row is read in order, once
            for i in range(dim):
                out[h, i] += scores[j] * values[j, i]
    ### END SOLUTION


# %%
with check("Exercise 11.5"):
    rng = np.random.default_rng(4)
    q1, (k_cache, v_cache) = rng.standard_normal((9, 64), dtype=np.float32), rng.standard_normal((2, 3, 40, 64), dtype=np.float32)
    for pos in (0, 30):
        got = np.full((9, 64), np.nan, np.float32)  # as np.empty may leave it: the kernel writes every value
        _attention_one(q1, k_cache, v_cache, pos, got)
        keys, values = (torch.from_numpy(cache[None, :, :pos + 1]) for cache in (k_cache, v_cache))
        want = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q1)[None, :, None], keys, values,
                                                                enable_gqa=True)[0, :, 0].numpy()
        assert np.abs(got - want).max() < 1e-5, f"position {pos}: expected torch's attention {want[4, :3]}, got {got[4, :3]}"


# %%
#| export llm.ops
def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int) -> np.ndarray:
    """Causal attention of T new queries (T, H, d) over the KV cache: numba for one token, BLAS for more."""
    if q.shape[0] != 1:
        return causal_attention(q, k_cache, v_cache, pos)
    out = np.empty_like(q)
    _attention_one(q[0], k_cache, v_cache, pos, out[0])
    return out


# %%
rng = np.random.default_rng(4)
q1, caches = rng.standard_normal((1, 9, 64), dtype=np.float32), rng.standard_normal((2, 3, 40, 64), dtype=np.float32)
print("one-token kernel vs the batched attention:",
      agreement(kuiper.llm.ops.attention(q1, *caches, 30), kuiper.llm.ops.causal_attention(q1, *caches, 30), 1e-5))

# %% [markdown]
# ## The model
#
# `Block` holds one layer's weights. Two products are fused at load time so each is one pass over
# memory: q, k and v become one `(576 + 192 + 192) × 576` matrix, gate and up one `3072 × 576`.
# `Llama.forward(ids, pos)` runs T tokens that start at position `pos`: the whole prompt at once
# (**prefill**, matrix-matrix products), then one token at a time (**decode**), each call adding
# its keys and values to the cache. Every array operation goes through `self.ops`.

# %%
#| export llm.model
from kuiper.llm import ops as cpu_ops


@dataclass
class Block:
    """One transformer layer's weights, with q|k|v and gate|up fused into single matrices."""

    attn_norm: np.ndarray
    wqkv: np.ndarray
    wo: np.ndarray
    ffn_norm: np.ndarray
    w_gate_up: np.ndarray
    w_down: np.ndarray
    bqkv: np.ndarray | None = None
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None


#: A block's matrices, in the order a forward pass reads them.
LINEAR_WEIGHTS = ("wqkv", "wo", "w_gate_up", "w_down")


def packed(blocks: list[Block], head: Any) -> tuple[list[Block], Any]:
    """`blocks` and `head` with their float32 matrices copied into one buffer in the order a decode step
    reads them (`ops.pack`, Exercise 11.9); a weight that is not a numpy array (lesson 14's int8) stays as it is."""
    arrays = [getattr(b, name) for b in blocks for name in LINEAR_WEIGHTS] + [head]
    dense = list({id(a): a for a in arrays if isinstance(a, np.ndarray)}.values())  # each array once
    if dense and dense[0].base is not None and all(a.base is dense[0].base for a in dense):
        return blocks, head  # decoded into one buffer by the loader already (`packed_fuse`)
    copies = dict(zip(map(id, dense), cpu_ops.pack(dense)))

    def moved(a: Any) -> Any:
        return copies.get(id(a), a)

    return [replace(b, **{name: moved(getattr(b, name)) for name in LINEAR_WEIGHTS}) for b in blocks], moved(head)


class Llama:
    """A Llama-family decoder (Llama 2/3, SmolLM2, Qwen2/2.5/3): weights, RoPE tables and the KV cache."""

    def __init__(self, config: Config, embed: np.ndarray, blocks: list[Block], norm: np.ndarray,
                 head: np.ndarray, max_seq_len: int = 2048, rope_factors: np.ndarray | None = None) -> None:
        self.config, self.norm = config, norm
        self.blocks, self.head = packed(blocks, head)
        self.embed = self.head if embed is head else embed  # tied: one copy serves both
        self.max_seq_len = min(max_seq_len, config.context_length)
        self.cos, self.sin = cpu_ops.rope_tables(config.head_dim, config.rope_theta, self.max_seq_len,
                                                 config.rope_scaling, rope_factors)
        shape = (config.n_layers, config.n_kv_heads, self.max_seq_len, config.head_dim)
        self.k_cache, self.v_cache = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        self.ops = cpu_ops
        self.owner = threading.RLock()  # the KV cache holds one sequence: one thread at a time

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """Hold the model (and its KV cache) for this thread; KuiperError if another thread holds it."""
        if not self.owner.acquire(blocking=False):
            raise KuiperError("this Llama is in use by another thread: its KV cache holds one sequence, "
                              "so give each thread its own model")
        try:
            yield
        finally:
            self.owner.release()

    def forward(self, ids: np.ndarray, pos: int, all_logits: bool = False) -> np.ndarray:
        """Logits (1, V) for the last of the T tokens `ids` at positions pos…pos+T-1 (all T rows if asked);
        ShapeError past the context or the vocabulary, KuiperError while another thread uses the model."""
        with self.in_use():
            return self._forward(np.asarray(ids, dtype=np.int64).reshape(-1), pos, all_logits)

    def _forward(self, ids: np.ndarray, pos: int, all_logits: bool) -> np.ndarray:
        """forward's work, with the model held."""
        if not len(ids) or pos < 0:
            raise ShapeError(f"forward needs at least one token at a position >= 0, got {len(ids)} at {pos}")
        if pos + len(ids) > self.max_seq_len:
            raise ShapeError(f"{pos} cached + {len(ids)} new tokens exceed the context of {self.max_seq_len}")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ShapeError(f"token ids must lie in 0..{self.config.vocab_size - 1}, got {ids.min()}..{ids.max()}")
        ops, eps = self.ops, self.config.norm_eps
        x = ops.embedding(self.embed, ids)
        cos, sin = self.cos[pos:pos + len(ids)], self.sin[pos:pos + len(ids)]
        for layer, block in enumerate(self.blocks):
            x = x + self.attend(layer, block, ops.rmsnorm(x, block.attn_norm, eps), pos, cos, sin)
            x = x + ops.matmul(ops.swiglu(ops.matmul(ops.rmsnorm(x, block.ffn_norm, eps), block.w_gate_up)), block.w_down)
        return ops.matmul(ops.rmsnorm(x if all_logits else x[-1:], self.norm, eps), self.head)

    def attend(self, layer: int, block: Block, h: np.ndarray, pos: int, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """Self-attention of the normalised tokens h (T, D): project, rotate, cache, attend, project back."""
        c, ops, tokens = self.config, self.ops, len(h)
        qkv = ops.matmul(h, block.wqkv)
        if block.bqkv is not None:
            qkv = qkv + block.bqkv
        q_size, kv_size = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        q = qkv[:, :q_size].reshape(tokens, c.n_heads, c.head_dim)
        k = qkv[:, q_size:q_size + kv_size].reshape(tokens, c.n_kv_heads, c.head_dim)
        v = qkv[:, q_size + kv_size:].reshape(tokens, c.n_kv_heads, c.head_dim)
        if block.q_norm is not None:
            q = ops.rmsnorm(q.reshape(-1, c.head_dim), block.q_norm, c.norm_eps).reshape(q.shape)
            k = ops.rmsnorm(k.reshape(-1, c.head_dim), block.k_norm, c.norm_eps).reshape(k.shape)
        self.k_cache[layer, :, pos:pos + tokens] = ops.rope(k, cos, sin).transpose(1, 0, 2)
        self.v_cache[layer, :, pos:pos + tokens] = v.transpose(1, 0, 2)
        out = ops.attention(ops.rope(q, cos, sin), self.k_cache[layer], self.v_cache[layer], pos)
        return ops.matmul(out.reshape(tokens, q_size), block.wo)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights read to produce one token (the embedding table only once, for the head)."""
        arrays = [self.head, self.norm] + [a for b in self.blocks for a in vars(b).values() if a is not None]
        return sum(a.nbytes for a in arrays)


# %% [markdown]
# ### Loading weights into the model
#
# The two file layouts name the same tensors differently; one table per layout maps our names to
# theirs, and one function builds the `Llama` from either. GGUF's `llama` tensors store the rows
# of q and k with RoPE's pairs interleaved (llama.cpp's converter permutes them for its rotation
# kernel): row $h d + 2i + j$ of head $h$ belongs at row $h d + j\,d/2 + i$ in rotate-half order.
# `rope_runs` lists that reordering as runs of rows, and `fuse` decodes each run of each tensor
# straight into its place in the fused matrix (lesson 09's `tensor(name, out, rows)`): every float32
# weight is written once, with no dequantized copy to permute and no second copy to concatenate.
# Float32 tensors that need no fusing stay memory-mapped views of the file. Every tensor's shape is
# checked against the config before anything is allocated for it.

# %%
#| export llm.model
from kuiper.llm.gguf import GGUFFile
from kuiper.llm.safetensors import load_config, open_checkpoint
from kuiper.llm.tokenizer import BPETokenizer, Tokenizer, load_tokenizer

GGUF_NAMES = {"attn_norm": "attn_norm.weight", "wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight",
              "bq": "attn_q.bias", "bk": "attn_k.bias", "bv": "attn_v.bias", "q_norm": "attn_q_norm.weight",
              "k_norm": "attn_k_norm.weight", "wo": "attn_output.weight", "ffn_norm": "ffn_norm.weight",
              "gate": "ffn_gate.weight", "up": "ffn_up.weight", "down": "ffn_down.weight",
              "embed": "token_embd.weight", "norm": "output_norm.weight", "head": "output.weight",
              "rope_freqs": "rope_freqs.weight", "layer": "blk.{}."}
HF_NAMES = {"attn_norm": "input_layernorm.weight", "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight",
            "wv": "self_attn.v_proj.weight", "bq": "self_attn.q_proj.bias", "bk": "self_attn.k_proj.bias",
            "bv": "self_attn.v_proj.bias", "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight",
            "wo": "self_attn.o_proj.weight", "ffn_norm": "post_attention_layernorm.weight",
            "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight",
            "embed": "model.embed_tokens.weight", "norm": "model.norm.weight", "head": "lm_head.weight",
            "layer": "model.layers.{}."}


def rope_runs(rows: int, heads: int | None = None) -> list[tuple[slice, slice]]:
    """(rows in rotate-half order, the stored rows that go there) for GGUF's llama q or k of `rows` rows in
    `heads` heads: stored row h·d + 2i + j goes to h·d + j·d/2 + i; all rows in place when heads is None."""
    if heads is None:
        return [(slice(None), slice(None))]
    d = rows // heads
    return [(slice(h * d + j * d // 2, h * d + (j + 1) * d // 2), slice(h * d + j, (h + 1) * d, 2))
            for h in range(heads) for j in (0, 1)]


def weight_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """The shape each weight must have, in our names (PyTorch's (out, in) for matrices)."""
    c, q, kv = config, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    return {"attn_norm": (c.dim,), "wq": (q, c.dim), "wk": (kv, c.dim), "wv": (kv, c.dim), "bq": (q,), "bk": (kv,),
            "bv": (kv,), "q_norm": (c.head_dim,), "k_norm": (c.head_dim,), "wo": (c.dim, q), "ffn_norm": (c.dim,),
            "gate": (c.hidden_dim, c.dim), "up": (c.hidden_dim, c.dim), "down": (c.dim, c.hidden_dim),
            "embed": (c.vocab_size, c.dim), "norm": (c.dim,), "head": (c.vocab_size, c.dim),
            "rope_freqs": (c.head_dim // 2,)}


def checked_reader(weights: Any, config: Config, names: dict[str, str], error: type[KuiperError]) -> Any:
    """get(name, layer=None, out=None, rows=slice(None)): tensor `name` (our name) of `weights` into `out` if given;
    get.check(name, layer): its stored name. Both check the stored shape against the config before reading."""
    expected = weight_shapes(config)

    def check(name: str, layer: int | None = None) -> str:
        stored = names[name] if layer is None else names["layer"].format(layer) + names[name]
        if stored not in weights.tensors:
            weights.tensor(stored)  # raises the file's error, naming the closest tensors
        shape = tuple(weights.tensors[stored].shape)
        if shape != expected[name]:
            raise error(f"{weights.path}: tensor {stored!r} has shape {shape}, but the config needs {expected[name]}")
        return stored

    def get(name: str, layer: int | None = None, out: np.ndarray | None = None, rows: slice = slice(None)) -> np.ndarray:
        return weights.tensor(check(name, layer), out, rows)

    get.check, get.shapes = check, expected
    return get


def fuse(get: Any, layer: int | None, parts: list[tuple[str, int | None]], out: np.ndarray | None = None) -> np.ndarray:
    """`parts` (our name, heads to put in rotate-half order or None) of `layer` stacked in `out` (float32, the
    stacked shape; ShapeError if not) or one new float32 array, each run of rows decoded straight into its
    place; without `out`, a single part in order as `get` reads it."""
    if len(parts) == 1 and parts[0][1] is None and out is None:
        return get(parts[0][0], layer)
    shapes = [get.shapes[name] for name, _ in parts if get.check(name, layer)]  # checked before allocating
    out = np.empty((sum(shape[0] for shape in shapes), *shapes[0][1:]), np.float32) if out is None else out
    start = 0
    for (name, heads), shape in zip(parts, shapes):
        for into, stored in rope_runs(shape[0], heads):
            get(name, layer, out[start:start + shape[0]][into], stored)
        start += shape[0]
    return out


def packed_fuse(config: Config) -> Any:
    """`fuse` that decodes each matrix straight into its place in one buffer that `ops.pack` (Exercise 11.9)
    laid out, in reading order (every block's LINEAR_WEIGHTS, then the head): the float32 weights are written
    once, and `Llama` finds them packed. Call it for the matrices in that order."""
    c, q, kv = config, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    shapes = [(q + 2 * kv, c.dim), (c.dim, q), (2 * c.hidden_dim, c.dim), (c.dim, c.hidden_dim)] * c.n_layers
    zeros = [np.broadcast_to(np.float32(0), shape) for shape in shapes + [(c.vocab_size, c.dim)]]  # no memory
    places = iter(cpu_ops.pack(zeros))  # the buffer, laid out (and zeroed)
    return lambda get, layer, parts: fuse(get, layer, parts, next(places))


def build_block(config: Config, get: Any, layer: int, interleaved: bool, matrix: Any = fuse) -> Block:
    """One layer's weights from `get`, its matrices made by `matrix` (by default float32, fused, rotate-half order)."""
    heads = (config.n_heads, config.n_kv_heads) if interleaved else (None, None)
    return Block(attn_norm=get("attn_norm", layer), wqkv=matrix(get, layer, [("wq", heads[0]), ("wk", heads[1]), ("wv", None)]),
                 wo=matrix(get, layer, [("wo", None)]), ffn_norm=get("ffn_norm", layer),
                 w_gate_up=matrix(get, layer, [("gate", None), ("up", None)]), w_down=matrix(get, layer, [("down", None)]),
                 bqkv=fuse(get, layer, [("bq", None), ("bk", None), ("bv", None)]) if config.qkv_bias else None,
                 q_norm=get("q_norm", layer) if config.qk_norm else None, k_norm=get("k_norm", layer) if config.qk_norm else None)


def model_from_gguf(file: GGUFFile, max_seq_len: int = 2048, matrix: Any = fuse) -> Llama:
    """The Llama in an open GGUF file, in float32 (or each matrix as `matrix(get, layer, parts)` makes it: lesson 14's
    keeps the blocks); GGUFError naming the key or tensor whose value or shape does not fit the config."""
    config = config_from_gguf(file.metadata, str(file.path))
    rows = file.info(GGUF_NAMES["embed"]).shape[0]
    if f"{config.arch}.vocab_size" not in file.metadata and rows > config.vocab_size:
        config = replace(config, vocab_size=rows)  # an embedding padded past the tokenizer's tokens (Qwen)
    get = checked_reader(file, config, GGUF_NAMES, GGUFError)
    into = packed_fuse(config) if matrix is fuse else matrix
    blocks = []
    for i in range(config.n_layers):
        blocks.append(build_block(config, get, i, config.arch == "llama", into))
        file.release()  # the file pages of a decoded layer need not stay in this process
    tied = GGUF_NAMES["head"] not in file.tensors
    head = into(get, None, [("embed" if tied else "head", None)])
    embed = head if tied else matrix(get, None, [("embed", None)])
    factors = get("rope_freqs") if GGUF_NAMES["rope_freqs"] in file.tensors else None
    file.release()
    return Llama(config, embed, blocks, get("norm"), head, max_seq_len, factors)


def model_from_hf(folder: Path, max_seq_len: int = 2048) -> Llama:
    """The Llama in a Hugging Face folder: config.json and model.safetensors (or the shards of
    model.safetensors.index.json); SafetensorsError naming the key or tensor that does not fit."""
    config = config_from_hf(load_config(folder / "config.json"), str(folder / "config.json"))
    weights = open_checkpoint(folder)
    get = checked_reader(weights, config, HF_NAMES, SafetensorsError)
    into = packed_fuse(config)
    blocks = [build_block(config, get, i, False, into) for i in range(config.n_layers)]
    tied = HF_NAMES["head"] not in weights.tensors
    head = into(get, None, [("embed" if tied else "head", None)])
    embed = head if tied else get("embed")
    return Llama(config, embed, blocks, get("norm"), head, max_seq_len)


def load(path: str | Path, max_seq_len: int = 2048) -> tuple[Llama, Tokenizer | None]:
    """A model and its tokenizer from a .gguf file or a Hugging Face folder (tokenizer.json if present)."""
    path = Path(path)
    if path.suffix == ".gguf":
        file = GGUFFile(path)
        return model_from_gguf(file, max_seq_len), load_tokenizer(file.metadata)
    folder = path.parent if path.name == "config.json" else path
    if not (folder / "config.json").is_file():
        raise KuiperError(f"{path}: not a .gguf file or a Hugging Face folder with config.json and model.safetensors")
    return model_from_hf(folder, max_seq_len), hf_tokenizer(folder)


def hf_tokenizer(folder: Path) -> Tokenizer | None:
    """The tokenizer of a Hugging Face folder (tokenizer.json, with tokenizer_config.json's EOS and chat template)."""
    if not (folder / "tokenizer.json").is_file():
        return None
    settings = load_config(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    eos = settings.get("eos_token")
    tokenizer = BPETokenizer.from_tokenizer_json(folder / "tokenizer.json", eos=eos.get("content") if isinstance(eos, dict) else eos)
    tokenizer.chat_template = settings.get("chat_template") or ""
    return tokenizer


# %%
model, tokenizer = kuiper.llm.model.load(SMOLLM2)
print(f"{config.n_layers} blocks, {model.weight_bytes / 2**20:.0f} MiB of float32 weights read per token")

# %% [markdown]
# ### Exact against transformers
#
# First a quick test that runs every time: transformers builds a 2-block Llama of SmolLM2's shape
# with random weights and saves it as a Hugging Face folder (`config.json`, `model.safetensors`);
# kuiper loads the folder and must give the same logits at every position.

# %%
import tempfile

import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
torch.manual_seed(0)
tiny = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                                    num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=1e5,
                                    max_position_embeddings=256, tie_word_embeddings=True)).eval()
ids = np.random.default_rng(0).integers(0, 1000, 40)
with tempfile.TemporaryDirectory() as folder, torch.no_grad():
    tiny.save_pretrained(folder)
    ours, _ = kuiper.llm.model.load(folder)
    want = tiny(torch.from_numpy(ids)[None]).logits[0].numpy()
print("2 blocks, 40 tokens, all logits vs transformers:", agreement(ours.forward(ids, 0, all_logits=True), want, 1e-4))

# %% [markdown]
# The full test reads the same GGUF file into transformers with its own code (the `gguf` package
# dequantizes, and transformers undoes the q/k permutation itself) into `LlamaForCausalLM`. Same
# weights, same tokens: the logits of every position must agree to 1e-3, and greedy decoding must
# pick the same tokens. That is the test that says the engine is right. It takes a while, so it runs
# only when asked (`KUIPER_LONG=1`, as when the lesson is built); its output is stored below.

# %%
# NBVAL_SKIP
if LONG:
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' GGUF conversion draws a progress bar
        reference = AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name, dtype=torch.float32).eval()
    for prompt in ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a land far away,"]:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            want = reference(torch.tensor([ids])).logits[0].numpy()
        got = model.forward(np.array(ids), 0, all_logits=True)
        print(f"{prompt!r:45} {len(ids):2} tokens  max |Δlogit| < 1e-3: {np.abs(got - want).max() < 1e-3}")

# %% [markdown]
# ## Choosing the next token
#
# The model gives a score (logit) to each of the 49,152 tokens. **Greedy** decoding takes the
# largest: deterministic, good for facts, prone to loops in long text. **Sampling** draws from
# the softmax instead, shaped by a few knobs, applied in this order (as transformers does):
#
# - *repetition penalty* $r$: a token already seen has its logit divided by $r$ if positive,
#   multiplied by $r$ if negative — less likely either way;
# - *temperature* $T$: logits ÷ T; below 1 sharpens the distribution, above 1 flattens it;
# - *top-k*: keep only the k most likely tokens;
# - *top-p* (nucleus): keep the smallest set of most likely tokens whose probabilities add up to p.
#
# The picture shows the distribution after "The capital of France is" and what each knob keeps.

# %%
logits = model.forward(np.array(tokenizer.encode("The capital of France is")), 0)[0]
order = np.argsort(logits)[::-1][:12]
fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
for ax, temperature in zip(axes, (1.0, 0.5)):
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    ax.bar(range(12), p[order], color=["tab:blue" if c <= 0.9 else "#bbb" for c in np.cumsum(p[order]) - p[order]])
    ax.set_xticks(range(12), [repr(tokenizer.decode([int(t)])) for t in order], rotation=60, fontsize=8)
    ax.set_title(f"temperature {temperature}: blue = kept by top-p 0.9")
axes[0].set_ylabel("probability")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Exercise 11.6 — top-p (nucleus) filtering
#
# Sort the probabilities from largest to smallest and keep a token while the mass **before** it
# is still below `p` (so the most likely token is always kept); zero the rest and renormalise.

# %%
#| export llm.sample
import math
from collections.abc import Sequence

import numpy as np

from kuiper.errors import KuiperError


#| exercise: keep the most likely tokens while the mass before each is < p, zero the rest, renormalise
def top_p_filter(probs: np.ndarray, p: float) -> np.ndarray:
    """The nucleus of a distribution: its most likely tokens whose total reaches p, renormalised."""
    ### BEGIN SOLUTION
    order = np.argsort(probs)[::-1]
    before = np.cumsum(probs[order]) - probs[order]
    kept = np.zeros_like(probs)
    keep = order[before < p]
    kept[keep] = probs[keep]
    return kept / kept.sum()
    ### END SOLUTION


# %%
with check("Exercise 11.6"):
    from transformers.generation.logits_process import TopPLogitsWarper

    got = top_p_filter(np.array([0.1, 0.5, 0.15, 0.25]), 0.7)
    assert np.allclose(got, [0, 0.5 / 0.75, 0, 0.25 / 0.75]), \
        f"p 0.7 on [0.1, 0.5, 0.15, 0.25]: expected 0.5 and 0.25 kept, renormalised [0, 0.667, 0, 0.333], got {got}"
    got = top_p_filter(np.array([0.9, 0.1]), 0.5)
    assert np.allclose(got, [1, 0]), f"p 0.5 on [0.9, 0.1]: expected the most likely token alone [1, 0], got {got}"
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    want = TopPLogitsWarper(0.9)(None, torch.from_numpy(np.log(probs))[None])[0].isfinite().numpy()
    got = top_p_filter(probs, 0.9) > 0
    assert (got == want).all(), f"p 0.9 after 'The capital of France is': expected transformers' {want.sum()} tokens, got {got.sum()}"

# %% [markdown]
# ## Exercise 11.7 — the sampler
#
# The `Sampler` puts the knobs together. It owns a seeded random generator, so the same seed
# gives the same text every run. Write `__call__`, on a float64 copy of the logits (a GPU array
# is brought to the CPU with `.get()`), in this order:
#
# 1. repetition penalty (when it is not 1 and there is history): each token seen in `history`,
#    once, has its logit divided by the penalty if positive, multiplied if negative;
# 2. temperature 0 (or below) is greedy: return the argmax;
# 3. divide by the temperature; with `0 < top_k < V`, set every logit below the k-th largest to
#    −∞ (`np.partition`);
# 4. softmax, then `top_p_filter` when `top_p < 1`;
# 5. draw: the first index where the cumulative probability exceeds `self.rng.random()`
#    (`np.searchsorted`), at most V − 1 against rounding.

# %%
#| export llm.sample
#| exercise: penalise seen tokens (divide positive, multiply negative); temperature <= 0 -> argmax; divide by temperature; top-k to -inf; softmax; top-p; searchsorted(cumsum, rng.random())
class Sampler:
    """Picks the next token: greedy at temperature 0, else repetition penalty, temperature, top-k, top-p."""

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, seed: int | None = None) -> None:
        """temperature >= 0 (0 = greedy), top_k >= 0 (0 = all), top_p in (0, 1], repetition_penalty > 0
        (1 = none), seed >= 0 or None; KuiperError naming the setting otherwise."""
        for name, value, ok, rule in (
                ("temperature", temperature, lambda v: v >= 0, ">= 0 (0 is greedy)"),
                ("top_p", top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
                ("repetition_penalty", repetition_penalty, lambda v: v > 0, "> 0 (1 is none)")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise KuiperError(f"sampler setting {name} must be a finite number {rule}, got {value!r}")
        for name, value in (("top_k", top_k), ("seed", 0 if seed is None else seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise KuiperError(f"sampler setting {name} must be an integer >= 0, got {value!r}")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.repetition_penalty = repetition_penalty
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """The next token id for logits (V,) after the tokens in `history`."""
        ### BEGIN SOLUTION
        logits = np.array(logits.get() if hasattr(logits, "get") else logits, dtype=np.float64)  # cupy: to the CPU
        if self.repetition_penalty != 1.0 and len(history):
            seen = np.unique(np.asarray(history))
            logits[seen] = np.where(logits[seen] > 0, logits[seen] / self.repetition_penalty,
                                    logits[seen] * self.repetition_penalty)
        if self.temperature <= 0:
            return int(np.argmax(logits))
        logits /= self.temperature
        if 0 < self.top_k < len(logits):
            logits[logits < np.partition(logits, -self.top_k)[-self.top_k]] = -np.inf
        probs = np.exp(logits - logits.max())
        probs = top_p_filter(probs / probs.sum(), self.top_p) if self.top_p < 1.0 else probs / probs.sum()
        return int(min(np.searchsorted(np.cumsum(probs), self.rng.random()), len(probs) - 1))
        ### END SOLUTION


# %%
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper)

with check("Exercise 11.7"):
    scores = np.random.default_rng(7).standard_normal(50) * 3
    history = [3, 3, int(np.argmax(scores)), int(np.argmin(scores))]
    assert Sampler()(scores) == int(np.argmax(scores)), f"temperature 0: expected the argmax {np.argmax(scores)}, got {Sampler()(scores)}"
    for temperature, top_k, penalty in [(1.0, 0, 1.0), (0.5, 5, 1.0), (1.5, 0, 1.3), (0.8, 10, 1.2), (0.0, 0, 3.0), (9.0, 2, 1.0)]:
        shaped = torch.from_numpy(scores)[None]
        shaped = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([history]), shaped) if penalty != 1 else shaped
        if temperature > 0:
            shaped = TemperatureLogitsWarper(temperature)(None, shaped)
            shaped = TopKLogitsWarper(top_k)(None, shaped) if top_k else shaped
        probs = torch.softmax(shaped[0], -1).numpy()
        for seed in range(16):
            draw = np.random.default_rng(seed).random()
            want = int(np.argmax(probs)) if temperature == 0 else int(np.searchsorted(np.cumsum(probs), draw))
            got = Sampler(temperature, top_k, repetition_penalty=penalty, seed=seed)(scores, history)
            assert got == want, (f"temperature {temperature}, top-k {top_k}, penalty {penalty}, seed {seed}: "
                                 f"expected token {want} (p = {probs[want]:.3f}), got {got} (p = {probs[got]:.3f})")


# %%
sampler = kuiper.llm.sample.Sampler(temperature=0.8, top_p=0.9, seed=0)
print("greedy:", repr(tokenizer.decode([kuiper.llm.sample.Sampler()(logits)])))
print("sampled, seed 0:", [repr(tokenizer.decode([sampler(logits)])) for _ in range(6)])

# %% [markdown]
# ## Exercise 11.8 — the generation loop
#
# Generation is prefill once, then decode one token at a time:
#
# 1. run the whole prompt through `model.forward(prompt, pos)` — its keys and values fill the
#    cache from position `pos`;
# 2. pick a token from the last row of logits, `yield` it, and stop if it is a stop token;
# 3. otherwise run **only that token** at the next position: the cache already holds everything
#    before it. Repeat until `max_tokens`.
#
# `Stats` records how long prefill and decode took (only the model and sampler, not the time the
# caller spends printing), and the next free cache position, so a chat can continue from there.

# %%
#| export llm.generate
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from kuiper.llm.model import Llama
from kuiper.llm.sample import Sampler


@dataclass
class Stats:
    """Token counts and seconds of one generation, and the next free position in the KV cache."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    position: int = 0

    @property
    def prefill_rate(self) -> float:
        """Prompt tokens per second."""
        return self.prompt_tokens / max(self.prefill_seconds, 1e-9)

    @property
    def decode_rate(self) -> float:
        """Generated tokens per second (each decode step makes one)."""
        return max(self.new_tokens - 1, 0) / max(self.decode_seconds, 1e-9)

    def __str__(self) -> str:
        return (f"prefill: {self.prompt_tokens} tokens, {self.prefill_rate:.1f} tok/s; "
                f"decode: {self.new_tokens} tokens, {self.decode_rate:.1f} tok/s")


# %%
#| export llm.generate
#| exercise: prefill the prompt at `pos`, then sample, yield, stop on a stop id, else forward the one new token at the next position
def generate(model: Llama, prompt: Sequence[int], sampler: Sampler, max_tokens: int,
             stop: Sequence[int] = (), pos: int = 0, stats: Stats | None = None) -> Iterator[int]:
    """Yield up to `max_tokens` new token ids after `prompt`, whose first token goes to cache position `pos`;
    generation ends early, without an error, at a stop id or when the KV cache is full."""
    stats = Stats() if stats is None else stats
    with model.in_use():
        ### BEGIN SOLUTION
        start = time.perf_counter()
        logits = model.forward(np.asarray(prompt), pos)
        history = list(prompt)
        token = sampler(logits[-1], history)
        stats.prompt_tokens, stats.prefill_seconds, stats.position = len(prompt), time.perf_counter() - start, pos + len(prompt)
        for count in range(max_tokens):
            stats.new_tokens += 1
            yield token
            if token in stop or count == max_tokens - 1 or stats.position >= model.max_seq_len:
                return
            start = time.perf_counter()
            history.append(token)
            logits = model.forward(np.array([token]), stats.position)
            stats.position += 1
            token = sampler(logits[-1], history)
            stats.decode_seconds += time.perf_counter() - start
        ### END SOLUTION


# %%
class Recording:
    """The model, with a list of the (number of tokens, position) of every forward call; every other
    attribute is the model's."""

    def __init__(self, model: kuiper.llm.model.Llama) -> None:
        self.model, self.calls = model, []

    def forward(self, ids: np.ndarray, pos: int) -> np.ndarray:
        self.calls.append((len(ids), pos))
        return self.model.forward(ids, pos)

    def __getattr__(self, name: str) -> object:
        return getattr(self.model, name)  # in_use, max_seq_len, ...: the model's


with check("Exercise 11.8"):
    ids = tokenizer.encode("The capital of France is")
    want = list(ids)
    for _ in range(5):  # greedy without a cache: the whole sequence again for every token
        want.append(int(np.argmax(model.forward(np.array(want), 0)[-1])))
    want = want[len(ids):]
    recording, stats = Recording(model), kuiper.llm.generate.Stats()
    got = list(generate(recording, ids, kuiper.llm.sample.Sampler(), 5, pos=3, stats=stats))
    assert got == want, f"greedy, 5 tokens: expected {tokenizer.decode(want)!r} {want}, got {tokenizer.decode(got)!r} {got}"
    calls = [(len(ids), 3)] + [(1, 3 + len(ids) + i) for i in range(4)]
    assert recording.calls == calls, f"prompt at 3, then 4 single tokens: expected forward calls (tokens, pos) {calls}, got {recording.calls}"
    counts = (stats.prompt_tokens, stats.new_tokens, stats.position)
    assert counts == (len(ids), 5, 3 + len(ids) + 4), f"expected stats (prompt, new, position) {(len(ids), 5, 3 + len(ids) + 4)}, got {counts}"
    got = list(generate(model, ids, kuiper.llm.sample.Sampler(), 5, stop=[want[1]]))
    assert got == want[:2], f"stop at {want[1]}: expected {want[:2]}, got {got}"
    print(repr(tokenizer.decode(want)))

# %% [markdown]
# When the full model was loaded into transformers above (`KUIPER_LONG=1`), its own `generate`
# must pick the same greedy tokens, here 24 of them:

# %%
# NBVAL_SKIP
if LONG:
    ids = tokenizer.encode("The capital of France is")
    with torch.no_grad():
        want = reference.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    got = list(kuiper.llm.generate.generate(model, ids, kuiper.llm.sample.Sampler(), 24))
    print("greedy, 24 tokens, same as transformers:", got == want, repr(tokenizer.decode(got)))

# %% [markdown]
# ## A conversation
#
# A chat model was trained on conversations written in its **chat template**; SmolLM2's is
# ChatML, with a default system message. `Chat` keeps the messages, renders the whole
# conversation each turn, and runs only the tokens that are not in the KV cache yet: the cache
# still holds every earlier turn, so a long conversation costs no more per turn than a short one.
# `StreamDecoder` turns tokens into text as they come, holding back bytes of a character that is
# split over two tokens (an emoji often is).

# %%
#| export llm.generate
from kuiper.llm.tokenizer import StreamDecoder, Tokenizer, chat_prompt


class Chat:
    """A conversation with a chat model that reuses the KV cache of earlier turns."""

    def __init__(self, model: Llama, tokenizer: Tokenizer, sampler: Sampler, max_tokens: int = 256) -> None:
        self.model, self.tokenizer, self.sampler, self.max_tokens = model, tokenizer, sampler, max_tokens
        self.messages: list[dict[str, str]] = []
        self.cached: list[int] = []

    def say(self, text: str, stats: Stats | None = None) -> Iterator[str]:
        """Add a user message and stream the reply's text; the reply joins the conversation."""
        self.messages.append({"role": "user", "content": text})
        ids = self.tokenizer.encode(chat_prompt(self.messages, self.tokenizer.chat_template))
        same = next((i for i, (a, b) in enumerate(zip(ids, self.cached)) if a != b), min(len(ids), len(self.cached)))
        same = min(same, len(ids) - 1)
        stats = Stats() if stats is None else stats
        reply, decoder, stop = [], StreamDecoder(self.tokenizer), self.tokenizer.eos_ids
        for token in generate(self.model, ids[same:], self.sampler, self.max_tokens, stop, same, stats):
            reply.append(token)
            if token not in stop:
                yield decoder.push(token)
        yield decoder.flush()
        self.cached = (ids + reply)[:stats.position]
        self.messages.append({"role": "assistant", "content": self.tokenizer.decode(t for t in reply if t not in stop)})


# %% [markdown]
# A conversation of two turns. Answers take a while to generate, so this cell and the story below
# run only when asked (`KUIPER_LONG=1`, as when the lesson is built); their output is stored.

# %%
# NBVAL_SKIP
if LONG:
    chat = kuiper.llm.generate.Chat(model, tokenizer, kuiper.llm.sample.Sampler(), max_tokens=48)
    for question in ["What is the capital of France?", "And of Italy?"]:
        stats = kuiper.llm.generate.Stats()
        print(f"> {question}\n" + "".join(chat.say(question, stats)))
        print(f"  (ran {stats.prompt_tokens} new prompt tokens; {stats.position} in the cache)")

# %% [markdown]
# The same from a terminal — `kuiper chat` for a conversation, `kuiper generate` for one answer,
# streamed, with the speed at the end:
#
# ```
# kuiper generate data/models/smollm2-135m-instruct-q4_1.gguf --prompt "What is the capital of France?"
# kuiper chat data/models/smollm2-135m-instruct-q4_1.gguf
# ```
#
# Sampling makes each run different unless it is seeded; the cell below is seeded, so it prints
# the same story every time.

# %%
# NBVAL_SKIP
if LONG:
    sampler = kuiper.llm.sample.Sampler(temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=42)
    ids = tokenizer.encode(chat_prompt([{"role": "user", "content": "Write one sentence about the sea."}],
                                       tokenizer.chat_template))
    story = kuiper.llm.generate.generate(model, ids, sampler, 40, stop=tokenizer.eos_ids)
    print(tokenizer.decode(t for t in story if t not in tokenizer.eos_ids))

# %% [markdown]
# ## How fast, and how fast it could be
#
# Decoding one token reads every weight once: for SmolLM2 in float32 that is about 540 MB. No
# engine can decode faster than **memory bandwidth ÷ bytes per token**; `kuiper bench` measures
# the bandwidth of this machine and prints that bound beside the rates. It times kuiper and
# transformers in one process with the same threads (and llama.cpp on the same GGUF files when
# `llama-cpp-python` is installed). Prefill is different: a whole prompt reuses every weight for
# all its tokens, so it is bound by arithmetic, and BLAS's matrix-matrix product does it.

# %%
# NBVAL_SKIP
from kuiper.bench import bench_llm, format_llm_rows

if LONG:
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' GGUF conversion draws a progress bar
        rows = bench_llm(SMOLLM2, prompt_tokens=32, decode_tokens=32, llama_cpp=False)
    print(format_llm_rows(rows))

# %% [markdown]
# ## Where the weights live
#
# Profile one decode step of SmolLM2 and almost all of it is the 121 matrix-vector products (four per
# layer and the `lm_head`); RMSNorm, RoPE, attention and SwiGLU together take under a tenth. Yet the
# products stream only about half the bandwidth that one long read of a 512 MB array reaches on the
# same machine. The arithmetic is not the cause: each weight matrix is its own allocation of 1 to 7 MB,
# somewhere in memory, in 4 KB pages. At each page the hardware prefetcher stops and starts over (it
# does not cross a page), and each new matrix starts a new stream. Copied one after another into
# **one buffer**, in the order a decode step reads them, the weights are one long stream, and numpy
# gives a buffer that large 2 MB pages (it asks the kernel with `madvise`). Measured here, the 121
# products ran about 1.2 × faster from one buffer than from separate arrays, the same kernel.
#
# ## Exercise 11.9 — one buffer for the weights
#
# Write `pack(arrays)`: copies of the arrays, same shapes and dtypes, laid out one after another in a
# single `uint8` buffer, each starting on a 64-byte boundary (a cache line, so no row of a matrix
# starts mid-line and every dtype is aligned). Add up the offsets first (round each up to a multiple of
# `ALIGN`), allocate the buffer once with `ALIGN` spare bytes, skip to the first aligned byte, then give
# each array a view of its bytes (`.view(dtype).reshape(shape)`) and copy it in. `Llama` packs its
# matrices with it when it is built.

# %%
#| export llm.ops
#| exercise: offsets: each rounded up to a multiple of ALIGN, then += nbytes; one uint8 buffer of the total + ALIGN; start at its first ALIGN-aligned byte; each array's bytes viewed as its dtype and shape, copied in
ALIGN = 64  # bytes: a cache line


def pack(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Copies of `arrays` (any shapes and dtypes) in one buffer, in order, each C-contiguous and starting
    on an ALIGN-byte boundary: one stream for the prefetcher, 2 MB pages for a large buffer."""
    ### BEGIN SOLUTION
    offsets, size = [], 0
    for a in arrays:
        size = -(-size // ALIGN) * ALIGN
        offsets.append(size)
        size += a.nbytes
    buffer = np.empty(size + ALIGN, np.uint8)
    start = -buffer.ctypes.data % ALIGN
    copies = []
    for a, offset in zip(arrays, offsets):
        view = buffer[start + offset:start + offset + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        copies.append(view)
    return copies
    ### END SOLUTION

# %%
with check("Exercise 11.9"):
    rng = np.random.default_rng(9)
    arrays = [rng.standard_normal((3, 50), dtype=np.float32), np.arange(-3, 4, dtype=np.int8),
              rng.standard_normal((4, 6), dtype=np.float32)[:, ::2], np.full((1, 1), 2.5, np.float32)]
    packs = [pack(arrays), pack([-a for a in arrays])]  # two value sets: a freed buffer's old values cannot pass
    copies = packs[0]
    assert len(copies) == len(arrays), f"expected {len(arrays)} arrays, got {len(copies)}"
    for i, (a, c, n) in enumerate(zip(arrays, copies, packs[1])):
        assert (c.shape, c.dtype) == (a.shape, a.dtype), f"array {i}: expected {a.shape} {a.dtype}, got {c.shape} {c.dtype}"
        assert np.array_equal(c, a) and np.array_equal(n, -a), f"array {i}: expected the values\n{a}\ngot\n{c}"
        assert c.ctypes.data % 64 == 0, f"array {i}: expected an address that is a multiple of 64, got one {c.ctypes.data % 64} past it"
        assert c.flags.c_contiguous, f"array {i}: expected a C-contiguous copy, got strides {c.strides}"
    starts, ends = [c.ctypes.data for c in copies], [c.ctypes.data + c.nbytes for c in copies]
    assert all(e <= s for e, s in zip(ends, starts[1:])), f"expected the arrays in order, none overlapping: starts {starts}, ends {ends}"
    span, wanted = ends[-1] - starts[0], sum(-(-c.nbytes // 64) * 64 for c in copies)
    assert span <= wanted, f"expected one buffer of at most {wanted} bytes from first to last array, got {span} bytes"

# %% [markdown]
# The model's matrices now lie in one buffer, in the order a decode step reads them:

# %%
first, second = model.blocks[0], model.blocks[1]
owners = {id(w.base) for b in model.blocks for w in (b.wqkv, b.wo, b.w_gate_up, b.w_down)} | {id(model.head.base)}
print("buffers holding the matrices:", len(owners),
      "| in reading order:", first.wqkv.ctypes.data < first.wo.ctypes.data < first.w_down.ctypes.data < second.wqkv.ctypes.data)

# %% [markdown]
# ## Exercise 11.10 — ask for the next rows before they are needed
#
# One buffer makes one long stream, yet each thread still waits: it sums a row, asks for the next cache
# line, waits about 100 ns for the memory, and sums again. A multiply-add per 4 bytes read is little
# work, so the core idles through most of each wait, and the waits and the sums add up instead of
# overlapping. What a memory delivers is the bytes in flight divided by its latency (Little's law):
# to stream faster, a core must have more requests out while it computes. A **software prefetch** is
# such a request: an instruction that asks for the cache line holding an address and does not wait for
# it. `prefetch(a, offset)` below is LLVM's `llvm.prefetch` intrinsic on byte `offset` of an array's
# data, written with numba's `@intrinsic` as lesson 05 wrote `bits_as_float32`. It never faults, so an
# offset past the end is harmless, but keep it inside the array anyway. Lesson 14's int8 kernels use it
# too.
#
# Rewrite `_matvec(w, x, out)` so that each row i (in `prange`) first prefetches every 64-byte line of
# row i + `MATVEC_PREFETCH_ROWS` — its first byte is (i + `MATVEC_PREFETCH_ROWS`) · 4K, clamp each
# offset to the last byte of `w` — and then sums row i with the same plain loop as before. Keep the
# prefetches out of that loop: LLVM turns a plain sum into vector multiply-adds (`vfmadd…ps`), and the
# same sum in 16-float pieces with a prefetch before each came out as scalar multiply-adds, 3–14 ×
# slower. Measured in one process under load (other programs shared the two cores, so these are
# ratios, not the machine's speed), prefetching 4 rows ahead made a whole SmolLM2 decode step take
# 0.82–1.0 × the time of the plain loop over five runs (the busier the memory, the larger the gain);
# 8 rows ahead (18 KB) gained nothing. Each matrix alone, read from memory: 0.83–1.07 × the time for
# the 576-wide ones (576, 960, 3072 and 49152 rows), but 1.07–1.3 × for the 1536-wide down projection,
# whose 6 KB rows send 96 prefetches at once.

# %%
#| export llm.ops
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, array, offset):
    """Ask the CPU to bring the cache line holding byte `offset` of `array`'s data (C order) into its caches,
    without waiting for it (LLVM's llvm.prefetch: read, keep in all levels). Never faults; returns nothing."""
    byte_ptr = ir.IntType(8).as_pointer()

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.gep(builder.bitcast(data, byte_ptr), [args[1]])
        i32 = ir.IntType(32)
        llvm_prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), "llvm.prefetch.p0i8")
        builder.call(llvm_prefetch, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    if isinstance(array, types.Array) and isinstance(offset, types.Integer):
        return types.void(array, offset), codegen
    return None

# %%
#| export llm.ops
#| exercise: per row i in prange: prefetch every 64-byte line of row i + MATVEC_PREFETCH_ROWS (offsets clamped to the last byte of w), then total = sum over j of w[i, j] * x[j]; out[i] = total
MATVEC_PREFETCH_ROWS = 4  # how many float32 rows below the one it sums `_matvec` prefetches


@njit(parallel=True, fastmath=True, cache=True)
def _matvec(w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out (N,) = w (N, K) @ x (K,), float32, w C-contiguous; before summing row i, every cache line of row
    i + MATVEC_PREFETCH_ROWS is prefetched (no prefetch past the last byte of w)."""
    ### BEGIN SOLUTION
    n_rows, k = w.shape
    row_bytes, last_byte = 4 * k, 4 * w.size - 1
    for i in prange(n_rows):
        ahead = (i + MATVEC_PREFETCH_ROWS) * row_bytes  # the first byte of the row prefetched
        for line in range(0, row_bytes, 64):
            prefetch(w, min(ahead + line, last_byte))
        total = np.float32(0.0)
        for j in range(k):
            total += w[i, j] * x[j]
        out[i] = total
    ### END SOLUTION

# %%
with check("Exercise 11.10"):
    rng = np.random.default_rng(10)
    for rows, k in [(37, 100), (1, 3), (9, 64)]:
        w, x = rng.standard_normal((rows, k), dtype=np.float32), rng.standard_normal(k, dtype=np.float32)
        out, want = np.full(rows, np.nan, np.float32), w.astype(np.float64) @ x
        _matvec(w, x, out)
        err = np.abs(out - want).max()
        assert err <= 1e-5 * np.abs(want).max(), f"w {w.shape}: expected w @ x = {want[-3:].round(4)} (last 3), got {out[-3:].round(4)}"

# %% [markdown]
# ## What you built
#
# - `kuiper.llm.ops`: RMSNorm, SwiGLU, RoPE, grouped-query attention over a KV cache (BLAS for a
#   prompt, a numba kernel for one token) and the matrix-vector product that prefetches the rows it will
#   read next, the seam a GPU replaces;
# - `kuiper.llm.model`: `Config` and one `Llama` class for every Llama-family model, loaded from a
#   GGUF file (lesson 09's readers, lesson 10's tokenizer) or a Hugging Face folder, exact to
#   transformers;
# - `kuiper.llm.sample` and `kuiper.llm.generate`: the sampler, streaming generation and a chat
#   that reuses its KV cache: `kuiper generate` and `kuiper chat`.
#
# Lesson 12 runs Qwen2.5 and Qwen3 with the same class: two switches in `Config` and a new tokenizer.
