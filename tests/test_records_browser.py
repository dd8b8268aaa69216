"""The /reports page in headless Chromium (Playwright), on the scripted day recorded into SQL.

It draws an SVG chart per queue with the day's real numbers, the agents' day, the call history with its
filters, paging and CSV export. The screenshot is kept in docs/screenshots/reports.png.
"""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from callboard.clock import FakeClock
from store.db import Database
from tests.conftest import token
from tests.test_browser import ARTIFACTS, DOCS_SCREENSHOTS, open_page, wait_js
from tests.test_callflow_day import T0, make_harness, scripted_day, sid
from tests.test_records_day import record_all


async def test_the_reports_page_draws_the_day(browser: Any, aiohttp_client: Any, redis: Redis, make_instance: Any,
                                              tmp_path: Path) -> None:
    db = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'reports.db'}")
    try:
        await db.upgrade()
        h = await make_harness(aiohttp_client, redis)
        await h.run(scripted_day())
        await record_all(redis, db, h.config)
        server = await make_instance(h.config, clock=FakeClock(T0 + 3_500_000), db=db)
        url = f"http://127.0.0.1:{server.port}/reports?date=2025-11-21#token={token('boss', 'supervisor')}"
        page = await open_page(browser, url)
        p = page.page
        await wait_js(p, "() => document.querySelectorAll('[data-testid=chart-support] rect.rp-bar').length > 0", timeout_s=15)
        await wait_js(p, "() => document.querySelectorAll('[data-testid=calls-table] tbody tr[data-call]').length === 9")
        await wait_js(p, "() => document.querySelectorAll('[data-testid=agents-table] tbody tr').length === 3")

        # the chart: three bars a bucket, heights in proportion; the service-level line where it is defined
        bars = await p.eval_on_selector_all(
            "[data-testid=chart-support] rect.rp-bar",
            "rs => rs.map(r => [r.dataset.kind, +r.getAttribute('height')])")
        offered = [hgt for kind, hgt in bars if kind == "offered"]
        assert len(bars) == 3 * len(offered) and sorted(x for x in offered if x > 0) and max(offered) > 0
        # service level 1/3 at 09:00 and 2/3 at 09:45: two dots, no line invented across the empty buckets
        assert await p.locator("[data-testid=chart-support] .rp-sl-dot").count() == 2
        assert await p.locator("[data-testid=chart-support] .rp-sl-line").count() == 0
        totals = await p.locator("[data-queue=support] [data-testid=totals]").inner_text()
        assert "8 Offered" in totals and "4 Answered" in totals and "3 Abandoned" in totals and "50% Service level" in totals
        assert "No calls offered on this day." in await p.locator("[data-queue=sales]").inner_text()  # unstaffed only: nothing offered

        alice = await p.locator("[data-testid=agents-table] tr[data-agent=alice]").inner_text()
        assert "55:58" in alice and "1:10" in alice  # 3358 s available; AHT 70.5 s

        # the history: newest first; a filter; the CSV export as a download
        first = await p.locator("[data-testid=calls-table] tbody tr").first.get_attribute("data-call")
        assert first == sid(9)
        # the agent by name, as in the agents' day (the id is the cell's title)
        agent_cell = p.locator("[data-testid=calls-table] tbody tr").first.locator("td").nth(4)
        assert (await agent_cell.text_content(), await agent_cell.get_attribute("title")) == ("Bob", "bob")
        await p.select_option("#outcome", "abandoned")
        await p.click("#filters button[type=submit]")
        await wait_js(p, "() => document.querySelectorAll('[data-testid=calls-table] tbody tr[data-call]').length === 2")
        async with p.expect_download() as download_info:
            await p.click("[data-testid=csv]")
        download = await download_info.value
        raw = await asyncio.to_thread(Path(await download.path()).read_bytes)
        assert raw.startswith(b"\xef\xbb\xbf")
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
        assert [r["call_sid"] for r in rows] == [sid(8), sid(3)]

        await p.select_option("#outcome", "")
        await p.click("#filters button[type=submit]")
        await wait_js(p, "() => document.querySelectorAll('[data-testid=calls-table] tbody tr[data-call]').length === 9")
        await page.shot("reports")
        await page.shot("reports", DOCS_SCREENSHOTS / "reports.png")
        page.check()
        assert (ARTIFACTS / "reports.png").exists()
    finally:
        await db.dispose()
