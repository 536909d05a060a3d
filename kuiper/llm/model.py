# Generated from solutions/11_llama.py, solutions/13_cuda.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import importlib
import json
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kuiper.cuda.device import to_device
from kuiper.errors import DeviceError, GGUFError, KuiperError, SafetensorsError, ShapeError
from kuiper.llm import ops as cpu_ops
from kuiper.llm.gguf import GGUFFile
from kuiper.llm.safetensors import load_config, open_checkpoint
from kuiper.llm.tokenizer import BPETokenizer, load_tokenizer, Tokenizer


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

    def to(self, device: str) -> Llama:
        """The model with weights, KV cache and RoPE tables on `device` ('cpu' or 'cuda') and that device's kernels."""
        if device not in ("cpu", "cuda"):
            raise DeviceError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")
        if device == "cuda" and any(not hasattr(w, "__array__") for b in self.blocks for w in vars(b).values()
                                    if w is not None):
            raise DeviceError("the GPU backend runs float32 weights only: load the model without int8 quantization")
        def move(array: Any) -> Any:
            return None if array is None else to_device(array, device)

        self.embed, self.norm, self.head = move(self.embed), move(self.norm), move(self.head)
        self.cos, self.sin, self.k_cache, self.v_cache = map(move, (self.cos, self.sin, self.k_cache, self.v_cache))
        self.blocks = [Block(**{name: move(w) for name, w in vars(b).items()}) for b in self.blocks]
        self.ops = cpu_ops if device == "cpu" else importlib.import_module("kuiper.cuda.llm_ops")
        return self


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
