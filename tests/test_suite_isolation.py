"""The test suite leaves a Redis it was pointed at (REDIS_URL) exactly as it found it.

A child pytest session runs a few tests that write call, presence and bench data against a private TCP
redis-server holding a developer's keys (sentinels, some with a TTL) in the database REDIS_URL names, in
database 6 (where the benches used to run) and in the highest database (the first one the suite would
take if it were empty). Afterwards every sentinel is intact and every other database is empty.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from callboard.embedded import redis_server_binary

ROOT = Path(__file__).resolve().parents[1]
CHILD_TESTS = [
    "tests/test_callflow_bounds.py::test_a_late_wrap_up_sweep_does_not_inflate_aht",
    "tests/test_presence_rules.py::test_lua_applies_exactly_the_python_rules",
    "tests/test_logs.py::test_an_oversized_header_or_request_line_never_prints_its_credential[text]",
    "tests/test_bench_smoke.py::test_bench_script_smoke_run[snapshot]",
]
SENTINELS = {  # db -> {key: (value, ttl_s or None)}
    0: {"sentinel": ("keep me", None), "cb:agents": ("a developer's own cb: key", 7 * 86400)},
    6: {"bench-sentinel": ("keep me too", 3600)},
    15: {"top-sentinel": ("the highest database is in use", None)},
}


@pytest.fixture
def tcp_redis() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="cb-isolation-") as tmp:
        proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if sync_redis.Redis(port=port, socket_connect_timeout=0.2).ping():
                        break
                except sync_redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield port
        finally:
            proc.kill()
            proc.wait(5)


def test_the_suite_leaves_a_shared_redis_as_it_found_it(tcp_redis: int) -> None:
    for db, items in SENTINELS.items():
        client = sync_redis.Redis(port=tcp_redis, db=db)
        for key, (value, ttl_s) in items.items():
            client.set(key, value, ex=ttl_s)
        client.close()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{tcp_redis}/0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CHILD_TESTS],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"{len(CHILD_TESTS)} passed" in result.stdout, result.stdout[-2000:]

    admin = sync_redis.Redis(port=tcp_redis)
    keyspace = {int(name[2:]): info["keys"] for name, info in admin.info("keyspace").items()}
    assert keyspace == {db: len(items) for db, items in SENTINELS.items()}, (
        f"databases after the suite: {keyspace}; only the sentinels' may hold keys")
    for db, items in SENTINELS.items():
        client = sync_redis.Redis(port=tcp_redis, db=db)
        for key, (value, ttl_s) in items.items():
            assert client.get(key) == value.encode(), (db, key)
            ttl = client.ttl(key)
            assert (ttl == -1) if ttl_s is None else (0 < ttl <= ttl_s), (db, key, ttl)
        client.close()
    # the suite did work in databases of its own, and let go of them
    assert int(admin.info("commandstats").get("cmdstat_flushdb", {}).get("calls", 0)) > 0
    assert not [c for c in admin.client_list() if c.get("name", "").startswith("callboard-tests:")]
    admin.close()
