"""Pure parts of a delivery: the message id, the body, the signed headers and the retry schedule."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

# Standard Webhooks / Svix-like schedule after a failed attempt, in seconds: about 5 s, 30 s, 2 min, 10 min,
# 30 min, 1 h, then hourly for 24 h; after that the delivery is `failed` (a person can retry it from the API).
RETRY_SCHEDULE_S: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600) + (3600,) * 24


def message_id(event_type: str, key: str) -> str:
    """A webhook-id derived from what the event is about, so enqueueing the same event twice is one message."""
    digest = hashlib.sha256(f"{event_type}\0{key}".encode()).hexdigest()[:32]
    return f"msg_{digest}"


def iso_ms(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body(event_type: str, at_ms: int, data: Any) -> str:
    """The JSON body, fixed at enqueue time: every retry sends the same bytes."""
    return json.dumps({"type": event_type, "timestamp": iso_ms(at_ms), "data": data}, ensure_ascii=False,
                      separators=(",", ":"))


def signed_headers(secret: str, msg_id: str, payload: str, now_s: float) -> dict[str, str]:
    """Standard Webhooks headers for one attempt (the timestamp is the attempt's; the id never changes)."""
    ts = datetime.fromtimestamp(int(now_s), UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now_s)),
        "webhook-signature": Webhook(secret).sign(msg_id, ts, payload),
        "Content-Type": "application/json",
        "User-Agent": "callboard-webhooks/1",
    }


def retry_delay_s(failed_attempts: int, schedule: tuple[float, ...] | None = None) -> float | None:
    """Seconds to wait after the n-th failed attempt (1-based); None: give up."""
    schedule = RETRY_SCHEDULE_S if schedule is None else schedule
    if failed_attempts < 1 or failed_attempts > len(schedule):
        return None
    return schedule[failed_attempts - 1]
