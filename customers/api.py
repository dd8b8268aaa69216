"""HTTP API of the customer directory (DESIGN.md "Customers"): thin views over customers/repo.py.

Roles: agents and supervisors read, create, edit and add notes; only supervisors delete, import and export.
Every bad input is a 400 whose JSON `error` names the field; a database that is down or not migrated yet
is a 503 saying so — the rest of callboard (webhooks, presence, wallboard) never waits for these views.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from callboard.auth import AuthRefused, Claims, claims_from_header
from callboard.services import SERVICES, Services
from callboard.web import page
from customers import csvio, repo
from customers.model import FieldError, parse_customer, parse_note
from store.db import Database
from wallboard.messages import WireError, parse_json
from webhooks import events as webhook_events

log = logging.getLogger(__name__)

HEADERS = {"Cache-Control": "no-store"}
DB_TIMEOUT_S = 10.0  # a view gives up on a stuck database after this and answers 503
IMPORT_BATCH = 500  # rows per transaction: a failure loses at most one batch's work, and it is reported
MAX_QUERY = 200
EXPORT_CHUNK = 500
READERS = ("agent", "supervisor")

View = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Refusal(Exception):
    def __init__(self, status: int, message: str, code: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


def _error(status: int, message: str, code: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "code": code, **extra}, status=status, headers=HEADERS)


def _claims(request: web.Request, *roles: str) -> Claims:
    try:
        return claims_from_header(request.app[SERVICES].secret, request.headers.get("Authorization", ""), roles)
    except AuthRefused as exc:
        raise _Refusal(exc.status, exc.message, exc.code) from None


def _db(services: Services) -> Database:
    db = services.db
    if db is None:
        raise _Refusal(503, "this instance has no customer database", "no_database")
    if not db.migrated:
        raise _Refusal(503, "the customer database is not ready (unreachable at start-up; retrying)",
                       "database_unavailable")
    return db


def _guarded(view: View, timeout_s: float | None = DB_TIMEOUT_S) -> View:
    """Refusals become JSON errors; a database that fails or hangs becomes 503, never a hung request."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(timeout_s):
                return await view(request)
        except _Refusal as refusal:
            return _error(refusal.status, refusal.message, refusal.code, **refusal.extra)
        except FieldError as exc:
            return _error(400, str(exc), "bad_field", field=exc.field)
        except (OperationalError, PoolTimeoutError, OSError, TimeoutError) as exc:
            log.warning("customer directory: database unavailable in %s: %r", request.path, exc)
            return _error(503, "the customer database is unreachable; try again shortly", "database_unavailable")
        except DBAPIError as exc:
            if exc.connection_invalidated:
                return _error(503, "the customer database is unreachable; try again shortly", "database_unavailable")
            raise

    guarded.__name__ = view.__name__
    return guarded


async def _json_body(request: web.Request) -> Any:
    try:  # the one decoder of client JSON: bounded nesting, English errors (wallboard/messages.py)
        return parse_json(await request.read())
    except WireError as exc:
        raise FieldError("body", exc.message) from None


def _parse(services: Services, body: Any) -> Any:
    config = services.config
    return parse_customer(body, region=config.center.default_region,
                          agents=frozenset(a.id for a in config.agents), teams=frozenset(config.teams))


