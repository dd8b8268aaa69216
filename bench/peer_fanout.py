"""callboard vs python-socketio (AsyncRedisManager) under the same fan-out load, in one run.

    python bench/peer_fanout.py                 # the fanout.py defaults: 10,000 clients, 1,000 changes/s, 30 s
    python bench/peer_fanout.py --smoke         # 300 clients, 100 changes/s, 3 s

Same clients, same change driver and same clocks (bench/harness.py) against callboard and then against
bench/peer_server.py. Prints one JSON line per server and one comparison line with both wallboard p99s and
their ratio (peer / callboard: above 1 means callboard is faster).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, harness  # noqa: E402
from bench.fanout import add_fanout_args, apply_smoke, load_of, with_delivery  # noqa: E402

PEER_SERVER = Path(__file__).resolve().parent / "peer_server.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fanout_args(parser)
    args = parser.parse_args()
    apply_smoke(args)
    load = load_of(args)
    out = {}
    with common.workdir("cb-bench-peer-") as wd:
        for protocol in ("callboard", "socketio"):
            specs, sups, agent_ids = harness.fanout_specs(protocol, args.clients, args.walls, args.team_size,
                                                          args.queues, args.supervisors)
            cfg = common.write_config(wd, agents=len(agent_ids), queues=args.queues, team_size=args.team_size)
            if protocol == "callboard":
                server = common.callboard_server(cfg, wd)
            else:
                common.flush_db()
                server = common.python_server(PEER_SERVER, ["--config", str(cfg), "--redis-url", common.REDIS_URL], wd)
            with server:
                fig = harness.run_fanout(protocol, server, specs, sups, agent_ids, rate_per_s=args.rate,
                                         duration_s=args.duration, processes=args.processes)
            out[protocol] = with_delivery(fig, args.walls)
            common.emit("peer_fanout", load | {"server": protocol}, **out[protocol])
    cb = out["callboard"]["wallboard_latency"]["p99_ms"]  # type: ignore[index]
    peer = out["socketio"]["wallboard_latency"]["p99_ms"]  # type: ignore[index]
    common.emit("peer_fanout", load | {"server": "comparison"}, callboard_wallboard_p99_ms=cb,
                socketio_wallboard_p99_ms=peer,
                p99_ratio_socketio_over_callboard=round(peer / cb, 2) if cb and peer else None,
                callboard_own_badge_p99_ms=out["callboard"]["own_badge_latency"]["p99_ms"],  # type: ignore[index]
                socketio_own_badge_p99_ms=out["socketio"]["own_badge_latency"]["p99_ms"],  # type: ignore[index]
                callboard_cpu_share=out["callboard"]["server"]["cpu_share"],  # type: ignore[index]
                socketio_cpu_share=out["socketio"]["server"]["cpu_share"])  # type: ignore[index]
    return 0


if __name__ == "__main__":
    sys.exit(main())
