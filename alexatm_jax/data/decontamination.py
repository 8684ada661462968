"""N-gram keys for decontamination: the held-out evaluation text must share no 13-gram with pretraining text.

AlexaTM (like GPT-3) decontaminated its pretraining data with 13-gram overlap. Whitespace languages are
compared on word 13-grams (case-folded, punctuation stripped); Japanese has no spaces, so it is compared on
character 13-grams. Texts shorter than one n-gram are compared whole (a short Debian summary must not
reappear as a line of a pretraining document).

Used by ``scripts/build_bundled_data.py`` (to drop contaminated pretraining paragraphs) and by the tests (to
prove none is left), so both sides agree on what an n-gram is.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Iterable, Set

NGRAM = 13
# Languages written without spaces between words: compared on characters.
CHARACTER_LANGS = frozenset({"ja"})


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PSZ"


def word_tokens(text: str) -> list[str]:
    """Case-folded whitespace tokens with punctuation/symbols stripped from their ends; empty ones dropped.

    Python's ``\\w`` would split Indic words at combining vowel signs, so we split on whitespace instead.
    """
    out = []
    for tok in unicodedata.normalize("NFKC", text).casefold().split():
        start, end = 0, len(tok)
        while start < end and _is_punct(tok[start]):
            start += 1
        while end > start and _is_punct(tok[end - 1]):
            end -= 1
        if start < end:
            out.append(tok[start:end])
    return out


def char_tokens(text: str) -> list[str]:
    """Case-folded characters with whitespace and punctuation removed (for Japanese)."""
    return [ch for ch in unicodedata.normalize("NFKC", text).casefold() if not _is_punct(ch)]


def _key(kind: str, units: Iterable[str]) -> bytes:
    # A stable 12-byte digest instead of Python's salted hash(): the build must give the same bytes each run.
    return hashlib.blake2b((kind + "\x1f" + "\x1f".join(units)).encode("utf-8"), digest_size=12).digest()


def ngram_keys(text: str, lang: str, n: int = NGRAM) -> Set[bytes]:
    """All n-gram keys of ``text``: word n-grams, plus character n-grams for Japanese.

    A text with fewer than ``n`` units contributes one key for the whole text ("short:" keys), so exact
    reuse of a short segment is still caught; use ``line_keys`` on the other side to match those.
    """
    keys: Set[bytes] = set()
    words = word_tokens(text)
    if len(words) >= n:
        keys.update(_key("w", words[i:i + n]) for i in range(len(words) - n + 1))
    if lang in CHARACTER_LANGS:
        chars = char_tokens(text)
        if len(chars) >= n:
            keys.update(_key("c", chars[i:i + n]) for i in range(len(chars) - n + 1))
        elif chars and len(words) < n:
            keys.add(_key("short", ["".join(chars)]))
    elif words and len(words) < n:
        keys.add(_key("short", words))
    return keys


def line_keys(text: str, lang: str) -> Set[bytes]:
    """Whole-unit keys of every line and paragraph of a document (to meet the "short:" keys above)."""
    keys = set()
    pieces = [text] + text.split("\n") + text.split("\n\n")
    for piece in pieces:
        if lang in CHARACTER_LANGS:
            chars = char_tokens(piece)
            if chars:
                keys.add(_key("short", ["".join(chars)]))
        words = word_tokens(piece)
        if words:
            keys.add(_key("short", words))
    return keys


def document_keys(text: str, lang: str, n: int = NGRAM) -> Set[bytes]:
    """Everything of a pretraining document that a held-out text could collide with."""
    return ngram_keys(text, lang, n) | line_keys(text, lang)
