"""The background tasks of a demo: started, watched, and stopped together.

Both demos (offer_demo, conference_demo) run one task per agent and per caller. A task that fails is
counted in the demo's report as an error and logged with its traceback; none is lost silently, and
`cancel_all` stops whatever is still running when the demo ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable
from typing import Any


class Crew:
    """A set of tasks whose failures go to `counts["errors"]` and `log`; sleeps end early on `stop`."""

    def __init__(self, counts: Counter[str], stop: asyncio.Event, log: logging.Logger, what: str) -> None:
        self.counts, self.stop, self.log, self.what = counts, stop, log, what
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counts["errors"] += 1
            self.log.error("%s task failed", self.what, exc_info=task.exception())

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of wall time, or less if the demo stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
