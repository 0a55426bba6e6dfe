"""What a route may ask for (FastAPI dependencies): settings, engine, publisher, Redis, caller.

Everything is built once per process by the app's lifespan (see :mod:`api.app`) and read from
``app.state`` here, so a route never builds a connection itself and tests inject their own.
The dependencies that only look something up are ``async``: FastAPI runs a plain ``def``
dependency in its thread pool, a thread hand-off per dependency on every request.
Routes that only read may take a ``SessionDep``; routes that change state use the engine and
commit before they publish (see :mod:`api.runs`), which a request-scoped session cannot promise.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Annotated, TypeVar, cast

import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.errors import NotAuthenticated
from api.job_files import BundleTemporaries
from api.publish import Publisher
from api.settings import ApiSettings, ApiToken
from pipelines.store.db import read_scope


@dataclass(slots=True)
class Services:
    """The process-wide objects every request shares (made in the lifespan, closed at exit)."""

    settings: ApiSettings
    engine: Engine
    publisher: Publisher
    redis: aioredis.Redis
    temporaries: BundleTemporaries  # the bundles' temporaries made ahead (api/job_files.py)


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_settings(services: Annotated[Services, Depends(get_services)]) -> ApiSettings:
    return services.settings


async def get_engine(services: Annotated[Services, Depends(get_services)]) -> Engine:
    return services.engine


async def get_publisher(services: Annotated[Services, Depends(get_services)]) -> Publisher:
    return services.publisher


async def get_redis(services: Annotated[Services, Depends(get_services)]) -> aioredis.Redis:
    return services.redis


def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    """A read-only session (see ``read_scope``): routes that change state use the engine."""
    with read_scope(engine) as session:
        yield session


T = TypeVar("T")


async def resolved(value: Awaitable[T] | T) -> T:
    """The result of an asyncio Redis call (redis-py types them as "awaitable or value")."""
    if inspect.isawaitable(value):
        return await cast(Awaitable[T], value)
    return value


_bearer = HTTPBearer(auto_error=False, description="a token listed in SANDPIT_API_TOKENS")


async def authenticate(
    settings: Annotated[ApiSettings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiToken:
    """The configured token the caller presented (compared in constant time), or 401."""
    if credentials is None:
        raise NotAuthenticated("send `Authorization: Bearer <token>`")
    offered = credentials.credentials.encode()
    found: ApiToken | None = None
    for token in settings.tokens:  # no early exit: the time taken does not say which token matched
        if hmac.compare_digest(offered, token.secret.encode()):
            found = token
    if found is None:
        raise NotAuthenticated("the bearer token is not valid")
    return found


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
SessionDep = Annotated[Session, Depends(get_session)]
CallerDep = Annotated[ApiToken, Depends(authenticate)]
