"""Twilio REST for the controls, through routing's client (routing/twilio_rest.py): one `twilio` package client
per instance and room, async, pointed at TWILIO_API_URL, retrying 429 (20429), 5xx and timeouts with backoff.

Every control is one Twilio request; this module is the only place the softphone makes them and turns
Twilio's answers into English errors with the HTTP status the control answers: the request's own fault
(4xx) is 409 (404 stays 404), Twilio unreachable after every retry is 502, no credentials 503.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from callboard.services import Settings
from routing.twilio_rest import RestNotConfigured, RestUnavailable
from routing.twilio_rest import TwilioRest as RoutingRest

log = logging.getLogger(__name__)

T = TypeVar("T")


class RestError(Exception):
    """A Twilio request that failed; `status` is the HTTP status to answer, the text is English."""

    def __init__(self, status: int, message: str, twilio_code: int | None = None) -> None:
        super().__init__(message)
        self.status, self.twilio_code = status, twilio_code


class TwilioRest:
    """The REST requests the controls make (all through twilio's Client)."""

    def __init__(self, settings: Settings, shared: RoutingRest | None = None) -> None:
        # the instance's one client (Services.twilio_rest) when the app made one; else our own
        self._own = shared is None
        self._rest = shared if shared is not None else RoutingRest.from_settings(settings)
        self.account_sid = settings.twilio_account_sid

    @property
    def retries(self) -> int:
        return self._rest.retries

    async def close(self) -> None:
        if self._own:  # the shared client is closed by the app that made it
            await self._rest.close()

    async def _call(self, what: str, make: Callable[[Client], Awaitable[T]]) -> T:
        try:
            return await self._rest.call(what, make)
        except RestNotConfigured:
            raise RestError(503, "Twilio REST is not configured on this server (TWILIO_ACCOUNT_SID with "
                                 "TWILIO_API_KEY/TWILIO_API_SECRET or TWILIO_AUTH_TOKEN)") from None
        except RestUnavailable as exc:
            log.warning("Twilio %s: %s", what, exc)
            raise RestError(502, f"Twilio did not accept the request to {what} after retries: {exc}") from None
        except TwilioRestException as exc:
            log.warning("Twilio %s failed: HTTP %s code %s: %s", what, exc.status, exc.code, exc.msg)
            status = 404 if exc.status == 404 else 409
            raise RestError(status, f"Twilio refused to {what}: {exc.msg} (code {exc.code})", exc.code) from None

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
