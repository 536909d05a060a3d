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
# # Lesson 10 — Tokenizers: byte-level BPE and SentencePiece
#
# **What you will build.** The model never sees characters, only token ids. This lesson writes the
# tokenizers of the course's models from their files: byte-level BPE (GPT-2, SmolLM2, Qwen) built
# from the GGUF merges or a `tokenizer.json`, SentencePiece BPE (Llama 2, Mistral) with its scores and
# byte fallback, special tokens, a streaming decoder, and the chat template. Every id is checked
# against the reference libraries (`tokenizers`, `sentencepiece`).
#
# **Prerequisites.** Lesson 09 (`GGUFFile`), Python strings and bytes, UTF-8. **Time:** about 75 minutes.
#
# | exercise | what |
# |---|---|
# | 10.1 | bytes as printable characters (byte-level BPE) |
# | 10.2 | pre-tokenization: cut the text with regexes |
# | 10.3 | the byte-level BPE merge loop, by rank |
# | 10.4 | read the protobuf wire format of a SentencePiece model |
# | 10.5 | the SentencePiece merge loop, by score |
# | 10.6 | SentencePiece ids with byte fallback |
# | 10.7 | the ChatML chat template |

# %%
#| default_exp llm.tokenizer

# %%
import importlib.util
import itertools
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from kuiper.course import DATA, LONG, check, package_file, patch_to
from kuiper.errors import KuiperError
from kuiper.llm.gguf import GGUFFile

SMOLLM2 = DATA / "models" / "smollm2-135m-instruct-q4_1.gguf"

# %% [markdown]
# ## The tokenizer: from text to token ids
#
# The model never sees characters. It sees integers, **token ids**, each one the number of an entry
# in a fixed vocabulary: 49,152 entries for SmolLM2, 32,000 for Llama 2, 151,665 for Qwen2.5. The
# tokenizer is the plain code around the network that turns text into ids (*encode*) and ids back
# into text (*decode*). It has to match the one the model was trained with, id for id. A model fed
# other ids still runs, but its answers get worse, and no error tells you why.
#
# A vocabulary of whole words has no entry for a word it has never seen. A vocabulary of single
# characters makes every sequence long, and the cost of attention grows with the square of the
# length. **Byte-pair encoding** (BPE) sits between the two. Training starts from single
# bytes (or characters), finds the adjacent pair that occurs most often in the corpus, adds the
# pair as a new token, and repeats, about 50,000 times. Frequent words end up as one token and
# rare words as a few pieces, and any text at all can still be written with the single bytes.
# Encoding replays the learned merges. Two families of BPE matter for the course's models:
#
# | | byte-level BPE (GPT-2, SmolLM2, Qwen) | SentencePiece BPE (Llama 2, Mistral 7B) |
# |---|---|---|
# | before merging | a regex cuts the text into words, numbers, punctuation | nothing: the whole text, spaces written `▁` |
# | merging starts from | the UTF-8 bytes of each piece | the Unicode characters |
# | the next merge is | the pair learned **first** (lowest rank) | the pair whose merged piece has the **highest score** |
# | a character not in the vocabulary | cannot happen: the vocabulary has the bytes | becomes `<0xXX>` byte tokens (*byte fallback*) |
# | GGUF `tokenizer.ggml.model` | `gpt2` | `llama` |
#
# The GGUF file carries everything the tokenizer needs: the vocabulary, the merges (or scores), the
# token types, and the ids of the special tokens.

# %%
metadata = GGUFFile(SMOLLM2).metadata
for name, value in metadata.items():
    if name.startswith("tokenizer."):
        if isinstance(value, list) or getattr(value, "ndim", 0) == 1:  # a list or a numpy array
            first = value[:6].tolist() if hasattr(value, "tolist") else value[:6]
            shown = f"{len(value):,} entries: {first} …"
        else:
            shown = repr(value)[:70]
        print(f"{name:34} {shown}")

# %% [markdown]
# The tokens are strings, and `Ġ` marks a space (Exercise 10.1 explains why). The first 17
# tokens have type 3, *control*: `<|im_start|>`, `<|im_end|>` and the rest frame a chat and are
# never produced by merging. The merges are pairs of tokens, listed in the order training learned
# them. `Ġ t` (a space followed by `t`) came first because ` the`, ` to` and ` that` are so common.
#
# ## BPE on one word
#
# To encode a word, write it as single characters, then repeat: among all adjacent pairs, find the
# one whose merge was learned first, the lowest *rank* (its index in the merges list), and join
# it. Stop when no adjacent pair is in the list. Here are SmolLM2's merges at work on
# ` tokenization`:

# %%
merge_rank = {tuple(merge.split(" ")): rank for rank, merge in enumerate(metadata["tokenizer.ggml.merges"])}
parts = list("Ġtokenization")
print(f"{'start':>17}   {' '.join(parts)}")
while True:
    ranked = [(merge_rank[pair], i) for i, pair in enumerate(itertools.pairwise(parts)) if pair in merge_rank]
    if not ranked:
        break
    rank, i = min(ranked)
    parts[i:i + 2] = [parts[i] + parts[i + 1]]
    print(f"merge #{rank:<5} at {i:2}   {' '.join(parts)}")
print("ids:", [metadata["tokenizer.ggml.tokens"].index(part) for part in parts])

# %% [markdown]
# Eleven merges turn 13 characters into 2 tokens. The loop never looks at counts or
# probabilities. The rank order alone decides, so two implementations that follow this rule give
# the same ids.
#
# ## Exercise 10.1 — bytes as printable characters
#
# Byte-level BPE merges **bytes**, so it can encode any text: 中 is the three bytes
# `E4 B8 AD`, and every one of them has a token. The vocabulary file, however, stores tokens as
# strings, and many bytes are not printable text on their own: 0x20 (space), 0x0A (newline),
# 0xE4 (the first third of 中). GPT-2's trick is a fixed table that gives each of the 256 bytes a
# visible character. The bytes that are already printable Latin-1 map to themselves: `!` … `~`
# (33–126), `¡` … `¬` (161–172) and `®` … `ÿ` (174–255). The other 68 bytes, in increasing order,
# get the characters 256, 257, 258, … So byte 0 is `Ā` (256), the space 0x20 (the 33rd such
# byte) is `Ġ` (288), and the newline 0x0A is `Ċ` (266). Every vocabulary string is its bytes
# written through this table.

