"""The screen pop with the directory (DESIGN.md "Customers"): real signed Twilio webhooks on a real instance,
a real agent websocket, the directory on SQLite and PostgreSQL. The lookup runs beside the webhook, never
in front of its answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from callboard import keys
from callboard.services import SERVICES
from callflow.testing import FakeTwilio
from customers import lookup as lookup_module
from customers.app import CALLER_LOOKUP
from store.db import Database
from tests.conftest import TWILIO_TOKEN, WsClient, connect, token

SUPPORT = "+15550000001"
CALLER = "+81312345678"


def sid(n: int) -> str:
    return f"CA{n:032x}"


async def next_pop(ws: WsClient, timeout: float = 10.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"no pop; got {[m['type'] for m in ws.messages]}")
        msg = await ws.recv(left)
        if msg["type"] == "pop":
            return msg


class Call:
    """One caller through incoming -> agent leg -> bridge, signed as Twilio signs."""

    def __init__(self, twilio: FakeTwilio, n: int, caller: str = CALLER) -> None:
        self.twilio, self.sid, self.leg, self.caller = twilio, sid(n), sid(n + 5000), caller

    async def _ok(self, route: str, params: dict[str, str], query: dict[str, str] | None = None) -> str:
        status, body = await self.twilio.post(route, params, query)
        assert status == 200 and "<Response" in body, (route, status, body)
        return body

    async def incoming(self) -> str:
        return await self._ok("incoming", {"CallSid": self.sid, "From": self.caller, "To": SUPPORT,
                                           "CallStatus": "ringing", "Direction": "inbound"})

    async def bridge(self, agent: str = "alice") -> None:
        await self._ok("agent", {"CallSid": self.leg, "From": f"client:{agent}", "To": "", "queue": "support"})
        await self._ok("bridge", {"CallSid": self.sid, "DequeingCallSid": self.leg, "QueueTime": "4",
                                  "QueueSid": "QU1", "From": self.caller, "To": SUPPORT},
                       {"queue": "support", "agent": agent})


@pytest.fixture
async def center(make_instance: Any, aiohttp_client: Any, db: Database) -> Any:
    server = await make_instance(db=db)
    client = await aiohttp_client(server)
    ws = await connect(server, token("alice"))
    await ws.wait_for(lambda s: s["agents"]["alice"]["state"] == "available")
    yield server, client, ws
    await ws.close()


async def _customer(client: Any, **body: Any) -> dict[str, Any]:
    r = await client.post("/api/customers", json=body, headers={"Authorization": f"Bearer {token('bob')}"})
    assert r.status == 201, await r.text()
    return dict(await r.json())


async def test_pop_on_a_signed_bridge_lists_both_customers_of_one_number(center: Any, redis: Redis) -> None:
    server, client, ws = center
    father = await _customer(client, name="山田 太郎", kana="ヤマダ タロウ", phones=["03-1234-5678"], owner="bob",
                             memo="長男が代理で電話することあり")
    daughter = await _customer(client, name="山田 花子", phones=["+81 3 1234 5678", "090-1111-2222"], team="support")
    for i in range(4):
        r = await client.post(f"/api/customers/{father['id']}/notes", json={"text": f"第{i}回 応対", "call_sid": sid(90 + i)},
                              headers={"Authorization": f"Bearer {token('bob')}"})
        assert r.status == 201
    call = Call(FakeTwilio(client, TWILIO_TOKEN), 1)
    body = await call.incoming()
    assert "<Enqueue" in body
    await server.app[CALLER_LOOKUP].wait_idle()
    stored = json.loads(await redis.get(keys.caller(call.sid)))
    assert stored["withheld"] is False and "directory_unavailable" not in stored
    assert [c["id"] for c in stored["customers"]] == [father["id"], daughter["id"]]  # notes made father newer
    assert (stored["owner"], stored["owner_team"]) == ("bob", "support")
    assert 0 < await redis.pttl(keys.caller(call.sid)) <= 12 * 3600 * 1000

    await call.bridge("alice")
    pop = await next_pop(ws)
    assert pop["call_sid"] == call.sid and pop["from"] == CALLER and pop["queue"] == "support"
    assert pop["withheld"] is False and "lookup_pending" not in pop
    first, second = pop["customers"]
    assert (first["id"], first["name"], first["kana"], first["owner"]) == (father["id"], "山田 太郎", "ヤマダ タロウ", "bob")
    assert first["memo"] == "長男が代理で電話することあり"
    assert [n["text"] for n in first["notes"]] == ["第3回 応対", "第2回 応対", "第1回 応対"]
    assert first["notes"][0]["call_sid"] == sid(93) and first["notes"][0]["agent"] == "bob"
    assert (second["id"], second["owner"], second["notes"]) == (daughter["id"], None, [])

    # a reconnecting softphone gets the same pop again while the call lasts
    again = await connect(server, token("alice"))
    try:
        assert (await next_pop(again))["customers"] == pop["customers"]
    finally:
        await again.close()


async def test_a_bridge_before_the_lookup_is_done_pops_twice(center: Any, redis: Redis) -> None:
    server, client, ws = center
    known = await _customer(client, name="Sato", phones=["03-1234-5678"])
    lookup = server.app[CALLER_LOOKUP]
    flow = server.app[SERVICES].callflow
    flow.caller_lookup = None  # hold the lookup back: the bridge comes first
    call = Call(FakeTwilio(client, TWILIO_TOKEN), 2)
    await call.incoming()
    await call.bridge("alice")
    pop = await next_pop(ws)
    assert pop["call_sid"] == call.sid and pop["customers"] == [] and pop["lookup_pending"] is True
    lookup.start(call.sid, CALLER)  # the lookup finishes now
    await lookup.wait_idle()
    second = await next_pop(ws)
    assert second["call_sid"] == call.sid and "lookup_pending" not in second
    assert [c["id"] for c in second["customers"]] == [known["id"]]
    assert second["from"] == CALLER and second["waited_s"] == pop["waited_s"]


async def test_withheld_and_unknown_callers(center: Any, redis: Redis) -> None:
    server, client, ws = center
    call = Call(FakeTwilio(client, TWILIO_TOKEN), 3, caller="anonymous")
    await call.incoming()
    await server.app[CALLER_LOOKUP].wait_idle()
    await call.bridge("alice")
    pop = await next_pop(ws)
    assert pop["withheld"] is True and pop["customers"] == []
    stored = json.loads(await redis.get(keys.caller(call.sid)))
    assert stored == {"withheld": True, "customers": [], "owner": None, "owner_team": None}
    unknown = Call(FakeTwilio(client, TWILIO_TOKEN), 4, caller="+81355550000")
    await unknown.incoming()
    await server.app[CALLER_LOOKUP].wait_idle()
    stored = json.loads(await redis.get(keys.caller(unknown.sid)))
    assert stored == {"withheld": False, "customers": [], "owner": None, "owner_team": None}


async def test_a_database_that_is_down_pops_directory_unavailable(make_instance: Any, aiohttp_client: Any,
                                                                 redis: Redis) -> None:
    down = Database.from_url("postgresql://postgres@127.0.0.1:9/nowhere")
    down.migrated = True  # it went away after start-up
    try:
        server = await make_instance(db=down)
        client = await aiohttp_client(server)
        ws = await connect(server, token("alice"))
        await ws.wait_for(lambda s: s["agents"]["alice"]["state"] == "available")
        call = Call(FakeTwilio(client, TWILIO_TOKEN), 5)
        await call.incoming()
        await server.app[CALLER_LOOKUP].wait_idle()
        await call.bridge("alice")
        pop = await next_pop(ws)
        assert pop["customers"] == [] and pop["directory_unavailable"] is True and pop["withheld"] is False
        await ws.close()
    finally:
        await down.dispose()


async def test_the_webhook_answers_while_a_hanging_database_is_still_being_asked(
        make_instance: Any, aiohttp_client: Any, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that accepts connections and never answers: Twilio gets its TwiML, the lookup times out."""
    monkeypatch.setattr(lookup_module, "LOOKUP_TIMEOUT_S", 1.0)
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never answer

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    hanging = Database.from_url(f"postgresql://postgres@127.0.0.1:{port}/hangs")
    hanging.migrated = True
    try:
        server = await make_instance(db=hanging)
        client = await aiohttp_client(server)
        ws = await connect(server, token("alice"))
        await ws.wait_for(lambda s: s["agents"]["alice"]["state"] == "available")
        call = Call(FakeTwilio(client, TWILIO_TOKEN), 6)
        body = await call.incoming()
        assert "<Enqueue" in body
        lookup = server.app[CALLER_LOOKUP]
        assert call.sid in lookup._pending, "the answer came back while the lookup still waits on the database"
        assert await redis.get(keys.caller(call.sid)) is None
        await lookup.wait_idle()
        stored = json.loads(await redis.get(keys.caller(call.sid)))
        assert stored["directory_unavailable"] is True and stored["customers"] == []
        await ws.close()
    finally:
        silent.close()
        for writer in held:
            writer.close()
        await hanging.dispose()


