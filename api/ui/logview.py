"""A job's log as HTML: SGR colours as classes, GitLab's sections, numbered lines (pure).

Log text is job-controlled. :class:`LogRenderer` turns it into *operations* whose HTML is built
here and nowhere else: every character of the job's text goes through :func:`markupsafe.escape`;
of its escape sequences only SGR (``ESC [ ... m``) is understood, and only as CSS class names
taken from a fixed set (``f0``-``f255``, ``b0``-``b255``, ``sb`` bold, ...), so no text of the
job's ever becomes an attribute or a style. Every other control sequence (OSC titles and
hyperlinks, cursor movement, erase, DCS/APC strings) and every other control character is dropped,
and the bidirectional overrides that could make a line read differently than it is (U+202A-E,
U+2066-9) are shown as their code (``<U+202E>``).

A line is what ends with ``\\n`` (a bare ``\\r`` within it keeps only what follows the last one,
as a terminal shows a progress bar); ``section_start:<time>:<name>[collapsed=true]\\r`` and
``section_end:<time>:<name>\\r`` (with or without GitLab's ``ESC [0K``) open and close a collapsible
section whose title is the rest of the start line. Colour state carries from line to line; each
line's HTML closes its own spans, so a line can be appended, dropped or linked alone.

Operations are ``("line", number, html)``, ``("open", number, html, name, start, collapsed)`` and
``("close", name, end)``. :func:`assemble` nests them into the page's HTML (``<details>``, so
sections work without JavaScript); the live log sends the same operations over SSE and
``static/log.js`` nests them the same way.

>>> r = LogRenderer()
>>> r.feed("\\x1b[31mred\\x1b[0m <b>\\n")
[('line', 1, '<span class="f1">red</span> &lt;b&gt;')]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from markupsafe import Markup, escape

#: a line longer than this is cut into pieces (the renderer never holds more of one line)
MAX_LINE_CHARS = 64 * 1024

_MARKER = re.compile(
    r"(?:\x1b\[0K)?section_(start|end):([0-9]{1,12}):([A-Za-z0-9_.-]{1,200})(\[[^\]\r\n]{0,200}\])?\r(?:\x1b\[0K)?")
# SGR (group 1), then everything else that is dropped: CSI, OSC/DCS/SOS/PM/APC strings (to BEL/ST or
# the end of the line), other ESC sequences, C0 controls but TAB, DEL and C1 controls
_ESCAPES = re.compile(
    r"\x1b\[([0-9;:]{0,64})m"
    r"|\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_FLAGS = {1: "sb", 2: "sd", 3: "si", 4: "su", 7: "sr", 9: "ss"}
_FLAG_OFF = {22: ("sb", "sd"), 23: ("si",), 24: ("su",), 27: ("sr",), 29: ("ss",)}

Op = tuple[Any, ...]


def _cube(value: int) -> int:
    """The xterm 6x6x6 cube's index of a 0-255 channel."""
    return 0 if value < 48 else 1 if value < 115 else (value - 35) // 40


def nearest_colour(r: int, g: int, b: int) -> int:
    """The xterm-256 palette entry nearest a 24-bit colour (a class per colour, not a style).

    >>> nearest_colour(255, 0, 0), nearest_colour(128, 128, 128)
    (196, 244)
    """
    r, g, b = (max(0, min(255, c)) for c in (r, g, b))
    if abs(r - g) < 10 and abs(g - b) < 10:  # a grey: the grey ramp is finer than the cube
        grey = (r + g + b) // 3
        if grey < 8:
            return 16
        if grey > 238:
            return 231
        return 232 + round((grey - 8) / 10)
    return 16 + 36 * _cube(r) + 6 * _cube(g) + _cube(b)


Style = tuple[int | None, int | None, frozenset[str]]  # foreground, background, flags
PLAIN: Style = (None, None, frozenset())


@lru_cache(maxsize=4096)
def style_classes(style: Style) -> str:
    """The class names of a style (cached: a log uses a handful of styles over and over)."""
    fg, bg, flags = style
    names = [f"f{fg}"] if fg is not None else []
    if bg is not None:
        names.append(f"b{bg}")
    names.extend(sorted(flags))
    return " ".join(names)


