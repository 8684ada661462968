"""argparse ``type=`` validators for numeric and string flags.

argparse turns the ``ArgumentTypeError`` they raise into ``argument --FLAG: MESSAGE`` on one line with the
usage and exit code 2, so a nonsense value (``--batch-size 0``, ``--top-p 2``, ``--stop ''``) is refused
before anything is loaded, with the flag and the value named.
"""

from __future__ import annotations

import argparse
import math


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (sizes, counts, lengths)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds, optional counts where 0 means none)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """Any finite number."""
    return _float(text)


def positive_float(text: str) -> float:
    """A finite number > 0 (temperatures)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1] (exponents and fractions)."""
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return value


def open_unit_interval(text: str) -> float:
    """A number in (0, 1] (nucleus sampling's top-p: 0 would keep no token)."""
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def non_empty_string(text: str) -> str:
    """A string of at least one character (whitespace counts: a newline is a useful stop string)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty, got ''")
    return text
