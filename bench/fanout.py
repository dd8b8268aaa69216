"""Fan-out: N connected clients (wallboards + agents), R supervisor state changes/s, change -> screen latency.

    python bench/fanout.py                      # 10,000 clients (50 wallboards), 1,000 changes/s, 30 s
    python bench/fanout.py --smoke              # 300 clients, 100 changes/s, 3 s

Prints one JSON line: wallboard and own-badge latency p50/p99/max (the change's send time rides in its
reason), server CPU share (cpu_times delta / wall) and RSS, and RSS per idle connection ((RSS with N idle
clients - RSS with none) / N). Targets: p99 <= 200 ms at the wallboards, <= 20 KiB per idle connection.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, harness  # noqa: E402


def add_fanout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=10_000, help="connected clients in all (default 10,000)")
    p.add_argument("--walls", type=int, default=50, help="wallboards among them (default 50)")
    p.add_argument("--rate", type=float, default=1000.0, help="state changes per second (default 1,000)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of changes (default 30)")
    p.add_argument("--processes", type=int, default=2, help="client worker processes (default 2)")
    p.add_argument("--supervisors", type=int, default=4, help="supervisor sockets sending the changes")
    p.add_argument("--team-size", type=int, default=25)
    p.add_argument("--queues", type=int, default=100)
    p.add_argument("--client", choices=("light", "aiohttp"), default="light",
                   help="light: bench/light_client.py, one process reading every socket from its first byte "
                        "(default); aiohttp: the older multi-process aiohttp fleet of bench/harness.py")
    p.add_argument("--tick-ms", type=int, default=25, help="the server's [server] tick_ms (default 25, the server's)")
    p.add_argument("--smoke", action="store_true", help="300 clients, 100 changes/s, 3 s")


def apply_smoke(args: argparse.Namespace) -> None:
    if args.smoke:
        args.clients, args.walls, args.rate, args.duration, args.processes = 300, 10, 100.0, 3.0, 1


def load_of(args: argparse.Namespace) -> dict[str, object]:
    return {"clients": args.clients, "walls": args.walls, "agents": args.clients - args.walls,
            "changes_per_s": args.rate, "duration_s": args.duration, "client_processes": args.processes,
            "team_size": args.team_size, "queues": args.queues, "smoke": args.smoke,
            "client": getattr(args, "client", "aiohttp"), "tick_ms": getattr(args, "tick_ms", 25),
            "nofile": common.raise_nofile(), "machine": common.machine()}


def with_delivery(fig: dict[str, object], walls: int) -> dict[str, object]:
    sent = fig["changes"]["sent"]  # type: ignore[index]
    fig["wallboard_delivered"] = round(fig["wallboard_latency"]["n"] / max(sent * walls, 1), 4)  # type: ignore[index]
    fig["own_badge_delivered"] = round(fig["own_badge_latency"]["n"] / max(sent, 1), 4)  # type: ignore[index]
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fanout_args(parser)
    args = parser.parse_args()
    apply_smoke(args)
    load = load_of(args)
    specs, sups, agent_ids = harness.fanout_specs("callboard", args.clients, args.walls, args.team_size,
                                                  args.queues, args.supervisors)
    with common.workdir("cb-bench-fanout-") as wd:
        cfg = common.write_config(wd, agents=len(agent_ids), queues=args.queues, team_size=args.team_size,
                                  tick_ms=args.tick_ms)
        with common.callboard_server(cfg, wd) as server:
            if args.client == "light":
                fig = harness.run_fanout_light(server, specs, sups, agent_ids, rate_per_s=args.rate,
                                               duration_s=args.duration)
            else:
                fig = harness.run_fanout("callboard", server, specs, sups, agent_ids, rate_per_s=args.rate,
                                         duration_s=args.duration, processes=args.processes)
    fig = with_delivery(fig, args.walls)
    p99 = fig["wallboard_latency"]["p99_ms"]  # type: ignore[index]
    per_conn = fig["server"]["rss_per_idle_conn_kib"]  # type: ignore[index]
    common.emit("fanout", load, **fig, targets={
        "wallboard_p99_le_200ms": p99 is not None and p99 <= 200,
        "rss_per_idle_conn_le_20kib": per_conn <= 20})
    return 0


if __name__ == "__main__":
    sys.exit(main())
