"""UI fixtures: the API fixtures (real redis-server, SQLite file and PostgreSQL, uvicorn on
loopback) for the HTTP-level tests; the browser tests start the whole service themselves."""

from tests.integration.api.conftest import anon, client, engine, live, rds, redis_url, settings  # noqa: F401
from tests.integration.service.conftest import redis, service  # noqa: F401
