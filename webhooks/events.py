"""Event hooks other rooms call where something happens that a webhook endpoint may want (one line each)."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger("callboard.webhooks")


async def note_added(outbox: Any, customer_id: str, note: dict[str, Any]) -> None:
    """customer.note_added, after the note is committed; data = the note and its customer's id.

    Redis away: the note itself is saved (SQL) and the API answers 201; the event is logged as not sent.
    """
    if outbox is None:
        return
    try:
        await outbox.enqueue("customer.note_added", f"{customer_id}/{note['id']}", int(note["at_ms"]),
                             {"customer_id": customer_id, **note})
    except (RedisError, OSError) as exc:
        log.error("webhooks: customer.note_added for note %s of %s not queued (Redis: %s)", note.get("id"), customer_id, exc)
