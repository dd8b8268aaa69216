"""A signed fake Twilio for tests, the simulator and demos: posts webhooks exactly as Twilio would sign them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from callflow.flow import BASE_PATH
from callflow.signature import SIGNATURE_HEADER, sign


class FakeTwilio:
    """Posts form-encoded, signed requests to /twilio/voice/<route> through an aiohttp test client.

    `public_url` is the base Twilio believes it calls (it signs PUBLIC_URL + path + query); None signs the
    test server's own URL.
    """

    def __init__(self, client: Any, auth_token: str | None, public_url: str | None = None) -> None:
        self.client = client
        self.auth_token = auth_token
        self.public_url = public_url.rstrip("/") if public_url else None

    def url_for(self, route: str, query: Mapping[str, Any] | None = None) -> tuple[str, str]:
        """(path with query as requested, the absolute URL Twilio signs)."""
        path = BASE_PATH + route + (f"?{urlencode(query)}" if query else "")
        base = self.public_url or str(self.client.make_url("")).rstrip("/")
        return path, base + path

    async def post(self, route: str, params: Mapping[str, str], query: Mapping[str, Any] | None = None,
                   *, signature: str | None = "auto", headers: Mapping[str, str] | None = None) -> tuple[int, str]:
        path, signed = self.url_for(route, query)
        all_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        if signature == "auto" and self.auth_token:
            all_headers[SIGNATURE_HEADER] = sign(self.auth_token, signed, params)
        elif signature not in (None, "auto"):
            all_headers[SIGNATURE_HEADER] = signature
        resp = await self.client.post(path, data=urlencode(params), headers=all_headers)
        return resp.status, await resp.text()
