"""Job-controlled bytes on the operator's terminal.

The real ``sandpit run`` / ``sandpit exec`` processes write to a real pty; what they wrote is fed
to a terminal emulator (pyte) and the screen is judged: no forged ``sandpit:`` line or line under
another job's prefix, no changed window title, nothing erased or moved, colour still shown. The
raw bytes are judged too: no escape sequence but colour (SGR) ever reaches the terminal from
``sandpit run``, and none from sandpit's own lines (``sandpit: artifact ... not kept``).
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.sandbox.test_cli_and_teardown import cli_env
from worker.sandbox.reaper import leftovers

try:
    import pyte
except ImportError:
    pyte = None

SANDPIT = str(Path(sys.executable).parent / "sandpit")
COLUMNS, ROWS = 160, 400
SGR = re.compile(rb"\x1b\[[0-9;:]*m")

#: what a hostile job prints (dash's printf: octal escapes), each trying one way to reach the terminal
ATTACKS = [
    r"a\033]0;pwned-title\007b",  # window title (OSC 0, BEL)
    r"c\033]2;pwned-title\033\\d",  # window title (OSC 2, ST)
    r"\033]52;c;cHduZWQ=\007clipboard",  # clipboard write (OSC 52)
    r"\033]0;unterminated title",  # an OSC that never ends (the next line must still show)
    r"\nsandpit: FORGED-NEWLINE",  # a new line is still the job's line, under its prefix
    r"\rsandpit: FORGED-CR",  # a bare CR back over the prefix
    r"\b\b\b\b\b\b\b\b\b\b\b\b\b\bsandpit: FORGED-BS",  # backspaces over the prefix
    r"\033[1A\033[2K\033[1Gsandpit: FORGED-UP",  # cursor up, erase the line above, column 1
    r"\033[H\033[2J\033[3J",  # home, clear the screen and the scrollback
    r"\0337\033[1;1Hsandpit: FORGED-HOME\0338",  # save, jump to the top, restore
    r"\033c",  # full reset
    r"\302\2332J\302\233Hsandpit: FORGED-C1",  # 8-bit CSI (U+009B) erase and home
    r"\033Pq#0;2;0;0;0\033\\dcs \033_apc\033\\ \033^pm\033\\",  # DCS, APC, PM strings
    r"\033(0lqqk\033(B",  # switch to the line-drawing charset
    r"\033[31mRED\033[0m plain \033[8mconcealed-without-reset",  # colour is kept; conceal stops at the line end
]


def pipeline(tmp_path: Path) -> Path:
    """The pipeline and, beside it (so in every job's workspace), the attacker's script."""
    (tmp_path / "attack.sh").write_text("".join(f"printf '{a}\\n'\n" for a in ATTACKS))
    text = """stages: [first, second, third]
victim:
  stage: first
  script:
    - echo victim says hello
attacker:
  stage: second
  script:
    - sh attack.sh
bidi:
  stage: third
  parallel:
    matrix:
      - X: ["a\\u202eb"]
  script:
    - echo bidi ok
"""
    path = tmp_path / "p.yml"
    path.write_text(text)
    return path


def run_on_pty(argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 240) -> tuple[bytes, int]:
    """Run a real process with stdout and stderr on a fresh pty; everything it wrote, its status."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=cwd,
                            start_new_session=True)
    os.close(slave)
    out = bytearray()
    give_up = time.monotonic() + timeout_s
    try:
        while time.monotonic() < give_up:
            if not select.select([master], [], [], 1.0)[0]:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the pty's slave side is gone
                break
            if not data:
                break
            out += data
        return bytes(out), proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def screen_of(raw: bytes) -> pyte.Screen:
    require(pyte is not None, "needs pyte (a dev dependency): pip install -e '.[dev]'")
    screen = pyte.Screen(COLUMNS, ROWS)
    pyte.ByteStream(screen).feed(raw)
    return screen


def assert_no_control_but_colour(raw: bytes) -> None:
    rest = SGR.sub(b"", raw)
    assert b"\x1b" not in rest, rest[max(0, rest.find(b"\x1b") - 40):rest.find(b"\x1b") + 40]
    assert b"\xc2\x9b" not in rest and b"\xc2\x9d" not in rest  # C1 CSI, OSC
    allowed = {ord("\n"), ord("\r"), ord("\t")}
    assert not {b for b in rest if (b < 0x20 and b not in allowed) or b == 0x7f}


