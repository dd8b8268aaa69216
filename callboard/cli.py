"""The `callboard` command: serve, demo, simulate, token, voice-sdk."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from callboard.auth import ROLES, issue_token, parse_ttl
from callboard.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from callboard.services import Settings

log = logging.getLogger("callboard")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return args.func(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callboard", description="Real-time presence and wallboard for Twilio contact centers")
    sub = parser.add_subparsers(dest="command")
    _init_args(sub)

    serve = sub.add_parser("serve", help="run the service")
    _server_args(serve)
    serve.add_argument("--insecure-dev", action="store_true",
                       help="accept unsigned Twilio webhooks (development only; never in production)")
    serve.set_defaults(func=_cmd_serve)

    demo = sub.add_parser("demo", help="embedded Redis + the service + a simulated center, in one command")
    _server_args(demo)
    from simulator import run as simulate

    simulate.add_arguments(demo)
    # The demo center has 12 agents and ~3-minute calls: 4 a minute keeps the floor busy from the first
    # minute with some callers waiting and a few abandons, as a real busy hour looks.
    demo.set_defaults(func=_cmd_demo, calls_per_minute=4.0, url=None)
    demo.add_argument("--routing", choices=("pull", "offer"), default="pull",
                      help="pull (default): simulated agents take the next caller; offer: callboard offers callers "
                           "to agents, Twilio's side played by the loopback emulator")
    demo.add_argument("--bridge", choices=("queue", "conference"), default=None,
                      help="queue: <Dial><Queue> bridge; conference: callers meet agents in a conference (in the "
                           "config's conference_region) and the simulated agents hold, transfer and record "
                           "dispositions, Twilio's side played by the loopback emulator (default: the config's bridge)")

    sim = sub.add_parser("simulate", help="drive a running callboard like Twilio and softphones would")
    simulate.add_arguments(sim)
    sim.add_argument("--config", help="the center's TOML config (default: CALLBOARD_CONFIG, ./callboard.toml, or the demo)")
    sim.add_argument("--public-url", help="the URL the server checks signatures against (default: --url)")
    sim.set_defaults(func=_cmd_simulate)
    # Busy within the first minute (issue 14): at real speed 4 calls a minute left 3 of 12 agents on calls
    # after 75 s (measured). Twice the speed and 5 simulated calls a minute (10 a minute of wall time,
    # calls of about 1.5 minutes) fill the floor in about a minute; --speed 1 --calls-per-minute 2 calms it.
    demo.set_defaults(calls_per_minute=5.0, speed=2.0)
    # A fresh seed per demo run unless --seed is given: the pull simulator's CallSids come from the seed, and a
    # second demo on the same data directory (its Redis keeps the calls) replayed the first run's CallSids,
    # which the server rightly took for Twilio's retries: no screen pops, no new counts (measured: 0 pops).
    demo.set_defaults(seed=None)

    token = sub.add_parser("token", help="print a bearer token")
    token.add_argument("sub", help="agent id, or a name for supervisor/wallboard tokens")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--ttl", default="12h", help="lifetime, e.g. 30m, 12h, 7d (default 12h)")
    token.add_argument("--queues", help="comma-separated queues a wallboard/supervisor token may see")
    token.add_argument("--teams", help="comma-separated teams a wallboard/supervisor token may see")
    token.set_defaults(func=_cmd_token)

    db = sub.add_parser("db", help="the SQL database: apply or inspect schema migrations (DATABASE_URL)")
    db.add_argument("action", choices=("upgrade", "downgrade", "current", "history"),
                    help="upgrade (to head, or --revision), downgrade (to --revision), current, history")
    db.add_argument("--revision", help="target revision (upgrade: default head; downgrade: required, 'base' for empty)")
    db.set_defaults(func=_cmd_db)
    _voice_sdk_args(sub)
    return parser


def _voice_sdk_args(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    voice_sdk = sub.add_parser("voice-sdk", help="the Twilio Voice JS SDK the agent console loads")
    actions = voice_sdk.add_subparsers(dest="action", required=True)
    install = actions.add_parser("install", help="fetch @twilio/voice-sdk with npm into the data directory")
    install.add_argument("--version", default=None, help="npm version or range (default: 2, the newest 2.x)")
    install.add_argument("--from", dest="source", default=None,
                         help="install from this npm tarball (.tgz) instead of the registry (offline installs)")
    install.set_defaults(func=_cmd_voice_sdk_install)
    status = actions.add_parser("status", help="say which SDK the server serves")
    status.add_argument("--config", help="the center's TOML config (for [server] voice_sdk_url)")
    status.set_defaults(func=_cmd_voice_sdk_status)


def _cmd_voice_sdk_install(args: argparse.Namespace) -> int:
    from callboard import voice_sdk
    from callboard.services import Settings

    settings = Settings.from_env()
    spec = args.source or (f"{voice_sdk.PACKAGE}@{args.version}" if args.version else None)
    try:
        done = voice_sdk.install(settings.data_dir, spec)
    except voice_sdk.VoiceSdkError as exc:
        print(f"callboard: voice-sdk install failed: {exc}", file=sys.stderr)
        return 1
    print(f"installed {voice_sdk.PACKAGE} {done.version} at {done.path}; the server serves it at {voice_sdk.SDK_PATH}")
    return 0


def _cmd_voice_sdk_status(args: argparse.Namespace) -> int:
    from callboard import voice_sdk
    from callboard.services import Settings

    config = _load_config_or_exit(args.config)
    found = voice_sdk.installed(Settings.from_env().data_dir)
    if config.server.voice_sdk_url:
        print(f"[server] voice_sdk_url is set: the console loads {config.server.voice_sdk_url}")
    elif found:
        print(f"{voice_sdk.PACKAGE} {found.version} is installed; the console loads {voice_sdk.SDK_PATH}")
    else:
        print("no Voice SDK: run `callboard voice-sdk install` or set [server] voice_sdk_url")
        return 1
    return 0


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="the center's TOML config (default: CALLBOARD_CONFIG, ./callboard.toml, or the demo)")
    p.add_argument("--host", help="bind address (default: HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: PORT or 8080)")
    p.add_argument("--log-format", choices=("text", "json"), default="text")


def _config_path(arg: str | None) -> str | None:
    import os

    if arg:
        return arg
    if os.environ.get("CALLBOARD_CONFIG"):
        return os.environ["CALLBOARD_CONFIG"]
    return "callboard.toml" if Path("callboard.toml").exists() else None


def _load_config_or_exit(arg: str | None) -> Config:
    try:
        return load_config(_config_path(arg))
    except ConfigError as exc:
        print(f"callboard: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _cmd_token(args: argparse.Namespace) -> int:
    from callboard.services import Settings, load_or_create_secret

    settings = Settings.from_env()
    secret = settings.secret
    if not secret:
        secret, created = load_or_create_secret(settings.data_dir)
        if created:
            print(f"callboard: generated a new secret in {settings.data_dir / 'secret'}", file=sys.stderr)
    try:
        ttl = parse_ttl(args.ttl)
        print(issue_token(secret, args.sub, args.role, ttl, queues=_csv(args.queues), teams=_csv(args.teams)))
    except ValueError as exc:
        print(f"callboard: {exc}", file=sys.stderr)
        return 2
    return 0


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _cmd_db(args: argparse.Namespace) -> int:
    from callboard.services import Settings
    from store import migrate
    from store.db import Database, DatabaseUrlError

    if args.action == "history":
        for revision in migrate.history():
            print(revision)
        return 0
    if args.action == "downgrade" and not args.revision:
        print("callboard: db downgrade needs --revision (a revision id, or 'base' to empty the schema)", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    try:
        db = Database.from_url(settings.database_url, data_dir=settings.data_dir)
    except DatabaseUrlError as exc:
        print(f"callboard: {exc}", file=sys.stderr)
        return 2

    async def run() -> str | None:
        try:
            if args.action == "upgrade":
                await db.upgrade(args.revision or "head")
            elif args.action == "downgrade":
                await db.downgrade(args.revision)
            return await db.current()
        finally:
            await db.dispose()

    try:
        current = asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - the command line's boundary: one English line, exit 1
        print(f"callboard: database {db.describe()}: {exc}", file=sys.stderr)
        return 1
    print(f"{db.describe()}: at revision {current or 'base (empty)'}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from wallboard.runtime import run_loop

    return run_loop(_serve(args, demo=False))


def _cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args, demo=True))


def _cmd_simulate(args: argparse.Namespace) -> int:
    from callboard.services import Settings, load_or_create_secret
    from simulator import run as simulate

    config = _load_config_or_exit(args.config)
    settings = Settings.from_env()
    secret = settings.secret or load_or_create_secret(settings.data_dir)[0]
    twilio_token = settings.twilio_auth_token or load_or_create_secret(settings.data_dir, "twilio-dev-token")[0]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = simulate.options_from_args(args, config=config, secret=secret, twilio_auth_token=twilio_token,
                                      public_url=args.public_url)
    report = asyncio.run(simulate.run_until_interrupted(opts))
    print(simulate.format_report(report))
    return 0


async def _serve(args: argparse.Namespace, *, demo: bool) -> int:
    from callboard.app import build_app, redis_client
    from callboard.embedded import EmbeddedRedis, EmbeddedRedisError
    from callboard.logs import AccessLogger, setup_logging
    from callboard.services import Settings, load_or_create_secret

    config = _load_config_or_exit(args.config)
    settings = Settings.from_env(host=args.host, port=args.port, insecure_dev=getattr(args, "insecure_dev", None))
    notes: list[str] = []
    if not settings.secret:
        secret, created = load_or_create_secret(settings.data_dir)
        settings = dataclasses.replace(settings, secret=secret)
        notes.append(("generated a new token secret" if created else "using the token secret") +
                     f" in {settings.data_dir / 'secret'} (set CALLBOARD_SECRET to choose one)")
    if demo and not settings.twilio_auth_token:
        token, _ = load_or_create_secret(settings.data_dir, "twilio-dev-token")
        settings = dataclasses.replace(settings, twilio_auth_token=token)
        notes.append("demo: Twilio webhooks are signed with a generated dev token")
    if demo and not settings.public_url:
        settings = dataclasses.replace(settings, public_url=f"http://{_client_host(settings.host)}:{settings.port}")
    emulator = None
    if demo and getattr(args, "bridge", None):
        config = dataclasses.replace(config, center=dataclasses.replace(config.center, bridge=args.bridge))
    if demo and getattr(args, "routing", "pull") == "offer":
        config = dataclasses.replace(config, routing=dataclasses.replace(config.routing, mode="offer"))
    if demo and (config.routing.mode == "offer" or config.center.bridge == "conference"):
        # Twilio's REST side on loopback: routing dequeues and the conference bridge move calls through it
        from simulator.offer_demo import DEMO_ACCOUNT_SID
        from simulator.twilio_api import TwilioEmulator

        emulator = TwilioEmulator(DEMO_ACCOUNT_SID, settings.twilio_auth_token or "")
        emulator_url = await emulator.start()
        settings = dataclasses.replace(settings, twilio_api_url=emulator_url, twilio_account_sid=DEMO_ACCOUNT_SID,
                                       twilio_api_key=None, twilio_api_secret=None)
        notes.append(f"demo: {config.routing.mode} routing, {config.center.bridge} bridge"
                     + (f" in {config.center.conference_region}" if config.center.bridge == "conference" else "")
                     + f"; Twilio's REST API is the emulator on {emulator_url}")
    setup_logging(args.log_format, secrets=[settings.secret, settings.twilio_auth_token, settings.twilio_api_secret])
    if demo:
        # the simulated center's webhooks are several requests a second: their access-log lines pushed the
        # links the demo prints out of sight within seconds (`callboard serve` keeps its access log)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for note in notes:
        log.info(note)
    if len(settings.secret) < 32:
        log.warning("CALLBOARD_SECRET is shorter than 32 characters: tokens signed with it are easier to forge; "
                    "use a long random value (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    log.info("config: %s (%d queues, %d agents)", config.source, len(config.queues), len(config.agents))

    problem = _port_problem(settings.host, settings.port)
    if problem:  # before the embedded Redis starts, and instead of the bind's traceback further down
        print(f"callboard: {problem}", file=sys.stderr)
        return 2
    embedded = None
    redis_url = settings.redis_url
    if redis_url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        try:
            redis_url = embedded.start()
        except EmbeddedRedisError as exc:
            log.error("%s", exc)
            return 1
        log.info("embedded Redis on %s with AOF in %s — single instance only; set REDIS_URL to run several",
                 redis_url, settings.data_dir.resolve())
    redis = redis_client(redis_url)
    app = build_app(config, settings, redis, close_redis=True)
    runner = web.AppRunner(app, access_log_class=AccessLogger, handle_signals=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        from callboard.services import SERVICES
        from wallboard.const import LISTEN_BACKLOG
        from wallboard.runtime import tune_collector

        # Start-up's heap is frozen out of the collector's scans (see wallboard/runtime.py), before the port
        # opens: its full collection (0.1 s at 10,000 agents) then delays no client, and start-up's stalls
        # leave the loop-stall maximum.
        tune_collector()
        if app[SERVICES].loop_watch is not None:
            app[SERVICES].loop_watch.start_serving()
        site = web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                raise
            print(f"callboard: {_bind_problem(exc.errno, settings.host, settings.port)}", file=sys.stderr)
            return 2
        base = f"http://{_client_host(settings.host)}:{settings.port}"
        log.info("serving on %s (wallboard %s/wallboard, metrics %s/metrics)", base, base, base)
        sim_task = None
        if demo:
            sim_task = asyncio.create_task(_run_demo_simulation(args, config, settings, base, stop, emulator,
                                                                app[SERVICES]))
        await stop.wait()
        if sim_task is not None:  # the simulator sees `stop` too: let it hang up its calls first
            try:
                await asyncio.wait_for(sim_task, timeout=15)
            except (TimeoutError, Exception):  # noqa: BLE001 - shutting down either way; it logged its own errors
                sim_task.cancel()
        log.info("shutting down: draining websockets (1012) and releasing the lease")
    finally:
        await runner.cleanup()
        if emulator is not None:
            await emulator.stop()
        if embedded is not None:
            embedded.stop()
    return 0


async def _run_demo_simulation(args: argparse.Namespace, config: Config, settings: Settings, base: str,
                               stop: asyncio.Event, emulator: Any = None, services: Any = None) -> None:
    from callboard.auth import issue_token
    from simulator import directory
    from simulator import run as simulate

    secret = settings.secret
    wall = issue_token(secret, "demo-wallboard", "wallboard", 7 * 86400)
    agent_id = config.agents[0].id if config.agents else None
    print("\n  callboard demo is running.\n", flush=True)
    # the wall display's URL: kiosk (data only, no controls), in the center's language when it names one
    lang = f"&lang={config.center.ui_language}" if config.center.ui_language else ""
    print(f"  Wallboard:      {base}/wallboard?kiosk=1{lang}#token={wall}", flush=True)
    if agent_id:
        agent = issue_token(secret, agent_id, "agent", 7 * 86400)
        print(f"  Agent console:  {base}/agent#token={agent}   (the simulator drives {agent_id} too)", flush=True)
    # a supervisor's pages: what the demo center's calls became (records) and its customer directory
    boss = issue_token(secret, "demo-supervisor", "supervisor", 7 * 86400)
    print(f"  Reports:        {base}/reports#token={boss}", flush=True)
    print(f"  Customers:      {base}/customers#token={boss}", flush=True)
    print(f"  Metrics:        {base}/metrics\n  Stop with Ctrl-C.\n", flush=True)
    # a small directory (only into an empty one) and half the callers dialling from its numbers: the screen
    # pops find customers, and in offer mode their owners are offered the call first
    if services is not None:
        await directory.seed_for_demo(services.db, config, services.clock)
    known = directory.caller_numbers()
    if args.seed is None:
        import secrets

        args.seed = secrets.randbelow(2**31)
        log.info("demo: simulator seed %d (--seed %d replays the same callers)", args.seed, args.seed)
    if emulator is not None and config.center.bridge == "conference":
        from simulator.conference_demo import ConferenceDemo

        conf_demo = ConferenceDemo(config=config, secret=secret, emu=emulator, base=base, stop=stop,
                                   calls_per_minute=args.calls_per_minute, speed=args.speed, seed=args.seed,
                                   known_callers=known)
        try:
            print(f"  conference demo: {(await conf_demo.run()).line()}", flush=True)
        except Exception:
            log.exception("the conference demo stopped")
        return
    if emulator is not None:  # routing: offer mode
        from simulator.offer_demo import OfferDemo

        demo = OfferDemo(config=config, secret=secret, emu=emulator, base=base, stop=stop,
                         calls_per_minute=args.calls_per_minute, speed=args.speed, seed=args.seed,
                         known_callers=known)
        try:
            print(f"  offer demo: {(await demo.run()).line()}", flush=True)
        except Exception:
            log.exception("the offer demo stopped")
        return
    opts = simulate.options_from_args(args, config=config, secret=secret,
                                      twilio_auth_token=settings.twilio_auth_token or "",
                                      public_url=settings.public_url, url=base, known_callers=known)
    try:
        report = await simulate.run_simulation(opts, stop=stop)
    except Exception:
        log.exception("the demo simulator stopped")
        return
    summary = simulate.format_report(report).splitlines()[:4]  # the short English lines; the JSON is for simulate
    print("  demo: " + "\n        ".join(summary), flush=True)


def _init_args(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = sub.add_parser("init", help="write a commented example callboard.toml to edit into your center")
    init.add_argument("path", nargs="?", default="callboard.toml", help="where to write it (default: callboard.toml)")
    init.set_defaults(func=_cmd_init)


def _cmd_init(args: argparse.Namespace) -> int:
    from callboard.example import ExampleExists, write_example

    path = Path(args.path)
    try:
        write_example(path)
    except ExampleExists:
        print(f"callboard: {path} already exists; not overwriting it (remove it or name another file)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"callboard: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}: edit the center, queues and agents, then run\n  callboard serve --config {path}")
    return 0


def _port_problem(host: str, port: int) -> str | None:
    """Can we listen on host:port? A probe bind, released at once (a port taken in the next millisecond
    still fails the real bind, with a traceback: a race, not the newcomer's case this message is for)."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return f"cannot listen on {host}:{port} (unknown host); use --host or HOST"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            return _bind_problem(exc.errno or 0, host, port)
    return None


def _bind_problem(code: int, host: str, port: int) -> str:
    """One English line for a listen socket that could not be opened (never a traceback)."""
    if code == errno.EADDRINUSE:
        return f"port {port} is in use; use --port or PORT"
    if code == errno.EACCES:
        return f"not allowed to listen on port {port} (ports below 1024 need privileges); use --port or PORT"
    if code == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}:{port} (no such local address); use --host or HOST"
    import os

    return f"cannot listen on {host}:{port} ({os.strerror(code)}); use --host/HOST or --port/PORT"


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


if __name__ == "__main__":
    sys.exit(main())
