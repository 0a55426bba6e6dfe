"""The requests of the ``http`` transport (adapter): one keep-alive connection pool per worker
process to ``SANDPIT_API_URL``, each request judged by one rule (:func:`judge`), every failure of
the wire one :class:`Transient`.

Why urllib3 and not httpx (which the CLI uses): on the delivery's path the client is a third of
the round trip. Measured on this machine against the API (uvicorn with httptools and uvloop), the
same bundle ``PUT`` on a kept-alive connection cost 0.6 ms with urllib3's pool and 1.3 ms with an
``httpx.Client`` (its request and response models, its transport layers and h11 in pure Python);
urllib3 writes through the standard library's ``http.client``, whose parser is C. Its pool is
thread-safe: a worker's job threads share it.

Errors (raised here, judged by :mod:`worker.remote_files`):

- :class:`Transient`: the API could not be reached, timed out, or answered 5xx or 429 (try again);
- :class:`AttemptOver`: the API refuses the job's token, 401/403/409 (this attempt no longer runs);
- :class:`Refused`: any other refusal, for good (a damaged local file, a malformed request).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import urllib3
from urllib3.exceptions import HTTPError as WireError

from pipelines.files.intake import DigestMismatch, Intake, IntakeError

MAX_FETCH_BYTES = 8 * 1024**3
TIMEOUT = urllib3.Timeout(connect=5.0, read=30.0)
POOL_SIZE = 16  # connections kept alive; a busier worker opens more and drops them after use
BUNDLE_TYPE = "application/x-sandpit-bundle"


class Transient(Exception):
    """The API could not be reached or answered 5xx/429: try again later."""


class AttemptOver(Exception):
    """The API refuses the token (401/403/409): this attempt no longer runs."""


class Refused(Exception):
    """The API refused a request for good (a damaged local file, a bad request)."""


def judge(status: int, body: bytes, what: str) -> None:
    """Nothing for a 2xx; else the error the answer means.

    >>> judge(409, b'{"error": "job_not_running", "message": "ended"}', "uploading")
    Traceback (most recent call last):
    ...
    worker.file_requests.AttemptOver: uploading: job_not_running: ended
    """
    if status < 300:
        return
    if status >= 500 or status == 429:
        raise Transient(f"{what}: the API answered {status}")
    try:
        parsed = json.loads(body)
        detail = f"{parsed.get('error')}: {parsed.get('message')}"
    except (ValueError, AttributeError):
        detail = body[:200].decode("utf-8", "replace")
    if status in (401, 403, 409):
        raise AttemptOver(f"{what}: {detail}")
    raise Refused(f"{what}: the API refused it ({status} {detail})")


class FileRequests:
    """The API's job-file routes, with a job's token."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url.rstrip("/")
        # retries=False: the transport retries whole deliveries with its own back-off and outbox
        self.pool = urllib3.connection_from_url(self.api_url, maxsize=POOL_SIZE, block=False, timeout=TIMEOUT,
                                                retries=False)
        self.prefix = urllib3.util.parse_url(self.api_url).path or ""

    def close(self) -> None:
        self.pool.close()

    def _url(self, path: str) -> str:
        return self.prefix + path

    def put(self, path: str, token: str, body: bytes | BinaryIO, what: str, size: int | None = None,
            headers: Mapping[str, str] | None = None) -> bytes:
        """PUT ``body`` (bytes, or a file streamed with its ``size``); the answer's body."""
        sent = {"Authorization": f"Bearer {token}", **(headers or {})}
        if size is not None:
            sent["Content-Length"] = str(size)  # a file object is streamed, not chunked
        try:
            response = self.pool.urlopen("PUT", self._url(path), body=body, headers=sent, redirect=False)
        except WireError as exc:
            raise Transient(f"{what}: {exc}") from exc
        judge(response.status, response.data, what)
        return bytes(response.data)

    def download(self, job_id: str, token: str, sha256: str, cache: str | None, store: Path) -> bool:
        """Fetch ``sha256`` into the content-addressed ``store``, hashed as it arrives; False when
        the API has no such file for this job (404)."""
        what = f"fetching {sha256[:12]}"
        path = self._url(f"/api/v1/jobs/{job_id}/blobs/{sha256}") + (f"?cache={cache}" if cache else "")
        try:
            response = self.pool.urlopen("GET", path, headers={"Authorization": f"Bearer {token}"},
                                         preload_content=False, redirect=False)
        except WireError as exc:
            raise Transient(f"{what}: {exc}") from exc
        try:
            if response.status >= 300:
                answer = response.read(64 * 1024)  # an error's JSON: read whole, the connection stays usable
                if response.status == 404:
                    return False
                judge(response.status, answer, what)
            with Intake(store, sha256, MAX_FETCH_BYTES) as intake:
                for chunk in response.stream(1 << 20):
                    intake.write(chunk)
                intake.commit_blob()
            return True
        except BaseException as exc:
            response.close()  # what is left unread makes the connection useless: it is dropped
            if isinstance(exc, WireError):
                raise Transient(f"{what}: {exc}") from exc
            if isinstance(exc, DigestMismatch):
                raise Refused(f"the API sent other bytes than {sha256}: {exc}") from exc
            if isinstance(exc, IntakeError):
                raise Refused(f"{what}: {exc}") from exc
            raise
        finally:
            response.release_conn()
