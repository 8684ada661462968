"""Clear errors for user text files that are not UTF-8 (or are damaged gzip): the file, line and byte named.

Readers keep Python's text mode (universal newlines, fast) and wrap the read in ``named_read_errors(path)``;
only when decoding fails is the file scanned again, in binary, to find where.
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from typing import Iterator, Optional


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def first_invalid_utf8(path: str) -> Optional[tuple[int, int, int]]:
    """(line number, byte offset in the file, the byte) of the first byte of ``path`` that is not UTF-8, or
    None when it all decodes. Offsets of a ``.gz`` file count decompressed bytes. A newline byte never occurs
    inside a multi-byte UTF-8 character, so decoding line by line finds the same first error as the whole."""
    offset = 0
    with _open_binary(path) as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                return number, offset + error.start, line[error.start]
            offset += len(line)
    return None


def utf8_error_message(path: str) -> str:
    """The one-line message for a file that failed to decode as UTF-8."""
    where = first_invalid_utf8(path)
    fix = "re-encode it as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8 FILE > NEW) or remove the bad bytes"
    if where is None:  # e.g. a truncated multi-byte character at the very end
        return f"{path} is not valid UTF-8 text; {fix}"
    line, offset, byte = where
    of = " of the decompressed data" if path.endswith(".gz") else ""
    return f"{path} is not valid UTF-8 text: line {line}, byte offset {offset}{of} (byte 0x{byte:02x}); {fix}"


@contextlib.contextmanager
def named_read_errors(path: str) -> Iterator[None]:
    """Turns a UTF-8 decoding error, or a damaged gzip stream, raised while reading ``path`` into a
    ``ValueError`` that names the file (and for UTF-8 the line and byte offset) and the fix."""
    try:
        yield
    except UnicodeDecodeError:
        raise ValueError(utf8_error_message(path)) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"{path} is not a complete gzip file ({error or type(error).__name__}); it may be "
                         f"truncated: copy it again or decompress it and check the text") from None


def json_lines(path: str, what: str = "one JSON object per line") -> Iterator[tuple[str, int, dict]]:
    """``(where, line_number, record)`` for each non-blank line of a JSON-lines file (``.gz`` too), where
    ``where`` is ``"path:line"`` for messages. A line that is not a JSON object, bytes that are not UTF-8 or a
    damaged gzip stream are one ``ValueError`` naming the file and line; ``what`` says what the file should
    hold. The one reader of users' JSON-lines files (evaluation data, labels, MASSIVE)."""
    import json
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    opener = gzip.open if path.endswith(".gz") else open
    with named_read_errors(path), opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where} is not valid JSON ({error.msg}); expected {what}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where} is a JSON {type(record).__name__}, expected an object: {what}")
            yield where, number, record
