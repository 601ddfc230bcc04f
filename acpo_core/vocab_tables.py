"""§2 vocabulary tables: the per-token text properties segmentation needs, computed once per tokenizer.

:class:`VocabTables` turns every vocabulary entry into a few bits (starts or ends with white space, ends a sentence,
holds word text, ``$`` delimiters, ...) and a marker automaton over the token pieces, so that
:func:`acpo_core.segmentation.segment_steps` never decodes text per call: it gathers these bits for a padded batch.
The readings of the spec's prose (words, markers, ``$...$`` math) are listed in :mod:`acpo_core.segmentation`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from acpo_core.config import DEFAULT_MARKERS

__all__ = ["VocabTables", "normalise_markers", "vocabulary_texts"]

_SENTENCE_END_CHARS = frozenset(".!?:")
_NEWLINE_CHARS = frozenset("\n\r")
# A delimiter of $...$ math: a run of dollars whose first one is not escaped by a backslash in the same token.
_DOLLAR_RUN = re.compile(r"(?<!\\)\$+")

# Bits of VocabTables.token_flags, one int32 per vocabulary id, so that one gather gives every per-token property.
FLAG_STARTS_SPACE = 1 << 0
FLAG_ENDS_SPACE = 1 << 1
FLAG_ENDS_NEWLINE = 1 << 2
FLAG_ENDS_SENTENCE_PUNCT = 1 << 3
FLAG_HAS_WORD_TEXT = 1 << 4
FLAG_CLOSES_WORD = 1 << 5
FLAG_STARTS_DOLLAR = 1 << 6
FLAG_ENDS_DOLLAR = 1 << 7
FLAG_DOLLAR_RUNS_SHIFT = 16
_DOLLAR_RUNS_MAX = (1 << 15) - 1

# States of the marker automaton (see _MarkerAutomaton); trie nodes follow.
MARKER_DEAD, MARKER_START, _TRAIL = 0, 1, 2


def _is_word_char(ch: str) -> bool:
    # U+FFFD stands for a partial UTF-8 character of a byte-level token: part of a word, never punctuation.
    return ch.isalnum() or ch == "\ufffd"


# The characters for which _is_word_char is false (\w is isalnum() plus the underscore).
_NON_WORD_CHARS = re.compile(r"[^\w\ufffd]|_")


def _strip_punctuation(word: str) -> str:
    start, end = 0, len(word)
    while start < end and not _is_word_char(word[start]):
        start += 1
    while end > start and not _is_word_char(word[end - 1]):
        end -= 1
    return word[start:end]


def normalise_markers(markers: Sequence[str]) -> tuple[str, ...]:
    """Lower-cased markers stripped of edge punctuation, duplicates removed, in their first order.

    Raises ``ValueError`` for a marker that is empty after stripping or holds white space or inner punctuation.
    """
    normalised: list[str] = []
    for marker in markers:
        word = _strip_punctuation(str(marker).strip()).lower()
        if not word or not all(_is_word_char(ch) for ch in word):
            raise ValueError(f"transition marker {marker!r} must be a single alphanumeric word")
        if word not in normalised:
            normalised.append(word)
    return tuple(normalised)


class _MarkerAutomaton:
    """A character automaton accepting ``punctuation* marker punctuation*`` (lower-cased).

    States: DEAD (no marker possible), START (only punctuation read), TRAIL (a whole marker and then punctuation
    read), and one state per proper prefix of a marker (a trie over the markers, its root being START).
    """

    def __init__(self, markers: tuple[str, ...]) -> None:
        self.children: dict[tuple[int, str], int] = {}
        self.terminal: set[int] = set()
        num_states = 3
        for marker in markers:
            state = MARKER_START
            for ch in marker:
                nxt = self.children.get((state, ch))
                if nxt is None:
                    nxt = num_states
                    num_states += 1
                    self.children[(state, ch)] = nxt
                state = nxt
            self.terminal.add(state)
        self.num_states = num_states
        self._marker_text = "\x00" + "\x00".join(markers) + "\x00"
        self._punctuation_row = tuple(
            MARKER_START if s == MARKER_START else _TRAIL if (s == _TRAIL or s in self.terminal) else MARKER_DEAD
            for s in range(num_states)
        )

    def accepting(self) -> list[bool]:
        return [s == _TRAIL or s in self.terminal for s in range(self.num_states)]

    def run(self, state: int, piece: str) -> int:
        for ch in piece:
            if state == MARKER_DEAD:
                return MARKER_DEAD
            if not _is_word_char(ch):
                state = self._punctuation_row[state]
            elif state == _TRAIL:
                return MARKER_DEAD
            else:
                state = self.children.get((state, ch), MARKER_DEAD)
        return state

    def row(self, piece: str) -> tuple[int, ...]:
        """The state reached from every state after reading ``piece`` (lower-cased, no white space)."""
        if not piece:
            return tuple(range(self.num_states))
        word_chars = _NON_WORD_CHARS.sub("", piece)
        if not word_chars:
            return self._punctuation_row
        if word_chars not in self._marker_text:
            # Its letters occur in no marker: whatever was read before, no marker can come out of it.
            return (MARKER_DEAD,) * self.num_states
        return tuple(self.run(s, piece) for s in range(self.num_states))


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-to-character alphabet of GPT-2 style byte-level BPE ("Ġ" is the space byte, "Ċ" the newline)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


_BYTE_DECODER = {ch: byte for byte, ch in _bytes_to_unicode().items()}
_SENTENCEPIECE_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _uses_byte_level_decoder(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None:
        # The decoder's JSON form names its type, also inside a Sequence decoder.
        return b'"ByteLevel"' in decoder.__getstate__()
    # A slow (pure Python) GPT-2 style tokenizer keeps its own byte decoder.
    return hasattr(tokenizer, "byte_decoder")


def _piece_text(piece: str, byte_level: bool) -> str:
    if byte_level and all(ch in _BYTE_DECODER for ch in piece):
        return bytes(_BYTE_DECODER[ch] for ch in piece).decode("utf-8", errors="replace")
    byte = _SENTENCEPIECE_BYTE.match(piece)
    if byte:
        return bytes([int(byte.group(1), 16)]).decode("utf-8", errors="replace")
    return piece.replace("\u2581", " ")


def vocabulary_texts(tokenizer: Any) -> list[str | None]:
    """The text of every vocabulary id, ``None`` for special tokens (each id decoded once, here)."""
    vocab_size = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    added = dict(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    special_ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    special_ids |= {int(i) for i, token in added.items() if getattr(token, "special", False)}
    byte_level = _uses_byte_level_decoder(tokenizer)
    texts: list[str | None] = []
    for token_id, piece in enumerate(pieces):
        if piece is None or token_id in special_ids:
            texts.append(None)
        elif token_id in added:
            # Added tokens are matched as literal text, not in the byte-level alphabet.
            texts.append(str(getattr(added[token_id], "content", piece)))
        else:
            texts.append(_piece_text(piece, byte_level))
    return texts


@dataclass(frozen=True, eq=False)
class VocabTables:
    """Per-vocabulary-id properties of token text, built once per tokenizer (§2, "Decoding").

    Every tensor below has shape [V] (V = the vocabulary size, added tokens included) unless stated otherwise.
    "Piece" is the token's first white-space free run of characters after its leading white space: the part of the
    token that belongs to the word it starts or continues.
    """

    is_special: torch.Tensor  # bool: a special token (no text; neither a word nor a sentence end)
    starts_with_space: torch.Tensor  # bool: the first character is white space
    ends_with_space: torch.Tensor  # bool: the last character is white space
    ends_with_newline: torch.Tensor  # bool: the last character is a newline
    ends_sentence_punct: torch.Tensor  # bool: the last character is one of . ! ? :
    has_word_text: torch.Tensor  # bool: not special and holds a character other than white space
    closes_word: torch.Tensor  # bool: white space follows the piece inside the token (its word ends there)
    dollar_runs: torch.Tensor  # int: math delimiters in the token (runs of unescaped $)
    starts_with_dollar: torch.Tensor  # bool
    ends_with_dollar: torch.Tensor  # bool: the token ends with an unescaped run of $
    marker_row: torch.Tensor  # long: the row of marker_transitions for the token's piece
    marker_transitions: torch.Tensor  # [R, S] long: marker-automaton state after reading a piece, per state
    marker_accepting: torch.Tensor  # [S] bool: the word read so far, stripped of punctuation, is a marker
    markers: tuple[str, ...]  # the normalised markers the automaton accepts
    token_flags: torch.Tensor = field(init=False, repr=False)  # int32: the bool columns packed, for one gather

    def __post_init__(self) -> None:
        vocab_size = self.is_special.shape[0]
        for f in fields(self):
            if f.name in ("marker_transitions", "marker_accepting", "markers", "token_flags"):
                continue
            value = getattr(self, f.name)
            if value.shape != (vocab_size,):
                raise ValueError(f"VocabTables.{f.name} has shape {tuple(value.shape)}, expected ({vocab_size},)")
        flags = torch.zeros(vocab_size, dtype=torch.int32, device=self.is_special.device)
        for column, bit in (
            (self.starts_with_space, FLAG_STARTS_SPACE),
            (self.ends_with_space, FLAG_ENDS_SPACE),
            (self.ends_with_newline, FLAG_ENDS_NEWLINE),
            (self.ends_sentence_punct, FLAG_ENDS_SENTENCE_PUNCT),
            (self.has_word_text, FLAG_HAS_WORD_TEXT),
            (self.closes_word, FLAG_CLOSES_WORD),
            (self.starts_with_dollar, FLAG_STARTS_DOLLAR),
            (self.ends_with_dollar, FLAG_ENDS_DOLLAR),
        ):
            flags |= column.to(torch.int32) * bit
        flags |= self.dollar_runs.clamp(0, _DOLLAR_RUNS_MAX).to(torch.int32) << FLAG_DOLLAR_RUNS_SHIFT
        object.__setattr__(self, "token_flags", flags)

    @property
    def vocab_size(self) -> int:
        return int(self.is_special.shape[0])

    @property
    def device(self) -> torch.device:
        return self.token_flags.device

    def to(self, device: torch.device | str) -> VocabTables:
        """The same tables on ``device`` (``self`` when already there)."""
        device = torch.device(device)
        if self.device == device:
            return self
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if f.init and isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, markers: Sequence[str] = DEFAULT_MARKERS) -> VocabTables:
        """Build the tables of a Hugging Face tokenizer (byte-level BPE such as Qwen's, or SentencePiece).

        Every vocabulary id is converted to text once: byte-level pieces through the byte alphabet ("Ġ" = space,
        "Ċ" = newline; partial UTF-8 characters become U+FFFD), SentencePiece pieces with "▁" as a space, added
        tokens as their literal content, special tokens as no text.
        """
        return cls.from_token_texts(vocabulary_texts(tokenizer), markers)

    @classmethod
    def from_token_texts(cls, texts: Sequence[str | None], markers: Sequence[str] = DEFAULT_MARKERS) -> VocabTables:
        """Build the tables from the text of every vocabulary id (``None`` marks a special token)."""
        normalised = normalise_markers(markers)
        automaton = _MarkerAutomaton(normalised)
        rows: dict[tuple[int, ...], int] = {}
        row_of_piece: dict[str, int] = {}
        columns: dict[str, list[Any]] = {
            name: []
            for name in (
                "is_special",
                "starts_with_space",
                "ends_with_space",
                "ends_with_newline",
                "ends_sentence_punct",
                "has_word_text",
                "closes_word",
                "dollar_runs",
                "starts_with_dollar",
                "ends_with_dollar",
                "marker_row",
            )
        }
        for text in texts:
            special = text is None
            text = "" if text is None else text
            rest = text.lstrip()
            parts = rest.split(maxsplit=1)
            piece = parts[0] if parts else ""
            runs = list(_DOLLAR_RUN.finditer(text))
            lowered = piece.lower()
            if lowered not in row_of_piece:
                row = automaton.row(lowered)
                row_of_piece[lowered] = rows.setdefault(row, len(rows))
            columns["is_special"].append(special)
            columns["starts_with_space"].append(text[:1].isspace())
            columns["ends_with_space"].append(text[-1:].isspace())
            columns["ends_with_newline"].append(text[-1:] in _NEWLINE_CHARS)
            columns["ends_sentence_punct"].append(text[-1:] in _SENTENCE_END_CHARS)
            columns["has_word_text"].append(not special and bool(rest))
            columns["closes_word"].append(len(rest) > len(piece))
            columns["dollar_runs"].append(len(runs))
            columns["starts_with_dollar"].append(text.startswith("$"))
            columns["ends_with_dollar"].append(bool(runs) and runs[-1].end() == len(text))
            columns["marker_row"].append(row_of_piece[lowered])
        tensors = {
            name: torch.tensor(values, dtype=torch.long if name in ("dollar_runs", "marker_row") else torch.bool)
            for name, values in columns.items()
        }
        return cls(
            **tensors,
            marker_transitions=torch.tensor(list(rows), dtype=torch.long),
            marker_accepting=torch.tensor(automaton.accepting(), dtype=torch.bool),
            markers=normalised,
        )