# %%
#| export llm.tokenizer
#| exercise: bytes 33-126, 161-172 and 174-255 map to the same character; the others, in order, to chr(256), chr(257), ...
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte 0-255 to a printable character, so byte strings can be
    vocabulary strings."""
    ### BEGIN SOLUTION
    printable = {*range(33, 127), *range(161, 173), *range(174, 256)}
    others = iter(range(256, 512))
    return {byte: chr(byte) if byte in printable else chr(next(others)) for byte in range(256)}
    ### END SOLUTION


# %%
from tokenizers.pre_tokenizers import ByteLevel

with check("Exercise 10.1"):
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)), f"expected one entry per byte 0-255, got keys {sorted(table)[:5]}…"
    missing = sorted(set(ByteLevel.alphabet()) - set(table.values()))
    assert not missing, f"expected the 256 characters of tokenizers' ByteLevel, missing {missing[:8]}"
    got = table[0x20], table[0x0A], table[0]
    assert got == ("Ġ", "Ċ", "Ā"), f"space, newline and byte 0: expected Ġ Ċ Ā, got {got}"
    text = "naïve 中文\n"
    want = ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)[0][0]
    got = "".join(table[byte] for byte in text.encode())
    assert got == want, f"{text!r} as byte characters: expected {want!r} (tokenizers), got {got!r}"

# %% [markdown]
# Two small helpers convert between the two forms. `from_byte_level` turns a vocabulary string
# back into its bytes, which is what decoding needs. A string with a character outside the table
# is not byte-level, and the helper raises a `TokenizerError`, the error kuiper raises for every
# tokenizer file or field it cannot read:

# %%
#| export errors
class TokenizerError(KuiperError, ValueError):
    """A tokenizer file or metadata field kuiper cannot read, or a token the vocabulary lacks."""


# %%
#| export llm.tokenizer
import functools


@functools.cache
def _byte_table() -> tuple[dict[int, str], dict[int, int]]:
    """bytes_to_unicode() and its inverse, {code point: byte}."""
    forward = bytes_to_unicode()
    return forward, {ord(char): byte for byte, char in forward.items()}


def to_byte_level(data: bytes) -> str:
    """The vocabulary string of a byte string: b' the' -> 'Ġthe'."""
    return "".join(map(_byte_table()[0].__getitem__, data))


def from_byte_level(piece: str) -> bytes:
    """The bytes a vocabulary string stands for: 'Ġthe' -> b' the'; TokenizerError if it has a
    character outside the 256 of the table."""
    try:
        return bytes(map(_byte_table()[1].__getitem__, map(ord, piece)))
    except KeyError as err:
        raise TokenizerError(f"token {piece!r} is not byte-level: {chr(err.args[0])!r} is not one of "
                             "the 256 characters of bytes_to_unicode()") from None


# %%
print(to_byte_level("中 is\n".encode()), from_byte_level("ä¸ŃĠisĊ").decode())

# %% [markdown]
# ## Pre-tokenization: where merges may not cross
#
# Byte-level BPE does not merge across the whole text. A regex first cuts it into *pre-tokens*,
# and merging happens inside each one. So ` dog` and `.` never become one token, and the
# vocabulary is not spent on `dog.`, `dog,` and `dog!`. GPT-2's regex has these alternatives,
# tried left to right:
#
# | alternative | matches |
# |---|---|
# | `'s\|'t\|'re\|'ve\|'m\|'ll\|'d` | English contractions |
# | ` ?\p{L}+` | a word, with the one space before it |
# | ` ?\p{N}+` | a number, with its space |
# | ` ?[^\s\p{L}\p{N}]+` | a run of punctuation or symbols, with its space |
# | `\s+(?!\S)` | whitespace, except the last space before a word (that one goes with the word) |
# | `\s+` | any other whitespace |
#
# `\p{L}` is any letter in any script (é, 中 and ع too), and `\p{N}` is any digit. Python's `re`
# has no such classes, which is why kuiper uses the `regex` package. SmolLM2, like StarCoder, first
# cuts out every digit on its own, so `1234` is read as four tokens `1 2 3 4`. That helps with
# arithmetic. The GGUF field `tokenizer.ggml.pre` names the recipe.
#
# ## Exercise 10.2 — pre-tokenization
#
# Write `_isolate`: the matches of one compiled regex in `text` **and** the stretches between
# them (llama.cpp and `tokenizers` keep those as pieces of their own), in order, never an empty
# one. Then `pretokenize`: start from the whole text (or nothing, for the empty text) and let
# each regex in turn split every piece further.

# %%
#| export llm.tokenizer
#| exercise: _isolate yields the gap before each match, the match, and the rest; pretokenize splits every piece by each pattern in turn
from collections.abc import Iterator, Sequence

import regex

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

#: The regexes of each GGUF `tokenizer.ggml.pre`, applied in turn (names as llama.cpp spells them).
PRETOKENIZERS: dict[str, tuple[str, ...]] = {
    "gpt-2": (GPT2_PATTERN,),
    **dict.fromkeys(("smollm", "starcoder", "refact", "codeshell"), (r"\p{N}", GPT2_PATTERN)),
}


def _isolate(text: str, pattern: regex.Pattern) -> Iterator[str]:
    """The matches of `pattern` in `text` and the stretches between them, in order."""
    ### BEGIN SOLUTION
    start = 0
    for match in pattern.finditer(text):
        if match.start() > start:
            yield text[start:match.start()]
        yield match.group()
        start = match.end()
    if start < len(text):
        yield text[start:]
    ### END SOLUTION


def pretokenize(text: str, patterns: Sequence[str | regex.Pattern]) -> list[str]:
    """Cut `text` into the pieces BPE merges within: each regex splits every piece further."""
    ### BEGIN SOLUTION
    pieces = [text] if text else []
    for pattern in patterns:
        compiled = regex.compile(pattern)
        pieces = [part for piece in pieces for part in _isolate(piece, compiled)]
    return pieces
    ### END SOLUTION


# %%
from tokenizers import pre_tokenizers

hf_gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
hf_smollm = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), hf_gpt2])
with check("Exercise 10.2"):
    texts = ["I'd pay $1234.50 for 3 cats!\n\n    def f(x):", "  two  spaces ", "x", "", "Hello,   wörld 中文!!"]
    for recipe, reference in [("gpt-2", hf_gpt2), ("smollm", hf_smollm)]:
        for text in texts:
            got = [to_byte_level(piece.encode()) for piece in pretokenize(text, PRETOKENIZERS[recipe])]
            want = [piece for piece, _ in reference.pre_tokenize_str(text)]
            assert got == want, f"{recipe} on {text!r}: expected {want} (tokenizers), got {got}"

# %%
sample = "I'd pay $1234.50 for 3 cats!\n\n    def f(x):"
print(pretokenize(sample, PRETOKENIZERS["smollm"]))

# %% [markdown]
# Look at the indentation. The two newlines and three of the four spaces form one piece,
# `'\n\n   '`, and the fourth space goes with the word, so ` def` is the same token here as in a
# sentence. The digits are cut out first, which leaves the space before `3` on its own. The
# pieces agree with Hugging Face `tokenizers` configured as SmolLM2's `tokenizer.json` configures it
# (`Digits` then `ByteLevel`).
#
# ## The tokenizer classes
#
# Every tokenizer shares one frame. Special tokens such as `<|im_start|>` are found in the text
# first, whole, because no merge could ever produce them. The text between them goes to the
# tokenizer's own `encode_text`. Decoding is the same for every kind: concatenate the bytes of the
# tokens, then decode them as UTF-8.

# %%
#| export llm.tokenizer
from collections.abc import Iterable

import regex

from kuiper.errors import TokenizerError

#: GGUF token types, the same numbers as SentencePiece's.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
#: Tokens that end a chat turn: generation stops at any of them, as in llama.cpp.
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


class Tokenizer:
    """Text <-> token ids. Special-token strings in the text become their ids; subclasses encode
    the plain text between them."""

    chat_template = ""  # the model's chat template (GGUF tokenizer.chat_template), when it has one

    def __init__(self, pieces: list[str], piece_bytes: list[bytes], special: dict[str, int],
                 bos_id: int | None = None, eos_id: int | None = None) -> None:
        self.pieces, self.piece_bytes, self.special = pieces, piece_bytes, special
        self.bos_id, self.eos_id = bos_id, eos_id
        self.special_ids = frozenset(special.values())
        self._ids = {piece: id for id, piece in enumerate(pieces)}
        longest_first = sorted(special, key=len, reverse=True)
        self._special_pattern = regex.compile("|".join(map(regex.escape, longest_first))) if special else None

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @property
    def eos_ids(self) -> set[int]:
        """The ids that end generation: EOS and every end-of-turn token the vocabulary has."""
        ids = {self.special[piece] for piece in END_OF_TURN if piece in self.special}
        return ids | ({self.eos_id} if self.eos_id is not None else set())

    def token_id(self, piece: str) -> int:
        """The id of a vocabulary string such as 'Ġthe', '▁the' or '<|im_end|>'."""
        if piece not in self._ids:
            raise TokenizerError(f"no token {piece!r} among the {self.vocab_size} of the vocabulary")
        return self._ids[piece]

    def encode_text(self, text: str) -> list[int]:
        """The ids of text that holds no special token."""
        raise NotImplementedError(f"{type(self).__name__} has no encode_text")

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        """The token ids of `text`, BOS first when `bos`; special-token strings become their ids."""
        if bos and self.bos_id is None:
            raise TokenizerError("this vocabulary has no BOS token (tokenizer.ggml.bos_token_id)")
        ids, start = [self.bos_id] if bos else [], 0
        for match in self._special_pattern.finditer(text) if self._special_pattern else ():
            ids += self.encode_text(text[start:match.start()])
            ids.append(self.special[match.group()])
            start = match.end()
        return ids + self.encode_text(text[start:])

    def decode_piece(self, id: int, previous: int | None = None) -> bytes:
        """The bytes token `id` stands for when it follows token `previous` (None at the start)."""
        if not 0 <= id < len(self.piece_bytes):
            raise TokenizerError(f"token id {id} is outside the vocabulary of {self.vocab_size}")
        return self.piece_bytes[id]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        data, previous = [], None
        for id in map(int, ids):
            data.append(self.decode_piece(id, previous))
            previous = id
        return b"".join(data).decode("utf-8", errors="replace")


# %% [markdown]
# ## Exercise 10.3 — the byte-level BPE merge loop
#
# The byte-level BPE tokenizer keeps its merges as pairs of byte strings, each with its rank:
# `self.merges[(b" t", b"he")]`. Write `bpe`, the merge loop from ` tokenization` above on bytes:
# start from the single bytes of the piece; while there are two or more parts, find the adjacent
# pair with the **lowest** rank (the leftmost among equals) and join it; stop when no adjacent pair
# is a merge. (With `ignore_merges`, set by some `tokenizer.json` files, a piece that is already a
# whole token is returned as it is; that line is given.)
#
# `functools.lru_cache` remembers every pre-token already merged. Text repeats words all the
# time, so a 10 kB prompt costs a few milliseconds. A byte that has no token (SmolLM2 lacks 21 of
# the 256, such as 0x04 and 0xFF) is dropped, as llama.cpp and `tokenizers` drop it.

# %%
#| export llm.tokenizer
#| exercise: start from single bytes; repeatedly join the adjacent pair with the lowest rank in self.merges; stop when no pair is a merge
import functools
import itertools
import unicodedata
from collections.abc import Sequence

import regex

from kuiper.errors import TokenizerError


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2, SmolLM2, Qwen): cut the text with regexes, then merge the bytes of
    each piece, always the adjacent pair with the lowest rank."""

    normal_forms: tuple[str, ...] = ()  # Unicode normalizations applied first (tokenizer.json's normalizer)

    def __init__(self, pieces: list[str], merges: dict[tuple[bytes, bytes], int], *,
                 special: dict[str, int], patterns: Sequence[str], bos_id: int | None = None,
                 eos_id: int | None = None, ignore_merges: bool = False) -> None:
        special_ids = set(special.values())
        piece_bytes = [piece.encode() if id in special_ids else from_byte_level(piece) for id, piece in enumerate(pieces)]
        super().__init__(pieces, piece_bytes, special, bos_id, eos_id)
        self.merges, self.ignore_merges = merges, ignore_merges
        self.patterns = [regex.compile(pattern) for pattern in patterns]
        self.vocab = {data: id for id, data in enumerate(piece_bytes) if id not in self.special_ids}
        self._piece_ids = functools.lru_cache(maxsize=1 << 16)(self._merge_ids)

    def bpe(self, piece: bytes) -> list[bytes]:
        """The tokens of one pre-token: its bytes, merged pair by pair in rank order."""
        if self.ignore_merges and piece in self.vocab:
            return [piece]
        ### BEGIN SOLUTION
        parts = [piece[i:i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            ranks = [self.merges.get(pair, len(self.merges)) for pair in itertools.pairwise(parts)]
            best = min(range(len(ranks)), key=ranks.__getitem__)
            if ranks[best] == len(self.merges):
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return parts
        ### END SOLUTION

    def _merge_ids(self, piece: str) -> tuple[int, ...]:
        """The ids of one pre-token; a byte with no token is dropped, as llama.cpp and tokenizers drop it."""
        return tuple(self.vocab[part] for part in self.bpe(piece.encode()) if part in self.vocab)

    def encode_text(self, text: str) -> list[int]:
        for form in self.normal_forms:
            text = unicodedata.normalize(form, text)
        return [id for piece in pretokenize(text, self.patterns) for id in self._piece_ids(piece)]


# %%
from tokenizers import models

with check("Exercise 10.3"):
    toy = BPETokenizer(["a", "b", "c", "ab", "bc", "abc"], {(b"b", b"c"): 0, (b"a", b"bc"): 1, (b"a", b"b"): 2},
                       special={}, patterns=[])
    for word, want in [("abc", [b"abc"]), ("cab", [b"c", b"ab"]), ("abab", [b"ab", b"ab"]), ("x", [b"x"]), ("", [])]:
        got = toy.bpe(word.encode())
        assert got == want, f"merges bc (rank 0), a+bc (1), ab (2) on {word!r}: expected {want}, got {got}"
    merge_list = [tuple(merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]]
    real = BPETokenizer(list(metadata["tokenizer.ggml.tokens"]),
                        {(from_byte_level(a), from_byte_level(b)): rank for rank, (a, b) in enumerate(merge_list)},
                        special={}, patterns=[])
    hf_bpe = models.BPE({piece: id for id, piece in enumerate(metadata["tokenizer.ggml.tokens"])}, merge_list)
    for word in [" tokenization", " the", "ing", " Kuiper", " 中文", " naïve", "\n\n   "]:
        got = [to_byte_level(part) for part in real.bpe(word.encode())]
        want = [token.value for token in hf_bpe.tokenize(to_byte_level(word.encode()))]
        assert got == want, f"SmolLM2's merges on {word!r}: expected {want} (tokenizers), got {got}"


# %% [markdown]
# A GGUF file of `tokenizer.ggml.model` `gpt2` has everything the constructor needs. Tokens of
# type *unknown*, *control* and *user-defined* are the special ones: they are matched whole in the
# text, and their strings are not byte-level.

# %%
#| export llm.tokenizer
from kuiper.errors import TokenizerError


def metadata_field(metadata: dict, name: str) -> object:
    """metadata[name], or a TokenizerError that names the missing GGUF field."""
    if name not in metadata:
        raise TokenizerError(f"the GGUF metadata has no {name}: it is needed to build the tokenizer")
    return metadata[name]


def metadata_id(metadata: dict, name: str) -> int | None:
    """An optional token-id field of GGUF metadata (bos, eos, unknown) as a Python int."""
    value = metadata.get(name)
    return None if value is None else int(value)


def special_tokens(pieces: Sequence[str], types: Sequence[int]) -> dict[str, int]:
    """{string: id} of the tokens matched whole in text: unknown, control and user-defined."""
    if len(types) != len(pieces):
        raise TokenizerError(f"tokenizer.ggml.token_type has {len(types)} entries, tokenizer.ggml.tokens {len(pieces)}")
    return {piece: id for id, (piece, kind) in enumerate(zip(pieces, types)) if kind in (UNKNOWN, CONTROL, USER_DEFINED)}


@patch_to(BPETokenizer)
@classmethod
def from_gguf_metadata(cls, metadata: dict) -> BPETokenizer:
    """The tokenizer of a GGUF file whose tokenizer.ggml.model is gpt2."""
    pieces = list(metadata_field(metadata, "tokenizer.ggml.tokens"))
    pre = metadata.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRETOKENIZERS:
        raise TokenizerError(f"tokenizer.ggml.pre is {pre!r}; kuiper knows {', '.join(PRETOKENIZERS)}")
    merges = {}
    for rank, merge in enumerate(metadata_field(metadata, "tokenizer.ggml.merges")):
        left, _, right = merge.partition(" ")
        merges[from_byte_level(left), from_byte_level(right)] = rank
    types = metadata.get("tokenizer.ggml.token_type", [NORMAL] * len(pieces))
    return cls(pieces, merges, special=special_tokens(pieces, types), patterns=PRETOKENIZERS[pre],
               bos_id=metadata_id(metadata, "tokenizer.ggml.bos_token_id"),
               eos_id=metadata_id(metadata, "tokenizer.ggml.eos_token_id"))


# %%
smollm2 = BPETokenizer.from_gguf_metadata(metadata)
ids = smollm2.encode("<|im_start|>user\nWhat is 2+2?<|im_end|>")
print(ids)
print([smollm2.pieces[id] for id in ids])
print(repr(smollm2.decode(ids)), "| vocab", smollm2.vocab_size, "| bos", smollm2.bos_id, "| eos", smollm2.eos_ids)

# %% [markdown]
# ### Checking against two references
#
# Hugging Face `tokenizers` (Rust) gets the same vocabulary, merges and pre-tokenizer. That is
# how SmolLM2's own `tokenizer.json` is set up. llama.cpp is the program the GGUF file was made
# for, so when it is installed it is the second reference. The corpus is written to be hard:
# code with tabs and indentation, accents, CJK, Arabic, emoji with skin tones and zero-width
# joiners, runs of whitespace, digits, contractions in both cases, special tokens inside the
# text, and the empty string.

# %%
from tokenizers import AddedToken, decoders, models
from tokenizers import Tokenizer as HFTokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's here, isn't it? We'll see; you're right, I'd say.",
    "SHE'S HERE. IT'LL BE OK, WE'VE SEEN 'EM.",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class A:\n\tdef f(self):\n\t\treturn {'a': [1, 2, 3]}  # tabs\n",
    "Café naïve résumé façade Ångström",
    "日本語のテキストです。中文测试：你好，世界！",
    "مرحبا بالعالم، هذا نص عربي.",
    "Emoji: 🙂🚀 👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 heart ❤️",
    "  \n\n\t  ",
    "1234567 3.14159 1,000,000 2024-01-31 0x1F",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "line one\nline two\r\nline three\n\n\nend",
    "",
]

# %%
tokens, types = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
hf = HFTokenizer(models.BPE({piece: id for id, piece in enumerate(tokens)},
                            [tuple(merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]]))
hf.pre_tokenizer = hf_smollm
hf.decoder = decoders.ByteLevel()
hf.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece, kind in zip(tokens, types) if kind == 3])

