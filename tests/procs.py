"""Real `callboard serve` processes for operations tests: TOML configs, free ports, readiness, teardown.

Every process is started with its stdout and stderr captured to files (a pipe nobody reads would block the
server), dies with the test process (PR_SET_PDEATHSIG on Linux), and is killed by ProcessGroup.stop_all(),
which the tests' fixtures call at teardown even when the test failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]

# Variables of the developer's shell that would change what a spawned server does.
_SCRUBBED = ("CALLBOARD_CONFIG", "CALLBOARD_SECRET", "CALLBOARD_DATA", "PORT", "HOST", "REDIS_URL", "PUBLIC_URL",
             "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_API_KEY", "TWILIO_API_SECRET",
             "TWILIO_TWIML_APP_SID")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string for the text we write
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: Path, *, center: Mapping[str, Any] | None = None, server: Mapping[str, Any] | None = None,
                 queues: Iterable[Mapping[str, Any]] = (), agents: Iterable[Mapping[str, Any]] = (),
                 routing: Mapping[str, Any] | None = None) -> Path:
    """A callboard TOML config file (the shape of DESIGN.md "Running")."""
    lines: list[str] = []
    for section, values in (("center", center), ("server", server), ("routing", routing)):
        if values:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
            lines.append("")
    for table, items in (("queues", queues), ("agents", agents)):
        for item in items:
            lines.append(f"[[{table}]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def serve_env(*, redis_url: str, data_dir: Path, secret: str, twilio_auth_token: str, public_url: str,
              **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(REDIS_URL=redis_url, CALLBOARD_SECRET=secret, TWILIO_AUTH_TOKEN=twilio_auth_token,
               PUBLIC_URL=public_url, CALLBOARD_DATA=str(data_dir), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
    env.update(extra)
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class ServeProcess:
    """One `callboard serve` child process on 127.0.0.1:<port>."""

    def __init__(self, name: str, workdir: Path, config: Path, port: int, env: Mapping[str, str],
                 log_format: str = "json") -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.cmd = [sys.executable, "-m", "callboard", "serve", "--config", str(config), "--port", str(port),
                    "--log-format", log_format]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, env=dict(env), cwd=str(workdir), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        return (f"{self.name} (pid {self.pid}, exit {self.proc.poll()}) stderr:\n"
                + "\n".join(self.stderr().splitlines()[-30:]))

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll /readyz until it answers 200; fail early, with the log, if the process died."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if not self.running():
                    raise AssertionError(f"callboard serve exited before it was ready: {self.describe()}")
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        last = f"{resp.status} {await resp.text()!r}"
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = repr(exc)
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not ready within {timeout} s (last /readyz: {last}); {self.describe()}")

    def kill(self) -> None:
        """SIGKILL: no drain, no deregistration, the lease is left to expire."""
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM: the graceful drain (the caller waits for the exit code)."""
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)


class ProcessGroup:
    """The processes of one test; stop_all() kills whatever still runs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[ServeProcess] = []

    def spawn(self, name: str, config: Path, env: Mapping[str, str], *, port: int | None = None,
              log_format: str = "json") -> ServeProcess:
        proc = ServeProcess(name, self.workdir, config, port or free_port(), env, log_format)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.running():
                proc.proc.kill()
        for proc in self.procs:
            try:
                proc.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not wait for anyone
                pass


# -- scraping ------------------------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    """Prometheus text -> {(sample name, sorted label pairs): value}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def declared_types(text: str) -> dict[str, str]:
    """The `# TYPE name type` lines of an exposition, as written (counters keep their _total there)."""
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    return types


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.get(url + "/metrics") as resp:
            assert resp.status == 200, f"GET {url}/metrics answered {resp.status}"
            return await resp.text()


# Several instances on one Redis must share one SQL database (each with its own SQLite is refused by /readyz):
# the test PostgreSQL, else an address where none answers (the directory and records are then unavailable,
# which the instances survive by design).
SHARED_DATABASE_URL = os.environ.get("TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:9/unreachable"
