"""Parsing of human sizes, CPUs and durations for the CLI and settings (pure).

Sizes and CPUs are read exactly as a pipeline's ``sandbox:`` block reads them (one parser, in
``pipelines.language.quantities``); durations here are the CLI's compact form (``30s``, ``1m30s``,
``250ms``).

>>> parse_size("256M")
268435456
>>> parse_duration("1m30s")
90.0
"""

from __future__ import annotations

import re

from pipelines.language.quantities import parse_cpus, parse_size

__all__ = ["parse_cpus", "parse_duration", "parse_size"]

_DURATION_PART = r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)"  # compiled by re on first use
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


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
        for match in re.finditer(_DURATION_PART, compact, re.IGNORECASE):
            if match.start() != pos:
                break
            value += float(match.group(1)) * _SECONDS[match.group(2).lower()]
            pos = match.end()
        if pos != len(compact) or pos == 0:
            raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 5m or 1h30m")
    if value <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return value
