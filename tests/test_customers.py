"""The customer directory (DESIGN.md "Customers"): normalization, search, notes, import/export, roles, limits —
the queries on SQLite and PostgreSQL (the `db` fixture), the API through a real instance."""

from __future__ import annotations

import csv
import io
from typing import Any

import aiohttp
import pytest

from customers import phones as ph
from customers import repo
from customers.fold import fold, like_pattern
from customers.model import FieldError, parse_customer, parse_note
from store.db import Database
from tests.conftest import token

# -- normalization (pure) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, region, e164", [
    ("03-1234-5678", "JP", "+81312345678"),  # national, hyphens
    ("03 1234 5678", "JP", "+81312345678"),  # spaces
    ("(03)1234-5678", "JP", "+81312345678"),
    ("０３－１２３４－５６７８", "JP", "+81312345678"),  # full-width, as Japanese IMEs type it
    ("+81312345678", "JP", "+81312345678"),  # international
    ("+81 3-1234-5678", "US", "+81312345678"),  # international is the same in any region
    ("0081312345678", "US", "+81312345678"),  # 00 international prefix
    ("090-1111-2222", "JP", "+819011112222"),  # mobile
    ("(415) 555-2671", "US", "+14155552671"),
    ("415.555.2671", "US", "+14155552671"),
])
def test_normalize_any_spelling_to_e164(raw: str, region: str, e164: str) -> None:
    assert ph.normalize(raw, region) == e164


@pytest.mark.parametrize("raw", ["", "   ", "12", "abc", "03-1234", "+999 1234 5678", "1" * 41, "+81 3 1234"])
def test_invalid_numbers_are_refused_in_english(raw: str) -> None:
    with pytest.raises(ph.PhoneError) as info:
        ph.normalize(raw, "JP")
    assert info.value.args[0].isascii()


def test_withheld_callers() -> None:
    for caller in ("anonymous", "Restricted", "UNKNOWN", "", "  ", None, "private"):
        assert ph.is_withheld(caller)
    assert not ph.is_withheld("+81312345678")
    assert not ph.is_withheld("client:alice")


def test_folding_makes_spellings_comparable() -> None:
    assert fold("ヤマダ タロウ") == fold("やまだ たろう")
    assert fold("ｱｲｳ") == fold("あいう")  # half-width katakana
    assert fold("ＡＢＣ Corp") == "abc corp"
    assert like_pattern("50%_off\\") == "%50\\%\\_off\\\\%"


def test_customer_validation_names_the_field() -> None:
    ok = parse_customer({"name": " 山田 太郎 ", "phones": ["03-1234-5678", "+81312345678", "090-1111-2222"]}, region="JP")
    assert ok.name == "山田 太郎" and ok.phones == ("+81312345678", "+819011112222")  # duplicates merged
    cases = [
        ({}, "name"), ({"name": ""}, "name"), ({"name": 5}, "name"), ({"name": "x" * 201}, "name"),
        ({"name": "a", "phones": ["03-1234"]}, "phones[0]"), ({"name": "a", "phones": "x" * 100}, "phones[0]"),
        ({"name": "a", "phones": [1]}, "phones[0]"), ({"name": "a", "phones": {"a": 1}}, "phones"),
        ({"name": "a", "phones": ["03-1234-5678"] * 11}, "phones"), ({"name": "a", "email": "nope"}, "email"),
        ({"name": "a", "memo": "m" * 4001}, "memo"), ({"name": "a", "owner": "zed"}, "owner"),
        ({"name": "a", "team": "nope"}, "team"), ({"name": "a", "colour": "red"}, "colour"),
        ({"name": "a\x00b"}, "name"), ([], "body"),
    ]
    for body, field in cases:
        with pytest.raises(FieldError) as info:
            parse_customer(body, region="JP", agents=frozenset({"alice"}), teams=frozenset({"support"}))
        assert info.value.field == field, (body, str(info.value))
    # what a client GETs can be PUT back: the read-only fields are ignored
    parse_customer({"name": "a", "id": "cu_x", "created_ms": 1, "updated_ms": 2, "notes": []}, region="JP")


def test_note_validation() -> None:
    assert parse_note({"text": "called back", "call_sid": "CA" + "0" * 32}) == ("called back", "CA" + "0" * 32)
    for body, field in [({}, "text"), ({"text": "  "}, "text"), ({"text": "x" * 4001}, "text"),
                        ({"text": "a", "call_sid": "bad sid!"}, "call_sid"), ({"text": "a", "x": 1}, "x")]:
        with pytest.raises(FieldError) as info:
            parse_note(body)
        assert info.value.field == field


