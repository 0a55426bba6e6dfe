"""Running the API: ``serve(settings, host, port)`` (uvicorn), and ``python -m api``.

``serve`` migrates the database first (idempotent), so a fresh state dir just works.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import uvicorn

from api.app import create_app
from api.settings import ApiSettings, SettingsError
from pipelines.store.db import migrate

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def serve(
    settings: ApiSettings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, log_level: str = "info"
) -> None:
    """Migrate the database and serve the API until interrupted (SIGINT/SIGTERM)."""
    if settings.database_url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.database_url)
    config = uvicorn.Config(create_app(settings, settle=True), host=host, port=port, log_level=log_level,
                            proxy_headers=False, server_header=False)
    uvicorn.Server(config).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description="Serve the sandpit REST API.")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        settings = ApiSettings.from_env(os.environ)
    except SettingsError as exc:
        print(f"sandpit api: {exc}", file=sys.stderr)
        return 2
    if not settings.tokens:
        print("sandpit api: warning: SANDPIT_API_TOKENS is empty; every /api/v1 request will be refused",
              file=sys.stderr)
    if settings.trace_file is not None:
        from pipelines import trace

        trace.configure(settings.trace_file)
    serve(settings, args.host, args.port, log_level=args.log_level)
    return 0
