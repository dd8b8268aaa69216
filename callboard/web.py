"""The HTTP ground every room's views stand on: the instance's Services, JSON errors, bearer-token checks,
and the pages' handler. Views of wallboard/, customers/, records/ and webhooks/ import these instead of
each other's private helpers; the `refusals` middleware (installed once, in app.py) turns a refused token
into its JSON answer wherever the check happens.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from callboard.assets import read_page
from callboard.auth import AuthRefused, Claims, claims_from_header
from callboard.services import SERVICES, Services

JSON_HEADERS = {"Cache-Control": "no-store"}


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def json_error(status: int, message: str, code: str | None = None) -> web.Response:
    """{"error": <English sentence>, "code": <machine word>} with the given status, never cached."""
    body: dict[str, Any] = {"error": message}
    if code:
        body["code"] = code
    return web.json_response(body, status=status, headers=JSON_HEADERS)


class Refused(Exception):
    """A view's request was refused before its work began; `refusals` answers with `response`."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


def claims(request: web.Request, *roles: str) -> Claims:
    """The bearer token's claims, or Refused (401 without a valid token, 403 for a role not in `roles`)."""
    try:
        return claims_from_header(services(request).secret, request.headers.get("Authorization", ""), roles)
    except AuthRefused as exc:
        raise Refused(json_error(exc.status, exc.message, exc.code)) from None


@web.middleware
async def refusals(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as refused:
        return refused.response


def page(name: str) -> Any:
    """A handler serving one page of static/, with the center's ui_language for its first paint."""
    async def handler(request: web.Request) -> web.StreamResponse:
        html = read_page(name)
        language = services(request).config.center.ui_language
        if language:  # the pages' fallback language, read before the first paint (validated as a BCP 47 tag)
            html = html.replace("<html ", f'<html data-ui-language="{language}" ', 1)
        # The token travels in the fragment and never reaches us; no-store keeps pages fresh after upgrades.
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    return handler