# -- queries on both backends -------------------------------------------------------------------------------


async def _add(db: Database, now: int = 1000, **body: Any) -> str:
    fields = parse_customer(body, region="JP")
    async with db.begin() as conn:
        return await repo.create(conn, fields, now)


async def test_search_by_any_field_and_any_spelling_of_a_number(db: Database) -> None:
    yamada = await _add(db, name="山田 太郎", kana="ヤマダ タロウ", company="山田商店", email="taro@yamada.example",
                        external_id="CRM-0042", phones=["03-1234-5678"])
    hanako = await _add(db, name="山田 花子", kana="やまだ はなこ", phones=["03-1234-5678", "090-1111-2222"])
    acme = await _add(db, name="John Smith", company="ACME Corp", email="john@acme.example", phones=["+14155552671"])
    pct = await _add(db, name="100% Cotton Ltd")

    async def ids(q: str) -> list[str]:
        async with db.connect() as conn:
            return [c["id"] for c in await repo.search(conn, q, region="JP")]

    assert set(await ids("山田")) == {yamada, hanako}
    assert await ids("やまだ たろう") == [yamada]  # kana typed in hiragana finds katakana, both words must match
    assert await ids("ﾀﾛｳ") == [yamada]  # half-width katakana
    assert await ids("商店") == [yamada]
    assert await ids("acme") == [acme] and await ids("ACME") == [acme]
    assert await ids("yamada.example") == [yamada]
    assert await ids("crm-0042") == [yamada]
    for spelling in ("03-1234-5678", "+81312345678", "0312345678", "+81 3 1234 5678", "１２３４－５６７８", "1234-5678"):
        assert set(await ids(spelling)) == {yamada, hanako}, spelling
    assert await ids("090 1111 2222") == [hanako]
    assert await ids("(415) 555-2671") == [acme]
    assert await ids("100%") == [pct]
    assert await ids("%") == [pct]  # LIKE wildcards are literal
    assert await ids("_") == []
    assert await ids("nobody at all") == []
    assert len(await ids("")) == 4  # no query: the first page by name
    async with db.connect() as conn:
        found = await repo.search(conn, "山田", region="JP", limit=1)
    assert len(found) == 1 and found[0]["phones"][0] == "+81312345678"


async def test_notes_newest_first_and_deleted_with_their_customer(db: Database) -> None:
    cid = await _add(db, name="Sato", phones=["03-1111-2222"])
    async with db.begin() as conn:
        for i in range(5):
            await repo.add_note(conn, cid, "alice", f"note {i}", f"CA{i}", 2000 + i)
        assert await repo.add_note(conn, "cu_missing", "alice", "x", None, 1) is None
    async with db.connect() as conn:
        customer = await repo.get(conn, cid)
        pop = await repo.by_phone(conn, "+81311112222")
    assert customer is not None
    assert [n["text"] for n in customer["notes"]] == [f"note {i}" for i in (4, 3, 2, 1, 0)]
    assert customer["notes"][0] == {"id": customer["notes"][0]["id"], "agent": "alice", "text": "note 4",
                                    "call_sid": "CA4", "at_ms": 2004}
    assert [n["text"] for n in pop[0]["notes"]] == ["note 4", "note 3", "note 2"]  # the pop carries 3
    async with db.begin() as conn:
        assert await repo.remove(conn, cid)
    async with db.connect() as conn:
        assert await repo.get(conn, cid) is None
        assert await repo.notes(conn, cid) == []
        assert await repo.by_phone(conn, "+81311112222") == []


async def test_one_number_several_customers_in_the_pop(db: Database) -> None:
    older = await _add(db, now=1000, name="Father", phones=["03-1234-5678"], owner="bob")
    newer = await _add(db, now=2000, name="Daughter", phones=["03-1234-5678"], memo="prefers email")
    await _add(db, name="Someone else", phones=["03-9999-0000"])
    async with db.connect() as conn:
        pop = await repo.by_phone(conn, "+81312345678")
    assert [c["id"] for c in pop] == [newer, older]
    assert pop[0] == {"id": newer, "name": "Daughter", "kana": "", "company": "", "owner": None, "team": None,
                      "memo": "prefers email", "notes": []}