print("tokenizers: mismatches", sum(smollm2.encode(text) != hf.encode(text).ids for text in CORPUS), "of", len(CORPUS))
print("round trip: mismatches", sum(smollm2.decode(smollm2.encode(text)) != text for text in CORPUS))
if importlib.util.find_spec("llama_cpp"):
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(SMOLLM2), vocab_only=True, verbose=False)
    wrong = sum(smollm2.encode(text) != llama.tokenize(text.encode(), add_bos=False, special=True) for text in CORPUS)
    assert wrong == 0, f"{wrong} texts tokenize differently in llama.cpp"

# %% [markdown]
# ### A picture: where the token boundaries fall
#
# Each box is one token, and the number under it is its id; `·` is a space. Common English words
# are one token, with the space in front of them. Digits stand alone, and punctuation runs stay together.

# %%
def draw_tokens(ax, tokenizer, text: str, title: str) -> None:
    """Draw `text` as one coloured box per token, ids underneath."""
    x, colours = 0, plt.cm.tab20.colors
    for n, id in enumerate(tokenizer.encode(text)):
        piece = tokenizer.decode_piece(id).decode("utf-8", errors="replace").replace("\n", "⏎").replace(" ", "·")
        width = max(len(piece), 1)
        ax.add_patch(plt.Rectangle((x, 0), width, 1, color=colours[n % 20], alpha=0.6))
        ax.text(x + width / 2, 0.5, piece, ha="center", va="center", family="monospace", fontsize=10)
        ax.text(x + width / 2, -0.45, str(id), ha="center", va="center", fontsize=7, rotation=60)
        x += width
    ax.set_xlim(0, x)
    ax.set_ylim(-1.1, 1.1)
    ax.set_title(title, loc="left", fontsize=10)
    ax.axis("off")


