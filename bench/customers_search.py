"""Customer directory search at 100,000 customers: the query the API runs (customers/repo.py search), timed.

Loads N generated customers (Japanese names with kana, companies, emails, external ids; one or two phone
numbers each, every tenth number shared by two customers as a family line) into a fresh database, then
runs each kind of search `--runs` times and prints one JSON line per kind:
{"bench": "customers_search", "load": {...}, "kind", "query", "matches", "p50_ms", "p95_ms", "max_ms", "targets"}.

    python bench/customers_search.py                       # SQLite (a temp file), 100,000 customers
    python bench/customers_search.py --database-url postgresql://postgres@127.0.0.1:5432/cb_bench
    python bench/customers_search.py --smoke               # 2,000 customers, a few runs

The PostgreSQL database is downgraded to empty, migrated, loaded, measured and emptied again: give it a
database of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert  # noqa: E402

from customers import repo  # noqa: E402
from customers.model import CustomerFields  # noqa: E402
from customers.schema import customer_phones, customers  # noqa: E402
from store.db import Database  # noqa: E402

TARGET_MS = 50.0
FAMILY = [("山田", "やまだ"), ("佐藤", "さとう"), ("鈴木", "すずき"), ("高橋", "たかはし"), ("田中", "たなか"),
          ("伊藤", "いとう"), ("渡辺", "わたなべ"), ("中村", "なかむら"), ("小林", "こばやし"), ("加藤", "かとう"),
          ("吉田", "よしだ"), ("山口", "やまぐち"), ("松本", "まつもと"), ("井上", "いのうえ"), ("木村", "きむら"),
          ("林", "はやし"), ("清水", "しみず"), ("山崎", "やまざき"), ("森", "もり"), ("池田", "いけだ")]
GIVEN = [("太郎", "たろう"), ("花子", "はなこ"), ("一郎", "いちろう"), ("美咲", "みさき"), ("健太", "けんた"),
         ("陽子", "ようこ"), ("翔", "しょう"), ("結衣", "ゆい"), ("大輔", "だいすけ"), ("さくら", "さくら"),
         ("拓也", "たくや"), ("真由美", "まゆみ"), ("直樹", "なおき"), ("愛", "あい"), ("誠", "まこと")]
COMPANY = ["商店", "工業", "物産", "電機", "建設", "運輸", "食品", "製作所", "不動産", "システムズ"]


def generate(n: int, seed: int = 7) -> list[CustomerFields]:
    rng = random.Random(seed)
    out = []
    shared: list[str] = []
    for i in range(n):
        fam, fam_kana = rng.choice(FAMILY)
        giv, giv_kana = rng.choice(GIVEN)
        kana = f"{fam_kana} {giv_kana}".translate({c: c + 0x60 for c in range(0x3041, 0x3097)})  # katakana
        if shared and rng.random() < 0.1:
            phones = [shared.pop()]
        else:
            area = rng.choice(["+813", "+816", "+8190", "+8180", "+8170"])
            # Tokyo/Osaka numbers have 8 digits after the area code, mobiles 8 after 90/80/70
            phones = [area + "".join(rng.choice("123456789") for _ in range(8))]
            shared.append(phones[0])
        if rng.random() < 0.3:
            phones.append("+8190" + "".join(rng.choice("123456789") for _ in range(8)))
        company = f"{rng.choice(FAMILY)[0]}{rng.choice(COMPANY)}" if rng.random() < 0.6 else ""
        out.append(CustomerFields(name=f"{fam} {giv}", kana=kana, company=company, phones=tuple(phones),
                                  email=f"user{i}@example{i % 97}.jp", external_id=f"CRM-{i:06d}",
                                  memo="" if rng.random() < 0.8 else "折り返し希望"))
    return out


async def load(db: Database, rows: list[CustomerFields], batch: int = 5000) -> float:
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        people, numbers = [], []
        for i, fields in enumerate(chunk, start):
            cid = f"cu_{i:016x}"
            people.append({"id": cid, "created_ms": 1, "updated_ms": 1 + i, **repo.stored_row(fields, db.engine.dialect.name)})
            numbers += [{"customer_id": cid, "e164": p, "position": k} for k, p in enumerate(fields.phones)]
        async with db.begin() as conn:
            await conn.execute(insert(customers), people)
            await conn.execute(insert(customer_phones), numbers)
    if db.is_postgres:
        async with db.begin() as conn:
            await conn.exec_driver_sql("ANALYZE customers")
            await conn.exec_driver_sql("ANALYZE customer_phones")
    else:
        async with db.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


def queries(rows: list[CustomerFields]) -> list[tuple[str, str]]:
    sample = rows[len(rows) // 2]
    number = sample.phones[0]
    national = "0" + number[3:]
    hyphenated = f"{national[:-8]}-{national[-8:-4]}-{national[-4:]}"
    return [
        ("family name (many matches)", "山田"),
        ("full name", sample.name),
        ("kana, hiragana for katakana", "やまだ たろう"),
        ("company fragment", "物産"),
        ("email fragment", "user4242@"),
        ("external id", f"CRM-{len(rows) // 3:06d}"),
        ("phone E.164", number),
        ("phone national with hyphens", hyphenated),
        ("phone last 8 digits", number[-8:]),
        ("no match", "該当なしの名前"),
        ("empty query (first page by name)", ""),
    ]


async def run(args: argparse.Namespace) -> None:
    n = 2000 if args.smoke else args.customers
    runs = 5 if args.smoke else args.runs
    tmp = None
    if args.database_url:
        url = args.database_url
    else:
        tmp = tempfile.TemporaryDirectory(prefix="cb-bench-customers-")
        url = f"sqlite:///{Path(tmp.name) / 'bench.db'}"
    db = Database.from_url(url)
    try:
        await db.downgrade("base")
        await db.upgrade()
        rows = generate(n)
        print(f"loading {n} customers into {db.describe()} ...", file=sys.stderr)
        load_s = await load(db, rows)
        load_info = {"backend": "postgresql" if db.is_postgres else "sqlite", "customers": n, "runs": runs,
                     "limit": args.limit, "load_s": round(load_s, 1)}
        for kind, q in queries(rows):
            times = []
            matches = 0
            for _ in range(runs):
                started = time.perf_counter()
                async with db.connect() as conn:
                    found = await repo.search(conn, q, region="JP", limit=args.limit)
                times.append((time.perf_counter() - started) * 1000)
                matches = len(found)
            times.sort()
            p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
            print(json.dumps({"bench": "customers_search", "load": load_info, "kind": kind, "query": q,
                              "matches": matches, "p50_ms": round(statistics.median(times), 2),
                              "p95_ms": round(p95, 2), "max_ms": round(times[-1], 2),
                              "targets": {"p50_ms": TARGET_MS}}, ensure_ascii=False), flush=True)
        if db.is_postgres:
            await db.downgrade("base")
    finally:
        await db.dispose()
        if tmp is not None:
            tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--database-url", help="PostgreSQL URL of a database of its own (default: a temp SQLite)")
    parser.add_argument("--smoke", action="store_true", help="2,000 customers, 5 runs")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
