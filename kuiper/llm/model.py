# Generated from solutions/11_llama.py, solutions/13_cuda.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kuiper.cuda.device import simulating, to_device
from kuiper.errors import DeviceError, KuiperError, ShapeError
from kuiper.llm import ops as cpu_ops
from kuiper.llm.gguf import GGUFFile
from kuiper.llm.safetensors import load_config, SafetensorsFile
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


def config_from_gguf(meta: dict[str, Any]) -> Config:
    """The Config stored in a GGUF file's metadata under `<architecture>.*` keys."""
    arch = meta["general.architecture"]
    key = lambda name, default=None: meta.get(f"{arch}.{name}", default)  # noqa: E731
    n_heads = int(key("attention.head_count"))
    return Config(
        dim=int(key("embedding_length")), n_layers=int(key("block_count")), n_heads=n_heads,
        n_kv_heads=int(key("attention.head_count_kv", n_heads)),
        head_dim=int(key("attention.key_length", int(key("embedding_length")) // n_heads)),
        hidden_dim=int(key("feed_forward_length")),
        vocab_size=int(key("vocab_size", len(meta.get("tokenizer.ggml.tokens", ())))),
        norm_eps=float(key("attention.layer_norm_rms_epsilon")), rope_theta=float(key("rope.freq_base", 10000.0)),
        context_length=int(key("context_length")), arch=arch,
        qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3")


def config_from_hf(hf: dict[str, Any]) -> Config:
    """The Config of a Hugging Face `config.json` (Llama, Qwen2, Qwen3)."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    scaling = rope if rope.get("rope_type", rope.get("type", "default")) != "default" else {}
    arch = {"qwen2": "qwen2", "qwen3": "qwen3"}.get(hf.get("model_type"), "llama")
    return Config(
        dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        hidden_dim=hf["intermediate_size"], vocab_size=hf["vocab_size"], norm_eps=float(hf["rms_norm_eps"]),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        context_length=hf.get("max_position_embeddings", 2048), rope_scaling=dict(scaling),
        tied_embeddings=hf.get("tie_word_embeddings", False), arch=arch,
        qkv_bias=hf.get("attention_bias", arch == "qwen2"), qk_norm=arch == "qwen3")


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


class Llama:
    """A Llama-family decoder (Llama 2/3, SmolLM2, Qwen2/2.5/3): weights, RoPE tables and the KV cache."""

    def __init__(self, config: Config, embed: np.ndarray, blocks: list[Block], norm: np.ndarray,
                 head: np.ndarray, max_seq_len: int = 2048, rope_factors: np.ndarray | None = None) -> None:
        self.config, self.embed, self.blocks, self.norm, self.head = config, embed, blocks, norm, head
        self.max_seq_len = min(max_seq_len, config.context_length)
        self.cos, self.sin = cpu_ops.rope_tables(config.head_dim, config.rope_theta, self.max_seq_len,
                                                 config.rope_scaling, rope_factors)
        shape = (config.n_layers, config.n_kv_heads, self.max_seq_len, config.head_dim)
        self.k_cache, self.v_cache = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        self.ops = cpu_ops

    def forward(self, ids: np.ndarray, pos: int, all_logits: bool = False) -> np.ndarray:
        """Logits (1, V) for the last of the T tokens `ids` at positions pos…pos+T-1 (all T rows if asked)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if pos + len(ids) > self.max_seq_len:
            raise ShapeError(f"{pos} cached + {len(ids)} new tokens exceed the context of {self.max_seq_len}")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
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
        keep = device == "cuda" and simulating()  # the simulator runs GPU kernels on numpy arrays

        def move(array: Any) -> Any:
            return array if keep or array is None else to_device(array, device)

        self.embed, self.norm, self.head = move(self.embed), move(self.norm), move(self.head)
        self.cos, self.sin, self.k_cache, self.v_cache = map(move, (self.cos, self.sin, self.k_cache, self.v_cache))
        self.blocks = [Block(**{name: move(w) for name, w in vars(b).items()}) for b in self.blocks]
        self.ops = cpu_ops if device == "cpu" else importlib.import_module("kuiper.cuda.llm_ops")
        return self


GGUF_NAMES = {"attn_norm": "attn_norm.weight", "wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight",
              "bq": "attn_q.bias", "bk": "attn_k.bias", "bv": "attn_v.bias", "q_norm": "attn_q_norm.weight",
              "k_norm": "attn_k_norm.weight", "wo": "attn_output.weight", "ffn_norm": "ffn_norm.weight",
              "gate": "ffn_gate.weight", "up": "ffn_up.weight", "down": "ffn_down.weight",
              "embed": "token_embd.weight", "norm": "output_norm.weight", "head": "output.weight"}
HF_NAMES = {"attn_norm": "input_layernorm.weight", "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight",
            "wv": "self_attn.v_proj.weight", "bq": "self_attn.q_proj.bias", "bk": "self_attn.k_proj.bias",
            "bv": "self_attn.v_proj.bias", "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight",
            "wo": "self_attn.o_proj.weight", "ffn_norm": "post_attention_layernorm.weight",
            "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight",
            "embed": "model.embed_tokens.weight", "norm": "model.norm.weight", "head": "lm_head.weight"}


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """GGUF llama q/k rows, RoPE pairs interleaved per head, back in rotate-half order."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build_block(config: Config, get: Any, interleaved: bool) -> Block:
    """One layer's weights from `get(name)` in our names, fused and in rotate-half order."""
    q, k = get("wq"), get("wk")
    if interleaved:
        q, k = unpermute(q, config.n_heads), unpermute(k, config.n_kv_heads)
    return Block(attn_norm=get("attn_norm"), wqkv=np.concatenate([q, k, get("wv")]),
                 wo=np.ascontiguousarray(get("wo")), ffn_norm=get("ffn_norm"),
                 w_gate_up=np.concatenate([get("gate"), get("up")]), w_down=np.ascontiguousarray(get("down")),
                 bqkv=np.concatenate([get("bq"), get("bk"), get("bv")]) if config.qkv_bias else None,
                 q_norm=get("q_norm") if config.qk_norm else None, k_norm=get("k_norm") if config.qk_norm else None)


def model_from_gguf(file: GGUFFile, max_seq_len: int = 2048) -> Llama:
    """The Llama stored in an open GGUF file, dequantized to float32."""
    config = config_from_gguf(file.metadata)
    blocks = [build_block(config, lambda name: file.tensor(f"blk.{i}.{GGUF_NAMES[name]}"), config.arch == "llama")
              for i in range(config.n_layers)]
    embed = file.tensor("token_embd.weight")
    head = file.tensor("output.weight") if "output.weight" in file.tensors else embed
    factors = file.tensor("rope_freqs.weight") if "rope_freqs.weight" in file.tensors else None
    return Llama(config, embed, blocks, file.tensor("output_norm.weight"), head, max_seq_len, factors)


def model_from_hf(folder: Path, max_seq_len: int = 2048) -> Llama:
    """The Llama in a Hugging Face folder: config.json and model.safetensors."""
    config = config_from_hf(load_config(folder / "config.json"))
    weights = SafetensorsFile(folder / "model.safetensors")
    blocks = [build_block(config, lambda name: weights.tensor(f"model.layers.{i}.{HF_NAMES[name]}"), False)
              for i in range(config.n_layers)]
    embed = weights.tensor(HF_NAMES["embed"])
    head = weights.tensor(HF_NAMES["head"]) if HF_NAMES["head"] in weights.tensors else embed
    return Llama(config, embed, blocks, weights.tensor(HF_NAMES["norm"]), head, max_seq_len)


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
