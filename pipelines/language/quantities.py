"""Human durations (GitLab's ``timeout``, ``expire_in``, ``start_in``) and sandbox sizes (pure).

Durations follow GitLab's ChronicDuration reading: bare seconds, ``hh:mm:ss``, or number+unit
pairs in any spelling (``90m``, ``1h 30m``, ``2 hours and 5 minutes``, ``3 days``, ``1 week``).
Sizes use binary multiples throughout (``256M`` == ``256Mi`` == 256 * 1024**2), the same reading
as ``sandpit exec --memory`` and Docker.

>>> parse_duration("1h 30m")
5400
>>> parse_size("512Mi") == parse_size("512M") == 512 * 1024**2
True
>>> parse_cpus("1.5")
1.5
"""

from __future__ import annotations

import re

_UNIT_SECONDS: dict[str, int] = {}
for _names, _seconds in (
    (("s", "sec", "secs", "second", "seconds"), 1),
    (("m", "min", "mins", "minute", "minutes"), 60),
    (("h", "hr", "hrs", "hour", "hours"), 3600),
    (("d", "day", "days"), 86400),
    (("w", "wk", "wks", "week", "weeks"), 7 * 86400),
    (("mo", "mos", "month", "months"), 30 * 86400),
    (("y", "yr", "yrs", "year", "years"), 365 * 86400),
):
    for _name in _names:
        _UNIT_SECONDS[_name] = _seconds

# patterns, not compiled objects: re compiles (and caches) one on first use, so a process that
# parses only a size never pays for the others at import
_PART = r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)"
_CLOCK = r"^(?:([0-9]+):)?([0-9]+):([0-9]{1,2})$"
_SIZE = r"^([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)(i?)(b?)$"
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_CPUS = r"^[0-9]+(?:\.[0-9]+)?$|^\.[0-9]+$"


def parse_duration(text: str) -> int:
    """Whole seconds from a human duration; ValueError with a readable reason otherwise.

    >>> parse_duration("2 hours and 5 minutes"), parse_duration("1:00:30"), parse_duration("45")
    (7500, 3630, 45)
    """
    cleaned = text.strip().lower().replace(",", " ")
    clock = re.match(_CLOCK, cleaned)
    if clock:
        hours, minutes, seconds = (int(part) if part else 0 for part in clock.groups())
        return hours * 3600 + minutes * 60 + seconds
    cleaned = re.sub(r"\band\b", " ", cleaned)
    total = 0.0
    pos = 0
    found = False
    for match in re.finditer(_PART, cleaned):
        if cleaned[pos : match.start()].strip():
            raise ValueError(f"{text!r} is not a duration")
        number, unit = match.groups()
        if unit == "":
            unit = "s"
        unit_seconds = _UNIT_SECONDS.get(unit)
        if unit_seconds is None:
            raise ValueError(f"{text!r} has an unknown unit {unit!r}")
        total += float(number) * unit_seconds
        pos = match.end()
        found = True
    if not found or cleaned[pos:].strip():
        raise ValueError(f"{text!r} is not a duration")
    return int(total)


def parse_size(text: str) -> int:
    """Bytes from ``512``, ``64k``, ``256M``, ``1G``, ``512Mi``, ``2GB`` (binary multiples).

    >>> parse_size("1G")
    1073741824
    """
    match = re.match(_SIZE, text.strip(), re.IGNORECASE)
    if match is None:
        raise ValueError(f"{text!r} is not a size")
    number, unit, _binary, _b = match.groups()
    value = int(float(number) * 1024 ** _POWERS[unit.lower()])
    if value < 1:
        raise ValueError(f"{text!r} must be at least one byte")
    return value


def parse_cpus(text: str) -> float:
    """A positive decimal number of CPUs such as ``1``, ``1.5`` or ``0.25``.

    >>> parse_cpus("0.25")
    0.25
    """
    cleaned = text.strip()
    if not re.match(_CPUS, cleaned):
        raise ValueError(f"{text!r} is not a number of CPUs")
    value = float(cleaned)
    if value <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    return value


def parse_pids(text: str) -> int:
    """A positive whole number of processes.

    >>> parse_pids("128")
    128
    """
    cleaned = text.strip()
    if not re.fullmatch(r"[0-9]+", cleaned) or int(cleaned) < 1:
        raise ValueError(f"{text!r} is not a positive whole number")
    return int(cleaned)
