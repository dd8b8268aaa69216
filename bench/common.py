"""Shared benchmark plumbing: server processes, generated configs, latency stats, JSON lines, psutil sampling.

Every benchmark runs the server under test as its own process (so client load never shares its event loop),
on the machine's Redis, database 6 only (flushed before each run), and prints one JSON object per line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import redis as sync_redis

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")  # DB 6 only: the benches flush it
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
TWILIO_TOKEN = "bench-twilio-auth-token-0123456789"
NOFILE = 65536  # 10,000 sockets plus Redis, logs and the client side of loopback connections


def raise_nofile(limit: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE as far as the hard limit allows; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def emit(bench: str, load: dict[str, Any], **figures: Any) -> dict[str, Any]:
    """Print one JSON line: {"bench": name, "load": {...}, ...figures}."""
    line = {"bench": bench, "load": load, **figures}
    print(json.dumps(line, separators=(",", ":")), flush=True)
    return line


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def latency_ms(values_s: Iterable[float]) -> dict[str, Any]:
    """{"n", "p50_ms", "p99_ms", "max_ms"} of durations given in seconds."""
    v = sorted(values_s)
    r = lambda x: None if x is None else round(x * 1000, 2)  # noqa: E731
    return {"n": len(v), "p50_ms": r(percentile(v, 50)), "p99_ms": r(percentile(v, 99)),
            "max_ms": r(v[-1] if v else None)}


def flush_db(url: str = REDIS_URL) -> None:
    # DB 6 by convention; another only when the caller vouches for it (the test suite's own empty database)
    assert url.rstrip("/").endswith("/6") or os.environ.get("BENCH_REDIS_FLUSH_OK") == url, \
        "benchmarks use Redis DB 6 only"
    client = sync_redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def redis_sync(url: str = REDIS_URL) -> sync_redis.Redis:
    return sync_redis.Redis.from_url(url)


# -- generated centers ------------------------------------------------------------------------------------


def agent_id(i: int) -> str:
    return f"a{i:05d}"


def center_layout(agents: int, queues: int, team_size: int) -> list[tuple[str, str, str]]:
    """(agent id, team, queue) per agent: teams of team_size, teams spread round-robin over the queues."""
    out = []
    for i in range(agents):
        team = i // team_size
        out.append((agent_id(i), f"t{team:04d}", f"q{team % queues:03d}"))
    return out


def write_config(directory: Path, *, agents: int, queues: int, team_size: int = 25,
                 tick_ms: int = 100, extra_center: dict[str, Any] | None = None) -> Path:
    """A generated TOML center: `queues` queues with one number each, teams of `team_size` agents."""
    lines = ["[center]", 'name = "bench center"', 'timezone = "UTC"', "wrap_up_s = 0", "disconnect_grace_s = 30"]
    for k, v in (extra_center or {}).items():
        lines.append(f"{k} = {json.dumps(v)}")
    lines += ["", "[server]", f"tick_ms = {tick_ms}", ""]
    for q in range(queues):
        lines += ["[[queues]]", f'name = "q{q:03d}"', f'numbers = ["+1555{q:07d}"]', ""]
    for aid, team, queue in center_layout(agents, queues, team_size):
        lines.append(f'[[agents]]\nid = "{aid}"\nname = "Agent {aid}"\nteam = "{team}"\nqueues = ["{queue}"]\n')
    path = directory / "callboard.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def token(sub: str, role: str, ttl_s: int = 6 * 3600) -> str:
    sys.path.insert(0, str(ROOT))
    from callboard.auth import issue_token

    return issue_token(SECRET, sub, role, ttl_s)


# -- server processes -------------------------------------------------------------------------------------


def _preexec() -> None:
    raise_nofile()


class ServerProcess:
    """A server under test in its own process: started, waited for (GET `ready_path` == 200), stopped."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, log_path: Path,
                 ready_path: str = "/readyz", start_timeout_s: float = 60.0) -> None:
        self.argv, self.env, self.port, self.log_path = argv, env, port, log_path
        self.ready_path, self.start_timeout_s = ready_path, start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        logf = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        # BENCH_SERVER_ROOT: run the server from another checkout (to measure a candidate fix side by side)
        cwd = os.environ.get("BENCH_SERVER_ROOT", str(ROOT))
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                     preexec_fn=_preexec, cwd=cwd)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.tail_log()}")
            try:
                with urllib.request.urlopen(self.base + self.ready_path, timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {self.start_timeout_s} s; log: {self.tail_log()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        keep = os.environ.get("BENCH_LOG_DIR")  # keep the server's log for a post-mortem
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(self.log_path, Path(keep) / self.log_path.name)

    def tail_log(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def get(self, path: str, headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> bytes:
        req = urllib.request.Request(self.base + path, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.read()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def callboard_server(config_path: Path, workdir: Path, *, port: int | None = None, redis_url: str = REDIS_URL) -> ServerProcess:
    """`callboard serve` on a free port against Redis DB 6 (flushed first)."""
    flush_db(redis_url)
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, REDIS_URL=redis_url, CALLBOARD_SECRET=SECRET, TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
               PUBLIC_URL=base, CALLBOARD_DATA=str(workdir / "data"), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "callboard", "serve", "--config", str(config_path), "--port", str(port),
            "--host", "127.0.0.1"]
    return ServerProcess(argv, env, port, workdir / f"server-{port}.log")


def python_server(script: Path, args: list[str], workdir: Path, *, port: int | None = None,
                  ready_path: str = "/healthz") -> ServerProcess:
    """A helper server script of bench/ (bare aiohttp, python-socketio peer) as its own process."""
    port = port or free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    argv = [sys.executable, str(script), "--port", str(port), *args]
    return ServerProcess(argv, env, port, workdir / f"{script.stem}-{port}.log", ready_path=ready_path)


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


# -- metrics and process sampling -------------------------------------------------------------------------


def prom_values(text: str, name: str) -> float:
    """Sum of every sample of one metric name (all label sets) in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class ProcSampler:
    """CPU share and RSS of one process over a window: cpu_times delta / wall time."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.t0 = time.monotonic()
        self.cpu0 = self._cpu()
        self.rss_max = self.rss()

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def sample(self) -> None:
        self.rss_max = max(self.rss_max, self.rss())

    def result(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        return {"cpu_share": round((self._cpu() - self.cpu0) / wall, 3) if wall > 0 else None,
                "rss_mib": round(self.rss() / 2**20, 1), "rss_max_mib": round(self.rss_max / 2**20, 1)}


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "python": sys.version.split()[0],
            "mem_gib": round(psutil.virtual_memory().total / 2**30, 1)}


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Round-robin split into `parts` lists (some may be empty when items are few)."""
    out: list[list[Any]] = [[] for _ in range(max(parts, 1))]
    for i, item in enumerate(items):
        out[i % len(out)].append(item)
    return [o for o in out if o]
