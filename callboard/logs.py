"""Logging: one line per event, as text or JSON. Secrets are never formatted into messages by our code;
the filter below is a second line of defence that masks any known secret value that slips into a record.

It also covers what other code logs, which does not know our secrets: aiohttp's own loggers quote the
first ~100 bytes of an over-long or malformed request line or header (a valid X-Twilio-Signature, or
`Bearer eyJ...` — a JWT's header and part of its payload), and any library may print a bearer token or a
JWT. Those records lose the quoted request content, and bearer tokens and JWTs are masked wherever they
appear, whether or not their secret is known here.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

# Credentials recognizable by their shape, masked even when this process does not know their secret.
_CREDENTIAL_PATTERNS = (
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/-]{16,}=*"), r"\1\2[redacted]"),  # not "Bearer token missing"
    (re.compile(r"eyJ[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*){0,2}"), "[redacted]"),  # a JWT: base64 of '{"'
    (re.compile(r"(?i)(x-twilio-signature['\"]?\s*[:=,]\s*['\"]?)[A-Za-z0-9+/=]+"), r"\1[redacted]"),
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)  # exc_text: already redacted
        return json.dumps(out, ensure_ascii=False)


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        # longest first, so a secret that contains another is masked whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def _redact(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "[redacted]")
        for pattern, replacement in _CREDENTIAL_PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format/args pair: the handler's emit reports it (handleError);
            return True    # raising here would turn a log call into the caller's exception (an HTTP 500)
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # A client's malformed or oversized request (aiohttp answers it 400 itself): the exception's text
            # quotes the raw request, so it is replaced by its kind; one warning line, no traceback.
            message = f"{message}: {type(exc).__name__} (HTTP {exc.code}); the request's content is not logged"
            record.msg, record.args = message, None
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        redacted = self._redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:  # tracebacks can quote a secret too
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


def setup_logging(fmt: str = "text", level: str = "INFO", secrets: Iterable[str | None] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # the twilio package logs every REST request's URL and headers at INFO (a dozen lines per call control);
    # its warnings and errors still show, and callboard logs what it asked Twilio and why itself
    for name in QUIET_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


# alembic.runtime.plugins: seven "setup plugin ..." lines at every start, about alembic's own machinery
QUIET_LIBRARY_LOGGERS = ("twilio.http_client", "twilio.async_http_client", "alembic.runtime.plugins")


class AccessLogger(AbstractAccessLogger):
    """aiohttp access log without query strings or headers, so nothing secret can land in it."""

    def log(self, request, response, time_s: float) -> None:  # type: ignore[no-untyped-def]
        if getattr(response, "taken_over", False):  # a websocket: logged when it closes (wallboard/ws.py)
            return
        self.logger.info("%s %s %s %.1fms", request.method, request.path, response.status, time_s * 1000)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