@lru_cache(maxsize=4096)
def apply_sgr(style: Style, params: str) -> Style:
    """The style after one SGR parameter list (``;`` or ``:`` separated; empty means reset).

    >>> apply_sgr(PLAIN, "1;31"), apply_sgr((1, None, frozenset({"sb"})), "22;39")
    ((1, None, frozenset({'sb'})), (None, None, frozenset()))
    """
    fg, bg, flags = style
    numbers = [int(p) if p.isdigit() else 0 for p in re.split("[;:]", params)] if params else [0]
    i = 0
    while i < len(numbers):
        n = numbers[i]
        if n == 0:
            fg, bg, flags = None, None, frozenset()
        elif n in _FLAGS:
            flags = flags | {_FLAGS[n]}
        elif n in _FLAG_OFF:
            flags = flags - set(_FLAG_OFF[n])
        elif 30 <= n <= 37 or 90 <= n <= 97:
            fg = n - 30 if n < 90 else n - 82
        elif 40 <= n <= 47 or 100 <= n <= 107:
            bg = n - 40 if n < 100 else n - 92
        elif n == 39:
            fg = None
        elif n == 49:
            bg = None
        elif n in (38, 48):
            colour, used = _extended(numbers[i + 1:])
            i += used
            if colour is not None:
                if n == 38:
                    fg = colour
                else:
                    bg = colour
        i += 1
    return fg, bg, frozenset(flags)


def _extended(rest: Sequence[int]) -> tuple[int | None, int]:
    """``5;n`` or ``2;r;g;b`` after a 38/48: the colour and how many numbers it took."""
    if len(rest) >= 2 and rest[0] == 5:
        return (rest[1] if 0 <= rest[1] <= 255 else None), 2
    if len(rest) >= 4 and rest[0] == 2:
        return nearest_colour(rest[1], rest[2], rest[3]), 4
    return None, len(rest)


def _visible(text: str) -> str:
    """What a terminal leaves of a line with bare carriage returns: the text after the last one."""
    return text.rsplit("\r", 1)[1] if "\r" in text else text


def _bidi(match: re.Match[str]) -> str:
    return f"<U+{ord(match.group(0)):04X}>"


class LogRenderer:
    """Feeds of log text in, operations out (see the module docstring); one per rendered view.

    ``first_line`` numbers the first line fed (a view that starts part-way through a log);
    ``anchors=False`` leaves line ids out where the numbers are not known to be the log's.
    """

    def __init__(self, first_line: int = 1, *, anchors: bool = True) -> None:
        self.next_line = first_line
        self.anchors = anchors
        self.style: Style = PLAIN
        self.pending = ""

    def feed(self, text: str) -> list[Op]:
        """The operations of every line ``text`` completes (a partial line waits for its end)."""
        ops: list[Op] = []
        if not text:
            return ops
        data = self.pending + text
        lines = data.split("\n")
        self.pending = lines.pop()
        for line in lines:
            self._line(line, ops)
        while len(self.pending) > MAX_LINE_CHARS:
            self._line(self.pending[:MAX_LINE_CHARS], ops)
            self.pending = self.pending[MAX_LINE_CHARS:]
        return ops

    def flush(self) -> list[Op]:
        """The end of the log: a last line without ``\\n`` is a line too."""
        ops: list[Op] = []
        if self.pending:
            line, self.pending = self.pending, ""
            self._line(line, ops)
        return ops

    def _line(self, line: str, into: list[Op]) -> None:
        ops: list[Any] = []
        number = self.next_line
        self.next_line += 1
        numbered = False
        marked = False
        at = 0
        opened: list[Any] | None = None
        for match in (_MARKER.finditer(line) if "section_" in line else ()):
            before = line[at:match.start()]
            at = match.end()
            marked = True
            if before and opened is None:
                ops.append(("line", number if not numbered else 0, self._html(before)))
                numbered = True
            if match.group(1) == "start":
                collapsed = "collapsed=true" in (match.group(4) or "")
                opened = ["open", 0 if numbered else number, "", match.group(3), int(match.group(2)), collapsed]
                numbered = True
                ops.append(opened)
            else:
                if opened is not None and before:
                    opened[2] = self._html(before)
                opened = None
                ops.append(("close", match.group(3), int(match.group(2))))
        rest = line[at:]
        if opened is not None:
            opened[2] = self._html(rest)
        elif rest or not marked:
            ops.append(("line", 0 if numbered else number, self._html(rest)))
        into.extend(tuple(op) for op in ops)

    def _html(self, text: str) -> str:
        """One line's text as HTML spans (the style carries on to the next line)."""
        text = _visible(text.rstrip("\r"))  # a trailing CR (CRLF) only ends the line
        out: list[str] = []
        if _CONTROL.search(text) is None:  # most lines: no escape sequence, no control character
            if text:
                self._span(text, out)
            return "".join(out)
        at = 0
        for match in _ESCAPES.finditer(text):
            if match.start() > at:
                self._span(text[at:match.start()], out)
            at = match.end()
            if match.group(1) is not None:
                self.style = apply_sgr(self.style, match.group(1))
        if at < len(text):
            self._span(text[at:], out)
        return "".join(out)

    def _span(self, text: str, out: list[str]) -> None:
        safe = str(escape(text if text.isascii() else _BIDI.sub(_bidi, text)))
        classes = style_classes(self.style) if self.style is not PLAIN else ""
        out.append(f'<span class="{classes}">{safe}</span>' if classes else safe)