@pytest.fixture(scope="module")
def hostile_run(settings, tmp_path_factory) -> tuple[bytes, pyte.Screen, int]:
    """One run of the hostile pipeline, judged by the tests below; it leaves nothing behind."""
    tmp_path = tmp_path_factory.mktemp("hostile-run")
    raw, code = run_on_pty([SANDPIT, "run", str(pipeline(tmp_path))], cli_env(settings, "crun"), tmp_path)
    assert leftovers(settings) == []
    return raw, screen_of(raw), code


def test_no_title_or_clipboard_or_terminal_state_reaches_the_terminal(hostile_run):
    raw, screen, code = hostile_run
    assert code == 0, raw.decode(errors="replace")
    assert_no_control_but_colour(raw)
    assert screen.title == "" and screen.icon_name == ""
    assert screen.charset == 0 and not screen.mode & {pyte.modes.DECOM}  # no charset switch, no origin mode


def test_no_forged_line_and_nothing_erased(hostile_run):
    _raw, screen, _code = hostile_run
    lines = [line.rstrip() for line in screen.display]
    text = "\n".join(lines)
    assert "victim | victim says hello" in text  # the line above the attacker is still there
    for line in lines:
        if "FORGED" in line:
            assert line.lstrip().startswith("attacker | "), line
        assert not line.startswith("sandpit:"), line
    for marker in ("FORGED-NEWLINE", "FORGED-CR", "FORGED-BS", "FORGED-UP", "FORGED-HOME", "FORGED-C1"):
        assert marker in text, marker  # shown, as the attacker's own text
    assert "attacker | b" not in text.replace("attacker | ab", "")  # the title text itself is gone
    assert "pwned-title" not in text and "unterminated title" not in text
    assert "pipeline succeeded" in text


def test_colour_is_kept_and_does_not_bleed(hostile_run):
    _raw, screen, _code = hostile_run
    row = next(y for y, line in enumerate(screen.display) if "RED plain" in line)
    x = screen.display[row].index("RED")
    assert screen.buffer[row][x].fg == "red"
    assert screen.buffer[row][x + 4].fg == "default"  # "plain" after the reset
    summary = next(y for y, line in enumerate(screen.display) if line.startswith("pipeline "))
    assert all(not ch.reverse and ch.fg == "default" for ch in screen.buffer[summary].values())
    # the concealed text (conceal has no attribute in pyte: check the bytes) is closed at its line end
    after_conceal = screen.display[row + 1]
    assert "attacker" in after_conceal or "bidi" in after_conceal or after_conceal.strip() == ""


def test_job_names_are_quoted(hostile_run):
    """A name that passed the language's checks but is not plain printable text (a bidi override
    that would reorder what follows) is shown quoted, with the character escaped."""
    raw, screen, _code = hostile_run
    assert "\u202e".encode() not in raw
    text = "\n".join(screen.display)
    assert "'bidi: [a\\u202eb]' | bidi ok" in text


def test_exec_quotes_artifact_names_in_its_own_lines(settings, runtime, tmp_path, no_leftovers):
    """``sandpit: artifact NAME not kept``: a name holding a newline, an OSC title and a fake
    ``sandpit:`` line is one escaped, quoted word on one line. (The job's own output through
    exec is a raw pipe by design, so this job prints nothing.)"""
    name = "x\n\x1b]0;pwned-title\x07sandpit: FORGED\r"
    script = ("mkdir -p out; ln -s /etc/passwd \"out/$(printf 'x\\n\\033]0;pwned-title\\007sandpit: FORGED\\r')\"")
    raw, code = run_on_pty([SANDPIT, "exec", "--artifact", "out/*", "--", "sh", "-c", script],
                           cli_env(settings, runtime), tmp_path)
    assert code == 0, raw
    assert_no_control_but_colour(raw)
    screen = screen_of(raw)
    assert screen.title == ""
    lines = [line.rstrip() for line in screen.display if line.strip()]
    assert lines == ["sandpit: artifact 'out/x\\n\\x1b]0;pwned-title\\x07sandpit: FORGED\\r' not kept: symlink"], lines
    assert name not in raw.decode()
