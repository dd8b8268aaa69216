"""The demo's customer directory: a small believable one, written only into an empty directory.

`callboard demo` used to start with no customers and callers dialling from random numbers, so its screen
pops never found anyone. `seed_if_empty` writes DEMO_CUSTOMERS through the directory's own code
(customers.model validates them as the API would, customers.repo stores them) when, and only when, the
directory holds no customer at all: a directory someone filled (by hand, by an import, or a previous demo
run) is never touched. `caller_numbers()` are their phones, which the demo's simulated callers dial from
about half of the time (SimulationOptions.known_callers, OfferDemo and ConferenceDemo's known_callers).

Owners are agents of the built-in demo center; a config without that agent gets one of its own agents
instead (by position, so the same config always gets the same owners), so offer-mode routing to the owner
shows with any config. Phone numbers are written in international form so that any `[center]
default_region` reads them the same; the US ones are in the 555-01xx range reserved for fiction and the UK
one in Ofcom's drama range.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from callboard.clock import Clock
from callboard.config import Config
from customers import phones as ph
from customers import repo
from customers.model import parse_customer
from store.db import Database

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class DemoCustomer:
    name: str
    kana: str = ""
    company: str = ""
    phones: tuple[str, ...] = ()
    email: str = ""
    owner: str | None = None  # an agent id of the built-in demo center (callboard.config.demo_config)
    memo: str = ""
    notes: tuple[tuple[str, int, str], ...] = ()  # (agent id, days ago, text)


DEMO_CUSTOMERS: tuple[DemoCustomer, ...] = (
    DemoCustomer("山田 花子", "ヤマダ ハナコ", "", ("+81 90-5550-0101",), "hanako.yamada@example.jp", "bob",
                 "定期購入のお客様。午前中の連絡を希望。",
                 (("bob", 3, "配送日の変更を受付。次回は月末着。"), ("alice", 40, "請求書の再発行を依頼された。"))),
    DemoCustomer("鈴木 一郎", "スズキ イチロウ", "株式会社すずき商事", ("+81 3-5550-0102", "+81 80-5550-0102"),
                 "ichiro.suzuki@example.jp", "heidi", "法人契約 20 席。更新は 4 月。",
                 (("heidi", 7, "追加 5 席の見積もりを送付済み。"),)),
    DemoCustomer("佐藤 美咲", "サトウ ミサキ", "", ("+81 90-5550-0103",), "", None, ""),
    DemoCustomer("高橋 健", "タカハシ ケン", "高橋工務店", ("+81 6-5550-0104",), "ken@takahashi-koumuten.example.jp",
                 "carol", "", (("carol", 1, "ルーターの再起動で復旧。再発したら交換。"),)),
    DemoCustomer("田中 由美", "タナカ ユミ", "", ("+81 80-5550-0105",), "", None,
                 "聴覚に配慮: ゆっくり、はっきり話す。"),
    DemoCustomer("伊藤 直樹", "イトウ ナオキ", "伊藤歯科クリニック", ("+81 45-550-0106",), "info@ito-dental.example.jp",
                 "mallory", "支払いは口座振替。", (("mallory", 12, "先月分の引き落としが不成立。再請求の案内をした。"),)),
    DemoCustomer("渡辺 さくら", "ワタナベ サクラ", "", ("+81 70-5550-0107",), "sakura.w@example.jp", None, ""),
    DemoCustomer("中村 翔太", "ナカムラ ショウタ", "ナカムラ運輸株式会社", ("+81 52-550-0108",), "", "grace",
                 "見積もり検討中。競合と比較している。"),
    DemoCustomer("小林 恵子", "コバヤシ ケイコ", "", ("+81 90-5550-0109",), "", "alice", "",
                 (("alice", 0, "ログインできない件、パスワード再設定で解決。"),)),
    DemoCustomer("加藤 大輔", "カトウ ダイスケ", "加藤法律事務所", ("+81 3-5550-0110",), "office@kato-law.example.jp", None,
                 "代表番号。担当者名を確認してから取り次ぐ。"),
    DemoCustomer("Emily Carter", "", "Carter & Finch LLP", ("+1 212-555-0111",), "emily.carter@example.com", "judy",
                 "Prefers email follow-ups.", (("judy", 2, "Sent the renewal quote; she will call back Friday."),)),
    DemoCustomer("James O'Neill", "", "", ("+1 415-555-0112",), "", None, ""),
    DemoCustomer("Priya Raman", "", "Northwind Traders", ("+1 312-555-0113", "+1 312-555-0114"),
                 "priya@northwind.example.com", "oscar", "Two sites; invoices go to the Chicago office.",
                 (("oscar", 5, "Card on file expired; she updated it on the call."),)),
    DemoCustomer("Michael Brown", "", "", ("+1 206-555-0115",), "", None, "Called about a delayed delivery twice."),
    DemoCustomer("Sarah Nguyen", "", "Bluebird Cafe", ("+1 503-555-0116",), "owner@bluebird.example.com", "grace", ""),
    DemoCustomer("Oliver Hughes", "", "Hughes & Daughters Ltd", ("+44 20 7946 0117",), "oliver@hughes.example.co.uk",
                 None, "UK customer: 9 hours behind Tokyo in winter."),
    DemoCustomer("Maria Garcia", "", "", ("+1 305-555-0118",), "", "dave", "",
                 (("dave", 9, "Asked for the Spanish manual; sent the link."),)),
    # one line shared by two people: a family's home phone, so the pop lists both
    DemoCustomer("木村 拓也", "キムラ タクヤ", "", ("+81 3-5550-0119",), "", None, "自宅の固定電話。"),
    DemoCustomer("木村 明美", "キムラ アケミ", "", ("+81 3-5550-0119", "+81 90-5550-0120"), "", "bob", "拓也さんの奥様。"),
)


def caller_numbers(*, owned: bool = False) -> tuple[str, ...]:
    """Every phone of DEMO_CUSTOMERS as E.164 (what Twilio sends as From), each once, in order; `owned`: only
    those of customers with an owner (whose calls offer mode offers to the owner first)."""
    numbers = (ph.normalize(raw, "JP") for c in DEMO_CUSTOMERS if c.owner or not owned for raw in c.phones)
    return tuple(dict.fromkeys(numbers))


def owner_in(config: Config, wanted: str | None, index: int) -> str | None:
    """`wanted` if the config has that agent; else one of its agents by position; None without an owner."""
    if wanted is None or not config.agents:
        return None
    if config.agent(wanted) is not None:
        return wanted
    return config.agents[index % len(config.agents)].id


async def seed_if_empty(db: Database, config: Config, clock: Clock) -> int:
    """Write DEMO_CUSTOMERS (and their notes) if the directory has no customer; the number written (0: it had some).

    One transaction: the emptiness check and the writes commit together, or nothing is written."""
    now_ms = clock.now_ms()
    region = config.center.default_region
    agents = frozenset(a.id for a in config.agents)
    async with db.begin() as conn:
        if await repo.count(conn) > 0:
            return 0
        for i, demo in enumerate(DEMO_CUSTOMERS):
            owner = owner_in(config, demo.owner, i)
            owner_agent = config.agent(owner) if owner else None
            team = owner_agent.team if owner_agent else None
            fields = parse_customer({"name": demo.name, "kana": demo.kana, "company": demo.company,
                                     "phones": list(demo.phones), "email": demo.email, "owner": owner, "team": team,
                                     "memo": demo.memo}, region=region, agents=agents)
            customer_id = await repo.create(conn, fields, now_ms - 90 * DAY_MS)
            for agent, days_ago, text in sorted(demo.notes, key=lambda n: -n[1]):  # oldest first, as written
                author = owner_in(config, agent, i) or agent
                await repo.add_note(conn, customer_id, author, text, None, now_ms - days_ago * DAY_MS - 3_600_000)
    return len(DEMO_CUSTOMERS)


MIGRATION_WAIT_S = 30.0  # the demo waits this long for the start-up migration before giving up on the seed
MIGRATION_POLL_S = 0.2


async def seed_for_demo(db: Database | None, config: Config, clock: Clock) -> int:
    """seed_if_empty once the start-up migration is done; every outcome is one log line, and a database that
    fails only costs the demo its known callers (returns 0), never the demo itself."""
    if db is None:
        return 0
    for _ in range(int(MIGRATION_WAIT_S / MIGRATION_POLL_S)):  # the migration has no event to wait on: a flag
        if db.migrated:
            break
        await asyncio.sleep(MIGRATION_POLL_S)
    if not db.migrated:
        log.warning("demo: database %s is not migrated after %.0f s; no demo customers were written",
                    db.describe(), MIGRATION_WAIT_S)
        return 0
    try:
        written = await seed_if_empty(db, config, clock)
    except Exception:  # a boundary: the demo goes on without its directory
        log.exception("demo: writing the demo customers into %s failed", db.describe())
        return 0
    if written:
        log.info("demo: the customer directory was empty; wrote %d demo customers (%s)", written, db.describe())
    else:
        log.info("demo: the customer directory already has customers; the demo left it as it is (%s)", db.describe())
    return written
