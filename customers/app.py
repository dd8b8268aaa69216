"""Wiring of the directory into one instance: its routes, and the caller lookup hooked into the call flow."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from callboard.services import SERVICES
from customers import api
from customers.lookup import CallerLookup

CALLER_LOOKUP = web.AppKey("caller_lookup", CallerLookup)


def setup(app: web.Application) -> None:
    services = app[SERVICES]
    lookup = CallerLookup(services.db, services.redis, services.presence, services.config, services.clock)
    app[CALLER_LOOKUP] = lookup
    services.callflow.caller_lookup = lookup.start
    app.add_routes(api.routes())

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await lookup.stop()

    app.cleanup_ctx.append(lifecycle)