fig, axes = plt.subplots(2, 1, figsize=(12, 2.6))
draw_tokens(axes[0], smollm2, "The tokenizer's job: turn 1234567 characters into ids!", "SmolLM2, English")
draw_tokens(axes[1], smollm2, "for i in range(10):\n    total += x[i] ** 2", "SmolLM2, Python")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Loading a `tokenizer.json`
#
# Models published on the Hugging Face hub ship their tokenizer as `tokenizer.json`. For BPE it
# holds the same things as the GGUF file: `model.vocab` ({string: id}), `model.merges`, and
# `added_tokens` (the special ones). It also describes the pre-tokenizer as a tree of steps, where
# GGUF only gives a recipe name. kuiper reads the three steps its models use: `Digits`,
# `ByteLevel` (GPT-2's regex) and `Split` (a regex of its own). The BOS and EOS tokens are not in
# this file (they are in `tokenizer_config.json`), so the caller names them.

# %%
#| export llm.tokenizer
import json
from pathlib import Path
from typing import Any

from kuiper.errors import TokenizerError


def _pattern_steps(step: dict | None, where: str) -> tuple[str, ...]:
    """The regexes of a tokenizer.json pre_tokenizer, in the order they apply."""
    kind = step.get("type") if isinstance(step, dict) else None
    if kind == "Sequence" and isinstance(step.get("pretokenizers"), list):
        return tuple(pattern for inner in step["pretokenizers"] for pattern in _pattern_steps(inner, where))
    if kind == "Digits":
        return (r"\p{N}" if step.get("individual_digits") else r"\p{N}+",)
    if kind == "ByteLevel" and not step.get("add_prefix_space"):
        return (GPT2_PATTERN,) if step.get("use_regex", True) else ()
    pattern = step.get("pattern") if kind == "Split" else None
    if step and kind == "Split" and step.get("behavior") == "Isolated" and isinstance(pattern, dict):
        try:
            return (regex.compile(pattern.get("Regex")).pattern,)
        except (TypeError, regex.error) as err:
            raise TokenizerError(f"{where}: pre_tokenizer Split's Regex {pattern.get('Regex')!r} is not a "
                                 f"regular expression: {err}") from None
    raise TokenizerError(f"{where}: pre_tokenizer {json.dumps(step)[:120]} is not one kuiper reads "
                         "(Sequence, Digits, ByteLevel without prefix space, Split of a regex, Isolated)")


@patch_to(BPETokenizer)
@classmethod
def from_tokenizer_json(cls, path: str | Path, *, bos: str | None = None, eos: str | None = None) -> BPETokenizer:
    """The byte-level BPE tokenizer a Hugging Face tokenizer.json describes; `bos` and `eos` name
    those tokens (tokenizer.json does not)."""
    data = read_json(path)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict) or not isinstance(model.get("merges"), list):
        raise TokenizerError(f"{path}: model {model.get('type')!r}; kuiper reads byte-level BPE "
                             "(model.type BPE with a vocab object and a merges list)")
    normal_forms = normalizer_steps(data.get("normalizer"), str(path))
    special = added_tokens(data.get("added_tokens", []), str(path))
    ids = {**model["vocab"], **special}
    pieces = vocabulary_pieces(ids, str(path))
    merges = {}
    for rank, merge in enumerate(model["merges"]):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
            raise TokenizerError(f"{path}: merge #{rank} {str(merge)[:60]!r} is not two tokens ('a b' or [a, b])")
        merges[from_byte_level(pair[0]), from_byte_level(pair[1])] = rank
    for name in (bos, eos):
        if name is not None and name not in ids:
            raise TokenizerError(f"{path}: no token {name!r} in model.vocab or added_tokens")
    tokenizer = cls(pieces, merges, special=special, patterns=_pattern_steps(data.get("pre_tokenizer"), str(path)),
                    bos_id=ids.get(bos), eos_id=ids.get(eos), ignore_merges=model.get("ignore_merges") is True)
    tokenizer.normal_forms = normal_forms
    return tokenizer


