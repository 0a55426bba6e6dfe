"""Templates and what they may call: one Jinja2 environment, autoescaping on, undefined names an error.

Every value a template prints is escaped unless it is :class:`markupsafe.Markup` made by
:mod:`api.ui.logview` (which escapes every character of the job's text itself). Assets are linked
with a hash of their content (``/static/ui.css?v=…``) so they can be cached for long and still
change with a release.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from api.ui.logview import duration_text

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
STATIC = Path(__file__).resolve().parent.parent / "static"


@cache
def _asset_version(name: str) -> str:
    try:
        return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]
    except OSError:
        return "0"


def static_url(name: str) -> str:
    return f"/static/{name}?v={_asset_version(name)}"


def age(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """How long ago, in a word or two.

    >>> t = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    >>> age(t, t + dt.timedelta(seconds=30)), age(t, t + dt.timedelta(hours=5)), age(t, t + dt.timedelta(days=3))
    ('just now', '5 h ago', '3 days ago')
    """
    if when is None:
        return ""
    seconds = ((now or dt.datetime.now(dt.UTC)) - when).total_seconds()
    if seconds < 45:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60) or 1} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    days = int(seconds // 86400)
    return "1 day ago" if days == 1 else f"{days} days ago"


def duration(seconds: float | None) -> str:
    return "" if seconds is None else duration_text(seconds)


def size(n: int | float | None) -> str:
    """Bytes for people.

    >>> size(512), size(3 * 1024 * 1024)
    ('512 B', '3.0 MiB')
    """
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def iso(when: dt.datetime | None) -> str:
    return "" if when is None else when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def make_environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.globals["static"] = static_url
    env.filters.update(age=age, duration=duration, size=size, iso=iso)
    return env


class Pages:
    """Renders a page (the environment is made once per process)."""

    def __init__(self) -> None:
        self.env = make_environment()
        # compiled now, once: compiling the job page on its first request took ~100 ms here
        for name in self.env.list_templates(extensions=["html"]):
            self.env.get_template(name)

    def render(self, request: Request, template: str, context: dict[str, Any], status_code: int = 200,
               headers: dict[str, str] | None = None) -> HTMLResponse:
        values = {"viewer": None, **context}
        values.setdefault("csrf", getattr(values["viewer"], "csrf", ""))
        page = self.env.get_template(template).render(request=request, **values)
        return HTMLResponse(page, status_code=status_code, headers={"Cache-Control": "no-store", **(headers or {})})
