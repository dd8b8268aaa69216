"""What a newcomer meets first: `callboard init` writes a config that `callboard serve --config` runs, a
busy port is one English line and exit 2 (never a traceback), and the demo prints the kiosk URL and a
supervisor's links to the reports and customers pages, which stay in sight (no access log in the demo)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from callboard.config import load_config
from callboard.example import EXAMPLE_TOML
from tests.procs import ROOT, ProcessGroup, free_port, serve_env


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "PYTHONPATH": str(ROOT),
            "CALLBOARD_DATA": str(cwd / "data")}
    return subprocess.run([sys.executable, "-m", "callboard", *args], capture_output=True, text=True, cwd=cwd,
                          env=base | (env or {}), timeout=timeout)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path)
    yield group
    group.stop_all()


def test_init_writes_a_commented_example_and_never_overwrites(tmp_path: Path) -> None:
    done = _cli("init", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = tmp_path / "callboard.toml"
    assert written.read_text(encoding="utf-8") == EXAMPLE_TOML
    assert "callboard serve --config callboard.toml" in done.stdout
    assert sum(line.lstrip().startswith("#") for line in EXAMPLE_TOML.splitlines()) >= 5  # it explains itself
    config = load_config(written)
    assert [q.name for q in config.queues] == ["support", "sales"]
    assert config.agent("yamada") is not None and config.agent("yamada").name == "山田 太郎"
    assert config.center.ui_language == "ja" and config.queues[0].thresholds.abandon_critical == 0.1

    written.write_text("# mine\n", encoding="utf-8")
    again = _cli("init", cwd=tmp_path)
    assert again.returncode == 2
    assert "already exists; not overwriting it" in again.stderr and "Traceback" not in again.stderr
    assert written.read_text(encoding="utf-8") == "# mine\n"  # untouched

    elsewhere = _cli("init", "center/site.toml", cwd=tmp_path)  # a folder that is not there: one line, exit 2
    assert elsewhere.returncode == 2 and "cannot write center/site.toml" in elsewhere.stderr
    assert "Traceback" not in elsewhere.stderr


async def test_serve_runs_the_example_config_and_a_second_serve_on_its_port_says_so(
        tmp_path: Path, procs: ProcessGroup, redis_url: str) -> None:
    assert _cli("init", cwd=tmp_path).returncode == 0
    port = free_port()
    env = serve_env(redis_url=redis_url, data_dir=tmp_path / "data", secret="s" * 40, twilio_auth_token="t" * 32,
                    public_url=f"http://127.0.0.1:{port}")
    first = procs.spawn("first", tmp_path / "callboard.toml", env, port=port)
    await first.wait_ready(timeout=60)
    wall = _cli("token", "wall", "--role", "wallboard", cwd=tmp_path, env={"CALLBOARD_SECRET": "s" * 40}).stdout.strip()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{first.url}/api/snapshot", headers={"Authorization": f"Bearer {wall}"}) as resp:
            snapshot = await resp.json()
        assert snapshot["center"]["name"] == "Tokyo support"
        assert snapshot["agents"]["yamada"]["name"] == "山田 太郎"
        async with http.get(f"{first.url}/wallboard") as resp:  # the pages learn the fallback language
            assert 'data-ui-language="ja"' in await resp.text()

    # the same port again, with its own (embedded) Redis and data dir: the message, exit 2, no traceback
    second = _cli("serve", "--config", "callboard.toml", "--port", str(port), cwd=tmp_path,
                  env={"CALLBOARD_DATA": str(tmp_path / "data2")})
    assert second.returncode == 2, second.stderr
    assert f"port {port} is in use; use --port or PORT" in second.stderr
    assert "Traceback" not in second.stderr
    via_env = _cli("serve", "--config", "callboard.toml", cwd=tmp_path,
                   env={"CALLBOARD_DATA": str(tmp_path / "data3"), "PORT": str(port)})
    assert via_env.returncode == 2 and f"port {port} is in use; use --port or PORT" in via_env.stderr
    assert first.running()


def test_a_port_held_by_anyone_is_reported_the_same_way(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = _cli("demo", "--port", str(port), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().endswith(f"port {port} is in use; use --port or PORT"), done.stderr
    assert "Traceback" not in done.stderr


def test_the_demo_prints_the_kiosk_url_for_the_wall_and_a_supervisor_s_pages(tmp_path: Path) -> None:
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "CALLBOARD_DATA": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "demo.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "callboard", "demo", "--port", str(port), "--calls-per-minute", "0"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=log_file, text=True,
                                start_new_session=True)  # its own process group, as a terminal's foreground job
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:  # the links come right after the server listens; the pipe closes if it dies
            lines.append(line)
            if "Stop with Ctrl-C" in line:
                break
        wall = next((line for line in lines if "Wallboard:" in line), "")
        assert f"http://127.0.0.1:{port}/wallboard?kiosk=1#token=" in wall, "".join(lines)
        # the reports and customers pages, with a supervisor's token that the API takes
        reports = next((line for line in lines if "Reports:" in line), "").split()[-1]
        customers = next((line for line in lines if "Customers:" in line), "").split()[-1]
        assert reports.startswith(f"http://127.0.0.1:{port}/reports#token="), "".join(lines)
        assert customers.startswith(f"http://127.0.0.1:{port}/customers#token="), "".join(lines)
        boss = reports.split("#token=")[1]
        calls = urllib.request.Request(f"http://127.0.0.1:{port}/api/calls", headers={"Authorization": f"Bearer {boss}"})
        with urllib.request.urlopen(calls, timeout=30) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/reports", timeout=30) as resp:
            assert resp.status == 200
        # the empty directory of a first demo got the demo's customers (written just after the links)
        search = urllib.request.Request(f"http://127.0.0.1:{port}/api/customers?q=%E6%9C%A8%E6%9D%91&limit=100",
                                        headers={"Authorization": f"Bearer {boss}"})  # q=木村: the shared line
        names: set[str] = set()
        for _ in range(100):
            with urllib.request.urlopen(search, timeout=30) as resp:
                names = {c["name"] for c in json.load(resp)["customers"]}
            if names:
                break
            time.sleep(0.1)
        assert names == {"木村 拓也", "木村 明美"}, names
        # the embedded Redis is out of the terminal's process group, so a Ctrl-C does not stop it under the drain
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        servers = [int(c) for c in children if b"redis-server" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert servers and all(os.getpgid(pid) != os.getpgid(proc.pid) for pid in servers), servers
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    logged = log_path.read_text()
    assert "serving on" in logged, logged  # the log is there
    # Ctrl-C reached callboard, not its embedded Redis too: the drain found Redis and nothing was left over
    assert "could not finish the drain" not in logged and "Redis unavailable" not in logged, logged
    assert "releasing the lease" in logged, logged
    assert "the customer directory was empty; wrote 19 demo customers" in logged, logged
    # a seed of its own: a second demo on this data directory (its Redis keeps the calls) must not replay the
    # first run's CallSids, which the server takes for retries (no screen pops)
    assert "demo: simulator seed " in logged, logged
    # those requests are not in the demo's log: an access line per request would bury the links above
    # (a simulated center makes several a second), and neither are alembic's plugin set-up lines
    assert "aiohttp.access" not in logged and "setup plugin" not in logged, logged


def test_each_demo_draws_its_own_simulator_seed_unless_given() -> None:
    from callboard.cli import _parser

    parser = _parser()
    assert parser.parse_args(["demo"]).seed is None  # drawn at start-up, and logged
    assert parser.parse_args(["demo", "--seed", "7"]).seed == 7
    assert parser.parse_args(["simulate"]).seed == 1  # `callboard simulate` stays reproducible by default