def read_json(path: str | Path) -> dict:
    """The JSON object in file `path`; TokenizerError if it cannot be read, parsed, or is no object."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as err:
        raise TokenizerError(f"{path}: cannot read it: {err.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenizerError(f"{path}: not valid JSON: {err}") from None
    except RecursionError:
        raise TokenizerError(f"{path}: nests JSON values too deep to read") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    return data


#: tokenizer.json normalizers that are one Unicode normalization form each (unicodedata.normalize).
NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


def normalizer_steps(step: dict | None, where: str) -> tuple[str, ...]:
    """The Unicode normal forms a tokenizer.json normalizer applies, in order (Qwen's is NFC)."""
    kind = step.get("type") if isinstance(step, dict) else step
    if kind is None:
        return ()
    if kind in NORMAL_FORMS:
        return (kind,)
    if kind == "Sequence" and isinstance(step.get("normalizers"), list):
        return tuple(form for inner in step["normalizers"] for form in normalizer_steps(inner, where))
    raise TokenizerError(f"{where}: normalizer {json.dumps(step)[:120]} is not one kuiper applies "
                         f"({', '.join(NORMAL_FORMS)}, or a Sequence of them)")


def added_tokens(entries: Any, where: str) -> dict[str, int]:
    """tokenizer.json's added_tokens as content -> id; TokenizerError for an empty, duplicate or malformed one."""
    if not isinstance(entries, list):
        raise TokenizerError(f"{where}: added_tokens must be a list, got {type(entries).__name__}")
    special: dict[str, int] = {}
    for i, token in enumerate(entries):
        content, id = (token.get("content"), token.get("id")) if isinstance(token, dict) else (None, None)
        if not isinstance(content, str) or not content or not is_token_id(id):
            raise TokenizerError(f"{where}: added token #{i} needs a non-empty content and an id >= 0, "
                                 f"got {str(token)[:80]}")
        if special.get(content, id) != id:
            raise TokenizerError(f"{where}: added token {content!r} appears with ids {special[content]} and {id}")
        special[content] = id
    return special


def is_token_id(value: Any) -> bool:
    """True for an integer >= 0 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def vocabulary_pieces(ids: dict[str, int], where: str) -> list[str]:
    """The pieces in id order; TokenizerError, before allocating, unless the ids are exactly 0..N-1."""
    for piece, id in ids.items():
        if not is_token_id(id) or id >= len(ids):
            raise TokenizerError(f"{where}: token {piece!r} has id {id!r}; the {len(ids)} tokens need ids "
                                 f"0..{len(ids) - 1}")
    pieces = [""] * len(ids)
    for piece, id in ids.items():
        if pieces[id]:
            raise TokenizerError(f"{where}: tokens {pieces[id]!r} and {piece!r} share id {id}")
        pieces[id] = piece
    return pieces


# %%
SMOLLM2_JSON = DATA / "models" / "smollm2-135m-instruct.tokenizer.json"
if not SMOLLM2_JSON.exists():  # tools/smollm2_tokenizer.py writes it; the same steps write a copy here
    SMOLLM2_JSON = Path(tempfile.mkdtemp()) / "tokenizer.json"
    hf.save(str(SMOLLM2_JSON))
from_json = BPETokenizer.from_tokenizer_json(SMOLLM2_JSON, bos="<|im_start|>", eos="<|im_end|>")
print("tokenizer.json: mismatches", sum(from_json.encode(text) != smollm2.encode(text) for text in CORPUS),
      "| pre-tokenizer regexes:", len(from_json.patterns), "| eos", from_json.eos_ids)

# %% [markdown]
# ## Streaming: text as the tokens arrive
#
# A chat program prints each token as soon as the model produces it. One token is not always a
# whole character, though. The family emoji 👨‍👩‍👧‍👦 is 25 bytes of UTF-8, and SmolLM2 spends
# 14 tokens on it, several of which hold half a character. Printing `decode([id])` token by token
# would show `�` marks. Python's *incremental* UTF-8 decoder (`codecs`) does the right thing: it
# holds back the bytes of an unfinished character until the rest arrives.

# %%
#| export llm.tokenizer
import codecs


class StreamDecoder:
    """Text from token ids as they arrive; bytes wait until they complete a UTF-8 character.
    The pieces joined, with flush() at the end, equal tokenizer.decode(ids)."""

    def __init__(self, tokenizer: Tokenizer, previous: int | None = None) -> None:
        self.tokenizer, self.previous = tokenizer, previous
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, id: int) -> str:
        """The text that token `id` completes, often all of it, sometimes nothing yet."""
        data = self.tokenizer.decode_piece(int(id), self.previous)
        self.previous = int(id)
        return self._utf8.decode(data)

    def flush(self) -> str:
        """The end of the stream: an unfinished character becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)


# %%
ids = smollm2.encode("Family: 👨‍👩‍👧‍👦!")
stream = StreamDecoder(smollm2)
print("one token at a time:", [smollm2.decode([id]) for id in ids])
print("streamed:           ", [stream.push(id) for id in ids] + [stream.flush()])

# %% [markdown]
# ## SentencePiece BPE (Llama 2, Mistral)
#
# Llama 1 and 2, Mistral 7B and many models built on them use Google's SentencePiece. Its BPE
# differs from byte-level BPE in three ways:
#
# 1. **No pre-tokenizer.** Every space becomes `▁` (U+2581) and is an ordinary character that
#    merges like any other. A *dummy prefix* `▁` goes in front of the text, so `Hello` at the start
#    is the same token `▁Hello` as in the middle of a sentence.
# 2. **Scores instead of ranks.** Every piece has a score (here minus its training order), and
#    encoding repeatedly joins the adjacent pair whose *merged piece* has the highest score. If
#    two pairs tie, the leftmost wins.
# 3. **Characters, with bytes as a fallback.** Merging starts from Unicode characters. A
#    character that has no piece (a rare CJK ideograph, an unusual emoji) becomes its UTF-8
#    bytes, written as the tokens `<0xE4>`, `<0xB8>` and so on.
#
# mistral-common ships Mistral 7B v0.1's 32,000-piece tokenizer, `tokenizer.model.v1`, a Llama-2
# style model with byte fallback. The file is a *protocol buffer*. That wire format is simple
# enough to read with a dozen lines. A message is a list of fields, and each field starts with a
# *varint* key `number << 3 | wire type`:
#
# | wire type | value |
# |---|---|
# | 0 | a varint: 7 bits per byte, low bits first, the high bit set on every byte but the last |
# | 1 | 8 bytes (fixed64, double) |
# | 2 | a varint length, then that many bytes: a string, bytes, or a nested message |
# | 5 | 4 bytes (fixed32, float) |
#
# `ModelProto` has the pieces as field 1 (each with its string (1), its score (2, a float) and its
# type (3)), the trainer settings as field 2 (model type 3, byte fallback 35, unk/bos/eos ids
# 40–42), and the normalizer as field 3 (name 1, charsmap 2, add dummy prefix 3, remove extra
# whitespace 4). kuiper reads it into the same dictionary a GGUF file of `tokenizer.ggml.model`
# `llama` holds. llama.cpp's converter copies exactly these fields.
#
# ## Exercise 10.4 — the protobuf wire format
#
# Write `_varint` (the value at `data[pos]` and the position after it) and `protobuf_fields`,
# which walks a message and yields `(field number, value)`: a varint as an int, the other wire
# types as their bytes (a nested message is parsed by calling `protobuf_fields` again on them).
# Any other wire type is a `TokenizerError`. A negative int32 such as `pad_id = -1` is written as
# a ten-byte varint, so it comes out as 2⁶⁴ − 1.