async def test_lookups_arriving_together_are_answered_together(center: Any, redis: Redis, db: Database) -> None:
    """Thirty signed incomings at once: every caller's answer is right, found in fewer queries than callers."""
    from sqlalchemy import event

    server, client, ws = center
    known = await _customer(client, name="Sato", phones=["03-1234-5678"])
    other = await _customer(client, name="Suzuki", phones=["090-1111-2222"])
    queries: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "customer_phones" in statement:
            queries.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        twilio = FakeTwilio(client, TWILIO_TOKEN)
        callers = [CALLER, "+81 90 1111 2222", "anonymous", "+81355550000", "client:alice"] * 6
        calls = [Call(twilio, 100 + i, caller=c) for i, c in enumerate(callers)]
        await asyncio.gather(*(c.incoming() for c in calls))
        lookup = server.app[CALLER_LOOKUP]
        await lookup.wait_idle()
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    expected = {CALLER: [known["id"]], "+81 90 1111 2222": [other["id"]], "anonymous": [], "+81355550000": [],
                "client:alice": []}
    for call in calls:
        stored = json.loads(await redis.get(keys.caller(call.sid)))
        assert [c["id"] for c in stored["customers"]] == expected[call.caller], call.caller
        assert stored["withheld"] is (call.caller == "anonymous") and "directory_unavailable" not in stored
    assert 1 <= len(queries) < 18, f"{len(queries)} directory queries for 18 numbered callers"
    # lookups started together (no await in between) are one batch: one query for twelve callers
    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        queries.clear()
        for i in range(12):
            lookup.start(sid(300 + i), CALLER if i % 2 else "+81 90 1111 2222")
        await lookup.wait_idle()
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert len(queries) == 1, queries
    for i in range(12):
        stored = json.loads(await redis.get(keys.caller(sid(300 + i))))
        assert [c["id"] for c in stored["customers"]] == [known["id"] if i % 2 else other["id"]]
    # the bridge's fallback lookup leaves an answer that is already there alone
    lookup.start(calls[0].sid, "+81399999999", only_if_missing=True)
    await lookup.wait_idle()
    assert [c["id"] for c in json.loads(await redis.get(keys.caller(calls[0].sid)))["customers"]] == [known["id"]]
