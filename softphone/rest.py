"""Twilio REST for the controls: one `twilio` package client per instance, async, pointed at TWILIO_API_URL.

Every control is one Twilio request; this module is the only place that makes them, so the base URL (an
emulator on loopback in the tests and the demo), the credentials and the error translation live here.
The package's async HTTP client (aiohttp) keeps the event loop free; 429 (20429) and 5xx are retried with
backoff by us, a bounded number of times, because a control is a person waiting on a button.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from callboard.services import Settings

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.twilio.com"
REQUEST_TIMEOUT_S = 10.0  # Twilio answers controls in well under a second; a hung request must not hang the UI
RETRY_PAUSES_S = (0.2, 0.6, 1.5)  # 429/5xx: retried this many times, after these pauses

T = TypeVar("T")


class RestError(Exception):
    """A Twilio request that failed; `status` is the HTTP status to answer, the text is English."""

    def __init__(self, status: int, message: str, twilio_code: int | None = None) -> None:
        super().__init__(message)
        self.status, self.twilio_code = status, twilio_code


class TwilioRest:
    """The REST requests the controls make (all through twilio's Client)."""

    def __init__(self, settings: Settings) -> None:
        self.account_sid = settings.twilio_account_sid
        self.configured = bool(settings.twilio_account_sid and (
            (settings.twilio_api_key and settings.twilio_api_secret) or settings.twilio_auth_token))
        self._client: Client | None = None
        self._settings = settings

    def _get(self) -> Client:
        if not self.configured:
            raise RestError(503, "Twilio REST is not configured on this server (TWILIO_ACCOUNT_SID with "
                                 "TWILIO_API_KEY/TWILIO_API_SECRET or TWILIO_AUTH_TOKEN)")
        if self._client is None:
            s = self._settings
            http = AsyncTwilioHttpClient(timeout=REQUEST_TIMEOUT_S)
            if s.twilio_api_key and s.twilio_api_secret:
                client = Client(s.twilio_api_key, s.twilio_api_secret, s.twilio_account_sid, http_client=http)
            else:
                client = Client(s.twilio_account_sid, s.twilio_auth_token, http_client=http)
            # The package has no base-URL option; its API domain keeps one, which we point at TWILIO_API_URL.
            client.api.base_url = (getattr(s, "twilio_api_url", None) or DEFAULT_API_URL).rstrip("/")
            self._client = client
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            http = self._client.http_client
            session = getattr(http, "session", None)
            if session is not None:
                await session.close()
            self._client = None

    async def _call(self, what: str, make: Callable[[Client], Awaitable[T]]) -> T:
        client = self._get()
        for attempt in range(len(RETRY_PAUSES_S) + 1):
            try:
                return await make(client)
            except TwilioRestException as exc:
                retryable = exc.status == 429 or exc.status >= 500
                if retryable and attempt < len(RETRY_PAUSES_S):
                    log.warning("Twilio %s: HTTP %s (code %s), retrying", what, exc.status, exc.code)
                    await asyncio.sleep(RETRY_PAUSES_S[attempt])
                    continue
                log.warning("Twilio %s failed: HTTP %s code %s: %s", what, exc.status, exc.code, exc.msg)
                status = 404 if exc.status == 404 else 409 if exc.status in (400, 409) else 502
                raise RestError(status, f"Twilio refused to {what}: {exc.msg} (code {exc.code})", exc.code) from None
            except (TimeoutError, OSError) as exc:
                if attempt < len(RETRY_PAUSES_S):
                    await asyncio.sleep(RETRY_PAUSES_S[attempt])
                    continue
                raise RestError(502, f"Twilio did not answer the request to {what} ({type(exc).__name__})") from None
        raise AssertionError("unreachable")

    def _conf(self, client: Client, conference: str) -> Any:
        return client.api.v2010.accounts(self.account_sid).conferences(conference)

    # -- calls -------------------------------------------------------------------------------------------

    async def redirect_call(self, call_sid: str, url: str) -> None:
        """Calls update Url: the call leaves what it is doing (a queue) and runs the TwiML at url."""
        await self._call("redirect the call", lambda c: c.api.v2010.accounts(self.account_sid).calls(call_sid)
                         .update_async(url=url, method="POST"))

    async def complete_call(self, call_sid: str) -> None:
        """Calls update Status=completed: hang up."""
        await self._call("hang up the call", lambda c: c.api.v2010.accounts(self.account_sid).calls(call_sid)
                         .update_async(status="completed"))

    # -- conference participants -------------------------------------------------------------------------

    async def add_participant(self, conference: str, *, to: str, from_: str, status_callback: str, region: str,
                              conference_status_callback: str, **options: Any) -> str:
        """Participants create: ring `to` (client:<identity>) into the conference; returns its CallSid.

        The region and the conference status callback matter when this participant is the first (Twilio
        creates the conference then): the media stays in the center's region either way.
        """
        participant = await self._call("add a participant", lambda c: self._conf(c, conference).participants.create_async(
            from_=from_, to=to, status_callback=status_callback, status_callback_method="POST",
            status_callback_event=["initiated", "ringing", "answered", "completed"], region=region,
            conference_status_callback=conference_status_callback, conference_status_callback_method="POST",
            conference_status_callback_event=["join", "leave", "hold"], **options))
        return str(participant.call_sid)

    async def update_participant(self, conference: str, call_sid: str, **changes: Any) -> None:
        await self._call("update a participant", lambda c: self._conf(c, conference).participants(call_sid)
                         .update_async(**changes))

    async def remove_participant(self, conference: str, call_sid: str) -> None:
        await self._call("remove a participant", lambda c: self._conf(c, conference).participants(call_sid).delete_async())
