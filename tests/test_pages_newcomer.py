"""The pages as a newcomer first meets them, in real headless Chromium against a real instance on the test Redis.

What a person trying the demo tripped on, each proven where it was seen: the customers and reports pages
in Japanese (they stayed English: the pages never loaded the translations' loader), a phone's width (the
wallboard's header pushed the center's name and the clock off the screen, the reports page scrolled
sideways), the kiosk wall of the demo center (three queues in 2 x 2 with a hole, agent names cut to
"Mallory ..."), and the console's "Presence only" reason left in English on a Japanese page.
"""

from __future__ import annotations

from typing import Any

from callboard.config import demo_config
from tests import test_browser
from tests.conftest import token
from tests.test_browser import JS_LIVE, base_url, tid, wait_js
from tests.test_wall_fit import open_at

agents = test_browser.agents

PHONE = (390, 844)

# Every element whose box reaches past the viewport's right edge (a page that scrolls sideways).
JS_PAST_RIGHT_EDGE = """() => {
  const w = document.documentElement.clientWidth;
  const out = [...document.querySelectorAll('body *')].filter((e) => {
    const r = e.getBoundingClientRect();
    if (r.width === 0 || r.right <= w + 0.5) return false;
    // inside a scrolling box (a wide table in its panel) is fine: the page itself does not move
    for (let p = e.parentElement; p; p = p.parentElement) {
      const s = getComputedStyle(p);
      if (['auto', 'scroll', 'hidden'].includes(s.overflowX) && p.getBoundingClientRect().right <= w + 0.5) return false;
    }
    return true;
  });
  return {scrollWidth: document.documentElement.scrollWidth, width: w,
          out: out.slice(0, 8).map((e) => `${e.tagName}.${e.className}#${e.id} ${Math.round(e.getBoundingClientRect().right)}`)};
}"""

JS_INSIDE = """(sel) => [...document.querySelectorAll(sel)].map((e) => {
  const r = e.getBoundingClientRect();
  return {sel, left: r.left, right: r.right, top: r.top, bottom: r.bottom, w: innerWidth, h: innerHeight,
          text: e.textContent};
})"""


def _inside(boxes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for b in boxes if b["left"] < -0.5 or b["right"] > b["w"] + 0.5 or b["top"] < -0.5 or b["bottom"] > b["h"] + 0.5]


async def test_customers_and_reports_pages_speak_japanese(browser: Any, make_instance: Any) -> None:
    server = await make_instance(demo_config())
    boss = token("boss", "supervisor")
    w = await open_at(browser, f"{base_url(server)}/customers?lang=ja#token={boss}", 1280, 800)
    await wait_js(w.page, "() => document.querySelector('[data-testid=cust-no-results]') !== null", timeout_s=10)
    assert await w.page.locator(tid("page-title")).text_content() == "顧客"
    assert await w.page.evaluate("() => document.documentElement.lang") == "ja"
    assert "Search" not in (await w.page.locator(tid("cust-page")).inner_text())
    w.check()
    await w.page.context.close()

    w = await open_at(browser, f"{base_url(server)}/reports?lang=ja#token={boss}", 1280, 800)
    await wait_js(w.page, "() => !document.getElementById('reports').hidden", timeout_s=10)
    assert await w.page.locator("h1").text_content() == "レポート"
    assert await w.page.locator("#agents-title").text_content() == "エージェントの一日"
    assert await w.page.locator(tid("theme-toggle")).text_content() == "ライト"
    outcomes = await w.page.eval_on_selector("#outcome", "s => [...s.options].map(o => o.textContent)")
    assert "短時間放棄" in outcomes and "担当者なし" in outcomes, outcomes
    w.check()
    await w.page.context.close()

    # the theme button names the theme it switches to, from the first paint on
    w = await open_at(browser, f"{base_url(server)}/reports?lang=ja&theme=light#token={boss}", 1280, 800)
    await wait_js(w.page, "() => !document.getElementById('reports').hidden", timeout_s=10)
    assert await w.page.locator(tid("theme-toggle")).text_content() == "ダーク"
    w.check()
    await w.page.context.close()

    # in English the outcomes read as words, not as the API's enum values
    w = await open_at(browser, f"{base_url(server)}/reports?lang=en#token={boss}", 1280, 800)
    await wait_js(w.page, "() => !document.getElementById('reports').hidden", timeout_s=10)
    outcomes = await w.page.eval_on_selector("#outcome", "s => [...s.options].map(o => o.textContent)")
    assert "hung up at once" in outcomes and not any("_" in o for o in outcomes), outcomes
    # numeric columns: the header sits over its numbers (both right-aligned)
    aligns = await w.page.eval_on_selector_all("#agents-table th", "ths => ths.map(th => getComputedStyle(th).textAlign)")
    assert aligns[0] == "left" and set(aligns[1:]) == {"right"}, aligns
    w.check()
    await w.page.context.close()


