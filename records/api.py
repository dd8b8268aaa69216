"""Calls and reports API and the /reports page. Thin views over records/queries.py and records/reports.py."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from callboard.services import SERVICES, Services
from callboard.web import JSON_HEADERS, page
from callboard.web import claims as _claims
from callboard.web import json_error as _json_error
from records import csvout, queries, reports

log = logging.getLogger("callboard.records")
View = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _database_errors(view: View) -> View:
    """The records database away: 503 with an English reason (the real-time service is unaffected)."""
    @functools.wraps(view)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await view(request)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning("records API %s: database unavailable (%s)", request.path, type(exc).__name__)
            return _json_error(503, "the records database is not reachable right now; try again shortly",
                               "database_unavailable")
    return wrapped


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _bad(exc: queries.BadQuery) -> web.Response:
    return _json_error(400, str(exc), "bad_request")


@_database_errors
async def list_calls(request: web.Request) -> web.StreamResponse:
    _claims(request, "supervisor")
    s = _services(request)
    try:
        flt = queries.parse_filter(request.query, s.config)
        limit = queries.parse_limit(request.query.get("limit"))
        calls, next_cursor = await queries.list_calls(s.db, flt, limit, request.query.get("cursor") or None)
    except queries.BadQuery as exc:
        return _bad(exc)
    return web.json_response({"calls": calls, "next_cursor": next_cursor}, headers=JSON_HEADERS)


@_database_errors
async def calls_csv(request: web.Request) -> web.StreamResponse:
    """Streamed page by page: a month of calls never sits in memory."""
    _claims(request, "supervisor")
    s = _services(request)
    try:
        flt = queries.parse_filter(request.query, s.config)
    except queries.BadQuery as exc:
        return _bad(exc)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
        "Content-Disposition": 'attachment; filename="calls.csv"'})
    await resp.prepare(request)
    lines = csvout.lines((), s.config.center.timezone)
    await resp.write(next(iter(lines)).encode("utf-8"))
    chunk: list[str] = []
    async for record in queries.iter_calls(s.db, flt):
        chunk.append(csvout.line(record, s.config.center.timezone))
        if len(chunk) >= 200:
            await resp.write("".join(chunk).encode("utf-8"))
            chunk.clear()
    if chunk:
        await resp.write("".join(chunk).encode("utf-8"))
    await resp.write_eof()
    return resp


@_database_errors
async def get_call(request: web.Request) -> web.StreamResponse:
    claims = _claims(request, "supervisor", "agent")
    s = _services(request)
    sid = request.match_info["call_sid"]
    record = await queries.get_call(s.db, sid) if len(sid) <= 64 else None
    if record is None:
        return _json_error(404, f"no call record {sid!r}", "not_found")
    if claims.role == "agent" and claims.sub != record.get("agent") \
            and claims.sub not in {t.get("to") for t in record.get("transfers") or []}:
        return _json_error(403, "agents may only read the calls they took", "forbidden")
    return web.json_response(record, headers=JSON_HEADERS)


@_database_errors
async def intraday(request: web.Request) -> web.StreamResponse:
    _claims(request, "supervisor")
    s = _services(request)
    try:
        day = reports.parse_date(request.query.get("date"), s.config, s.clock.now_ms())
        step = request.query.get("step_min", "15")
        if not step.isdigit():
            raise queries.BadQuery("step_min", "step_min must be a whole number of minutes")
        body = await reports.intraday(s.db, s.config, day, request.query.get("queue") or None, int(step))
    except queries.BadQuery as exc:
        return _bad(exc)
    return web.json_response(body, headers=JSON_HEADERS)


@_database_errors
async def agents(request: web.Request) -> web.StreamResponse:
    _claims(request, "supervisor")
    s = _services(request)
    try:
        day = reports.parse_date(request.query.get("date"), s.config, s.clock.now_ms())
    except queries.BadQuery as exc:
        return _bad(exc)
    return web.json_response(await reports.agents_day(s.db, s.config, day, s.clock.now_ms()), headers=JSON_HEADERS)


def routes() -> list[web.AbstractRouteDef]:
    return [
        web.get("/reports", page("reports.html")),
        web.get("/api/calls", list_calls),
        web.get("/api/calls.csv", calls_csv),
        web.get("/api/calls/{call_sid}", get_call),
        web.get("/api/reports/intraday", intraday),
        web.get("/api/reports/agents", agents),
    ]