def line_html(number: int, html: str, anchors: bool = True) -> str:
    """One numbered line's markup (the number links to the line's own anchor)."""
    if not number:
        return f'<span class="l"><span class="n"></span><span class="c">{html}</span></span>'
    if not anchors:
        return f'<span class="l"><span class="n">{number}</span><span class="c">{html}</span></span>'
    return (f'<span class="l" id="L{number}"><a class="n" href="#L{number}" tabindex="-1">{number}</a>'
            f'<span class="c">{html}</span></span>')


def duration_text(seconds: float) -> str:
    """A section's or job's duration, short.

    >>> duration_text(4), duration_text(65.4), duration_text(3725)
    ('4s', '1m 05s', '1h 02m 05s')
    """
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 and seconds != whole else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"


def _summary(number: int, html: str, name: str, start: int, collapsed: bool, end: int | None,
             anchors: bool) -> str:
    state = "" if collapsed else " open"
    live = ' data-live=""' if end is None else ""
    took = duration_text(max(0, end - start)) if end is not None else ""
    return (f'<details class="sec"{state}{live} data-name="{escape(name)}" data-start="{start}">'
            f'<summary>{line_html(number, html, anchors)}<span class="dur">{took}</span></summary>'
            f'<div class="body">')


def assemble(ops: Iterable[Op], *, anchors: bool = True) -> Markup:
    """The page's HTML for ``ops``: lines in order, sections as nested ``<details>``; a section
    still open at the end stays open (``data-live``: the live log appends into it)."""
    out: list[str] = []
    stack: list[tuple[int, str, int, Op]] = []  # (index in out, name, start, op)
    for op in ops:
        kind = op[0]
        if kind == "line":
            out.append(line_html(op[1], op[2], anchors))
        elif kind == "open":
            stack.append((len(out), op[3], op[4], op))
            out.append("")
        elif kind == "close":
            names = [entry[1] for entry in stack]
            if op[1] not in names:
                continue  # opened before this view began
            while stack:
                index, name, start, opened = stack.pop()
                ended = op[2] if name == op[1] else None
                out[index] = _summary(opened[1], opened[2], name, start, opened[5], ended if ended is not None
                                      else op[2], anchors)
                out.append("</div></details>")
                if name == op[1]:
                    break
    while stack:
        index, name, start, opened = stack.pop(0)
        out[index] = _summary(opened[1], opened[2], name, start, opened[5], None, anchors)
    out.extend("</div></details>" for _ in range(sum(1 for s in out if 'data-live=""' in s)))
    return Markup("".join(out))  # noqa: S704 -- every piece was escaped by _span or built here
