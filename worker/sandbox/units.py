"""Parsing of human sizes and durations (pure).

>>> parse_size("256M")
268435456
>>> parse_duration("1m30s")
90.0
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str) -> int:
    """Bytes from ``"512"``, ``"64k"``, ``"256M"``, ``"1G"``, ``"1Gi"``, ``"2GB"``.

    Binary multiples (1024) throughout, as Docker and Kubernetes' ``Mi`` do.

    >>> parse_size("1Gi") == parse_size("1G") == 1024**3
    True
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size; write e.g. 512M, 1G or 64k")
    number, unit, _suffix = match.groups()
    value = float(number) * 1024 ** _POWERS[unit.lower()]
    if value < 1:
        raise ValueError(f"size {text!r} must be at least one byte")
    return int(value)


def parse_duration(text: str) -> float:
    """Seconds from ``"30"``, ``"30s"``, ``"1m30s"``, ``"2h"``, ``"250ms"``.

    >>> parse_duration("250ms")
    0.25
    """
    stripped = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", stripped):
        value = float(stripped)
    else:
        pos = 0
        value = 0.0
        compact = stripped.replace(" ", "")
        for match in _DURATION_PART.finditer(compact):
            if match.start() != pos:
                break
            value += float(match.group(1)) * _SECONDS[match.group(2).lower()]
            pos = match.end()
        if pos != len(compact) or pos == 0:
            raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 5m or 1h30m")
    if value <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return value


def parse_cpus(text: str) -> float:
    """A positive number of CPUs, e.g. ``"1.5"``.

    >>> parse_cpus("0.5")
    0.5
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of CPUs; write e.g. 1 or 1.5") from None
    if not 0.01 <= value <= 1024:
        raise ValueError(f"cpus {text!r} must be between 0.01 and 1024")
    return value