async def test_several_numbers_in_one_query_as_each_alone(db: Database) -> None:
    """repo.by_phones (the caller lookup's batches) answers every number as by_phone would, 20 at most each."""
    shared = [await _add(db, now=1000 + i, name=f"Tenant {i}", phones=["03-5555-0000"]) for i in range(22)]
    both = await _add(db, now=5000, name="Both", phones=["03-1234-5678", "03-5555-0000"])
    await _add(db, name="Other", phones=["090-1111-2222"])
    numbers = ["+81355550000", "+81312345678", "+81399999999"]
    async with db.connect() as conn:
        batch = await repo.by_phones(conn, numbers + ["+81312345678"])
        alone = {n: await repo.by_phone(conn, n) for n in numbers}
    assert batch == alone
    assert [c["id"] for c in batch["+81355550000"]] == [both] + shared[::-1][:19]  # newest first, 20 of 23
    assert [c["id"] for c in batch["+81312345678"]] == [both] and batch["+81399999999"] == []

# -- the API, through a real instance -----------------------------------------------------------------------


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


AGENT, SUPERVISOR, WALL = token("alice"), token("boss", "supervisor"), token("wall", "wallboard")


@pytest.fixture
async def api(make_instance: Any, db: Database) -> Any:
    server = await make_instance(db=db)
    async with aiohttp.ClientSession(f"http://{server.host}:{server.port}") as http:
        yield http


async def test_create_read_edit_note_and_roles(api: aiohttp.ClientSession) -> None:
    r = await api.post("/api/customers", json={"name": "山田 太郎", "phones": ["03-1234-5678"], "owner": "alice",
                                               "team": "support"}, headers=auth(AGENT))
    assert r.status == 201, await r.text()
    created = await r.json()
    cid = created["id"]
    assert created["phones"] == ["+81312345678"] and created["notes"] == [] and created["owner"] == "alice"
    assert created["created_ms"] == created["updated_ms"] > 0

    r = await api.post(f"/api/customers/{cid}/notes", json={"text": "折り返し希望", "call_sid": "CA123"}, headers=auth(AGENT))
    assert r.status == 201
    note = await r.json()
    assert note["agent"] == "alice" and note["text"] == "折り返し希望" and note["call_sid"] == "CA123"
    r = await api.put(f"/api/customers/{cid}", json={**created, "memo": "VIP", "phones": ["+81 3 1234 5678", "090-1111-2222"]},
                      headers=auth(SUPERVISOR))
    assert r.status == 200, await r.text()
    edited = await r.json()
    assert edited["memo"] == "VIP" and edited["phones"] == ["+81312345678", "+819011112222"]
    assert edited["notes"][0]["id"] == note["id"]

    r = await api.get("/api/customers", params={"q": "090-1111-2222"}, headers=auth(AGENT))
    assert [c["id"] for c in (await r.json())["customers"]] == [cid]

    # roles: agents may not delete, import or export; wallboards may not even read
    assert (await api.delete(f"/api/customers/{cid}", headers=auth(AGENT))).status == 403
    assert (await api.get("/api/customers.csv", headers=auth(AGENT))).status == 403
    assert (await api.post("/api/customers/import", data=b"name\nx\n", headers=auth(AGENT))).status == 403
    for method, path in [("GET", "/api/customers"), ("GET", f"/api/customers/{cid}"), ("POST", "/api/customers"),
                         ("PUT", f"/api/customers/{cid}"), ("POST", f"/api/customers/{cid}/notes")]:
        r = await api.request(method, path, json={"name": "x", "text": "x"}, headers=auth(WALL))
        assert r.status == 403, (method, path)
        r = await api.request(method, path, json={"name": "x", "text": "x"})
        assert r.status == 401 and "bearer" in (await r.json())["error"]
    assert (await api.delete(f"/api/customers/{cid}", headers=auth(SUPERVISOR))).status == 204
    assert (await api.get(f"/api/customers/{cid}", headers=auth(AGENT))).status == 404
    assert (await api.delete(f"/api/customers/{cid}", headers=auth(SUPERVISOR))).status == 404