def _limit(request: web.Request, default: int = 20) -> int:
    raw = request.query.get("limit", "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FieldError("limit", f"{raw[:20]!r} is not a whole number") from None
    if not 1 <= value <= repo.MAX_SEARCH_LIMIT:
        raise FieldError("limit", f"must be between 1 and {repo.MAX_SEARCH_LIMIT}")
    return value


async def search_customers(request: web.Request) -> web.StreamResponse:
    _claims(request, *READERS)
    services = request.app[SERVICES]
    q = request.query.get("q", "")
    if len(q) > MAX_QUERY:
        raise FieldError("q", f"is longer than {MAX_QUERY} characters")
    limit = _limit(request)
    async with _db(services).connect() as conn:
        found = await repo.search(conn, q, region=services.config.center.default_region, limit=limit)
    return web.json_response({"customers": found}, headers=HEADERS)


async def create_customer(request: web.Request) -> web.StreamResponse:
    _claims(request, *READERS)
    services = request.app[SERVICES]
    fields = _parse(services, await _json_body(request))
    now = services.clock.now_ms()
    try:
        async with _db(services).begin() as conn:
            customer_id = await repo.create(conn, fields, now)
    except IntegrityError:
        raise FieldError("external_id", f"{fields.external_id!r} already belongs to another customer") from None
    async with _db(services).connect() as conn:
        customer = await repo.get(conn, customer_id)
    return web.json_response(customer, status=201, headers=HEADERS)


async def get_customer(request: web.Request) -> web.StreamResponse:
    _claims(request, *READERS)
    async with _db(request.app[SERVICES]).connect() as conn:
        customer = await repo.get(conn, request.match_info["id"])
    if customer is None:
        raise _Refusal(404, f"no customer {request.match_info['id'][:40]!r}", "not_found")
    return web.json_response(customer, headers=HEADERS)


async def replace_customer(request: web.Request) -> web.StreamResponse:
    _claims(request, *READERS)
    services = request.app[SERVICES]
    fields = _parse(services, await _json_body(request))
    customer_id = request.match_info["id"]
    try:
        async with _db(services).begin() as conn:
            found = await repo.replace(conn, customer_id, fields, services.clock.now_ms())
    except IntegrityError:
        raise FieldError("external_id", f"{fields.external_id!r} already belongs to another customer") from None
    if not found:
        raise _Refusal(404, f"no customer {customer_id[:40]!r}", "not_found")
    async with _db(services).connect() as conn:
        customer = await repo.get(conn, customer_id)
    return web.json_response(customer, headers=HEADERS)


async def delete_customer(request: web.Request) -> web.StreamResponse:
    _claims(request, "supervisor")
    customer_id = request.match_info["id"]
    async with _db(request.app[SERVICES]).begin() as conn:
        found = await repo.remove(conn, customer_id)
    if not found:
        raise _Refusal(404, f"no customer {customer_id[:40]!r}", "not_found")
    return web.Response(status=204, headers=HEADERS)


async def add_note(request: web.Request) -> web.StreamResponse:
    claims = _claims(request, *READERS)
    services = request.app[SERVICES]
    text, call_sid = parse_note(await _json_body(request))
    customer_id = request.match_info["id"]
    async with _db(services).begin() as conn:
        note = await repo.add_note(conn, customer_id, claims.sub, text, call_sid, services.clock.now_ms())
    if note is None:
        raise _Refusal(404, f"no customer {customer_id[:40]!r}", "not_found")
    await webhook_events.note_added(services.outbox, customer_id, note)
    return web.json_response(note, status=201, headers=HEADERS)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing (413) past `limit` without reading it all (the app-wide cap is 64 KiB)."""
    if request.content_length is not None and request.content_length > limit:
        raise _Refusal(413, f"the file is larger than {limit // (1024 * 1024)} MiB: split it", "too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _Refusal(413, f"the file is larger than {limit // (1024 * 1024)} MiB: split it", "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def import_customers(request: web.Request) -> web.StreamResponse:
    """CSV in the body (text/csv), or a multipart form's first file. Upsert by id, else by external_id."""
    _claims(request, "supervisor")
    services = request.app[SERVICES]
    db = _db(services)
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        part = await reader.next()
        while part is not None and not getattr(part, "filename", None):
            part = await reader.next()
        if part is None:
            raise FieldError("file", "the form has no file")
        data = bytearray()
        while chunk := await part.read_chunk(64 * 1024):  # type: ignore[union-attr]
            data += chunk
            if len(data) > csvio.MAX_IMPORT_BYTES:
                raise _Refusal(413, "the file is larger than 32 MiB: split it", "too_large")
        raw = bytes(data)
    else:
        raw = await _read_limited(request, csvio.MAX_IMPORT_BYTES)
    try:
        text, encoding = csvio.decode(raw)
        rows = list(csvio.read_rows(text))
    except csvio.CsvError as exc:
        raise FieldError("file", str(exc)) from None
    result = await run_import(db, services, rows)
    result["encoding"] = encoding
    log.info("customer import: %d created, %d updated, %d bad lines (%s)", result["created"], result["updated"],
             len(result["errors"]), encoding)
    return web.json_response(result, headers=HEADERS)


async def run_import(db: Database, services: Services, rows: list[csvio.Row]) -> dict[str, Any]:
    created = updated = 0
    errors: list[dict[str, Any]] = []
    bad = 0

    def report(line: int, message: str) -> None:
        nonlocal bad
        bad += 1
        if len(errors) < csvio.MAX_REPORTED_ERRORS:
            errors.append({"line": line, "message": message})

    for start in range(0, len(rows), IMPORT_BATCH):
        async with db.begin() as conn:
            for row in rows[start:start + IMPORT_BATCH]:
                if "__error__" in row.values:
                    report(row.line, row.values["__error__"])
                    continue
                try:
                    fields = _parse(services, csvio.fields_body(row.values))
                except FieldError as exc:
                    message = str(exc)
                    if exc.field.startswith("phones["):  # one cell holds them all: say which number
                        message = message.replace(exc.field, "phones", 1)
                    report(row.line, message)
                    continue
                now = services.clock.now_ms()
                given_id = (row.values.get("id") or "").strip()
                target = None
                if given_id:
                    if not await repo.exists(conn, given_id):
                        report(row.line, f"id: no customer {given_id[:40]!r} (leave id empty to create one)")
                        continue
                    target = given_id
                elif fields.external_id:
                    target = await repo.id_by_external_id(conn, fields.external_id)
                try:
                    async with conn.begin_nested():
                        if target:
                            await repo.replace(conn, target, fields, now)
                        else:
                            await repo.create(conn, fields, now)
                except IntegrityError:
                    report(row.line, f"external_id: {fields.external_id!r} already belongs to another customer")
                    continue
                if target:
                    updated += 1
                else:
                    created += 1
    if bad > len(errors):
        errors.append({"line": None, "message": f"{bad - len(errors)} more bad lines not listed"})
    return {"created": created, "updated": updated, "errors": errors}


async def export_customers(request: web.Request) -> web.StreamResponse:
    """Every customer as CSV, UTF-8 with BOM, streamed in chunks (memory stays flat at 100,000 rows)."""
    _claims(request, "supervisor")
    db = _db(request.app[SERVICES])
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": 'attachment; filename="customers.csv"', **HEADERS})
    async with db.connect() as conn:
        first = True
        buffer: list[str] = [csvio.header_line()]
        async for customer in repo.stream_all(conn):
            buffer.append(csvio.customer_line(customer))
            if len(buffer) >= EXPORT_CHUNK:
                if first:
                    await response.prepare(request)
                    first = False
                await response.write("".join(buffer).encode("utf-8"))
                buffer = []
        if first:
            await response.prepare(request)
        if buffer:
            await response.write("".join(buffer).encode("utf-8"))
    await response.write_eof()
    return response


def routes() -> list[web.AbstractRouteDef]:
    return [
        web.get("/customers", page("customers.html")),  # the same page handler as the others (ui_language)
        web.get("/api/customers", _guarded(search_customers)),
        web.post("/api/customers", _guarded(create_customer)),
        # import and export take as long as their size needs (a 100,000-row file is a few seconds)
        web.get("/api/customers.csv", _guarded(export_customers, None)),
        web.post("/api/customers/import", _guarded(import_customers, None)),
        web.get("/api/customers/{id}", _guarded(get_customer)),
        web.put("/api/customers/{id}", _guarded(replace_customer)),
        web.delete("/api/customers/{id}", _guarded(delete_customer)),
        web.post("/api/customers/{id}/notes", _guarded(add_note)),
    ]

