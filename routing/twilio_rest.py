"""Twilio REST calls through the `twilio` package, off the event loop's critical path and retried.

One client per instance, on the package's asyncio HTTP client (aiohttp), so a slow Twilio never blocks the
loop. `TWILIO_API_URL` replaces the API domain's base URL (`client.api.base_url`), which is how tests and
the demo point it at the emulator in simulator/twilio_api.py. Retries: 429 / Twilio code 20429, any 5xx,
connection errors and timeouts, with exponential backoff and jitter; any other 4xx is the request's own
fault and is raised at once (retrying cannot fix it). Other rooms (the conference bridge) reuse `call()`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_API_URL = "https://api.twilio.com"
ATTEMPTS = 5  # about 0.2 + 0.4 + 0.8 + 1.6 s of backoff: a 429 burst at Twilio clears in well under that
BASE_DELAY_S = 0.2
MAX_DELAY_S = 5.0
TIMEOUT_S = 10.0  # per attempt; Twilio's API answers in well under a second when it is healthy
RATE_LIMITED = 20429


class RestUnavailable(Exception):
    """Twilio's REST API could not be reached (or kept failing) after every retry."""


class RestNotConfigured(Exception):
    """No Twilio REST credentials: set TWILIO_ACCOUNT_SID and an auth token or API key/secret."""


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a Twilio failure: TwilioRestException has it; a list page's TwilioException
    carries the response as its second argument."""
    if isinstance(exc, TwilioRestException):
        return exc.status
    if isinstance(exc, TwilioException) and len(exc.args) > 1:
        return getattr(exc.args[1], "status_code", None)
    return None


def retryable(exc: BaseException) -> bool:
    """Is this failure worth another attempt? Rate limits, server errors, connection errors, timeouts."""
    if isinstance(exc, TwilioRestException) and exc.code == RATE_LIMITED:
        return True
    if isinstance(exc, TwilioException):
        status = status_of(exc)
        return status is not None and (status == 429 or status >= 500)
    return isinstance(exc, aiohttp.ClientError | TimeoutError | ConnectionError)


def backoff_s(attempt: int, base_s: float = BASE_DELAY_S, cap_s: float = MAX_DELAY_S) -> float:
    """Full-jitter exponential backoff before retry number `attempt` (1-based)."""
    return random.uniform(base_s, min(cap_s, base_s * 2 ** attempt))


class TwilioRest:
    """The instance's Twilio REST client; create it inside the running loop, close it at shutdown."""

    def __init__(self, *, account_sid: str | None, auth_token: str | None = None, api_key: str | None = None,
                 api_secret: str | None = None, api_url: str = DEFAULT_API_URL, attempts: int = ATTEMPTS,
                 base_delay_s: float = BASE_DELAY_S, timeout_s: float = TIMEOUT_S) -> None:
        self.account_sid = account_sid
        self.attempts = max(1, attempts)
        self.base_delay_s = base_delay_s
        self.timeout_s = timeout_s
        self.api_url = api_url.rstrip("/")
        self.retries = 0  # how many attempts were retried, for logs and tests
        self._queue_sids: dict[str, str] = {}
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Client | None = None
        if account_sid and api_key and api_secret:
            self._credentials: tuple[str, str] | None = (api_key, api_secret)
        elif account_sid and auth_token:
            self._credentials = (account_sid, auth_token)
        else:
            self._credentials = None

    @classmethod
    def from_settings(cls, settings: Any) -> TwilioRest:
        return cls(account_sid=settings.twilio_account_sid, auth_token=settings.twilio_auth_token,
                   api_key=settings.twilio_api_key, api_secret=settings.twilio_api_secret,
                   api_url=getattr(settings, "twilio_api_url", None) or DEFAULT_API_URL)

    @property
    def configured(self) -> bool:
        return self._credentials is not None

    @property
    def client(self) -> Client:
        if self._credentials is None:
            raise RestNotConfigured("Twilio REST is not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN "
                                    "(or TWILIO_API_KEY and TWILIO_API_SECRET)")
        if self._client is None:
            self._http = AsyncTwilioHttpClient()
            username, password = self._credentials
            self._client = Client(username, password, self.account_sid, http_client=self._http)
            self._client.api.base_url = self.api_url
        return self._client

    def account(self) -> Any:
        """The 2010-04-01 account resource (calls, queues, conferences ...)."""
        return self.client.api.v2010.accounts(self.account_sid)

    async def call(self, what: str, request: Callable[[Client], Awaitable[T]]) -> T:
        """Run one REST request with retries; raises RestUnavailable when every attempt failed."""
        client = self.client
        last: BaseException | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await request(client)
            except asyncio.CancelledError:
                raise
            except (TwilioException, aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                if not retryable(exc):
                    raise
                last = exc
                if attempt == self.attempts:
                    break
                self.retries += 1
                delay = backoff_s(attempt, self.base_delay_s)
                log.warning("Twilio REST %s failed (%s); retry %d in %.2f s", what, _describe(exc), attempt, delay)
                await asyncio.sleep(delay)
        raise RestUnavailable(f"Twilio REST {what} failed after {self.attempts} attempts: {_describe(last)}")

    async def queue_sid(self, name: str) -> str:
        """The QueueSid of a queue by friendly name (cached; learned from wait requests or a REST lookup)."""
        sid = self._queue_sids.get(name)
        if sid:
            return sid

        async def lookup(client: Client) -> str | None:
            queues = await self.account().queues.list_async(page_size=1000)
            return next((q.sid for q in queues if q.friendly_name == name), None)

        found = await self.call(f"queue lookup {name}", lookup)
        if not found:
            raise RestUnavailable(f"Twilio has no queue named {name!r} (no caller has entered it yet?)")
        self._queue_sids[name] = found
        return found

    def learn_queue_sid(self, name: str, sid: str) -> None:
        """A `wait` request carried the QueueSid: no lookup needed later."""
        if sid.startswith("QU"):
            self._queue_sids[name] = sid

    async def dequeue(self, queue: str, call_sid: str, url: str) -> None:
        """Take `call_sid` out of `queue` and send it to `url` (the Queue Members resource)."""
        queue_sid = await self.queue_sid(queue)

        async def request(client: Client) -> Any:
            return await self.account().queues(queue_sid).members(call_sid).update_async(url=url, method="POST")

        await self.call(f"dequeue {call_sid}", request)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
            self._client = None


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, TwilioRestException):
        return f"HTTP {exc.status}, code {exc.code}: {exc.msg}"
    if isinstance(exc, TwilioException):
        return f"HTTP {status_of(exc)}: {exc.args[0] if exc.args else exc}"
    return repr(exc)
