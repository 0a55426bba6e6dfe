"""Reading a ``POST /api/v1/runs`` body: size cap, YAML or JSON, into a :class:`RunCreate`.

A YAML body (``application/yaml``, ``text/yaml``, and the ``x-yaml`` spellings) is the pipeline
text itself; a JSON body is a :class:`RunCreate`. The cap is checked against the declared
``Content-Length`` first and then while reading, so a client lying about the length (or
streaming a chunked body) still cannot make the API buffer more than the cap.

Every text field of the request is checked before anything is planned or stored: no NUL or lone
surrogate anywhere (PostgreSQL cannot store a NUL, no database a lone surrogate, and SQLite would
take what PostgreSQL refuses, so the answer would depend on the database), no control character
in a name, ref or sha, none but TAB and newlines in a value. Each problem names the field
(:class:`InputInvalid`, 422); the pipeline text's own characters are the language's business.
"""

from __future__ import annotations

import json

from pydantic import ValidationError
from starlette.requests import Request

from api.errors import BadRequest, BodyTooLarge, InputInvalid, UnsupportedMedia
from api.schemas import RunCreate
from pipelines.language.yamltree import bad_character

YAML_TYPES = frozenset({"application/yaml", "text/yaml", "application/x-yaml", "text/x-yaml"})
JSON_TYPES = frozenset({"application/json"})


async def read_capped_body(request: Request, limit: int) -> bytes:
    """The whole body, or :class:`BodyTooLarge` as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the body is over the limit of {limit} bytes")
    return bytes(body)


def parse_run_body(content_type: str, body: bytes) -> RunCreate:
    """The run request a body describes.

    >>> parse_run_body("text/yaml; charset=utf-8", b"t: {script: [true]}").pipeline
    't: {script: [true]}'
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media in YAML_TYPES:
        return RunCreate(pipeline=_text(body))
    if media in JSON_TYPES:
        try:
            data = json.loads(_text(body))
        except json.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from exc
        try:
            request = RunCreate.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise BadRequest(f"the JSON body is not a run request: {problems}") from None
        check_fields(request)
        return request
    raise UnsupportedMedia(
        f"send the pipeline as application/yaml (or text/yaml), or a JSON object as application/json,"
        f" not {media or 'no content type'}"
    )


def field_problems(request: RunCreate) -> list[dict[str, str]]:
    """Each field of ``request`` that holds a character no run may hold.

    >>> request = RunCreate(pipeline="t: {script: [x]}", variables={"A": "ok", "B": "x\\x00"}, ref="main\\x1b")
    >>> [(p["field"], p["message"]) for p in field_problems(request)]  # doctest: +NORMALIZE_WHITESPACE
    [('variables.B', 'the value holds the control character U+0000 (NUL) at character 2'),
     ('ref', 'the ref holds the control character U+001B (ESC) at character 5')]
    """
    found: list[dict[str, str]] = []

    def check(field: str, text: str, what: str, **rules: bool) -> None:
        problem = bad_character(text, **rules)
        if problem is not None:
            found.append({"field": field, "message": f"the {what} holds {problem}"})

    check("pipeline", request.pipeline, "pipeline", controls=False)
    for field, mapping in (("variables", request.variables), ("secrets", request.secrets)):
        for name, value in mapping.items():
            if (problem := bad_character(name)) is not None:
                # the name itself is the problem: show it escaped, never raw
                found.append({"field": field, "key": name.encode("unicode_escape").decode("ascii"),
                              "message": f"the name holds {problem}"})
                continue
            check(f"{field}.{name}" if field == "variables" else field, value, "value", multiline=True)
    check("ref", request.ref, "ref")
    check("sha", request.sha, "sha")
    check("message", request.message, "message", multiline=True)
    return found


def check_fields(request: RunCreate) -> None:
    """:class:`InputInvalid` with every problem of :func:`field_problems`, if there is one."""
    problems = field_problems(request)
    if problems:
        raise InputInvalid(problems)


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8 text (byte {exc.start})") from None
