"""The job log as HTML (api.ui.logview) and the parts of a log file a page reads (api.ui.logsource)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.ui.logsource import count_lines, file_window
from api.ui.logview import LogRenderer, assemble

ESC = "\x1b"


@pytest.mark.parametrize(("text", "html"), [
    ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
    (f"{ESC}[31mred{ESC}[0m", '<span class="f1">red</span>'),
    (f"{ESC}[1;38;5;208mo{ESC}[22mx", '<span class="f208 sb">o</span><span class="f208">x</span>'),
    (f"{ESC}[38;2;255;0;0mtrue", '<span class="f196">true</span>'),
    (f"{ESC}]0;title{ESC}\\after", "after"),  # OSC dropped whole
    (f"{ESC}]8;;http://evil{ESC}\\link", "link"),  # hyperlinks are not links
    (f"a{ESC}[2Jb{ESC}[10;1Hc", "abc"),  # erase, cursor movement dropped
    ("10%\r100%", "100%"),  # a bare CR keeps what follows it
    ("bell\x07 nul\x00 del\x7f", "bell nul del"),
    ("x\u202ey", "x&lt;U+202E&gt;y"),  # a bidi override is shown, not obeyed
    (f'{ESC}[31m" onmouseover="x', '<span class="f1">&#34; onmouseover=&#34;x</span>'),
])
def test_log_text_becomes_escaped_html_with_sgr_classes_only(text: str, html: str) -> None:
    assert LogRenderer().feed(text + "\n") == [("line", 1, html)]


def test_colour_carries_to_the_next_line_and_a_split_sequence_is_joined() -> None:
    """A line ends its spans; the next line opens them again; ESC [3 / 1m across feeds is one."""
    r = LogRenderer()
    assert r.feed(f"{ESC}[3") == []
    assert r.feed("1mred\nstill\n") == [("line", 1, '<span class="f1">red</span>'),
                                         ("line", 2, '<span class="f1">still</span>')]


def test_sections_nest_with_durations_and_collapsed_ones_start_closed() -> None:
    r = LogRenderer()
    ops = r.feed(f"{ESC}[0Ksection_start:100:outer\r{ESC}[0KOuter\n"
                 f"section_start:101:inner[collapsed=true]\rInner <i>\nbody\n"
                 f"section_end:131:inner\r\nsection_end:165:outer\r\nafter\n")
    html = str(assemble(ops))
    assert '<details class="sec" open data-name="outer" data-start="100">' in html
    assert '<details class="sec" data-name="inner" data-start="101">' in html
    assert '<span class="dur">30s</span>' in html and '<span class="dur">1m 05s</span>' in html
    assert "Inner &lt;i&gt;" in html and 'id="L3"' in html and 'id="L6"' in html
    assert html.index('id="L6"') > html.rindex("</details>")


def test_an_unclosed_section_stays_live_for_the_stream_to_fill() -> None:
    html = str(assemble(LogRenderer().feed("section_start:1:s\rS\nline\n")))
    assert 'data-live=""' in html and html.endswith("</div></details>")


def _write_log(path: Path, chunks: list[str]) -> None:
    with path.open("w") as handle:
        for t, chunk in enumerate(chunks):
            handle.write(json.dumps({"t": float(t), "s": "out", "d": chunk}) + "\n")


def test_count_lines_reads_newlines_through_json_escapes(tmp_path: Path) -> None:
    """A literal backslash-n in the output is not a newline; an escaped backslash before one is."""
    path = tmp_path / "log.jsonl"
    chunks = ["one\ntwo\n", "a \\n literal\n", "back\\\nslash", " partial", "\n"]
    _write_log(path, chunks)
    assert count_lines(path, path.stat().st_size) == "".join(chunks).count("\n") == 5


def test_a_large_log_shows_its_last_screen_numbered_as_in_the_whole_log(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    _write_log(path, [f"line {n} " + "x" * 200 + "\n" for n in range(1, 12001)])
    head = file_window(path)
    assert not head.complete and head.starts_at == 0 and 'id="L1"' in str(assemble(head.ops))
    window = file_window(path, tail=True)
    assert window.complete and window.starts_at and window.starts_at > 0
    html = str(assemble(window.ops))
    assert 'id="L12000"' in html and "line 12000 " in html and 'id="L1"' not in html
    first = int(html.split('id="L', 1)[1].split('"', 1)[0])
    assert f"line {first} " in html  # the anchor's number is the log's own line number
    start = file_window(path, at=0)
    assert start.resume is not None and 'id="L1"' in str(assemble(start.ops))
    nxt = file_window(path, at=int(start.resume.at), skip=start.resume.skip, line=start.resume.line)
    next_html = str(assemble(nxt.ops))
    assert f'id="L{start.resume.line}"' in next_html and f"line {start.resume.line} " in next_html
