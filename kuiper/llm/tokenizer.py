# Generated from solutions/10_tokenizers.py, solutions/12_qwen.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import base64
import codecs
import functools
import itertools
import json
import struct
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import regex

from kuiper.errors import TokenizerError


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte 0-255 to a printable character, so byte strings can be
    vocabulary strings."""
    printable = {*range(33, 127), *range(161, 173), *range(174, 256)}
    others = iter(range(256, 512))
    return {byte: chr(byte) if byte in printable else chr(next(others)) for byte in range(256)}


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


GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

#: The regexes of each GGUF `tokenizer.ggml.pre`, applied in turn (names as llama.cpp spells them).
PRETOKENIZERS: dict[str, tuple[str, ...]] = {
    "gpt-2": (GPT2_PATTERN,),
    **dict.fromkeys(("smollm", "starcoder", "refact", "codeshell"), (r"\p{N}", GPT2_PATTERN)),
}


def _isolate(text: str, pattern: regex.Pattern) -> Iterator[str]:
    """The matches of `pattern` in `text` and the stretches between them, in order."""
    start = 0
    for match in pattern.finditer(text):
        if match.start() > start:
            yield text[start:match.start()]
        yield match.group()
        start = match.end()
    if start < len(text):
        yield text[start:]


def pretokenize(text: str, patterns: Sequence[str | regex.Pattern]) -> list[str]:
    """Cut `text` into the pieces BPE merges within: each regex splits every piece further."""
    pieces = [text] if text else []
    for pattern in patterns:
        compiled = regex.compile(pattern)
        pieces = [part for piece in pieces for part in _isolate(piece, compiled)]
    return pieces


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
        parts = [piece[i:i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            ranks = [self.merges.get(pair, len(self.merges)) for pair in itertools.pairwise(parts)]
            best = min(range(len(ranks)), key=ranks.__getitem__)
            if ranks[best] == len(self.merges):
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return parts

    def _merge_ids(self, piece: str) -> tuple[int, ...]:
        """The ids of one pre-token; a byte with no token is dropped, as llama.cpp and tokenizers drop it."""
        return tuple(self.vocab[part] for part in self.bpe(piece.encode()) if part in self.vocab)

    def encode_text(self, text: str) -> list[int]:
        for form in self.normal_forms:
            text = unicodedata.normalize(form, text)
        return [id for piece in pretokenize(text, self.patterns) for id in self._piece_ids(piece)]

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


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at data[pos] and the position after it."""
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def protobuf_fields(data: bytes, where: str) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of a protobuf message: varints as int (negative int32s
    come out as 2**64 - x), everything else as bytes."""
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


def spm_merge(symbols: list[str], scores: dict[str, float]) -> list[str]:
    """SentencePiece BPE: merge adjacent symbols, always the pair whose merged piece scores
    highest, until no adjacent pair is a piece."""
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


QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRETOKENIZERS["qwen2"] = (QWEN2_PATTERN,)

#: Qwen2.5's special tokens, numbered after its 151,643 ranks.
QWEN2_SPECIAL_TOKENS = {token: 151643 + i for i, token in enumerate([
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"])}


def bpe_by_rank(piece: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    """tiktoken's BPE: merge the adjacent pair whose concatenation has the lowest rank, until no
    concatenation is a token."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        candidates = [(ranks[a + b], i) for i, (a, b) in enumerate(itertools.pairwise(parts)) if a + b in ranks]
        if not candidates:
            break
        _, i = min(candidates)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def merges_from_ranks(ranks: dict[bytes, int]) -> dict[tuple[bytes, bytes], int]:
    """The merges hidden in tiktoken ranks: each split of a token into two tokens, at the token's rank."""
    return {(token[:i], token[i:]): rank for token, rank in ranks.items() for i in range(1, len(token))
            if token[:i] in ranks and token[i:] in ranks}
