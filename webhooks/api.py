"""The deliveries API (supervisor): read the delivery log, retry a delivery. Thin views over the Outbox."""

from __future__ import annotations

from aiohttp import web

from callboard.services import SERVICES
from callboard.web import JSON_HEADERS
from callboard.web import claims as _claims
from callboard.web import json_error as _json_error

STATUSES = ("pending", "delivered", "failed")
MAX_LIMIT = 500


async def list_deliveries(request: web.Request) -> web.StreamResponse:
    _claims(request, "supervisor")
    outbox = request.app[SERVICES].outbox
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        return _json_error(400, f"status must be one of {', '.join(STATUSES)}", "bad_request")
    raw_limit = request.query.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        return _json_error(400, f"limit must be a whole number from 1 to {MAX_LIMIT}", "bad_request")
    if outbox is None:
        return web.json_response({"endpoints": [], "deliveries": []}, headers=JSON_HEADERS)
    deliveries = await outbox.deliveries(status, int(raw_limit))
    endpoints = [{"name": e.name, "url": e.url, "events": list(e.events),
                  "problem": outbox.secret_problems.get(e.name)} for e in outbox.endpoints]
    return web.json_response({"endpoints": endpoints, "deliveries": deliveries}, headers=JSON_HEADERS)


async def retry_delivery(request: web.Request) -> web.StreamResponse:
    _claims(request, "supervisor")
    outbox = request.app[SERVICES].outbox
    delivery_id = request.match_info["delivery_id"]
    if outbox is None or len(delivery_id) > 200:
        return _json_error(404, f"no delivery {delivery_id!r}", "not_found")
    before = await outbox.retry(delivery_id)
    if not before:
        return _json_error(404, f"no delivery {delivery_id!r}", "not_found")
    if before == "delivered":
        return _json_error(409, "that delivery was already delivered", "already_delivered")
    return web.json_response(await outbox.delivery(delivery_id), status=202, headers=JSON_HEADERS)


def routes() -> list[web.AbstractRouteDef]:
    return [
        web.get("/api/webhooks/deliveries", list_deliveries),
        web.post("/api/webhooks/deliveries/{delivery_id}/retry", retry_delivery),
    ]
