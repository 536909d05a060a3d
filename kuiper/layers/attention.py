# Generated from solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

from typing import Literal

import numpy as np

from kuiper.errors import ShapeError
from kuiper.layers.elementwise import Function, function, softmax
from kuiper.layers.linalg import linear, matmul
from kuiper.registry import register


def additive_mask(mask: np.ndarray | None, allowed: bool) -> np.ndarray:
    """mask as numbers to add to attention scores: a float mask as it is; a bool mask 0 where it
    equals `allowed` and −inf elsewhere; no mask 0."""
    if mask is None:
        return np.float32(0)
    if mask.dtype == np.bool_:
        return np.where(mask == allowed, np.float32(0), np.float32(-np.inf))
    return mask


def causal_mask(length: int, keys: int) -> np.ndarray:
    """(length, keys) float32: 0 where key j ≤ query i, −inf above the diagonal."""
    return np.triu(np.full((length, keys), -np.inf, np.float32), 1)


def attention_weights(query: np.ndarray, key: np.ndarray, mask: np.ndarray, scale: float | None = None) -> np.ndarray:
    """softmax(q·kᵀ·scale + mask) over the keys: (..., L, E) and (..., S, E) -> (..., L, S), scale 1/√E by default."""
    scale = 1 / np.sqrt(query.shape[-1]) if scale is None else scale
    scores = matmul(query, np.swapaxes(key, -1, -2)) * np.float32(scale)
    return softmax(scores + mask, -1)


@function("F.scaled_dot_product_attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: Literal[0.0, 0] = 0.0,
                                 is_causal=False, scale=None, enable_gqa=False):
    """softmax(q·kᵀ·scale + mask)·v: (..., H, L, E), (..., G, S, E), (..., G, S, Ev) -> (..., H, L, Ev);
    a bool attn_mask is True where a query may look; is_causal adds the causal mask; enable_gqa lets
    G divide H (PyTorch's F.scaled_dot_product_attention)."""
    mask = additive_mask(attn_mask, allowed=True)
    if is_causal:
        mask = mask + causal_mask(query.shape[-2], key.shape[-2])
    if enable_gqa and key.ndim > 2 and key.shape[-3] != query.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        key, value = np.repeat(key, groups, axis=-3), np.repeat(value, groups, axis=-3)
    return matmul(attention_weights(query, key, mask, scale), value)


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(N, L, H·D) -> (N, H, L, D)."""
    n, length, _ = x.shape
    return x.reshape(n, length, heads, -1).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(N, H, L, D) -> (N, L, H·D), the inverse of split_heads."""
    n, heads, length, depth = x.shape
    return x.transpose(0, 2, 1, 3).reshape(n, length, heads * depth)


def multihead_attention(input, key=None, value=None, attn_mask=None, key_padding_mask=None, *, num_heads,
                        out_proj_weight, out_proj_bias=None, in_proj_weight=None, in_proj_bias=None,
                        q_proj_weight=None, k_proj_weight=None, v_proj_weight=None, bias_k=None, bias_v=None,
                        add_zero_attn=False, batch_first=False):
    """nn.MultiheadAttention at inference: the query `input`, key and value (L, N, E) ((N, L, E) if
    batch_first), key = query and value = key where absent; returns the output and the weights averaged
    over heads (N, L, S). Bool masks are True where masked; attn_mask is (L, S) or (N·H, L, S),
    key_padding_mask (N, S)."""
    query = input
    key = query if key is None else key
    value = key if value is None else value
    if query.ndim != 3:
        raise ShapeError(f"nn.MultiheadAttention: expected a batched query (L, N, E), got shape {query.shape}")
    if not batch_first:
        query, key, value = (np.swapaxes(x, 0, 1) for x in (query, key, value))  # (N, L, E)
    if in_proj_weight is not None:
        q_proj_weight, k_proj_weight, v_proj_weight = np.split(in_proj_weight, 3)
    q_bias, k_bias, v_bias = (None,) * 3 if in_proj_bias is None else np.split(in_proj_bias, 3)
    q, k, v = linear(query, q_proj_weight, q_bias), linear(key, k_proj_weight, k_bias), linear(value, v_proj_weight, v_bias)
    n = q.shape[0]
    mask = additive_mask(attn_mask, allowed=False)
    mask = mask.reshape(n, num_heads, *mask.shape[1:]) if np.ndim(mask) == 3 else mask  # (N, H, L, S)
    if key_padding_mask is not None:
        mask = mask + additive_mask(key_padding_mask, allowed=False)[:, None, None, :]
    extra = [np.broadcast_to(b.reshape(1, 1, -1), (n, 1, b.size)) for b in (bias_k, bias_v) if b is not None]
    if extra:
        k, v = np.concatenate([k, extra[0]], 1), np.concatenate([v, extra[1]], 1)
    q, k, v = (split_heads(x, num_heads) for x in (q, k, v))  # (N, H, L, D)
    if add_zero_attn:
        k, v = (np.concatenate([x, np.zeros_like(x[:, :, :1])], 2) for x in (k, v))
    added = len(extra) // 2 + bool(add_zero_attn)  # keys appended after the masks were made
    if added and np.ndim(mask):
        mask = np.pad(mask, [(0, 0)] * (np.ndim(mask) - 1) + [(0, added)])
    weights = attention_weights(q, k, mask)  # (N, H, L, S)
    out = linear(merge_heads(matmul(weights, v)), out_proj_weight, out_proj_bias)
    return (out if batch_first else np.swapaxes(out, 0, 1)), weights.mean(axis=1)


@register("nn.MultiheadAttention")
class MultiheadAttention(Function):
    """nn.MultiheadAttention: one output, or the output and the head-averaged attention weights."""

    fn = staticmethod(multihead_attention)

    def forward(self, *xs):
        out, weights = super().forward(*xs)
        return (out, weights) if len(self.op.outputs) == 2 else out