async def test_a_phone_shows_every_page_without_sideways_scrolling(browser: Any, make_instance: Any, agents: Any) -> None:
    server = await make_instance(demo_config())
    await agents.sign_in(server, "alice", "bob", "carol")
    pages = [("wallboard", f"/wallboard?lang=en#token={token('wall-1', 'wallboard')}"),
             ("wallboard-ja", f"/wallboard?lang=ja#token={token('wall-1', 'wallboard')}"),
             ("agent", f"/agent?lang=ja#token={token('alice', 'agent')}"),
             ("reports", f"/reports?lang=en#token={token('boss', 'supervisor')}"),
             ("customers", f"/customers?lang=en#token={token('boss', 'supervisor')}")]
    for name, path in pages:
        w = await open_at(browser, base_url(server) + path, *PHONE)
        if name.startswith(("wallboard", "agent")):
            await wait_js(w.page, JS_LIVE, timeout_s=10)
        await w.page.wait_for_timeout(500)  # the reports' tables and charts, the customers' list
        await w.shot(f"phone-{name}")
        result = await w.page.evaluate(JS_PAST_RIGHT_EDGE)
        assert result["scrollWidth"] <= PHONE[0] and result["out"] == [], (name, result)
        if name.startswith("wallboard"):
            # the center's name, the clock, every control and every state of the legend are on the screen
            boxes = []
            for sel in ("[data-testid=center-name]", "[data-testid=clock]", ".topbar-controls > *", ".legend-item"):
                boxes += await w.page.evaluate(JS_INSIDE, sel)
            assert len(boxes) == 2 + 5 + 5, boxes
            assert _inside(boxes) == [], (name, _inside(boxes))
            assert await w.page.evaluate("() => document.querySelector('[data-testid=center-name]').clientWidth") > 40
        w.check()
        await w.page.context.close()


async def test_the_demo_center_on_a_kiosk_wall_keeps_its_queues_in_one_row_and_names_whole(
        browser: Any, make_instance: Any) -> None:
    server = await make_instance(demo_config())
    for width, height in ((1920, 1080), (3840, 2160)):
        w = await open_at(browser, f"{base_url(server)}/wallboard?kiosk=1#token={token('wall-1', 'wallboard')}",
                          width, height)
        await wait_js(w.page, JS_LIVE)
        await w.page.wait_for_timeout(300)
        await w.shot(f"kiosk-demo-{width}x{height}")
        tops = await w.page.eval_on_selector_all(".queue", "qs => qs.map(q => Math.round(q.getBoundingClientRect().top))")
        assert len(tops) == 3 and len(set(tops)) == 1, (width, tops)  # one row: no card's place left empty
        cut = await w.page.eval_on_selector_all(
            ".agent-name", "ns => ns.filter(n => n.scrollWidth > n.clientWidth + 1).map(n => n.textContent)")
        assert cut == [], (width, cut)
        w.check()
        await w.page.context.close()


async def test_the_presence_only_reason_is_translated(browser: Any, make_instance: Any) -> None:
    server = await make_instance(demo_config())  # no Twilio voice configured: the console is presence-only
    w = await open_at(browser, f"{base_url(server)}/agent?lang=ja#token={token('alice', 'agent')}", 1280, 800)
    await wait_js(w.page, "() => document.querySelector('[data-testid=\"take-next\"]').dataset.voice === 'unavailable'",
                  timeout_s=10)
    notice = await w.page.locator(tid("voice-notice")).text_content() or ""
    assert notice.startswith("在席管理のみ: このサーバーでは Twilio の音声が設定されていません"), notice
    assert "not configured" not in notice
    w.check()
    await w.page.context.close()