# %%
#| export llm.tokenizer
#| exercise: _varint: 7 bits per byte, low first, until a byte < 0x80; protobuf_fields: key = number << 3 | wire; 0 varint, 1 8 bytes, 5 4 bytes, 2 a varint length then bytes
import struct
from collections.abc import Iterator
from pathlib import Path

from kuiper.errors import TokenizerError


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at data[pos] and the position after it."""
    ### BEGIN SOLUTION
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos
    ### END SOLUTION


def protobuf_fields(data: bytes, where: str) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of a protobuf message: varints as int (negative int32s
    come out as 2**64 - x), everything else as bytes."""
    ### BEGIN SOLUTION
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos:pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        else:
            raise TokenizerError(f"{where}: field {number} has wire type {wire}; expected 0, 1, 2 or 5")
        yield number, value
    ### END SOLUTION


def read_sentencepiece_model(path: str | Path) -> dict:
    """A SentencePiece BPE .model file as the GGUF metadata llama.cpp would write for it."""
    where = str(path)
    pieces, scores, types = [], [], []
    trainer, normalizer = {}, {}
    for number, value in protobuf_fields(Path(path).read_bytes(), where):
        if number == 1:
            piece = {1: b"", 2: b"\0\0\0\0", 3: NORMAL, **dict(protobuf_fields(value, where))}
            pieces.append(piece[1].decode())
            scores.append(struct.unpack("<f", piece[2])[0])
            types.append(piece[3])
        elif number in (2, 3):
            (trainer if number == 2 else normalizer).update(protobuf_fields(value, where))
    if trainer.get(3, 1) != 2:
        raise TokenizerError(f"{where}: trainer_spec.model_type is {trainer.get(3, 1)}; "
                             "kuiper reads BPE (2), not unigram (1)")
    if normalizer.get(2) or normalizer.get(4, 1):
        raise TokenizerError(f"{where}: normalizer_spec {normalizer.get(1, b'').decode()!r} rewrites the text "
                             "(charsmap or remove_extra_whitespaces); kuiper reads the identity normalizer")
    metadata = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces, "tokenizer.ggml.scores": scores,
                "tokenizer.ggml.token_type": types, "tokenizer.ggml.add_space_prefix": bool(normalizer.get(3, 1))}
    for number, name, default in ((40, "unknown", 0), (41, "bos", 1), (42, "eos", 2)):
        if trainer.get(number, default) < 1 << 63:  # -1, "none", is a ten-byte varint: 2**64 - 1
            metadata[f"tokenizer.ggml.{name}_token_id"] = trainer.get(number, default)
    return metadata


# %%
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

with check("Exercise 10.4"):
    got = _varint(bytes([0x96, 0x01, 0x07]), 0), _varint(bytes([0x07]), 0), _varint(b"\xff" * 9 + b"\x01", 0)
    assert got == ((150, 2), (7, 1), (2**64 - 1, 10)), f"varints 96 01, 07, ff*9 01: expected (150, 2), (7, 1), (2**64 - 1, 10), got {got}"
    proto = sentencepiece_model_pb2.ModelProto()
    proto.pieces.add(piece="▁the", score=-3.5, type=1)
    proto.pieces.add(piece="<0x41>", score=0.0, type=6)
    proto.trainer_spec.model_type, proto.trainer_spec.pad_id, proto.trainer_spec.vocab_size = 2, -1, 300
    proto.normalizer_spec.name, proto.normalizer_spec.add_dummy_prefix = "identity", True
    fields = list(protobuf_fields(proto.SerializeToString(), "test"))
    assert [number for number, _ in fields] == [1, 1, 2, 3], f"expected fields [1, 1, 2, 3], got {[n for n, _ in fields]}"
    piece = dict(protobuf_fields(fields[0][1], "piece"))
    want = {1: "▁the".encode(), 2: struct.pack("<f", -3.5), 3: 1}
    assert piece == want, f"the first piece: expected {want}, got {piece}"
    trainer = dict(protobuf_fields(fields[2][1], "trainer"))
    got = trainer.get(3), trainer.get(43), trainer.get(4)
    assert got == (2, 2**64 - 1, 300), f"trainer model_type, pad_id, vocab_size: expected (2, 2**64 - 1, 300), got {got}"
    try:
        list(protobuf_fields(bytes([0x0B, 0x00]), "test"))  # field 1, wire type 3 (a group)
    except TokenizerError as err:
        assert "wire type 3" in str(err), f"expected a TokenizerError naming wire type 3, got {err}"
    else:
        raise AssertionError("wire type 3: expected a TokenizerError, got none")

# %%
MISTRAL_V1 = package_file("mistral_common", "data/tokenizer.model.v1")
llama_meta = read_sentencepiece_model(MISTRAL_V1)
proto = sentencepiece_model_pb2.ModelProto.FromString(MISTRAL_V1.read_bytes())
assert llama_meta["tokenizer.ggml.tokens"] == [p.piece for p in proto.pieces]
assert llama_meta["tokenizer.ggml.scores"] == [p.score for p in proto.pieces]
assert llama_meta["tokenizer.ggml.token_type"] == [p.type for p in proto.pieces]
pieces = llama_meta["tokenizer.ggml.tokens"]
print(len(pieces), "pieces, as the protobuf library reads them:", pieces[:4], pieces[259:265], pieces[-3:])
print("scores:", llama_meta["tokenizer.ggml.scores"][259:265])

# %% [markdown]
# The first three pieces are `<unk>`, `<s>` (BOS) and `</s>` (EOS). Then come the 256 byte
# pieces `<0x00>` … `<0xFF>`, and then the merged pieces, best first. `▁▁` and `▁▁▁▁` were added
# by hand for indented code, with a score of −10⁹, so they are merged only when nothing else can
# be.
#
# ## Exercise 10.5 — the SentencePiece merge loop
#
# Given the symbols (at first single characters) and the score of every piece, repeat: among the
# adjacent pairs whose concatenation is a piece, join the one with the **highest score**, the
# leftmost if several tie. Stop when no adjacent pair forms a piece. A small example, with the
# scores `lo` −1, `ow` −2, `▁l` −3, `low` −4, `▁low` −5:
#
# | symbols | pairs that are pieces | join |
# |---|---|---|
# | `▁ l o w` | `▁l` −3, `lo` −1, `ow` −2 | `lo` |
# | `▁ lo w` | `low` −4 | `low` |
# | `▁ low` | `▁low` −5 | `▁low` |
#
# `ow` scores higher than `low`, yet it is never used: `lo` took the `o` first.

# %%
#| export llm.tokenizer
#| exercise: repeatedly join the adjacent pair whose concatenation has the highest score (leftmost on ties) until no pair is a piece
def spm_merge(symbols: list[str], scores: dict[str, float]) -> list[str]:
    """SentencePiece BPE: merge adjacent symbols, always the pair whose merged piece scores
    highest, until no adjacent pair is a piece."""
    ### BEGIN SOLUTION
    symbols = list(symbols)
    while len(symbols) > 1:
        best, best_score = None, None
        for i in range(len(symbols) - 1):
            score = scores.get(symbols[i] + symbols[i + 1])
            if score is not None and (best_score is None or score > best_score):
                best, best_score = i, score
        if best is None:
            break
        symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
    return symbols
    ### END SOLUTION


