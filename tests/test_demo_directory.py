"""The demo's customer directory (simulator/directory.py): written through customers/ into an empty directory
only, on SQLite and PostgreSQL (the `db` fixture); a directory with any customer is never touched."""

from __future__ import annotations

from callboard.clock import FakeClock
from callboard.config import demo_config
from customers import repo
from customers.model import parse_customer
from simulator import directory
from store.db import Database
from tests.conftest import make_config

NOW_MS = 1_763_700_000_000


async def test_an_empty_directory_gets_the_demo_customers_and_every_demo_caller_finds_one(db: Database) -> None:
    config = demo_config()
    assert await directory.seed_if_empty(db, config, FakeClock(NOW_MS)) == len(directory.DEMO_CUSTOMERS) >= 12
    async with db.connect() as conn:
        assert await repo.count(conn) == len(directory.DEMO_CUSTOMERS)
        found = await repo.by_phones(conn, directory.caller_numbers())
        # the family's shared home line pops both of them
        shared = found["+81355500119"]
        assert {c["name"] for c in shared} == {"木村 拓也", "木村 明美"}
        kana = await repo.search(conn, "すずき", region="JP")  # the kana reading, typed in hiragana
        notes_of = {c["id"]: await repo.notes(conn, c["id"]) for c in await repo.search(conn, "", region="JP", limit=100)}
    assert all(found[n] for n in directory.caller_numbers()), [n for n, c in found.items() if not c]
    assert [c["company"] for c in kana] == ["株式会社すずき商事"]
    owners = {c["owner"] for entries in found.values() for c in entries} - {None}
    assert len(owners) >= 5 and owners <= {a.id for a in config.agents}
    assert sum(bool(n) for n in notes_of.values()) >= 5  # some have history, newest first
    assert all(n[0]["at_ms"] >= n[-1]["at_ms"] for n in notes_of.values() if n)


async def test_a_directory_with_any_customer_is_left_as_it_is(db: Database) -> None:
    config = make_config()
    mine = parse_customer({"name": "Real Customer", "phones": ["+81 3-5550-0102"]}, region="JP")  # a demo number too
    async with db.begin() as conn:
        real_id = await repo.create(conn, mine, NOW_MS)
    assert await directory.seed_if_empty(db, config, FakeClock(NOW_MS + 1000)) == 0
    assert await directory.seed_for_demo(db, config, FakeClock(NOW_MS + 2000)) == 0
    async with db.connect() as conn:
        assert await repo.count(conn) == 1
        kept = await repo.get(conn, real_id)
    assert kept is not None and kept["name"] == "Real Customer" and kept["notes"] == []
    assert kept["updated_ms"] == NOW_MS


async def test_a_second_demo_start_adds_nothing_and_owners_fit_any_config(db: Database) -> None:
    config = make_config()  # the test center: alice, bob, carol, dave — not the demo center's twelve
    assert await directory.seed_for_demo(db, config, FakeClock(NOW_MS)) == len(directory.DEMO_CUSTOMERS)
    assert await directory.seed_for_demo(db, config, FakeClock(NOW_MS + 1000)) == 0  # the demo restarted
    async with db.connect() as conn:
        assert await repo.count(conn) == len(directory.DEMO_CUSTOMERS)
        everyone = await repo.search(conn, "", region="JP", limit=100)
    agents = {a.id: a.team for a in config.agents}
    assert {c["owner"] for c in everyone} - {None} <= set(agents)
    assert all(c["team"] == agents[c["owner"]] for c in everyone if c["owner"])
