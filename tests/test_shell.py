"""The shell: embedded Redis, the token command, one-round-trip reads and the follower's recovery."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
import redis as sync_redis

from callboard import keys
from callboard.auth import verify_token
from callboard.clock import FakeClock
from callboard.embedded import EmbeddedRedis, EmbeddedRedisError
from presence.rules import CONNECT, Intent, Settings
from presence.store import Addressed, PresenceStore
from tests.conftest import make_config


def test_the_embedded_redis_runs_with_aof_and_refuses_a_second_instance(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    url = first.start()
    try:
        client = sync_redis.Redis.from_url(url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.set("probe", "1")
        second = EmbeddedRedis(tmp_path)
        with pytest.raises(EmbeddedRedisError, match="already running on the data directory"):
            second.start()
        client.close()
    finally:
        first.stop()
    restarted = EmbeddedRedis(tmp_path)  # data survives a restart: today's numbers are kept
    url = restarted.start()
    try:
        assert sync_redis.Redis.from_url(url).get("probe") == b"1"
    finally:
        restarted.stop()


def test_the_token_command_prints_a_verifiable_token(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "CALLBOARD_SECRET": "s" * 40, "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "callboard", "token", "alice", "--role", "agent", "--ttl", "30m"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    claims = verify_token("s" * 40, out.stdout.strip())
    assert (claims.sub, claims.role) == ("alice", "agent")
    bad = subprocess.run([sys.executable, "-m", "callboard", "token", "alice", "--role", "agent", "--ttl", "soon"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert bad.returncode == 2 and "bad TTL 'soon'" in bad.stderr


def test_the_token_command_creates_a_private_secret_when_none_is_set(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "CALLBOARD_DATA": str(tmp_path / "data"), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "callboard", "token", "wall", "--role", "wallboard"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and "generated a new secret" in out.stderr
    secret_file = tmp_path / "data" / "secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert verify_token(secret_file.read_text().strip(), out.stdout.strip()).role == "wallboard"


async def test_a_snapshot_of_10000_agents_is_one_round_trip(redis) -> None:  # type: ignore[no-untyped-def]
    store = PresenceStore(redis, Settings(wrap_up_s=5, disconnect_grace_s=5), day_key=lambda _: "d")
    items = [Addressed(f"a{i}", Intent(kind=CONNECT), conn=f"c{i}", instance="i") for i in range(10_000)]
    await store.apply(items, 1_000)
    calls = []
    original = redis.execute_command

    async def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[0])
        return await original(*args, **kwargs)

    redis.execute_command = counting
    try:
        records = await store.read_agents()
    finally:
        redis.execute_command = original
    assert len(records) == 10_000 and calls == ["HGETALL"]


async def test_the_follower_resyncs_when_its_position_was_trimmed_away(redis) -> None:  # type: ignore[no-untyped-def]
    from callflow.live import QueueStatsMirror
    from wallboard.follower import Follower
    from wallboard.hub import Hub
    from wallboard.mirror import Mirror

    config = make_config()
    clock = FakeClock()
    store = PresenceStore(redis, Settings(wrap_up_s=5, disconnect_grace_s=5), day_key=lambda _: "d")
    mirror = Mirror(config, QueueStatsMirror(config, clock))
    follower = Follower(redis, store, mirror, Hub(mirror, clock), clock)
    await store.apply([Addressed("alice", Intent(kind=CONNECT), conn="c1", instance="i")], clock.now_ms())
    await follower.resync()
    assert mirror.agents["alice"]["state"] == "available"
    assert await follower._id_still_valid()  # noqa: SLF001
    for n in range(20):  # more changes than the stream keeps, then trim: our id falls off the front
        await redis.xadd(keys.CHANGES, {"k": "agent", "id": "bob", "d": msgpack.packb({"state": "available", "seq": n})})
    await redis.xtrim(keys.CHANGES, maxlen=5, approximate=False)
    assert not await follower._id_still_valid()  # noqa: SLF001
    await redis.flushdb()  # a Redis that lost its data: the stream went back in time
    await redis.xadd(keys.CHANGES, {"k": "agent", "id": "bob", "d": msgpack.packb({"state": "away", "seq": 1})})
    follower.last_id = "99999999999999-0"
    assert not await follower._id_still_valid()  # noqa: SLF001
