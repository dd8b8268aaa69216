"""Logging: one line per event, as text or JSON. Secrets are never formatted into messages by our code;
the filter below is a second line of defence that masks any known secret value that slips into a record."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

from aiohttp.abc import AbstractAccessLogger


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
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if any(s in message for s in self.secrets):
            record.msg, record.args = self._redact(message), None
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


class AccessLogger(AbstractAccessLogger):
    """aiohttp access log without query strings or headers, so nothing secret can land in it."""

    def log(self, request, response, time_s: float) -> None:  # type: ignore[no-untyped-def]
        self.logger.info("%s %s %s %.1fms", request.method, request.path, response.status, time_s * 1000)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