# %%
sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_V1))
with check("Exercise 10.5"):
    piece_scores = {piece: score for piece, score, kind in zip(pieces, llama_meta["tokenizer.ggml.scores"],
                                                                 llama_meta["tokenizer.ggml.token_type"]) if kind == NORMAL}
    for symbols, scores, want in [("▁ab", {"ab": -1.0, "▁a": -2.0}, ["▁", "ab"]), ("aaa", {"aa": -1.0}, ["aa", "a"]),
                                  ("▁low", {"lo": -1, "ow": -2, "▁l": -3, "low": -4, "▁low": -5}, ["▁low"]),
                                  ("xy", {"ab": 0.0}, ["x", "y"])]:
        got = spm_merge(list(symbols), scores)
        assert got == want, f"{symbols!r} with scores {scores}: expected {want}, got {got}"
    for word in ["Hello", "  hello", "tokenization", "Kuiper", "naïve"]:
        got, want = spm_merge(list("▁" + word.replace(" ", "▁")), piece_scores), sp.encode(word, out_type=str)
        assert got == want, f"{word!r}: expected {want} (sentencepiece), got {got}"

# %% [markdown]
# Merging the whole text at once as one sequence would be slow: every step rescans every pair,
# which is quadratic in the length. But a merge can only join two characters that sit side by
# side in some piece. Wherever the two characters on either side of a position appear together in
# no piece, say `o▁` (no piece has `▁` after a letter), no merge can ever cross that position. So
# the tokenizer cuts the text at all such places, merges each chunk on its own, and caches the
# chunks, the same way the BPE tokenizer caches its pre-tokens.
#
# ## Exercise 10.6 — ids with byte fallback
#
# Write `_merge_ids`, the ids of one chunk: merge its characters with `spm_merge`, then turn each
# part into ids. A part that is a piece (`self.scores`) is its id (`self._ids`); a part that is
# not becomes the ids of its UTF-8 bytes (`self.byte_ids`, byte → id of `<0xXX>`) when the
# vocabulary has byte pieces, else `<unk>` (`self.unk_id`); with neither, raise a
# `TokenizerError`.

# %%
#| export llm.tokenizer
#| exercise: spm_merge the chunk; a part in self.scores -> its id; else its UTF-8 bytes via self.byte_ids, else self.unk_id, else TokenizerError
import functools
from collections.abc import Iterator, Sequence

from kuiper.errors import TokenizerError


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece BPE (Llama 2, Mistral): spaces become ▁, pieces merge by score, characters
    without a piece fall back to <0xXX> byte tokens."""

    def __init__(self, pieces: list[str], scores: Sequence[float], types: Sequence[int], *,
                 bos_id: int | None = None, eos_id: int | None = None, unk_id: int | None = None,
                 add_dummy_prefix: bool = True) -> None:
        special = special_tokens(pieces, types)
        piece_bytes = [bytes([int(piece[3:5], 16)]) if kind == BYTE else
                       piece.encode() if piece in special else piece.replace("▁", " ").encode()
                       for piece, kind in zip(pieces, types)]
        super().__init__(pieces, piece_bytes, special, bos_id, eos_id)
        self.scores = {piece: float(score) for piece, score, kind in zip(pieces, scores, types)
                       if kind in (NORMAL, USER_DEFINED)}
        self.byte_ids = {int(piece[3:5], 16): id for id, (piece, kind) in enumerate(zip(pieces, types)) if kind == BYTE}
        self.unk_id, self.add_dummy_prefix = unk_id, add_dummy_prefix
        self._pairs = {piece[i:i + 2] for piece in self.scores for i in range(len(piece) - 1)}
        self._chunk_ids = functools.lru_cache(maxsize=1 << 16)(self._merge_ids)

    def _chunks(self, text: str) -> Iterator[str]:
        """`text` cut wherever no piece holds the two characters either side: no merge crosses there."""
        start = 0
        for i in range(1, len(text)):
            if text[i - 1:i + 1] not in self._pairs:
                yield text[start:i]
                start = i
        yield text[start:]

    def _merge_ids(self, chunk: str) -> tuple[int, ...]:
        """The ids of one chunk: its merged pieces, or their bytes, or <unk>."""
        ### BEGIN SOLUTION
        ids = []
        for part in spm_merge(list(chunk), self.scores):
            if part in self.scores:
                ids.append(self._ids[part])
            elif self.byte_ids:
                ids += [self.byte_ids[byte] for byte in part.encode()]
            elif self.unk_id is not None:
                ids.append(self.unk_id)
            else:
                raise TokenizerError(f"{part!r} has no piece, and the vocabulary has neither byte pieces nor <unk>")
        return tuple(ids)
        ### END SOLUTION

    def encode_text(self, text: str) -> list[int]:
        if not text:
            return []
        text = ((" " if self.add_dummy_prefix else "") + text).replace(" ", "▁")
        return [id for chunk in self._chunks(text) for id in self._chunk_ids(chunk)]

    def decode_piece(self, id: int, previous: int | None = None) -> bytes:
        """The bytes of token `id`; the dummy-prefix space goes at the start and after a special token."""
        data = super().decode_piece(id)
        at_start = previous is None or previous in self.special_ids
        return data[1:] if self.add_dummy_prefix and at_start and self.pieces[id].startswith("▁") else data


# %%
with check("Exercise 10.6"):
    mistral = SentencePieceTokenizer(pieces, llama_meta["tokenizer.ggml.scores"], llama_meta["tokenizer.ggml.token_type"],
                                     bos_id=1, eos_id=2, unk_id=0)
    for text in ["Hello", "ꙮ", "naïve 🙂", "日本語"]:
        got, want = list(mistral._merge_ids("▁" + text.replace(" ", "▁"))), sp.encode(text)
        assert got == want, f"{text!r}: expected {want} (sentencepiece), got {got}"
    kinds = [UNKNOWN, NORMAL, NORMAL, NORMAL]
    with_unk = SentencePieceTokenizer(["<unk>", "a", "b", "ab"], [0, -1, -2, -0.5], kinds, unk_id=0)
    try:
        got = with_unk._merge_ids("abcab")
    except TokenizerError as err:
        got = f"TokenizerError: {err}"
    assert got == (3, 0, 3), f"'abcab' over pieces a, b, ab without byte pieces: expected (3, 0, 3) (c is <unk>), got {got}"
    try:
        SentencePieceTokenizer(["<unk>", "a"], [0, -1], [UNKNOWN, NORMAL])._merge_ids("ac")
    except TokenizerError as err:
        assert "'c'" in str(err), f"expected a TokenizerError naming 'c', got {err}"
    else:
        raise AssertionError("no byte pieces and no unk_id: expected a TokenizerError for 'c', got none")


# %%
#| export llm.tokenizer
from kuiper.errors import TokenizerError


@patch_to(SentencePieceTokenizer)
@classmethod
def from_gguf_metadata(cls, metadata: dict) -> SentencePieceTokenizer:
    """The tokenizer of a GGUF file whose tokenizer.ggml.model is llama."""
    pieces = list(metadata_field(metadata, "tokenizer.ggml.tokens"))
    scores = list(metadata_field(metadata, "tokenizer.ggml.scores"))
    if len(scores) != len(pieces):
        raise TokenizerError(f"tokenizer.ggml.scores has {len(scores)} entries, tokenizer.ggml.tokens {len(pieces)}")
    return cls(pieces, scores, list(metadata_field(metadata, "tokenizer.ggml.token_type")),
               bos_id=metadata_id(metadata, "tokenizer.ggml.bos_token_id"),
               eos_id=metadata_id(metadata, "tokenizer.ggml.eos_token_id"),
               unk_id=metadata_id(metadata, "tokenizer.ggml.unknown_token_id"),
               add_dummy_prefix=bool(metadata.get("tokenizer.ggml.add_space_prefix", True)))


# %%
llama2 = SentencePieceTokenizer.from_gguf_metadata(llama_meta)
plain = [text for text in CORPUS if "<|" not in text]
print("sentencepiece: mismatches", sum(llama2.encode(text) != sp.encode(text) for text in plain), "of", len(plain))
print("decode: mismatches", sum(llama2.decode(sp.encode(text)) != sp.decode(sp.encode(text)) for text in plain))
print([llama2.pieces[id] for id in llama2.encode("日本語 🙂 ꙮ", bos=True)])

# %% [markdown]
# `ꙮ` (the multiocular O, U+A66E) has no piece, so it becomes its three UTF-8 bytes. Decoding
# joins them back into one character.
#
# ## One entry point, and the chat template
#
# `load_tokenizer` picks the class from the GGUF metadata. Chat models were trained on
# conversations laid out in a fixed format, which the GGUF file gives as a Jinja template,
# `tokenizer.chat_template`. kuiper does not embed a Jinja engine. It recognises the two formats
# its models use and writes them directly:
#
# * **ChatML** (SmolLM2, Qwen): `<|im_start|>{role}\n{content}<|im_end|>\n` per message, and
#   `<|im_start|>assistant\n` to ask for the reply. If the template writes a default system message
#   when the user gives none (SmolLM2's *You are a helpful AI assistant named SmolLM…*), kuiper
#   finds that message in the template and adds it the same way.
# * **Llama 2**: `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s><s>[INST] …`
#
# ## Exercise 10.7 — the ChatML template
#
# Write `chat_prompt` for a ChatML template (one that contains `<|im_start|>`): if
# `_DEFAULT_SYSTEM` finds a default system message in the template and the first message is not
# a system message, put that system message first (the template writes its newlines as `\n`:
# turn them into real ones); then each message as `<|im_start|>{role}\n{content}<|im_end|>\n`,
# and `<|im_start|>assistant\n` at the end when `add_generation_prompt`. A template with
# `[INST]` goes to `_llama2_prompt`, given below; any other is a `TokenizerError`.

# %%
#| export llm.tokenizer
#| exercise: ChatML: the template's default system message first if none is given, <|im_start|>role\ncontent<|im_end|>\n per message, then <|im_start|>assistant\n if asked; [INST] -> _llama2_prompt
import regex

from kuiper.errors import TokenizerError

_DEFAULT_SYSTEM = regex.compile(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}<]+)<\|im_end\|>")


def load_tokenizer(metadata: dict) -> Tokenizer:
    """The tokenizer that GGUF metadata describes: byte-level BPE for gpt2, SentencePiece for llama."""
    kinds = {"gpt2": BPETokenizer, "llama": SentencePieceTokenizer}
    model = metadata.get("tokenizer.ggml.model")
    if model not in kinds:
        raise TokenizerError(f"tokenizer.ggml.model is {model!r}; "
                             "kuiper reads 'gpt2' (byte-level BPE) and 'llama' (SentencePiece)")
    tokenizer = kinds[model].from_gguf_metadata(metadata)
    tokenizer.chat_template = metadata.get("tokenizer.chat_template", "")
    return tokenizer


def chat_prompt(messages: list[dict[str, str]], template: str, *, add_generation_prompt: bool = True) -> str:
    """The prompt a chat model expects for `messages` ({'role', 'content'} dicts), in the format of
    its GGUF chat template: ChatML or Llama 2. Encode it with bos=False: it holds its own."""
    ### BEGIN SOLUTION
    if "<|im_start|>" in template:
        default = _DEFAULT_SYSTEM.search(template)
        if default and messages and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": default[1].replace("\\n", "\n")}, *messages]
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + ("<|im_start|>assistant\n" if add_generation_prompt else "")
    if "[INST]" in template:
        return _llama2_prompt(messages)
    raise TokenizerError("tokenizer.chat_template is neither ChatML (<|im_start|>) nor Llama 2 ([INST]): "
                         "kuiper writes only these two")
    ### END SOLUTION


def _llama2_prompt(messages: list[dict[str, str]]) -> str:
    """Llama 2's chat format: [INST] around each user turn, <<SYS>> inside the first."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    text = ""
    for i, message in enumerate(turns):
        if (message["role"] == "user") != (i % 2 == 0):
            raise TokenizerError(f"Llama 2 chat turns go user, assistant, user, …; message {i} is {message['role']!r}")
        content = message["content"]
        if i == 0 and system is not None:
            content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
        text += f"<s>[INST] {content.strip()} [/INST]" if message["role"] == "user" else f" {content.strip()} </s>"
    return text


