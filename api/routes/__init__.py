"""One router per resource; each route parses its input, calls one function, returns its result.

:func:`answer_head` gives a router's GET routes a HEAD twin: Starlette's own routes answer HEAD
wherever they answer GET (RFC 9110 asks it of every GET resource), FastAPI's do not, and load
balancers and uptime checks probe with HEAD (``HEAD /healthz`` answered 405).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute


def answer_head(router: APIRouter, *, skip: tuple[str, ...] = ()) -> APIRouter:
    """Add a HEAD route (same endpoint, headers only, not in the OpenAPI document) for every GET
    route of ``router`` whose path is not in ``skip``; returns ``router``."""
    for route in list(router.routes):
        if not isinstance(route, APIRoute) or "GET" not in (route.methods or ()) or route.path in skip:
            continue
        router.add_api_route(
            route.path.removeprefix(router.prefix),  # add_api_route puts the prefix back
            route.endpoint,
            methods=["HEAD"],
            response_class=route.response_class,
            status_code=route.status_code,
            include_in_schema=False,
            name=f"{route.name}_head",
        )
    return router
