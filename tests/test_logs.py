"""Logs: one line per event, JSON on request, no query strings in the access log, and no secret ever printed.

The process tests run a real `callboard serve`, exercise every path that handles a secret (websocket hello,
Bearer API calls, the voice token, signed webhooks, a forged token, a failed signature) and grep everything
the process printed for every secret value it was given or that the test sent it.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import websockets
from redis.asyncio import Redis

from callboard.auth import issue_token
from callboard.logs import JsonFormatter, RedactSecrets, setup_logging
from callflow.signature import sign
from tests.procs import ProcessGroup, free_port, serve_env, write_config

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: .*$")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ACCESS = re.compile(r"^(GET|POST|HEAD|PUT|DELETE|OPTIONS) (/[^\s?#]*) (\d{3}) \d+\.\dms$")


@pytest.fixture
def procs(tmp_path: Path) -> Any:
    group = ProcessGroup(tmp_path)
    yield group
    group.stop_all()


def center(path: Path) -> Path:
    return write_config(
        path,
        center={"name": "Log center", "timezone": "UTC"},
        server={"voice_sdk_url": "https://sdk.example.com/twilio.min.js"},
        queues=[{"name": "support", "numbers": ["+15550000001"], "team": "support"}],
        agents=[{"id": "alice", "name": "Alice", "team": "support", "queues": ["support"]},
                {"id": "bob", "name": "Bob", "team": "support", "queues": ["support"]}],
    )


async def _exercise(url: str, public_url: str, secret: str, twilio_token: str, cli_env: dict[str, str],
                    wrong_secret: str) -> list[str]:
    """Drive the server through every path that touches a secret; returns every secret value sent."""
    sent: list[str] = []
    agent = issue_token(secret, "alice", "agent", 600)
    supervisor = issue_token(secret, "boss", "supervisor", 600)
    # a wallboard token the documented way: `callboard token`
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "callboard", "token", "wall", "--role", "wallboard", "--ttl", "10m"],
        env=cli_env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    wallboard = out.stdout.strip()
    assert wallboard.count(".") == 2 and "\n" not in wallboard, out.stdout
    forged = issue_token(wrong_secret, "alice", "supervisor", 600)
    expired = issue_token(secret, "alice", "agent", -60)
    sent += [agent, supervisor, wallboard, forged, expired]
    ws = url.replace("http://", "ws://") + "/ws"

    # websocket hello with a good token, a state change, and hello with a forged and an expired token
    async with websockets.connect(ws, subprotocols=["callboard.v1.json"]) as conn:
        await conn.send(json.dumps({"type": "hello", "token": agent}))
        assert json.loads(await conn.recv())["type"] == "welcome"
        await conn.send(json.dumps({"type": "set_state", "state": "away", "reason": "lunch"}))
        while True:
            msg = json.loads(await conn.recv())
            if msg["type"] == "delta" and "lunch" in json.dumps(msg):
                break
    for bad in (forged, expired, "not-a-token-" + secrets.token_hex(8)):
        sent.append(bad)
        async with websockets.connect(ws, subprotocols=["callboard.v1.json"]) as conn:
            await conn.send(json.dumps({"type": "hello", "token": bad}))
            assert json.loads(await conn.recv())["code"] == "bad_token"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await conn.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401

    async with aiohttp.ClientSession() as http:
        def bearer(tok: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tok}"}

        async with http.get(url + "/api/snapshot", headers=bearer(wallboard)) as r:
            assert r.status == 200
        async with http.post(url + "/api/agents/bob/state", headers=bearer(supervisor),
                             json={"state": "away", "reason": "training"}) as r:
            assert r.status == 200, await r.text()
        async with http.get(url + "/api/voice-token", headers=bearer(agent)) as r:
            assert r.status == 200, await r.text()
            voice = (await r.json())["token"]
            sent.append(voice)
        for bad in (forged, expired):
            async with http.get(url + "/api/snapshot", headers=bearer(bad)) as r:
                assert r.status == 401
        # tokens in query strings (a mistaken link) must not reach the access log either
        async with http.get(url + "/wallboard", params={"token": agent}) as r:
            assert r.status == 200
        async with http.get(url + "/metrics", params={"token": supervisor}) as r:
            assert r.status == 200

        # Twilio: signed requests (one with a query string), a bad and a missing signature
        calls = [("incoming", {}, {"CallSid": "CA" + "1" * 32, "From": "+15551230001", "To": "+15550000001"}),
                 ("queue-result", {"queue": "support"},
                  {"CallSid": "CA" + "1" * 32, "QueueResult": "hangup", "QueueTime": "3"})]
        for route, query, params in calls:
            path = f"/twilio/voice/{route}" + (f"?{urlencode(query)}" if query else "")
            signature = sign(twilio_token, public_url + path, params)
            sent.append(signature)
            async with http.post(url + path, data=urlencode(params),
                                 headers={**FORM, "X-Twilio-Signature": signature}) as r:
                assert r.status == 200, await r.text()
        params = {"CallSid": "CA" + "2" * 32, "To": "+15550000001"}
        wrong = sign("not-the-" + twilio_token, public_url + "/twilio/voice/incoming", params)
        sent.append(wrong)
        async with http.post(url + "/twilio/voice/incoming", data=urlencode(params),
                             headers={**FORM, "X-Twilio-Signature": wrong}) as r:
            assert r.status == 403
        async with http.post(url + "/twilio/voice/incoming", data=urlencode(params), headers=FORM) as r:
            assert r.status == 403
    return sent


def _serve(procs: ProcessGroup, redis_url: str, tmp_path: Path, log_format: str, name: str,
           **extra_env: str) -> tuple[Any, dict[str, str], str, str, str]:
    """A `callboard serve` with fresh random secrets: (server, env, CALLBOARD_SECRET, Twilio token, PUBLIC_URL)."""
    secret = "cb-secret-" + secrets.token_hex(20)
    twilio_token = secrets.token_hex(16)
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    data.mkdir()
    env = serve_env(redis_url=redis_url, data_dir=data, secret=secret, twilio_auth_token=twilio_token,
                    public_url=public_url, **extra_env)
    server = procs.spawn(name, center(tmp_path / "center.toml"), env, port=port, log_format=log_format)
    return server, env, secret, twilio_token, public_url


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_a_serving_process_logs_one_line_per_event_and_never_a_secret(procs: ProcessGroup, redis: Redis,
                                                                           redis_url: str, tmp_path: Path,
                                                                           log_format: str) -> None:
    api_secret = "api-secret-" + secrets.token_hex(16)
    server, env, secret, twilio_token, public_url = _serve(
        procs, redis_url, tmp_path, log_format, "logs", TWILIO_API_SECRET=api_secret,
        TWILIO_ACCOUNT_SID="AC" + secrets.token_hex(16), TWILIO_API_KEY="SK" + secrets.token_hex(16),
        TWILIO_TWIML_APP_SID="AP" + secrets.token_hex(16))
    await server.wait_ready()
    sent = await _exercise(server.url, public_url, secret, twilio_token, env, "wrong-" + secret)
    server.terminate()
    assert server.wait(15) == 0, server.describe()

    stdout, stderr = server.stdout(), server.stderr()
    printed = stdout + stderr
    values = {"CALLBOARD_SECRET": secret, "TWILIO_AUTH_TOKEN": twilio_token, "TWILIO_API_SECRET": api_secret}
    for n, value in enumerate(sent):
        values[f"sent value #{n}"] = value
        if value.count(".") == 2:  # a JWT: its signature alone is as secret as the whole
            values[f"signature of sent token #{n}"] = value.rsplit(".", 1)[1]
    leaked = [name for name, value in values.items() if value in printed]
    assert not leaked, f"secrets printed by `callboard serve`: {leaked}"
    assert stdout == "", f"serve prints logs to stderr only; stdout had: {stdout[:500]!r}"

    lines = stderr.splitlines()
    assert len(lines) > 10, stderr
    events: list[tuple[str, str]] = []  # (logger, msg)
    for line in lines:
        if log_format == "json":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise AssertionError(f"not one JSON object per line: {line!r}") from None
            assert isinstance(obj, dict) and {"ts", "level", "logger", "msg"} <= obj.keys() <= \
                {"ts", "level", "logger", "msg", "exc"}, obj
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["ts"]), obj
            assert obj["level"] in ("debug", "info", "warning", "error", "critical"), obj
            events.append((obj["logger"], obj["msg"]))
        else:
            assert TEXT_LINE.match(line), f"not one line per event: {line!r}"
            logger, _, msg = line.split(" ", 3)[3].partition(": ")
            events.append((logger, msg))
    access = [msg for logger, msg in events if logger == "aiohttp.access"]
    for msg in access:
        assert ACCESS.match(msg), f"access log lines are method, path, status, duration only: {msg!r}"
    paths = {ACCESS.match(m).group(2) for m in access}  # type: ignore[union-attr]
    assert {"/ws", "/api/snapshot", "/api/voice-token", "/api/agents/bob/state", "/wallboard", "/metrics",
            "/twilio/voice/incoming", "/twilio/voice/queue-result"} <= paths, paths
    assert not any("?" in m or "token=" in m for m in access)
    messages = "\n".join(msg for _, msg in events)
    assert "refused (bad_signature)" in messages and "refused (missing_signature)" in messages, messages
    assert "draining" in messages


# -- RedactSecrets and the formatters, as units -------------------------------------------------------------

SECRET_A = "alpha-secret-0123456789"
SECRET_B = "bravo-token-9876543210"


def _logger(fmt: logging.Formatter, *secret_values: str | None) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    handler.addFilter(RedactSecrets(secret_values))
    logger = logging.getLogger(f"test_logs.{secrets.token_hex(4)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_redact_masks_secrets_in_messages_and_arguments() -> None:
    logger, stream = _logger(logging.Formatter("%(message)s"), SECRET_A, SECRET_B, None, "")
    logger.info("secret %s here", SECRET_A)
    logger.info("both: %s and %r", SECRET_B, {"token": SECRET_A})
    logger.info(f"in the format string itself {SECRET_B}")
    logger.warning("url https://x.example.com/?t=%s&u=%s", SECRET_A, SECRET_A)
    out = stream.getvalue()
    assert SECRET_A not in out and SECRET_B not in out, out
    assert out.splitlines() == [
        "secret [redacted] here",
        "both: [redacted] and {'token': '[redacted]'}",
        "in the format string itself [redacted]",
        "url https://x.example.com/?t=[redacted]&u=[redacted]",
    ]


def test_redact_leaves_other_records_alone_and_always_lets_them_through() -> None:
    redact = RedactSecrets([SECRET_A])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "value %d of %s", (3, "seven"), None)
    assert redact.filter(record) is True
    assert record.msg == "value %d of %s" and record.args == (3, "seven"), "lazy formatting is kept"
    secret_record = logging.LogRecord("x", logging.INFO, __file__, 1, "value %s", (SECRET_A,), None)
    assert redact.filter(secret_record) is True
    assert secret_record.getMessage() == "value [redacted]"


def test_short_or_empty_values_are_not_treated_as_secrets() -> None:
    """A secret of a few characters would mask ordinary words everywhere; such values are ignored."""
    redact = RedactSecrets(["abc", "", None, "1234567"])
    assert redact.secrets == []
    logger, stream = _logger(logging.Formatter("%(message)s"), "abc", None)
    logger.info("abc is a word")
    assert stream.getvalue() == "abc is a word\n"


def test_a_secret_containing_another_is_masked_whole() -> None:
    short, long = "shared-prefix-0123", "shared-prefix-0123-and-more-secret-tail"
    for order in ((short, long), (long, short)):
        logger, stream = _logger(logging.Formatter("%(message)s"), *order)
        logger.info("value=%s", long)
        out = stream.getvalue()
        assert out == "value=[redacted]\n", (
            f"with secrets given in the order {order}, a fragment of the longer secret is printed: {out!r} "
            "(RedactSecrets must replace the longest secrets first)")


def test_secrets_in_exception_tracebacks_are_masked_too() -> None:
    for fmt in (JsonFormatter(), logging.Formatter("%(levelname)s %(message)s")):
        logger, stream = _logger(fmt, SECRET_A)
        try:
            raise RuntimeError(f"could not connect with password {SECRET_A}")
        except RuntimeError:
            logger.exception("connection failed")
        out = stream.getvalue()
        assert "connection failed" in out and "RuntimeError" in out
        assert SECRET_A not in out, (
            f"{type(fmt).__name__}: a secret in an exception's message is printed in the traceback: "
            "RedactSecrets only rewrites record.msg/args, not record.exc_info/exc_text")


def test_json_lines_are_one_object_per_event_even_with_newlines_and_tracebacks() -> None:
    logger, stream = _logger(JsonFormatter())
    logger.info("two\nlines and unicode: 東京")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "two\nlines and unicode: 東京" and first["level"] == "info" and "exc" not in first
    assert second["msg"] == "failed" and second["level"] == "error"
    assert "ValueError: boom" in second["exc"] and "Traceback" in second["exc"]


def test_setup_logging_installs_one_redacting_handler_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("json", secrets=[SECRET_A, None])
        setup_logging("json", secrets=[SECRET_A, None])  # twice: still one handler, no duplicate lines
        assert len(root.handlers) == 1
        logging.getLogger("callboard.test").info("the secret is %s", SECRET_A)
        logging.getLogger("aiohttp.access").info("%s %s %s %.1fms", "GET", "/healthz", 200, 0.4)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [json.loads(line) for line in captured.err.splitlines()]
    assert [(x["logger"], x["msg"]) for x in lines] == [("callboard.test", "the secret is [redacted]"),
                                                        ("aiohttp.access", "GET /healthz 200 0.4ms")]


# -- aiohttp's own loggers: an oversized header is quoted by aiohttp, never printed by us ---------------------

async def _raw_request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_an_oversized_header_or_request_line_never_prints_its_credential(procs: ProcessGroup, redis: Redis,
                                                                               redis_url: str, tmp_path: Path,
                                                                               log_format: str) -> None:
    server, _, secret, twilio_token, public_url = _serve(procs, redis_url, tmp_path, log_format, "big-header")
    port = server.port
    await server.wait_ready()
    jwt = issue_token(secret, "alice", "agent", 600)
    params = {"CallSid": "CA" + "3" * 32, "To": "+15550000001"}
    signature = sign(twilio_token, public_url + "/twilio/voice/incoming", params)
    padding = "A" * 9000  # over aiohttp's 8190-byte line limit: LineTooLong, which quotes ~100 bytes
    requests = [
        f"GET /api/snapshot HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {jwt}{padding}\r\n\r\n",
        f"POST /twilio/voice/incoming HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: {signature}{padding}\r\n"
        "Content-Length: 0\r\n\r\n",
        f"GET /wallboard?token={jwt}{padding} HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for head in requests:
        answer = await _raw_request(port, head.encode())
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0], answer[:200]
    server.terminate()
    assert server.wait(15) == 0, server.describe()

    printed = server.stdout() + server.stderr()
    # the whole JWT, its first 24 characters (header and the start of its payload) and the signature
    for name, value in (("the JWT", jwt), ("the JWT's first 24 characters", jwt[:24]),
                        ("the JWT's payload start", jwt.split(".")[1][:12]), ("the Twilio signature", signature),
                        ("the signature's first 12 characters", signature[:12])):
        assert value not in printed, f"{name} was printed by `callboard serve`:\n{printed[-3000:]}"
    lines = server.stderr().splitlines()
    refused = [line for line in lines if "LineTooLong (HTTP 400); the request's content is not logged" in line]
    assert len(refused) == len(requests), printed[-3000:]
    for line in lines:
        if log_format == "json":
            json.loads(line)
        else:
            assert TEXT_LINE.match(line), f"not one line per event: {line!r}"


def test_credentials_are_masked_by_their_shape_even_when_unknown() -> None:
    logger, stream = _logger(logging.Formatter("%(message)s"))  # no known secret at all
    logger.info("header Authorization: Bearer %s", "abcdefghijklmnopqrstuvwxyz012345")
    logger.info("a token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl in a message")
    logger.info("headers {'X-Twilio-Signature': 'Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA=='}")
    logger.info("Bearer token missing")  # ordinary words stay
    assert stream.getvalue().splitlines() == [
        "header Authorization: Bearer [redacted]",
        "a token [redacted] in a message",
        "headers {'X-Twilio-Signature': '[redacted]'}",
        "Bearer token missing",
    ]


def test_the_twilio_packages_request_dumps_stay_out_of_the_log() -> None:
    """twilio's HTTP clients log each REST request's URL and headers at INFO: not in callboard's log."""
    import logging

    from callboard.logs import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging(level="INFO")
    try:
        for name in ("twilio.http_client", "twilio.async_http_client"):
            logger = logging.getLogger(name)
            assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
        assert logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
