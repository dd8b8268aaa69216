"""Every bench script runs small (--smoke) and prints JSON lines with the load it ran.

These are smoke runs, not measurements: no figure is asserted here (figures live in docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["presence_absorb", "fanout", "peer_fanout", "snapshot", "webhooks", "conn_objects", "routing", "records",
           "intent_path", "ws_floor"]


def _bench_redis_url(bench_redis_url: str | None) -> str:
    if bench_redis_url is None:
        if os.environ.get("CI"):
            pytest.fail("CI must give the benches a TCP Redis in REDIS_URL")
        pytest.skip(reason="the bench smoke runs need a TCP Redis in REDIS_URL (they use an empty database of it)")
    return bench_redis_url


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_smoke_run(script: str, bench_redis_url: str | None) -> None:
    url = _bench_redis_url(bench_redis_url)
    # the suite claimed this database empty and empties it at the end: the benches may flush it
    env = {**os.environ, "BENCH_REDIS_URL": url, "BENCH_REDIS_FLUSH_OK": url}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), "--smoke"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert lines, f"{script} printed no JSON line"
    for line in lines:
        assert isinstance(line.get("bench"), str) and isinstance(line.get("load"), dict), line