# %%
import jinja2

with check("Exercise 10.7"):
    template = metadata["tokenizer.chat_template"]
    jinja = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(template)
    conversations = [[{"role": "user", "content": "What is the capital of France?"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]]
    for messages in conversations:
        for generation in (True, False):
            got = chat_prompt(messages, template, add_generation_prompt=generation)
            want = jinja.render(messages=messages, add_generation_prompt=generation)
            assert got == want, f"expected the Jinja rendering {want!r}, got {got!r}"
    llama2 = [{"role": "user", "content": "Hi"}]
    got = chat_prompt(llama2, "{{ '[INST] ' }}")
    assert got == _llama2_prompt(llama2), f"an [INST] template: expected {_llama2_prompt(llama2)!r}, got {got!r}"
    try:
        chat_prompt(llama2, "{{ messages }}")
    except TokenizerError:
        pass
    else:
        raise AssertionError("a template that is neither ChatML nor Llama 2: expected a TokenizerError, got none")

# %%
messages = [{"role": "user", "content": "What is the capital of France?"}]
prompt = chat_prompt(messages, metadata["tokenizer.chat_template"])
print(prompt)
assert load_tokenizer(metadata).encode(prompt)[:3] == [1, 9690, 198], "<|im_start|> system \\n"

# %% [markdown]
# The prompt agrees with the template rendered by Jinja, as `transformers` renders it. It starts
# with `<|im_start|>`, which is SmolLM2's BOS token, so it is encoded with `bos=False`.
#
# Finally, speed. With the cache, encoding a 10 kB text, the size of a long prompt, takes
# milliseconds:

# %%
# NBVAL_IGNORE_OUTPUT
long_text = "\n".join(CORPUS) * 20
for name, meta in [("SmolLM2 (byte-level BPE)", metadata), ("Mistral (SentencePiece)", llama_meta)]:
    tokenizer = load_tokenizer(meta)
    start = time.perf_counter()
    ids = tokenizer.encode(long_text)
    seconds = time.perf_counter() - start
    print(f"{name:26} {len(long_text.encode()):,} bytes -> {len(ids):,} tokens in {seconds * 1e3:.0f} ms")

# %% [markdown]
# ## What you built
#
# - `kuiper.llm.tokenizer`: `BPETokenizer` (byte-level BPE from GGUF metadata or a `tokenizer.json`)
#   and `SentencePieceTokenizer` (SentencePiece BPE with byte fallback, read from its protobuf
#   file), both giving the same ids as `tokenizers`, `sentencepiece` and llama.cpp;
# - `StreamDecoder` for printing text as tokens arrive, and `chat_prompt` for the ChatML and
#   Llama 2 chat formats; `load_tokenizer` picks the right class from a GGUF file.
#
# With the weights of lesson 09 and these token ids, lesson 11 writes the model that turns ids into
# the next token, and runs SmolLM2 end to end: generation and a chat.

