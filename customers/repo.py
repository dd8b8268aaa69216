"""The directory's queries: small named functions over one AsyncConnection (SQLAlchemy Core, no ORM).

Callers own the transaction (`async with db.begin() as conn`), so a view, an import batch or a lookup
decides what is atomic. Phone lookups go through the indexed `customer_phones.e164`; substring search is
one LIKE per term over the folded `search_text` (trigram-indexed: pg_trgm on PostgreSQL, FTS5 on SQLite).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    column,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    table,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from customers import phones as ph
from customers.fold import fold, like_pattern
from customers.model import POP_NOTES, CustomerFields, new_id
from customers.schema import customer_notes, customer_phones, customers

MAX_SEARCH_LIMIT = 100
_PUBLIC = (customers.c.id, customers.c.name, customers.c.kana, customers.c.company, customers.c.email,
           customers.c.owner, customers.c.team, customers.c.external_id, customers.c.memo,
           customers.c.created_ms, customers.c.updated_ms)


def _customer(row: Any, phones: list[str]) -> dict[str, Any]:
    m = row._mapping
    return {"id": m["id"], "name": m["name"], "kana": m["kana"], "company": m["company"], "phones": phones,
            "email": m["email"], "owner": m["owner"], "team": m["team"], "external_id": m["external_id"],
            "memo": m["memo"], "created_ms": int(m["created_ms"]), "updated_ms": int(m["updated_ms"])}


def _note(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {"id": m["id"], "agent": m["agent"], "text": m["text"], "call_sid": m["call_sid"], "at_ms": int(m["at_ms"])}


async def _phones_of(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, list[str]]:
    ids = list(ids)
    out: dict[str, list[str]] = {i: [] for i in ids}
    if not ids:
        return out
    rows = await conn.execute(
        select(customer_phones.c.customer_id, customer_phones.c.e164)
        .where(customer_phones.c.customer_id.in_(ids))
        .order_by(customer_phones.c.customer_id, customer_phones.c.position))
    for customer_id, e164 in rows:
        out[customer_id].append(e164)
    return out


async def _set_phones(conn: AsyncConnection, customer_id: str, numbers: tuple[str, ...]) -> None:
    await conn.execute(delete(customer_phones).where(customer_phones.c.customer_id == customer_id))
    if numbers:
        await conn.execute(insert(customer_phones), [
            {"customer_id": customer_id, "e164": n, "position": i} for i, n in enumerate(numbers)])


async def create(conn: AsyncConnection, fields: CustomerFields, now_ms: int, customer_id: str | None = None) -> str:
    customer_id = customer_id or new_id()
    await conn.execute(insert(customers).values(id=customer_id, created_ms=now_ms, updated_ms=now_ms,
                                                **stored_row(fields, conn.dialect.name)))
    await _set_phones(conn, customer_id, fields.phones)
    return customer_id


async def replace(conn: AsyncConnection, customer_id: str, fields: CustomerFields, now_ms: int) -> bool:
    """Replace the editable fields; False if there is no such customer."""
    result = await conn.execute(update(customers).where(customers.c.id == customer_id)
                                .values(updated_ms=now_ms, **stored_row(fields, conn.dialect.name)))
    if result.rowcount == 0:
        return False
    await _set_phones(conn, customer_id, fields.phones)
    return True


async def remove(conn: AsyncConnection, customer_id: str) -> bool:
    """Delete a customer, its phones and its notes (explicitly: not every SQLite connection enforces FKs)."""
    await conn.execute(delete(customer_notes).where(customer_notes.c.customer_id == customer_id))
    await conn.execute(delete(customer_phones).where(customer_phones.c.customer_id == customer_id))
    result = await conn.execute(delete(customers).where(customers.c.id == customer_id))
    return result.rowcount > 0


async def get(conn: AsyncConnection, customer_id: str, *, notes_limit: int | None = 200) -> dict[str, Any] | None:
    """The customer with its notes, newest first."""
    row = (await conn.execute(select(*_PUBLIC).where(customers.c.id == customer_id))).first()
    if row is None:
        return None
    out = _customer(row, (await _phones_of(conn, [customer_id]))[customer_id])
    out["notes"] = await notes(conn, customer_id, limit=notes_limit)
    return out


async def id_by_external_id(conn: AsyncConnection, external_id: str) -> str | None:
    return (await conn.execute(select(customers.c.id).where(customers.c.external_id == external_id))).scalar()


async def exists(conn: AsyncConnection, customer_id: str) -> bool:
    return (await conn.execute(select(customers.c.id).where(customers.c.id == customer_id))).first() is not None


async def notes(conn: AsyncConnection, customer_id: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    query = (select(customer_notes).where(customer_notes.c.customer_id == customer_id)
             .order_by(customer_notes.c.at_ms.desc(), customer_notes.c.id.desc()))
    if limit is not None:
        query = query.limit(limit)
    return [_note(r) for r in await conn.execute(query)]


async def add_note(conn: AsyncConnection, customer_id: str, agent: str, text: str, call_sid: str | None,
                   now_ms: int) -> dict[str, Any] | None:
    """Add a note; None if the customer does not exist. The customer's updated_ms moves too, so the pop and
    the pop lists the customers last spoken with first."""
    touched = await conn.execute(update(customers).where(customers.c.id == customer_id).values(updated_ms=now_ms))
    if touched.rowcount == 0:
        return None
    note = {"id": new_id("nt_"), "agent": agent, "text": text, "call_sid": call_sid, "at_ms": now_ms}
    await conn.execute(insert(customer_notes).values(customer_id=customer_id, **note))
    return note


async def search(conn: AsyncConnection, query: str, *, region: str, limit: int = 20) -> list[dict[str, Any]]:
    """Customers matching every word of `query` (substring of any field), or any spelling of a number."""
    limit = max(1, min(limit, MAX_SEARCH_LIMIT))
    text = query.strip()
    stmt = select(*_PUBLIC)
    if text:
        dialect = conn.dialect.name
        if ph.looks_like_phone(text):
            e164 = ph.try_normalize(text, region)
            if e164:
                # A whole valid number: every stored spelling of it is this E.164, so the phones index answers.
                stmt = stmt.where(customers.c.id.in_(
                    select(customer_phones.c.customer_id).where(customer_phones.c.e164 == e164)))
            else:
                # Part of a number (the last digits, no area code): its digits anywhere (trigrams on PostgreSQL).
                stmt = stmt.where(_contains(ph.digits(text), dialect))
        else:
            stmt = stmt.where(and_(*(_contains(w, dialect) for w in fold(text).split())))
        # `name || ''`: sort the matches, never walk the name index hoping for early ones — a rare term would
        # visit every row in random order (measured: ~0.7 s at 100,000 customers on SQLite).
        stmt = stmt.order_by(customers.c.name.concat(""), customers.c.id)
    else:
        stmt = stmt.order_by(customers.c.name, customers.c.id)  # the name index: the first page at once
    rows = list(await conn.execute(stmt.limit(limit)))
    phones = await _phones_of(conn, [r.id for r in rows])
    return [_customer(r, phones[r.id]) for r in rows]


_FTS = table("customers_fts", column("rowid"), column("customers_fts"))
# SQLite stores search_text "spread": a separator before and after every character. A word of n characters
# becomes a pattern of 2n+1, so even a 1- or 2-character word (山田, a two-kanji family name) has trigrams
# for the FTS5 trigram index, and a spread pattern matches exactly where the word occurs.
SPREAD = "\x1f"


def spread(text: str) -> str:
    return SPREAD + "".join(c + SPREAD for c in text.replace(SPREAD, ""))


def _fts_query(word: str) -> str:
    """FTS5 query for a word in spread text: every adjacent pair "a␟b" (one trigram each, about as selective
    as a bigram) must be there; the separator-only trigrams "␟a␟" are in most rows and only slow the
    intersection, so a single character is the one case that uses one."""
    chars = word.replace(SPREAD, "")
    grams = [chars[i] + SPREAD + chars[i + 1] for i in range(len(chars) - 1)] or [spread(chars)]
    return " AND ".join('"' + g.replace('"', '""') + '"' for g in dict.fromkeys(grams))


# PostgreSQL's spread copy of search_text: a generated column (store/migrations/versions/0003_search_spread.py)
# holding every character three times, so a 1-2 character word has trigrams for pg_trgm. Not in
# customers/schema.py: SQLite has no such column, and the database alone writes it.
_PG_SPREAD = literal_column("customers.search_spread")


def pg_spread(text: str) -> str:
    """A word as it occurs in search_spread (the migration's regexp_replace(search_text, '(.)', '\\1\\1\\1'))."""
    return "".join(c * 3 for c in text)


def stored_row(fields: CustomerFields, dialect: str) -> dict[str, Any]:
    """The customers row as this backend stores it (search_text spread on SQLite)."""
    row = fields.row()
    if dialect == "sqlite":
        row["search_text"] = spread(row["search_text"])
    return row


def _contains(word: str, dialect: str) -> Any:
    """`word` anywhere in search_text, through the trigram index of the backend where one can help.

    PostgreSQL: LIKE uses the pg_trgm index on search_text; a word under 3 characters has no trigram there,
    so it is looked for in `search_spread` (every character three times, its own pg_trgm index), where it has.
    SQLite: the FTS5 trigram table over the spread search_text narrows to candidate rows for words of any
    length, and LIKE re-checks each (so the index can only narrow, never add a row).
    """
    if dialect == "postgresql" and len(word) < 3:
        # The spread column (migration 0003) gives the word trigrams; strpos() on search_text keeps the
        # answer exactly the plain substring test (a filter on the few candidate rows the index finds).
        spread_like = _PG_SPREAD.like(like_pattern(pg_spread(word)), escape="\\")
        return and_(spread_like, func.strpos(customers.c.search_text, word) > 0)
    if dialect == "sqlite":
        pattern = spread(word)
        candidates = select(_FTS.c.rowid).where(_FTS.c.customers_fts.op("MATCH")(_fts_query(word)))
        like = customers.c.search_text.like(like_pattern(pattern), escape="\\")
        return and_(literal_column("customers.rowid").in_(candidates), like)
    return customers.c.search_text.like(like_pattern(word), escape="\\")


async def by_phone(conn: AsyncConnection, e164: str, *, notes_limit: int = POP_NOTES) -> list[dict[str, Any]]:
    """Pop entries of every customer whose phones hold `e164`: most recently updated first."""
    return (await by_phones(conn, [e164], notes_limit=notes_limit))[e164]


POP_MATCHES = 20  # a line shared by more than 20 customers is not a person; the pop stays small
_RANK = func.row_number().over(partition_by=customer_phones.c.e164,
                               order_by=(customers.c.updated_ms.desc(), customers.c.id)).label("rank")
_RANKED = (select(customer_phones.c.e164, customers.c.id, customers.c.name, customers.c.kana, customers.c.company,
                  customers.c.owner, customers.c.team, customers.c.memo, _RANK)
           .join(customers, customer_phones.c.customer_id == customers.c.id)
           .where(customer_phones.c.e164.in_(bindparam("numbers", expanding=True)))).subquery()
# built once: the caller lookup runs it for every batch of calls, and the construct's cache key is per object
_BY_PHONES = select(_RANKED).where(_RANKED.c.rank <= POP_MATCHES).order_by(_RANKED.c.e164, _RANKED.c.rank)


async def by_phones(conn: AsyncConnection, numbers: Iterable[str], *,
                    notes_limit: int = POP_NOTES) -> dict[str, list[dict[str, Any]]]:
    """by_phone for several numbers in one query (the caller lookup's batches): {e164: pop entries}."""
    wanted = sorted(set(numbers))
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in wanted}
    if not wanted:
        return out
    rows = list(await conn.execute(_BY_PHONES, {"numbers": wanted}))
    notes_of: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.id not in notes_of:
            notes_of[r.id] = await notes(conn, r.id, limit=notes_limit)
        out[r.e164].append({"id": r.id, "name": r.name, "kana": r.kana, "company": r.company, "owner": r.owner,
                            "team": r.team, "memo": r.memo, "notes": list(notes_of[r.id])})
    return out


async def count(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(customers))).scalar() or 0)


async def stream_all(conn: AsyncConnection, batch: int = 1000) -> AsyncIterator[dict[str, Any]]:
    """Every customer in id order, in keyset-paged batches (bounded memory, no long-held cursor)."""
    after = ""
    while True:
        rows = list(await conn.execute(select(*_PUBLIC).where(customers.c.id > literal(after))
                                       .order_by(customers.c.id).limit(batch)))
        if not rows:
            return
        phones = await _phones_of(conn, [r.id for r in rows])
        for r in rows:
            yield _customer(r, phones[r.id])
        after = rows[-1].id
