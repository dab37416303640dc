"""Argument checks at the edges of the studio (the Python facade, the CLI and the UI share them).

Each returns the value it checked, normalised, or raises one ``StudioError`` that names the argument,
so a wrong type from Python reads like a wrong value from the command line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from studio.errors import StudioError

MAX_SEED = 2**63 - 1  # seeds are drawn by torch CPU generators: signed 64-bit


def check_int(value: Any, what: str, low: int | None = None, high: int | None = None) -> int:
    """A whole number (bool refused) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise StudioError(f"{what} must be a whole number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if low is not None and high is not None else (
            f"at least {low}" if low is not None else f"at most {high}")
        raise StudioError(f"{what} must be {bounds}, got {value}")
    return value


def check_choice(value: Any, what: str, choices: Iterable[str]) -> str:
    """One of a few words."""
    choices = tuple(choices)
    if value not in choices:
        raise StudioError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


def is_finite_number(value: Any) -> bool:
    """An int or float (bool is not one) that is neither NaN nor infinite and fits a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range (YAML and Python integers have no bound)
        return False


def check_number(value: Any, what: str) -> float:
    """A finite real number (bool refused); numeric strings are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StudioError(f"{what} must be a number, got {value!r}")
    if not is_finite_number(value):
        raise StudioError(f"{what} must be a finite number, got {value:g}" if isinstance(value, float)
                          else f"{what} must be a finite number, got an integer too large for a float")
    return float(value)


def check_seed(seed: Any, count: int = 1, what: str = "seed") -> int:
    """A seed such that ``seed, seed+1, ..., seed+count-1`` all lie in 0 .. 2^63-1."""
    check_int(seed, what)
    if not 0 <= seed <= MAX_SEED - (count - 1):
        if count > 1 and 0 <= seed <= MAX_SEED:
            raise StudioError(f"{what} {seed} with {count} items runs past 2^63-1 (item seeds are {what}, {what}+1, ...)")
        raise StudioError(f"{what} must be between 0 and 2^63-1, got {seed}")
    return seed


def check_text(value: Any, what: str, optional: bool = False) -> str | None:
    """A string (or None when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise StudioError(f"{what} must be text, got {value!r}")
    return value


def check_tags(tags: Any) -> list[str]:
    """Tags: None or a list/tuple/set of strings (a bare string would split into letters)."""
    if tags is None:
        return []
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
        raise StudioError(f"tags must be a list of strings, got {tags!r}")
    tags = list(tags)
    bad = [t for t in tags if not isinstance(t, str)]
    if bad:
        raise StudioError(f"tags must be strings, got {bad[0]!r}")
    return tags


def check_path(value: Any, what: str) -> Path:
    """A non-empty file-system path given as text or an os.PathLike."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise StudioError(f"{what} must be a non-empty file path, got {value!r}")
    return Path(value)
