"""Reading a ``POST /api/v1/runs`` body: size cap, YAML or JSON, into a :class:`RunCreate`.

A YAML body (``application/yaml``, ``text/yaml``, and the ``x-yaml`` spellings) is the pipeline
text itself; a JSON body is a :class:`RunCreate`. The cap is checked against the declared
``Content-Length`` first and then while reading, so a client lying about the length (or
streaming a chunked body) still cannot make the API buffer more than the cap.
"""

from __future__ import annotations

import json

from pydantic import ValidationError
from starlette.requests import Request

from api.errors import BadRequest, BodyTooLarge, UnsupportedMedia
from api.schemas import RunCreate

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
            return RunCreate.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise BadRequest(f"the JSON body is not a run request: {problems}") from None
    raise UnsupportedMedia(
        f"send the pipeline as application/yaml (or text/yaml), or a JSON object as application/json,"
        f" not {media or 'no content type'}"
    )


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8 text (byte {exc.start})") from None
