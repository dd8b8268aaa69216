"""Group-commit batcher for state intents from sockets.

Why: a Redis round trip per intent caps throughput at the round-trip rate and turns a burst (a whole floor
clicking "available" after a meeting) into a queue. Instead intents wait in a dict keyed by agent while the
single in-flight flush runs; a newer intent for the same agent replaces the older one (latest wins: the
stored state after any burst is each agent's last accepted intent), and the next flush sends everything
pending as one Lua call.

Backpressure: at most one flush in flight per instance; an optional ops/s budget spaces flushes out. On a
Redis error the batch goes back into the dict (a newer intent for the same agent still wins) and the loop
backs off; the dict is bounded by the number of agents, so nothing grows without bound and nothing is lost.

Every intent's fate is reported exactly once: its error code, or None when it was applied, unchanged or
superseded. `submit` reports through a Future (the HTTP route awaits it); `offer` calls a plain callback
instead, from the batcher's own loop, which is what the agent sockets use: a Future per intent, its done
callback and the loop turn that runs it were a fifth of the server's work per intent at 20,000 intents/s
(docs/benchmarks.md, "Presence: where the time goes").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from redis.exceptions import RedisError

from callboard.clock import Clock
from presence.rules import Intent, validate_seq
from presence.store import Addressed, PresenceStore

log = logging.getLogger(__name__)

MAX_BATCH = 2000  # intents per Lua call: big enough to absorb a floor-wide burst, small enough to keep one call < ~10 ms
BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0


Reply = Callable[[str | None], None]  # told an intent's error code, or None (applied, unchanged, superseded)


class _Pending:
    """An agent's latest intent and who waits to hear about it (usually one waiter: its sender)."""

    __slots__ = ("intent", "waiters")

    def __init__(self, intent: Intent, waiters: list[Reply]) -> None:
        self.intent = intent
        self.waiters = waiters


def _resolve(future: asyncio.Future[str | None], code: str | None) -> None:
    if not future.done():  # the caller may have given up waiting (cancelled)
        future.set_result(code)


@dataclass
class BatcherStats:
    submitted: int = 0
    coalesced: int = 0
    flushes: int = 0
    flushed_intents: int = 0
    errors: int = 0


class Batcher:
    """Coalescing, rate-budgeted writer of agent intents. `submit` never blocks on Redis."""

    def __init__(
        self,
        store: PresenceStore,
        clock: Clock,
        *,
        max_ops_per_s: float | None = None,
        max_batch: int = MAX_BATCH,
        on_flush: Callable[[int, float], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.min_interval_s = 1.0 / max_ops_per_s if max_ops_per_s else 0.0
        self.max_batch = max_batch
        self.on_flush = on_flush
        self.on_error = on_error
        self.stats = BatcherStats()
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="presence-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def submit(self, agent_id: str, intent: Intent) -> asyncio.Future[str | None]:
        """Queue an intent; the future resolves with its error code (None: applied or superseded)."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.offer(agent_id, intent, partial(_resolve, future))
        return future

    def offer(self, agent_id: str, intent: Intent, reply: Reply) -> None:
        """Queue an intent; `reply` is called once with its error code (None: applied, unchanged or superseded).

        `reply` runs synchronously, on the batcher's loop (or right here for a refused seq): it must not block,
        and an exception it raises is logged, never allowed to stop the flushes of everyone else's intents.
        """
        self.stats.submitted += 1
        seq = intent.seq
        if seq is not None and validate_seq(seq):
            # Refused here, never batched: one unencodable intent would fail the flush of everyone's.
            _tell(reply, "bad_seq")
            return
        prior = self._pending.get(agent_id)
        if prior is not None:
            self.stats.coalesced += 1
            superseded = prior.waiters
            prior.intent = intent
            prior.waiters = [reply]
            for waiter in superseded:  # superseded by a later intent of the same agent: not an error
                _tell(waiter, None)
        else:
            self._pending[agent_id] = _Pending(intent, [reply])
            if len(self._pending) == 1:
                self._idle.clear()
                self._wake.set()

    async def drain(self) -> None:
        """Wait until everything submitted so far is stored."""
        await self._idle.wait()

    async def _run(self) -> None:
        backoff = BACKOFF_START_S
        last_flush = 0.0
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = last_flush + self.min_interval_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # budget: intents keep coalescing meanwhile
            batch = self._take()
            started = time.monotonic()
            last_flush = started
            try:
                results = await self.store.apply(
                    [Addressed(agent_id, p.intent) for agent_id, p in batch], self.clock.now_ms()
                )
            except (RedisError, OSError) as exc:
                self.stats.errors += 1
                self._put_back(batch)
                if self.on_error:
                    self.on_error(exc)
                log.warning("presence flush of %d intents failed (%s); retrying in %.2fs", len(batch), exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            except Exception:
                # A bug, not an outage: retrying cannot help, and letting it end this loop would stop every
                # agent's state changes for good. The batch is answered "not_stored" and the loop goes on.
                self.stats.errors += 1
                log.exception("presence flush of %d intents failed; they are refused (not_stored)", len(batch))
                for _, pending in batch:
                    for waiter in pending.waiters:
                        _tell(waiter, "not_stored")
                continue
            backoff = BACKOFF_START_S
            elapsed = time.monotonic() - started
            self.stats.flushes += 1
            self.stats.flushed_intents += len(batch)
            if self.on_flush:
                self.on_flush(len(batch), elapsed)
            for (_, pending), error in zip(batch, results, strict=True):
                for waiter in pending.waiters:
                    _tell(waiter, error)

    def _take(self) -> list[tuple[str, _Pending]]:
        pending = self._pending
        if len(pending) <= self.max_batch:  # the usual case: the whole dict, without popping it key by key
            self._pending = {}
            return list(pending.items())
        batch: list[tuple[str, _Pending]] = []
        for agent_id in list(pending)[: self.max_batch]:
            batch.append((agent_id, pending.pop(agent_id)))
        return batch

    def _put_back(self, batch: list[tuple[str, _Pending]]) -> None:
        for agent_id, pending in batch:
            newer = self._pending.get(agent_id)
            if newer is None:
                self._pending[agent_id] = pending
            else:  # a newer intent arrived during the failed flush: it wins, the old waiters are superseded
                for waiter in pending.waiters:
                    _tell(waiter, None)


def _tell(reply: Reply, code: str | None) -> None:
    try:
        reply(code)
    except Exception:  # a bug in one sender's reply must not stop the flushes of everyone's intents
        log.exception("an intent's reply failed")
