"""The `callboard` command: serve, demo, simulate, token, voice-sdk."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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

    sim = sub.add_parser("simulate", help="drive a running callboard like Twilio and softphones would")
    simulate.add_arguments(sim)
    sim.add_argument("--config", help="the center's TOML config (default: CALLBOARD_CONFIG, ./callboard.toml, or the demo)")
    sim.add_argument("--public-url", help="the URL the server checks signatures against (default: --url)")
    sim.set_defaults(func=_cmd_simulate)

    token = sub.add_parser("token", help="print a bearer token")
    token.add_argument("sub", help="agent id, or a name for supervisor/wallboard tokens")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--ttl", default="12h", help="lifetime, e.g. 30m, 12h, 7d (default 12h)")
    token.add_argument("--queues", help="comma-separated queues a wallboard/supervisor token may see")
    token.add_argument("--teams", help="comma-separated teams a wallboard/supervisor token may see")
    token.set_defaults(func=_cmd_token)
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


def _cmd_serve(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args, demo=False))


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
    if demo and getattr(args, "routing", "pull") == "offer":  # routing: Twilio's REST side on loopback
        from simulator.offer_demo import DEMO_ACCOUNT_SID, start_emulator

        config = dataclasses.replace(config, routing=dataclasses.replace(config.routing, mode="offer"))
        emulator = await start_emulator(settings.twilio_auth_token or "")
        settings = dataclasses.replace(settings, twilio_api_url=emulator[1], twilio_account_sid=DEMO_ACCOUNT_SID,
                                       twilio_api_key=None, twilio_api_secret=None)
        notes.append(f"demo: offer mode; Twilio's REST API is the emulator on {emulator[1]}")
    setup_logging(args.log_format, secrets=[settings.secret, settings.twilio_auth_token, settings.twilio_api_secret])
    for note in notes:
        log.info(note)
    if len(settings.secret) < 32:
        log.warning("CALLBOARD_SECRET is shorter than 32 characters: tokens signed with it are easier to forge; "
                    "use a long random value (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    log.info("config: %s (%d queues, %d agents)", config.source, len(config.queues), len(config.agents))

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
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        base = f"http://{_client_host(settings.host)}:{settings.port}"
        log.info("serving on %s (wallboard %s/wallboard, metrics %s/metrics)", base, base, base)
        sim_task = None
        if demo:
            sim_task = asyncio.create_task(_run_demo_simulation(args, config, settings, base, stop,
                                                                emulator[0] if emulator else None))
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
            await emulator[2].cleanup()
        if embedded is not None:
            embedded.stop()
    return 0


async def _run_demo_simulation(args: argparse.Namespace, config: Config, settings: Settings, base: str,
                               stop: asyncio.Event, emulator: Any = None) -> None:
    from callboard.auth import issue_token
    from simulator import run as simulate

    secret = settings.secret
    wall = issue_token(secret, "demo-wallboard", "wallboard", 7 * 86400)
    agent_id = config.agents[0].id if config.agents else None
    print("\n  callboard demo is running.\n", flush=True)
    print(f"  Wallboard:      {base}/wallboard#token={wall}", flush=True)
    if agent_id:
        agent = issue_token(secret, agent_id, "agent", 7 * 86400)
        print(f"  Agent console:  {base}/agent#token={agent}   (the simulator drives {agent_id} too)", flush=True)
    print(f"  Metrics:        {base}/metrics\n  Stop with Ctrl-C.\n", flush=True)
    if emulator is not None:  # routing: offer mode
        from simulator.offer_demo import OfferDemo

        demo = OfferDemo(config=config, secret=secret, emu=emulator, base=base, stop=stop,
                         calls_per_minute=args.calls_per_minute, speed=args.speed, seed=args.seed)
        try:
            print(f"  offer demo: {(await demo.run()).line()}", flush=True)
        except Exception:
            log.exception("the offer demo stopped")
        return
    opts = simulate.options_from_args(args, config=config, secret=secret,
                                      twilio_auth_token=settings.twilio_auth_token or "",
                                      public_url=settings.public_url, url=base)
    try:
        await simulate.run_simulation(opts, stop=stop)
    except Exception:
        log.exception("the demo simulator stopped")


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


if __name__ == "__main__":
    sys.exit(main())