async def test_bad_input_gets_400_naming_the_field(api: aiohttp.ClientSession) -> None:
    async def bad(method: str, path: str, **kw: Any) -> str:
        r = await api.request(method, path, headers=auth(AGENT), **kw)
        assert r.status == 400, (path, r.status, await r.text())
        body = await r.json()
        assert body["error"].isascii()
        return str(body.get("field"))

    assert await bad("POST", "/api/customers", json={"name": "a", "phones": ["0120-"]}) == "phones[0]"
    assert await bad("POST", "/api/customers", json={"phones": []}) == "name"
    r = await api.post("/api/customers", data=b"{not json", headers={**auth(AGENT), "Content-Type": "application/json"})
    assert r.status == 400 and (await r.json())["field"] == "body"
    r = await api.post("/api/customers", data="[1, 2]", headers={**auth(AGENT), "Content-Type": "application/json"})
    assert r.status == 400 and (await r.json())["field"] == "body"
    assert await bad("GET", "/api/customers", params={"limit": "0"}) == "limit"
    assert await bad("GET", "/api/customers", params={"limit": "many"}) == "limit"
    assert await bad("GET", "/api/customers", params={"q": "x" * 201}) == "q"
    r = await api.post("/api/customers", json={"name": "a", "external_id": "E1"}, headers=auth(AGENT))
    assert r.status == 201
    assert await bad("POST", "/api/customers", json={"name": "b", "external_id": "E1"}) == "external_id"
    cid = (await r.json())["id"]
    assert await bad("POST", f"/api/customers/{cid}/notes", json={"text": ""}) == "text"
    r = await api.post("/api/customers", data="[" * 100000, headers={**auth(AGENT), "Content-Type": "application/json"})
    assert r.status in (400, 413)
    r = await api.post("/api/customers", json={"name": "x", "memo": "m" * 70_000}, headers=auth(AGENT))
    assert r.status == 413  # the app-wide 64 KiB body limit
    assert (await api.post("/api/customers/nope/notes", json={"text": "x"}, headers=auth(AGENT))).status == 404
    assert (await api.put("/api/customers/nope", json={"name": "x"}, headers=auth(AGENT))).status == 404


def _csv_bytes(rows: list[list[str]], encoding: str) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode(encoding)


async def test_import_cp932_with_a_bad_line_then_export_with_bom(api: aiohttp.ClientSession) -> None:
    rows = [["name", "kana", "phones", "company", "external_id", "memo"],
            ["山田 太郎", "ヤマダ タロウ", "03-1234-5678", "山田商店", "K-1", "常連"],
            ["佐藤 花子", "サトウ ハナコ", "０９０－１１１１－２２２２; 03-1234-5678", "", "K-2", "複数行の\nメモ"],
            ["鈴木 一郎", "スズキ", "03-12", "", "K-3", ""],  # bad number: line 5 (the memo above spans 2 lines)
            ["", "", "03-5555-6666", "", "K-4", ""],  # no name: line 6
            ["高橋", "タカハシ", "", "", "K-5", "", "extra cell"]]  # line 7
    data = _csv_bytes(rows, "cp932")
    r = await api.post("/api/customers/import", data=data, headers={**auth(SUPERVISOR), "Content-Type": "text/csv"})
    assert r.status == 200, await r.text()
    result = await r.json()
    assert (result["created"], result["updated"], result["encoding"]) == (2, 0, "cp932")
    assert [e["line"] for e in result["errors"]] == [5, 6, 7]
    assert "phones" in result["errors"][0]["message"] and "'03-12'" in result["errors"][0]["message"]
    assert result["errors"][1]["message"] == "name: is required"
    assert "7 cells" in result["errors"][2]["message"]

    # the same file again, UTF-8 with BOM, one memo changed: upsert by external_id updates, creates nothing
    rows[1][5] = "常連 (更新)"
    r = await api.post("/api/customers/import", data=b"\xef\xbb\xbf" + _csv_bytes(rows[:3], "utf-8"),
                       headers={**auth(SUPERVISOR), "Content-Type": "text/csv"})
    result = await r.json()
    assert (result["created"], result["updated"], result["errors"], result["encoding"]) == (0, 2, [], "utf-8")

    r = await api.get("/api/customers", params={"q": "03-1234-5678"}, headers=auth(AGENT))
    found = {c["external_id"]: c for c in (await r.json())["customers"]}
    assert set(found) == {"K-1", "K-2"}
    assert found["K-1"]["memo"] == "常連 (更新)" and found["K-2"]["memo"] == "複数行の\nメモ"
    assert found["K-2"]["phones"] == ["+819011112222", "+81312345678"]

    r = await api.get("/api/customers.csv", headers=auth(SUPERVISOR))
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
    raw = await r.read()
    assert raw.startswith(b"\xef\xbb\xbf")
    exported = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert exported[0] == ["id", "external_id", "name", "kana", "company", "phones", "email", "owner", "team", "memo"]
    by_ext = {row[1]: row for row in exported[1:]}
    assert by_ext["K-2"][5] == "'+819011112222; +81312345678"  # Excel shows it as text, not a formula
    assert by_ext["K-2"][9] == "複数行の\nメモ"

    # the export re-imports unchanged (ids match: updates only)
    r = await api.post("/api/customers/import", data=raw, headers={**auth(SUPERVISOR), "Content-Type": "text/csv"})
    result = await r.json()
    assert (result["created"], result["updated"], result["errors"]) == (0, 2, [])
    r = await api.get(f"/api/customers/{by_ext['K-2'][0]}", headers=auth(AGENT))
    assert (await r.json())["phones"] == ["+819011112222", "+81312345678"]


