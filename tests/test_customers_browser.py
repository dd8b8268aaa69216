"""The customer panel of the agent console and the supervisors' /customers page in a real browser (Debian
chromium through Playwright), against a real instance with the directory on SQLite, calls driven by
signed Twilio webhooks. Screenshots go to artifacts/browser/ (the good ones are kept in docs/screenshots/)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from callflow.testing import FakeTwilio
from customers.app import CALLER_LOOKUP
from tests.conftest import TWILIO_TOKEN, open_test_database, token
from tests.test_browser import JS_LIVE, JS_TEXT_IS, base_url, http, open_page, tid, wait_js  # noqa: F401

SUPPORT = "+15550000001"


@pytest.fixture
async def sqlite_db(sqlite_test_url: str) -> AsyncIterator[Any]:
    db = await open_test_database("sqlite", sqlite_test_url)
    yield db
    await db.dispose()


@pytest.fixture
async def center(make_instance: Any, sqlite_db: Any) -> AsyncIterator[Any]:
    server = await make_instance(db=sqlite_db)
    async with aiohttp.ClientSession(base_url(server)) as session:
        yield server, session


async def make_customer(session: aiohttp.ClientSession, **body: Any) -> dict[str, Any]:
    r = await session.post("/api/customers", json=body, headers={"Authorization": f"Bearer {token('bob')}"})
    assert r.status == 201, await r.text()
    return dict(await r.json())


class Call:
    def __init__(self, server: Any, n: int, caller: str) -> None:
        self.server, self.caller = server, caller
        self.sid, self.leg = f"CA{n:032x}", f"CA{n + 5000:032x}"

    async def ring_and_bridge(self, agent: str = "alice") -> None:
        async with http(base_url(self.server)) as client:
            twilio = FakeTwilio(client, TWILIO_TOKEN)
            status, body = await twilio.post("incoming", {"CallSid": self.sid, "From": self.caller, "To": SUPPORT,
                                                          "CallStatus": "ringing", "Direction": "inbound"})
            assert status == 200 and "<Enqueue" in body, body
            await self.server.app[CALLER_LOOKUP].wait_idle()
            status, _ = await twilio.post("agent", {"CallSid": self.leg, "From": f"client:{agent}", "To": "", "queue": "support"})
            assert status == 200
            status, _ = await twilio.post("bridge", {"CallSid": self.sid, "DequeingCallSid": self.leg, "QueueTime": "7",
                                                     "QueueSid": "QU1", "From": self.caller, "To": SUPPORT},
                                          {"queue": "support", "agent": agent})
            assert status == 200


async def console(browser: Any, server: Any) -> Any:
    w = await open_page(browser, f"{base_url(server)}/agent#token={token('alice', 'agent')}")
    await wait_js(w.page, JS_LIVE)
    await wait_js(w.page, JS_TEXT_IS, [tid("my-state"), "Available"])
    return w


async def test_pop_panel_pick_one_of_two_customers_and_add_a_note(browser: Any, center: Any) -> None:
    server, session = center
    await make_customer(session, name="山田 太郎", kana="ヤマダ タロウ", company="山田商店", phones=["03-1234-5678"],
                        memo="請求書は郵送を希望", owner="bob")
    hanako = await make_customer(session, name="山田 花子", kana="ヤマダ ハナコ", phones=["03-1234-5678", "090-1111-2222"],
                                 email="hanako@example.jp", memo="平日午前は不在")
    r = await session.post(f"/api/customers/{hanako['id']}/notes", json={"text": "住所変更の手続き済み"},
                           headers={"Authorization": f"Bearer {token('bob')}"})
    assert r.status == 201
    w = await console(browser, server)
    page = w.page
    assert (await page.locator(tid("cust-status")).text_content() or "").startswith("No active call")

    call = Call(server, 1, "+81312345678")
    await call.ring_and_bridge()
    await wait_js(page, JS_TEXT_IS, [tid("cust-status"), "2 customers share +81312345678: pick one."])
    assert await page.locator(tid("pop-customers")).is_hidden()  # the panel shows the matches instead
    assert await page.locator(tid("cust-match-0")).locator(".cust-pick-name").text_content() == "山田 花子"
    assert await page.locator(tid("cust-match-0")).locator(".cust-pick-note").text_content() == "住所変更の手続き済み"
    assert await page.locator(tid("cust-match-1")).locator(".cust-pick-name").text_content() == "山田 太郎"
    await w.shot("customers-pop-pick")

    assert await page.locator(tid("cust-pop-summary")).text_content() == "2 possible customers"
    await page.click(tid("cust-match-1"))
    await wait_js(page, JS_TEXT_IS, [tid("cust-name"), "山田 太郎"])
    assert await page.locator(tid("cust-pop-summary")).text_content() == "山田 太郎 · 山田商店請求書は郵送を希望"
    assert await page.locator(tid("cust-memo")).text_content() == "請求書は郵送を希望"
    assert await page.locator(tid("cust-company")).text_content() == "山田商店"
    assert await page.locator(tid("cust-no-notes")).is_visible()
    await page.fill(tid("cust-note-text"), "請求書の再送を依頼された。来週までに送付。")
    await page.click(tid("cust-note-add"))
    await wait_js(page, "() => document.querySelector('[data-testid=\"cust-note-0\"]')?.textContent.includes('請求書の再送')")
    assert "this call" in (await page.locator(tid("cust-note-0")).text_content() or "")
    await w.shot("customers-pop-note")
    r = await session.get("/api/customers", params={"q": "山田 太郎"}, headers={"Authorization": f"Bearer {token('bob')}"})
    taro = (await r.json())["customers"][0]
    r = await session.get(f"/api/customers/{taro['id']}", headers={"Authorization": f"Bearer {token('bob')}"})
    note = (await r.json())["notes"][0]
    assert (note["agent"], note["call_sid"]) == ("alice", call.sid)

    # back to the list, and edit the other one
    await page.click(tid("cust-back"))
    await page.click(tid("cust-match-0"))
    await wait_js(page, JS_TEXT_IS, [tid("cust-name"), "山田 花子"])
    await page.click(tid("cust-edit"))
    await page.fill(tid("cust-field-memo"), "平日午前は不在。夕方なら可。")
    await page.fill(tid("cust-field-phones"), "03-1234-5678, 0120-12")  # a bad number: the server says which
    await page.click(tid("cust-save"))
    await wait_js(page, "() => document.querySelector('[data-testid=\"cust-error\"]')?.textContent.includes('phones[1]')")
    await page.fill(tid("cust-field-phones"), "03-1234-5678, 090-1111-2222")
    await page.click(tid("cust-save"))
    await wait_js(page, JS_TEXT_IS, [tid("cust-memo"), "平日午前は不在。夕方なら可。"])
    # the browser logs the refused save (400) itself; nothing else may have gone wrong
    w.unexpected = [e for e in w.unexpected if not ("status of 400" in e[0] and "/api/customers/" in e[1])]
    w.check()


async def test_pop_panel_creates_a_customer_from_an_unknown_number(browser: Any, center: Any) -> None:
    server, session = center
    w = await console(browser, server)
    page = w.page
    call = Call(server, 2, "+81355550000")
    await call.ring_and_bridge()
    await wait_js(page, JS_TEXT_IS, [tid("cust-status"), "No customer with +81355550000."])
    assert await page.locator(tid("cust-pop-summary")).text_content() == "Not in the directory"
    await page.click(tid("cust-create"))
    assert await page.input_value(tid("cust-field-phones")) == "+81355550000"
    await page.fill(tid("cust-field-name"), "佐藤 一郎")
    await page.fill(tid("cust-field-kana"), "サトウ イチロウ")
    await page.fill(tid("cust-field-company"), "佐藤工業")
    await w.shot("customers-pop-create")
    await page.click(tid("cust-save"))
    await wait_js(page, JS_TEXT_IS, [tid("cust-name"), "佐藤 一郎"])
    assert await page.locator(tid("cust-phones")).text_content() == "+81355550000"
    await page.fill(tid("cust-note-text"), "初めてのお問い合わせ")
    await page.click(tid("cust-note-add"))
    await wait_js(page, "() => document.querySelector('[data-testid=\"cust-note-0\"]')?.textContent.includes('初めて')")
    r = await session.get("/api/customers", params={"q": "03-5555-0000"}, headers={"Authorization": f"Bearer {token('bob')}"})
    found = (await r.json())["customers"]
    assert [c["name"] for c in found] == ["佐藤 一郎"]
    w.check()


async def test_withheld_number_search_finds_the_customer(browser: Any, center: Any) -> None:
    server, session = center
    await make_customer(session, name="鈴木 美咲", kana="スズキ ミサキ", phones=["06-1234-5678"])
    w = await console(browser, server)
    page = w.page
    await Call(server, 3, "anonymous").ring_and_bridge()
    await wait_js(page, JS_TEXT_IS, [tid("cust-status"), "The caller's number is withheld: search by name."])
    await page.fill(tid("cust-search"), "すずき")  # the reading typed in hiragana finds the katakana kana
    await page.click(tid("cust-search-go"))
    await wait_js(page, "() => !!document.querySelector('[data-testid=\"cust-result-0\"]')")
    assert await page.locator(tid("cust-result-0")).locator(".cust-pick-name").text_content() == "鈴木 美咲"
    await w.shot("customers-pop-withheld-search")
    await page.click(tid("cust-result-0"))
    await wait_js(page, JS_TEXT_IS, [tid("cust-name"), "鈴木 美咲"])
    w.check()


async def test_supervisor_page_search_edit_import_export_delete(browser: Any, center: Any) -> None:
    server, session = center
    await make_customer(session, name="高橋 健太", kana="タカハシ ケンタ", phones=["03-9876-5432"], company="高橋物産")
    w = await open_page(browser, f"{base_url(server)}/customers#token={token('boss', 'supervisor')}")
    page = w.page
    await wait_js(page, "() => !!document.querySelector('[data-testid=\"cust-row-0\"]')")

    # import a cp932 CSV with one bad line
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows([
        ["name", "kana", "phones", "company", "external_id"],
        ["伊藤 陽子", "イトウ ヨウコ", "045-123-4567", "伊藤電機", "X-1"],
        ["木村 翔", "キムラ ショウ", "12", "", "X-2"]])
    await page.set_input_files(tid("cust-import-file"), files=[{"name": "顧客.csv", "mimeType": "text/csv",
                                                                "buffer": out.getvalue().encode("cp932")}])
    await wait_js(page, "() => !!document.querySelector('[data-testid=\"cust-import-summary\"]')")
    assert await page.locator(tid("cust-import-summary")).text_content() == "1 created, 0 updated, 1 bad lines."
    errors = await page.locator(tid("cust-import-errors")).text_content() or ""
    assert errors.startswith("line 3: phones:") and "'12'" in errors
    await wait_js(page, "() => document.querySelectorAll('[data-testid=\"cust-table\"] tbody tr').length === 2")
    await w.shot("customers-page-import")

    # search by number, open, edit, save
    await page.fill(tid("cust-search"), "045 123 4567")
    await page.click(tid("cust-search-go"))
    await wait_js(page, "() => document.querySelectorAll('[data-testid=\"cust-table\"] tbody tr').length === 1")
    await page.click(tid("cust-row-0"))
    await wait_js(page, "() => !!document.querySelector('[data-testid=\"cust-editor\"]')")
    await page.fill(tid("cust-field-owner"), "alice")
    await page.fill(tid("cust-field-memo"), "VIP")
    await w.shot("customers-page-edit")
    await page.click(tid("cust-save"))
    await wait_js(page, JS_TEXT_IS, [tid("cust-notice"), "Saved 伊藤 陽子."])
    assert await page.locator(tid("cust-row-0")).locator("td").nth(5).text_content() == "alice"

    # export: a download, UTF-8 with BOM
    async with page.expect_download() as info:
        await page.click(tid("cust-export"))
    download = await info.value
    data = (await download.path()).read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and "伊藤 陽子".encode() in data

    # delete (confirm)
    page.once("dialog", lambda dialog: dialog.accept())
    await page.click(tid("cust-row-0"))
    await wait_js(page, "() => !!document.querySelector('[data-testid=\"cust-delete\"]')")
    await page.click(tid("cust-delete"))
    await wait_js(page, JS_TEXT_IS, [tid("cust-notice"), "Deleted 伊藤 陽子."])
    r = await session.get("/api/customers", params={"q": "伊藤"}, headers={"Authorization": f"Bearer {token('bob')}"})
    assert (await r.json())["customers"] == []
    w.check()


async def test_an_agent_token_on_the_supervisor_page_is_refused_with_a_reason(browser: Any, center: Any) -> None:
    server, _ = center
    w = await open_page(browser, f"{base_url(server)}/customers#token={token('alice', 'agent')}")
    page = w.page
    await wait_js(page, "() => !!document.querySelector('[data-testid=\"cust-no-results\"]')")  # agents may search
    await page.click(tid("cust-export"))
    await wait_js(page, "() => document.querySelector('[data-testid=\"cust-error\"]')?.textContent.includes('needs supervisor')")
    w.unexpected.clear()  # the browser logs the refused request (403) itself
    w.check()
