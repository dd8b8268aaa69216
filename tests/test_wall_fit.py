"""The wallboard on any wall: fit without scrolling, rotation, legibility, the critical-wait alert, Japanese.

Real headless Chromium (the way tests/test_browser.py drives it) against a real instance on the real test
Redis. What is measured is what a person in the room sees: the boxes of every queue card and agent cell
(inside the viewport, none overlapping, no numeral clipped), the numerals' size against the screen, the
alert's flash, and the Japanese pages as screenshots (kept in docs/screenshots/ and looked at).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callboard.config import Config, demo_config, parse_config
from callflow.testing import FakeTwilio
from tests import test_browser
from tests.conftest import TWILIO_TOKEN, token
from tests.test_browser import (
    DOCS_SCREENSHOTS,
    JS_LIVE,
    Agents,
    Caller,
    SteppingClock,
    Watched,
    base_url,
    http,
    set_state,
    tid,
    wait_js,
)

# Shared fixtures: `browser` (tests/conftest.py: one headless Debian chromium), agents signed in over websockets.
agents = test_browser.agents


def docs_shot(name: str) -> Path | None:
    """docs/screenshots/<name> when regenerating the docs (CALLBOARD_SCREENSHOTS=1), else artifacts only."""
    return DOCS_SCREENSHOTS / name if os.environ.get("CALLBOARD_SCREENSHOTS") else None


VIEWPORTS = [(1280, 720), (1366, 768), (1920, 1080), (3840, 2160)]
FAMILY = ["山田", "佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "中村", "小林", "加藤"]
GIVEN = ["太郎", "花子", "一郎", "美咲", "健太", "陽菜", "翔", "結衣", "大輔", "さくら"]
LATIN = ["Alice Moreau", "Grace Kim", "Oscar Rossi", "Ivan Petrov", "Judy Alvarez"]


def big_center(queues: int, agent_count: int, *, sl_threshold_s: int = 20, wait_critical_s: int = 180) -> Config:
    """`queues` queues (one team each) and `agent_count` agents, a third of them serving two queues, most Japanese."""
    qs = [{"name": f"q{i + 1:02d}", "numbers": [f"+1555020{i:04d}"], "team": f"team{i + 1:02d}",
           "thresholds": {"wait_critical_s": wait_critical_s, "wait_warning_s": min(60, wait_critical_s)}}
          for i in range(queues)]
    ags = []
    for i in range(agent_count):
        home = i % queues
        serves = [qs[home]["name"]] + ([qs[(home + 1) % queues]["name"]] if i % 3 == 0 and queues > 1 else [])
        name = LATIN[i % len(LATIN)] if i % 7 == 0 else f"{FAMILY[i % 10]} {GIVEN[(i // 10) % 10]}"
        ags.append({"id": f"a{i:03d}", "name": name, "team": qs[home]["team"], "queues": serves})
    raw = {"center": {"name": "東京サポートセンター", "timezone": "Asia/Tokyo", "sl_threshold_s": sl_threshold_s},
           "queues": qs, "agents": ags}
    return parse_config(raw, "<big center>")


async def open_at(browser: Any, url: str, width: int, height: int) -> Watched:
    context = await browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1,
                                        locale="en-US")
    page = await context.new_page()
    watched = Watched(page)
    await page.goto(url)
    return watched


async def spread_states(base: str, config: Config) -> None:
    """A believable floor: agents available, away and offline (a supervisor's POSTs, over the real API)."""
    headers = {"Authorization": f"Bearer {token('sup-1', 'supervisor')}"}
    async with aiohttp.ClientSession() as session:
        async def one(i: int, agent_id: str) -> None:
            state = ("available", "away", "offline", "available")[i % 4]
            body = {"state": state, **({"reason": "昼食"} if state == "away" else {})}
            async with session.post(f"{base}/api/agents/{agent_id}/state", json=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()

        ids = [a.id for a in config.agents]
        for start in range(0, len(ids), 50):
            await asyncio.gather(*(one(start + i, a) for i, a in enumerate(ids[start:start + 50])))


# Every visible queue card, team head and agent cell: inside the viewport, none overlapping another, and
# the numerals and rows of each card inside that card (nothing clipped), no scrollbar.
JS_MEASURE = """() => {
  const W = window.innerWidth, H = window.innerHeight, eps = 0.5;
  const shown = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden';
  const boxes = [];
  for (const e of document.querySelectorAll('article.queue, .agent[data-agent], .team-head')) {
    if (!shown(e)) continue;
    const r = e.getBoundingClientRect();
    boxes.push({id: e.dataset.queue ? 'queue:' + e.dataset.queue : e.dataset.agent ? 'agent:' + e.dataset.agent
                    : 'team:' + e.textContent.slice(0, 12), l: r.left, t: r.top, r: r.right, b: r.bottom});
  }
  const problems = [];
  for (const x of boxes) {
    if (x.l < -eps || x.t < -eps || x.r > W + eps || x.b > H + eps) problems.push(`${x.id} outside the viewport`);
    if (x.r - x.l < 4 || x.b - x.t < 4) problems.push(`${x.id} has no size`);
  }
  const sorted = [...boxes].sort((a, b) => a.t - b.t);
  for (let i = 0; i < sorted.length; i++) {
    for (let j = i + 1; j < sorted.length && sorted[j].t < sorted[i].b - eps; j++) {
      const a = sorted[i], b = sorted[j];
      if (a.l < b.r - eps && b.l < a.r - eps) problems.push(`${a.id} overlaps ${b.id}`);
    }
  }
  for (const card of document.querySelectorAll('article.queue')) {
    if (!shown(card)) continue;
    const c = card.getBoundingClientRect();
    for (const part of card.querySelectorAll('.queue-name, .kpi, .queue-agents, .queue-today, .queue-stats')) {
      const r = part.getBoundingClientRect();
      if (r.left < c.left - eps || r.right > c.right + eps || r.top < c.top - eps || r.bottom > c.bottom + eps)
        problems.push(`${card.dataset.queue}: ${part.className} sticks out of its card`);
    }
    for (const v of card.querySelectorAll('.kpi-value, .queue-stats td, .count-value')) {
      if (v.scrollWidth > v.clientWidth + 1) problems.push(`${card.dataset.queue}: ${v.dataset.testid} is clipped`);
    }
  }
  const doc = document.scrollingElement;
  if (doc.scrollHeight > H + 1 || doc.scrollWidth > W + 1) problems.push(`the page scrolls (${doc.scrollWidth}x${doc.scrollHeight})`);
  return {problems: problems.slice(0, 20), queues: boxes.filter(b => b.id.startsWith('queue:')).map(b => b.id.slice(6)),
          agents: boxes.filter(b => b.id.startsWith('agent:')).map(b => b.id.slice(6)), layout: window.__cbWall.layout()};
}"""


async def check_every_page(w: Watched, config: Config, label: str, agent_ids: set[str] | None = None) -> dict[str, Any]:
    """Measure the board on each of its pages; every queue and every agent (or `agent_ids`) is on one of them."""
    page = w.page
    first = await page.evaluate(JS_MEASURE)
    layout = first["layout"]
    pages = max(layout["queues"]["pages"], layout["agents"]["pages"])
    seen_queues: set[str] = set()
    seen_agents: set[str] = set()
    for n in range(pages):
        measured = first if n == 0 else await page.evaluate(JS_MEASURE)
        assert measured["problems"] == [], f"{label}, page {n + 1}/{pages}: {measured['problems']}"
        seen_queues |= set(measured["queues"])
        seen_agents |= set(measured["agents"])
        if n == 0:
            await w.shot(label)
        await page.evaluate("() => window.__cbWall.nextPage()")
    assert seen_queues == {q.name for q in config.queues}, label
    assert seen_agents == (agent_ids if agent_ids is not None else {a.id for a in config.agents}), label
    return layout


@pytest.mark.parametrize("queues", [3, 12])
async def test_the_wallboard_fits_every_screen_with_300_agents(browser: Any, make_instance: Any, queues: int) -> None:
    config = big_center(queues, 300)
    server = await make_instance(config)
    await spread_states(base_url(server), config)
    wall = token("wall-1", "wallboard")
    layouts = {}
    for width, height in VIEWPORTS:
        for kiosk in (True, False):
            query = "?kiosk=1" if kiosk else ""
            w = await open_at(browser, f"{base_url(server)}/wallboard{query}#token={wall}", width, height)
            await wait_js(w.page, JS_LIVE, timeout_s=15)
            await wait_js(w.page, "() => document.body.classList.contains('fit') && window.__cbWall.layout()")
            label = f"fit-{queues}q-300a-{width}x{height}{'-kiosk' if kiosk else ''}"
            layouts[label] = await check_every_page(w, config, label)
            w.check()
            await w.page.context.close()
    # the other grid layouts fit too: one group, offline agents hidden, sorted by time in state
    w = await open_at(browser, f"{base_url(server)}/wallboard?group=none&offline=hide&sort=time#token={wall}", 1366, 768)
    await wait_js(w.page, JS_LIVE, timeout_s=15)
    await wait_js(w.page, "() => document.body.classList.contains('fit') && window.__cbWall.layout()")
    online = {a.id for i, a in enumerate(config.agents) if i % 4 != 2}  # spread_states put every fourth offline
    await check_every_page(w, config, f"fit-{queues}q-300a-1366x768-grouped-none", online)
    w.check()
    await w.page.context.close()
    # pages turn by themselves every ?rotate= seconds (3 here), queues and agents together
    w = await open_at(browser, f"{base_url(server)}/wallboard?kiosk=1&rotate=3#token={wall}", 1280, 720)
    await wait_js(w.page, JS_LIVE, timeout_s=15)
    await wait_js(w.page, "() => !document.getElementById('agent-pager').hidden")
    first = await w.page.locator(tid("agent-pager")).text_content() or ""
    assert first.startswith("Agents 1 of "), first
    await wait_js(w.page, "() => document.getElementById('agent-pager').textContent.startsWith('Agents 2 of ')",
                  timeout_s=15)
    w.check()
    await w.page.context.close()
    # the rotation is only a fallback: 3 queues never rotate, and a 4K wall shows all 3 queues at once
    for label, layout in layouts.items():
        if queues == 3:
            assert layout["queues"]["pages"] == 1, (label, layout)
    big = layouts[f"fit-{queues}q-300a-3840x2160-kiosk"]
    assert big["queues"]["pages"] == 1, big


async def test_waiting_numerals_are_six_percent_of_a_1080p_wall_with_six_queues(
        browser: Any, make_instance: Any, agents: Agents) -> None:
    config = big_center(6, 60)
    server = await make_instance(config)
    await spread_states(base_url(server), config)
    await agents.sign_in(server, "a000", "a006")
    async with http(base_url(server)) as client:  # a caller waiting, so the longest wait is a time, not a dash
        caller = Caller(FakeTwilio(client, TWILIO_TOKEN), 1, "support")
        caller.to = config.queues[0].numbers[0]
        await caller.dial()
    wall = token("wall-1", "wallboard")
    for kiosk in ("?kiosk=1", ""):
        w = await open_at(browser, f"{base_url(server)}/wallboard{kiosk}#token={wall}", 1920, 1080)
        await wait_js(w.page, JS_LIVE)
        await wait_js(w.page, "() => document.querySelector('[data-testid=\"queue-q01-waiting\"]')?.textContent === '1'")
        sizes = await w.page.evaluate("""() => [...document.querySelectorAll(
            '[data-testid$="-waiting"].kpi-value, [data-testid$="-longest"].kpi-value')].map(e => ({
              id: e.dataset.testid, font: parseFloat(getComputedStyle(e).fontSize),
              box: e.getBoundingClientRect().height, shown: e.getClientRects().length > 0}))""")
        assert len(sizes) == 12 and all(s["shown"] for s in sizes), sizes
        for s in sizes:  # the numeral's em box (line-height 1): at least 6 % of 1080 px = 64.8 px
            assert s["font"] >= 0.06 * 1080, s
            assert s["box"] >= 0.06 * 1080 - 0.5, s
        await check_every_page(w, config, f"legible-6q-1920x1080{kiosk.replace('?kiosk=1', '-kiosk')}")
        w.check()
        await w.page.context.close()


async def test_a_caller_past_wait_critical_flashes_the_board_and_beeps_for_a_supervisor_who_asked(
        browser: Any, make_instance: Any, agents: Agents) -> None:
    config = demo_config()
    queues = tuple(dataclasses.replace(q, thresholds=dataclasses.replace(q.thresholds, wait_critical_s=120))
                   for q in config.queues)
    config = dataclasses.replace(config, queues=queues,
                                 server=dataclasses.replace(config.server, lease_ttl_s=86_400.0))
    clock = SteppingClock(-200)
    server = await make_instance(config, clock=clock)
    await agents.sign_in(server, "alice", "grace")
    async with http(base_url(server)) as client:
        twilio = FakeTwilio(client, TWILIO_TOKEN)
        old = Caller(twilio, 1, "sales")
        await old.dial()  # 200 s ago on the server's clock
        clock.at(30)
        young = Caller(twilio, 2, "sales")
        await young.dial()  # 30 s ago: past the 20 s SL threshold, not critical
        clock.at(0)

    # a supervisor's screen, opened now (the page takes its clock from the snapshot's server_time_ms)
    w = await open_at(browser, f"{base_url(server)}/wallboard#token={token('sup-1', 'supervisor')}", 1920, 1080)
    page = w.page
    await wait_js(page, JS_LIVE)
    await wait_js(page, "() => !document.getElementById('critical-alert').hidden", timeout_s=5)
    # no sound before anyone clicked: browsers refuse audio without a user gesture, and we never try
    assert await page.evaluate("() => window.__cbAlertBeeps ?? 0") == 0
    await page.click(tid("sound-toggle"))  # the gesture; a caller already past the limit beeps at once
    assert await page.get_attribute(tid("sound-toggle"), "aria-pressed") == "true"

    async with http(base_url(server)) as client:
        twilio = FakeTwilio(client, TWILIO_TOKEN)
        old.twilio = young.twilio = twilio
        fresh = Caller(twilio, 3, "sales")
        await fresh.dial()  # just now
        await wait_js(page, "() => document.querySelector('[data-testid=\"queue-sales-waiting\"]').textContent === '3'")
        text = await page.locator(tid("critical-alert-text")).text_content() or ""
        assert "sales" in text and "3:2" in text, text  # 3:20, give or take the seconds the test took
        assert await page.evaluate("() => document.body.classList.contains('alerting')")
        assert "alerting" in (await page.get_attribute(tid("queue-sales"), "class") or "")
        assert "alerting" not in (await page.get_attribute(tid("queue-support"), "class") or "")
        assert await page.eval_on_selector(tid("critical-alert"), "e => getComputedStyle(e).animationName") == "alert-flash"
        await wait_js(page, "() => (window.__cbAlertBeeps ?? 0) >= 1", timeout_s=3)
        # at risk: the two callers past the 20 s SL threshold, not the one who just called
        assert await page.locator(tid("queue-sales-waiting")).text_content() == "3"
        assert await page.locator(tid("queue-sales-at-risk")).text_content() == "2"
        assert await page.get_attribute(tid("queue-sales-at-risk"), "data-level") == "crit"
        assert await page.locator(tid("queue-support-at-risk")).text_content() == "0"
        await w.shot("alert-critical-wait", docs_shot("wallboard-alert.png"))

        # the oldest caller is answered: the alert clears by itself
        await old.answer("grace", 200)
        await wait_js(page, "() => document.getElementById('critical-alert').hidden", timeout_s=5)
        assert not await page.evaluate("() => document.body.classList.contains('alerting')")
        assert await page.locator(tid("queue-sales-at-risk")).text_content() == "1"
        assert await page.locator(tid("queue-sales-offered-today")).text_content() == "3"
        assert await page.locator(tid("queue-sales-answered-today")).text_content() == "1"
    beeps = await page.evaluate("() => window.__cbAlertBeeps")
    w.check()
    await page.context.close()

    # a kiosk wall nobody clicked: the same flash, never a sound (no gesture, no control to give one)
    k = await open_at(browser, f"{base_url(server)}/wallboard?kiosk=1#token={token('wall-1', 'wallboard')}", 1280, 720)
    await wait_js(k.page, JS_LIVE)
    assert await k.page.locator(tid("sound-toggle")).is_hidden()
    assert await k.page.evaluate("() => window.__cbAlertBeeps ?? 0") == 0
    k.check()
    assert beeps >= 1


async def test_the_pages_in_japanese_with_japanese_names(browser: Any, make_instance: Any, agents: Agents) -> None:
    config = demo_config()
    server = await make_instance(config)
    await agents.sign_in(server, "alice", "bob", "grace", "heidi")
    async with http(base_url(server)) as client:
        await set_state(client, "heidi", "away", "昼食")
        call = Caller(FakeTwilio(client, TWILIO_TOKEN), 9, "support")
        await call.dial()

    # ?lang=ja on an English browser
    w = await open_at(browser, f"{base_url(server)}/wallboard?lang=ja#token={token('wall-1', 'wallboard')}", 1920, 1080)
    page = w.page
    await wait_js(page, JS_LIVE)
    assert await page.evaluate("() => document.documentElement.lang") == "ja"
    assert await page.locator(tid("agent-bob-name")).text_content() == "山田 太郎"
    assert await page.locator(tid("agent-heidi-reason")).text_content() == "昼食"
    assert await page.locator(tid("agent-alice-state")).text_content() == "受付可"
    assert await page.locator(tid("agent-heidi-state")).text_content() == "離席"
    assert await page.locator("#queues .kpi-waiting .kpi-label").first.text_content() == "待ち呼"
    assert "一度" in (await page.locator(tid("legend-note")).text_content() or "")
    await assert_no_tofu(page, ["山田 太郎", "佐藤 花子", "待ち呼"])
    await w.shot("ja-wallboard", docs_shot("wallboard-ja.png"))
    w.check()
    await page.context.close()

    # a Japanese browser with no ?lang=: the agent console in Japanese
    context = await browser.new_context(viewport={"width": 1366, "height": 768}, locale="ja-JP")
    a = Watched(await context.new_page())
    await a.page.goto(f"{base_url(server)}/agent#token={token('bob', 'agent')}")
    await wait_js(a.page, JS_LIVE)
    await wait_js(a.page, "() => document.querySelector('[data-testid=\"my-state\"]').textContent === '受付可'")
    assert await a.page.evaluate("() => document.documentElement.lang") == "ja"
    assert await a.page.locator(tid("agent-name")).text_content() == "山田 太郎"
    assert await a.page.locator(tid("btn-available")).text_content() == "受付可"
    assert await a.page.locator(tid("take-next")).text_content() == "次の発信者を受ける"
    assert (await a.page.locator(tid("voice-notice")).text_content() or "").startswith("在席管理のみ")
    await assert_no_tofu(a.page, ["山田 太郎", "受付可"])
    await a.shot("ja-agent", docs_shot("agent-ja.png"))
    a.check()
    await context.close()

    # the center's ui_language when the browser's language is one we do not have
    ja_center = dataclasses.replace(config, center=dataclasses.replace(config.center, ui_language="ja"))
    server2 = await make_instance(ja_center)
    for locale, expected in (("de-DE", "ja"), ("en-GB", "en")):
        context = await browser.new_context(viewport={"width": 1280, "height": 720}, locale=locale)
        page = await context.new_page()
        await page.goto(f"{base_url(server2)}/wallboard?kiosk=1#token={token('wall-1', 'wallboard')}")
        await wait_js(page, JS_LIVE)
        assert await page.evaluate("() => document.documentElement.lang") == expected, locale
        await context.close()
    # and the sign-in form says where a token comes from, in either language
    context = await browser.new_context(viewport={"width": 1280, "height": 720}, locale="en-US")
    page = await context.new_page()
    await page.goto(f"{base_url(server2)}/agent?lang=en")
    how = await page.locator(tid("token-how")).text_content() or ""
    assert "callboard token <your agent id> --role agent" in how, how
    await context.close()


async def assert_no_tofu(page: Any, texts: list[str]) -> None:
    """Each text rendered with real glyphs: its width with the page's fonts differs from a last-resort box font.

    A missing glyph draws as the same .notdef box whatever the family; real CJK glyphs are full-width
    ideographs about 1 em wide, so a measured width near len(text) em proves a CJK font was found.
    """
    for text in texts:
        widths = await page.evaluate("""(text) => {
            const c = document.createElement('canvas').getContext('2d');
            const family = getComputedStyle(document.body).fontFamily;
            c.font = `32px ${family}`;
            const ours = c.measureText(text).width;
            const hasGlyphs = document.fonts.check(`32px ${family}`, text);
            return {ours, hasGlyphs};
        }""", text)
        cjk = sum(1 for ch in text if ord(ch) > 0x2E80)
        assert widths["hasGlyphs"], (text, widths)
        assert widths["ours"] >= cjk * 32 * 0.9, (text, widths)  # ideographs are ~1 em wide when real


# The layout function itself, in the browser that runs it, over every count the issue names: 1 to 12
# queues, 0 to 300 agent slots, the four screen sizes, with and without a header.
JS_LAYOUT_PROPERTIES = """async () => {
  const m = await import('/static/wall-fit.js');
  const problems = [];
  let cases = 0;
  for (const [W, H] of [[1280, 720], [1366, 768], [1920, 1080], [3840, 2160]]) {
    for (const chromeH of [0, 56]) {
      for (let nq = 1; nq <= 12; nq++) {
        for (const na of [0, 1, 13, 60, 150, 303, 312]) {
          cases++;
          const r = m.fitBoard({width: W, height: H, chromeH, queues: nq, slots: na});
          const q = r.queues, a = r.agents, id = `${W}x${H}+${chromeH} ${nq}q ${na}a`;
          const used = q.regionH + (na ? r.gap + a.legendH + r.gap + a.gridH : 0);
          if (used > r.boardH + 0.5) problems.push(`${id}: ${used} px used of ${r.boardH}`);
          if (q.cols * m.QUEUE_W_EM * q.u + (q.cols - 1) * r.gap > r.boardW + 0.5) problems.push(`${id}: cards too wide`);
          if (q.cellH < m.QUEUE_H_EM * q.u - 0.5) problems.push(`${id}: card cell shorter than its content`);
          if (q.perPage * q.pages < nq || q.cols * q.rows < Math.min(nq, q.perPage)) problems.push(`${id}: queues left out`);
          if (a.perPage * a.pages < na) problems.push(`${id}: agents left out`);
          if (a.u < 11) problems.push(`${id}: agent unit ${a.u} px`);
          if (q.u < 12 - 0.01) problems.push(`${id}: queue unit ${q.u} px`);
          if (nq <= 6 && q.u * m.NUMERAL_EM < 0.06 * H - 0.5) problems.push(`${id}: numerals ${q.u * m.NUMERAL_EM} px`);
          if (nq <= 3 && q.pages > 1) problems.push(`${id}: ${nq} queues rotate`);
        }
      }
    }
  }
  return {cases, problems: problems.slice(0, 30), count: problems.length};
}"""


async def test_the_layout_keeps_its_promises_for_every_count(browser: Any, make_instance: Any) -> None:
    server = await make_instance(demo_config())
    w = await open_at(browser, f"{base_url(server)}/wallboard?kiosk=1#token={token('wall-1', 'wallboard')}", 1280, 720)
    await wait_js(w.page, JS_LIVE)
    result = await w.page.evaluate(JS_LAYOUT_PROPERTIES)
    assert result["cases"] == 4 * 2 * 12 * 7
    assert result["count"] == 0, result["problems"]
    w.check()