async def test_import_refuses_unreadable_files_in_english(api: aiohttp.ClientSession) -> None:
    async def refused(data: bytes) -> str:
        r = await api.post("/api/customers/import", data=data, headers={**auth(SUPERVISOR), "Content-Type": "text/csv"})
        assert r.status == 400, await r.text()
        body = await r.json()
        assert body["field"] == "file" and body["error"].isascii()
        return str(body["error"])

    assert "neither UTF-8 nor cp932" in await refused(b"name\n\x81\x20\xff\xfe")
    assert "empty" in await refused(b"")
    assert "unknown column 'colour'" in await refused(b"name,colour\nx,red\n")
    assert "no 'name' column" in await refused(b"kana\nx\n")
    r = await api.post("/api/customers/import", data=b"id,name\ncu_nothere,X\n",
                       headers={**auth(SUPERVISOR), "Content-Type": "text/csv"})
    result = await r.json()
    assert result["created"] == 0 and result["errors"][0]["line"] == 2 and "no customer" in result["errors"][0]["message"]


async def test_import_as_a_multipart_upload(api: aiohttp.ClientSession) -> None:
    form = aiohttp.FormData()
    form.add_field("file", b"name,phones\nA,03-1234-5678\n", filename="c.csv", content_type="text/csv")
    r = await api.post("/api/customers/import", data=form, headers=auth(SUPERVISOR))
    assert r.status == 200, await r.text()
    assert (await r.json())["created"] == 1


async def test_database_down_is_503_and_the_rest_of_the_service_runs(make_instance: Any, settings: Any) -> None:
    down = Database.from_url("postgresql://postgres@127.0.0.1:9/nowhere")
    down.migrated = True  # as if it had gone away after start-up
    server = await make_instance(db=down)
    try:
        async with aiohttp.ClientSession(f"http://{server.host}:{server.port}") as http:
            r = await http.get("/api/customers", params={"q": "x"}, headers=auth(AGENT))
            assert r.status == 503 and (await r.json())["code"] == "database_unavailable"
            r = await http.post("/api/customers", json={"name": "x"}, headers=auth(AGENT))
            assert r.status == 503
            assert (await http.get("/readyz")).status == 200
            assert (await http.get("/api/snapshot", headers=auth(SUPERVISOR))).status == 200
    finally:
        await down.dispose()


async def test_search_follows_edits_and_deletes(db: Database) -> None:
    """The trigram indexes (pg_trgm; SQLite's FTS5 table kept by triggers) follow every write."""
    cid = await _add(db, name="Watanabe Kenji", company="Orion Logistics 物流", phones=["03-1111-2222"])

    async def ids(q: str) -> list[str]:
        async with db.connect() as conn:
            return [c["id"] for c in await repo.search(conn, q, region="JP")]

    assert await ids("logist") == [cid] and await ids("1111-22") == [cid]
    # 1-2 character words: PostgreSQL's spread column (a generated column, migration 0003) follows too
    assert await ids("物流") == [cid] and await ids("流") == [cid] and await ids("運輸") == []
    async with db.begin() as conn:
        await repo.replace(conn, cid, parse_customer({"name": "Watanabe Kenji", "company": "Vega Freight 運輸",
                                                      "phones": ["03-3333-4444"]}, region="JP"), 2000)
    assert await ids("logist") == [] and await ids("1111-22") == []
    assert await ids("物流") == [] and await ids("流") == []
    assert await ids("運輸") == [cid] and await ids("輸") == [cid] and await ids("輸 vega") == [cid]
    assert await ids("freight") == [cid] and await ids("3333-44") == [cid]
    async with db.begin() as conn:
        await repo.add_note(conn, cid, "alice", "x", None, 3000)  # touches updated_ms only
    assert await ids("freight") == [cid]
    if db.is_sqlite:
        async with db.begin() as conn:  # FTS5 raises if its index and the customers table disagree
            await conn.exec_driver_sql("INSERT INTO customers_fts(customers_fts, rank) VALUES ('integrity-check', 1)")
    async with db.begin() as conn:
        await repo.remove(conn, cid)
    assert await ids("freight") == [] and await ids("watanabe") == [] and await ids("運輸") == []
